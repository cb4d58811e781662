"""A plain folder of a reader's own images, with optional masks.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets) and used by
``promptmoe predict``. Rules:

* labels come from folder names, at any depth below the category folder, case ignored: an image
  with a *normal* folder on its path -> 0; an image in any other subfolder (``scratch/``,
  ``bad/crack/`` ...) -> 1; an image directly in the category folder has **no label**
  (``gt_label = -1``): it can be scored and visualised, not evaluated or trained on;
* normal folders are ``good`` / ``normal`` / ``ok`` unless ``normal_dirs`` names others
  (``["MT_Free"]``, ``["no"]``): the names given *replace* the defaults, and every other folder is
  then anomalous. ``abnormal_dirs`` names the defect folders: once given, an image under a
  folder named by neither rule is **left out**, and the folders left out are listed in a warning.
  A name may be a path inside the data (``MT_Free/Imgs``: those folders, consecutive, anywhere
  below the category folder; a trailing ``/`` is ignored); an absolute path or ``..`` is refused.
  An image under both a normal and an abnormal folder is an error (only with ``abnormal_dirs``;
  by default a normal folder wins, as in ``bad/good/``);
* categories: when subfolders of the root each hold a normal folder, each such subfolder is a
  category (``root/bottle/good``, ``root/bottle/crack`` ...); otherwise the root is the one
  category, named after it. A ``test/`` (``split``) folder is stepped into;
* masks, optional, are found for each non-normal image, first match wins:
  1. *beside* the image: ``<stem>_mask.<ext>`` in the same folder (``mask_suffix`` changes
     ``_mask``); such files are masks, never images. A ``mask_suffix`` that starts with a dot
     (``".png"``) is the Magnetic-tile rule: ``x.jpg``'s mask is ``x.png`` in the same folder.
     Without it, two images sharing a stem in one folder are refused as ambiguous;
  2. in ``mask_dir`` (if given; at the image's relative subfolder, then flat), by stem;
  3. in ``<category>/masks/`` or ``<category>/ground_truth/`` (subfolder, then flat), by stem
     (``a.png`` <- ``masks/a.png`` or ``masks/a_mask.png``).
  Normal images never get a mask. :func:`where_masks_looked` says where a missing mask was sought.

``_folder_hints.label_hints`` (called by ``load_dataset``) says in one line when a set has no normal or no
anomalous images, or a defect folder whose masks are all empty (probably the normal one), and how to
fix it with ``--normal-dir``.
"""
from __future__ import annotations

import re
import warnings
from collections import Counter
from glob import escape as glob_escape
from pathlib import Path
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

from .base import (
    DatasetError, PathLike, SampleRecord, is_image_file, list_images, select_categories,
)

NAME = "folder"
CATEGORIES: tuple = ()  # the folder's own name, or its category subfolders
NORMAL_DIRS = ("good", "normal", "ok")
MASK_DIR = "masks"
MASK_DIRS = ("masks", "ground_truth")  # inside a category: never read as images
MASK_SUFFIX = "_mask"
LAYOUT = """\
my_images/                          <- root; its name becomes the category
  good/a.png ...                     normal (also: normal/, ok/; any depth; or --normal-dir NAME)
  scratch/b.png ...                  anomalous (any other folder, e.g. bad/crack/; or --abnormal-dir)
  scratch/b_mask.png ...             mask beside its image (<stem>_mask.*)   optional
  c.png ...                          label unknown (-1): predict only
  masks/b.png ...                    or masks in masks/ (or masks/scratch/, ground_truth/), by stem
or several categories:  my_images/{bottle,cable}/{good,crack}/...  (each with a normal folder)
or named folders, e.g. Magnetic-tile: MT_Free/Imgs/x.jpg + x.png, MT_Crack/Imgs/...
                        --normal-dir MT_Free --mask-suffix .png
or masks anywhere else: --mask-dir DIR (matched by stem, also DIR/<subfolder>/)"""


def _dirs(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


Names = Tuple[Tuple[str, ...], ...]  # folder-name paths, lower case: (("mt_free",), ("a", "imgs"))


def parse_dir_names(names: Union[None, str, Path, Iterable[Union[str, Path]]], what: str) -> Optional[Names]:
    """``normal_dirs`` / ``abnormal_dirs`` as lower-case name paths; None stays None (the default).

    A single string is one name (not its letters). ``MT_Free/`` and ``MT_Free/Imgs`` are fine (a
    path inside the data); an absolute path, ``~`` or ``..`` is a DatasetError naming ``what``.
    """
    if names is None:
        return None
    if isinstance(names, (str, Path)):
        names = [names]
    out = []
    for name in names:
        raw = str(name).strip()
        parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts or raw.startswith(("/", "~", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", raw):
            last = parts[-1] if parts and parts[-1] != ".." else "MT_Free"
            raise DatasetError(f"{what} {raw!r}: give a folder's name as it appears under the data root "
                               f"(e.g. {last}) or a path inside it (MT_Free/Imgs), not a path on disk; "
                               "it is matched at any depth, case ignored")
        out.append(tuple(p.lower() for p in parts))
    return tuple(dict.fromkeys(out))


def _shown(names: Names) -> str:
    return ", ".join("/".join(n) for n in names)


def _contains(parts: Sequence[str], name: Tuple[str, ...]) -> bool:
    k = len(name)
    return any(tuple(parts[i:i + k]) == name for i in range(len(parts) - k + 1))


class LabelRule(NamedTuple):
    """Which folders hold normal and which anomalous images (see the module docstring)."""

    normal: Names = tuple((n,) for n in NORMAL_DIRS)
    abnormal: Optional[Names] = None  # None: every folder that is not normal
    normal_given: bool = False  # the reader named the normal folders (the defaults were replaced)

    @classmethod
    def from_names(cls, normal_dirs=None, abnormal_dirs=None) -> "LabelRule":
        normal = parse_dir_names(normal_dirs, "normal_dirs (--normal-dir)")
        abnormal = parse_dir_names(abnormal_dirs, "abnormal_dirs (--abnormal-dir)")
        return cls(normal or cls._field_defaults["normal"], abnormal or None, bool(normal))  # [] = default

    def label(self, img: Path, rel_dirs: Sequence[str]) -> Optional[int]:
        """0 normal, 1 anomalous, -1 no folder (loose in the category folder), None named by neither."""
        if not rel_dirs:
            return -1
        parts = [d.lower() for d in rel_dirs]
        normal = [n for n in self.normal if _contains(parts, n)]
        if self.abnormal is None:
            return 0 if normal else 1
        abnormal = [n for n in self.abnormal if _contains(parts, n)]
        if normal and abnormal:
            raise DatasetError(f"folder: {img} lies under a normal folder ({_shown(normal)}) and an abnormal "
                               f"one ({_shown(abnormal)}); name folders that do not contain each other")
        return 0 if normal else 1 if abnormal else None


def _category_dirs(root: Path, skip: Sequence[Path], rule: LabelRule = LabelRule()) -> List[Path]:
    """Subfolders of ``root`` that each hold a normal folder; [root] when there are none."""
    firsts = {n[0] for n in rule.normal}
    cats = [d for d in _dirs(root) if d.name not in MASK_DIRS and d not in skip
            and any(s.name.lower() in firsts for s in _dirs(d))]
    return cats or [root]


def _layout(root: Path, split: str, skip: Sequence[Path], rule: LabelRule):
    """(outer folder above ``split/`` or None, the folder searched, {category: its folder})."""
    outer = None
    if (root / split).is_dir():
        outer, root = root, root / split
    cats = {(outer.name if d == root and outer is not None else d.name): d for d in _category_dirs(root, skip, rule)}
    return outer, root, cats


def _is_ext_rule(suffix: str) -> bool:
    return suffix.startswith(".")  # ".png": the mask is <stem>.png beside an image of another type


def _is_beside_mask(path: Path, suffix: str) -> bool:
    if _is_ext_rule(suffix):
        return path.suffix.lower() == suffix.lower() and any(
            q != path and q.suffix.lower() != suffix.lower() and is_image_file(q)
            for q in path.parent.glob(glob_escape(path.stem) + ".*"))
    return bool(suffix) and path.stem.lower().endswith(suffix.lower())


def _refuse_shared_stems(images: Sequence[Path]) -> None:
    """Two images with one stem in one folder (x.jpg, x.png) are ambiguous: often image + mask."""
    seen = {}
    for p in images:
        key = (p.parent, p.stem.lower())
        if key in seen:
            raise DatasetError(
                f"folder: {seen[key]} and {p} share a stem; if the {p.suffix} files are masks, pass "
                f"mask_suffix='{p.suffix.lower()}' (CLI: --mask-suffix {p.suffix.lower()}), else rename one.")
        seen[key] = p


def _images_under(cat_dir: Path, suffix: str, skip: Sequence[Path]) -> List[Path]:
    """Image files at any depth, excluding mask folders, ``skip`` folders and beside-masks."""
    out = []
    for p in sorted(cat_dir.rglob("*")):
        rel = p.relative_to(cat_dir).parts
        if any(part.startswith(".") for part in rel) or any(part in MASK_DIRS for part in rel[:-1]):
            continue
        if any(p == s or s in p.parents for s in skip):
            continue
        if p.is_file() and is_image_file(p) and not _is_beside_mask(p, suffix):
            out.append(p)
    _refuse_shared_stems(out)
    return sorted(out, key=lambda p: (len(p.relative_to(cat_dir).parts) > 1, p))  # loose images first


class _MaskIndex:
    """Each folder's image files by stem, listed once per search (a folder of N images costs N, not N^2)."""

    def __init__(self):
        self._by_dir = {}

    def stems(self, folder: Path):
        if folder not in self._by_dir:
            exact, lowered = {}, {}
            for m in list_images(folder):
                exact.setdefault(m.stem, []).append(m)
                lowered.setdefault(m.stem.lower(), []).append(m)
            self._by_dir[folder] = (exact, lowered)
        return self._by_dir[folder]

    def find(self, img: Path, folder: Path, suffixes: Sequence[str]) -> Optional[str]:
        """Like :func:`pair_by_stem` for one image: the first suffix that matches wins."""
        exact, lowered = self.stems(folder)
        for suffix in suffixes:
            found = exact.get(img.stem + suffix) or lowered.get((img.stem + suffix).lower())
            found = [f for f in (found or []) if f != img]
            if len(found) > 1:
                raise DatasetError(f"Image {img} matches several masks {[str(f) for f in found]}; keep one.")
            if found:
                return str(found[0])
        return None


def _find_mask(img: Path, cat_dir: Path, suffix: str, mask_dir: Optional[Path], index: _MaskIndex,
               outer: Optional[Path] = None) -> Optional[str]:
    stem_suffix = MASK_SUFFIX if (not suffix or _is_ext_rule(suffix)) else suffix
    suffixes = tuple(dict.fromkeys(("", stem_suffix, MASK_SUFFIX, "_label")))
    if _is_ext_rule(suffix):
        matches = [q for q in img.parent.glob(glob_escape(img.stem) + ".*") if q.suffix.lower() == suffix.lower()]
        if matches and matches[0] != img:
            return str(matches[0])
    elif suffix:
        beside = index.find(img, img.parent, (suffix,))
        if beside:
            return beside
    rel = img.parent.relative_to(cat_dir)
    places = [mask_dir / rel, mask_dir] if mask_dir is not None else []
    for base in (cat_dir, outer) if outer is not None else (cat_dir,):
        for name in MASK_DIRS:  # outer: the folder above test/ (MVTec's ground_truth/ sits there)
            places += [base / name / rel, base / name]
    for place in places:
        if place.is_dir() and place != img.parent:
            found = index.find(img, place, suffixes)
            if found:
                return found
    return None


def where_masks_looked(root: PathLike, mask_dir: Optional[PathLike] = None, mask_suffix: Optional[str] = None) -> str:
    """One sentence naming every place the folder format searched for a mask."""
    suffix = MASK_SUFFIX if mask_suffix is None else mask_suffix
    rule = f"<stem>{suffix}" if _is_ext_rule(suffix) else f"<stem>{suffix}.*"
    places = [f"beside each image as {rule}"] if suffix else []
    if mask_dir is not None:
        places.append(f"in {mask_dir} (and its subfolders)")
    places.append(f"in {Path(root)}/[<category>/]masks/ and ground_truth/ (and their subfolders)")
    return "looked " + "; ".join(places)


def find_samples(root: PathLike, categories: Optional[Iterable[str]] = None, split: str = "test",
                 mask_dir: Optional[PathLike] = None, mask_suffix: Optional[str] = None,
                 normal_dirs=None, abnormal_dirs=None) -> List[SampleRecord]:
    """Every image under ``root`` (any depth, mask folders excluded) with labels and masks by the rules above.

    Args:
        root: the folder (a ``{split}/`` folder inside it is stepped into).
        categories: category names to keep (the root's name, or its category subfolders).
        split: only used to step into ``root/{split}/`` when it exists.
        mask_dir: an extra folder holding masks, matched by stem (also at the image's subfolder).
        mask_suffix: the beside-the-image mask rule's suffix (default ``_mask``; ``""`` turns it off;
            ``".png"``: same stem, that extension).
        normal_dirs: names of the normal folders (default ``good``, ``normal``, ``ok``), replacing
            the defaults; a string is one name.
        abnormal_dirs: names of the defect folders (default: every folder that is not normal).

    Warns:
        UserWarning listing the folders left out because neither rule names them.
    """
    root = Path(root)
    rule = LabelRule.from_names(normal_dirs, abnormal_dirs)
    suffix = MASK_SUFFIX if mask_suffix is None else mask_suffix
    mask_dir = Path(mask_dir).expanduser() if mask_dir is not None else None
    if mask_dir is not None and not mask_dir.is_dir():
        raise DatasetError(f"folder: mask_dir {mask_dir} is not a directory")
    skip = [mask_dir] if mask_dir is not None else []
    outer, root, cat_dirs = _layout(root, split, skip, rule)
    records, index, left_out = [], _MaskIndex(), Counter()
    for cat in select_categories(categories, sorted(cat_dirs), NAME, root):
        cat_dir = cat_dirs[cat]
        for img in _images_under(cat_dir, suffix, skip):
            rel = img.parent.relative_to(cat_dir)
            label = rule.label(img, rel.parts)
            if label is None:
                left_out[str(img.parent.relative_to(root))] += 1
                continue
            mask = None if label == 0 else _find_mask(img, cat_dir, suffix, mask_dir, index, outer)
            records.append(SampleRecord(str(img), mask, label, cat, NAME))
    if left_out:
        shown = ", ".join(f"{d}/ ({n})" for d, n in sorted(left_out.items())[:8])
        more = f" and {len(left_out) - 8} more" if len(left_out) > 8 else ""
        warnings.warn(f"{root}: left out {sum(left_out.values())} images in folders named by neither "
                      f"--normal-dir ({_shown(rule.normal)}) nor --abnormal-dir ({_shown(rule.abnormal)}): "
                      f"{shown}{more}; name them in one of the two to use them", UserWarning, stacklevel=2)
    return records
