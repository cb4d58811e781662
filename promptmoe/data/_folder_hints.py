"""One-line hints about a set's labels, said before any model work (issue 16).

Taught with the folder format (chapter 1's data section). A reader's own folders decide the labels,
so a wrong guess is silent: the Magnetic-tile set's defect-free ``MT_Free/`` read as anomalous
gave 0 normal images and undefined image metrics. :func:`label_hints` names such sets, with the fix:

* no normal images, or no anomalous ones (the folder format says which folders it found and which
  names count as normal; ``meta_json`` and other formats without the paper's counts say it plainly);
* a folder whose every mask is empty (folder format): its "anomalous" images have no defect
  pixels, so it is probably the defect-free folder. Masks are read only until one with
  foreground turns up, so a good folder costs one mask read.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .base import SampleRecord, load_mask
from . import folder

MAX_SHOWN = 8  # folders named in one hint line


def _listing(counts: Dict[str, int]) -> str:
    items = sorted(counts.items())
    shown = ", ".join(f"{name}/ {n}" for name, n in items[:MAX_SHOWN])
    return shown + (f" and {len(items) - MAX_SHOWN} more" if len(items) > MAX_SHOWN else "")


def _top_folders(records: Sequence[SampleRecord], searched: Path, cat_dirs: Dict[str, Path]) -> List[Optional[str]]:
    """Each record's folder directly below its category folder, as a path below the searched root
    (``MT_Free``, or ``bottle/crack`` with categories); None for a loose image."""
    out = []
    for r in records:
        cat_dir = cat_dirs[r.category]
        parts = Path(r.image_path).parent.relative_to(cat_dir).parts
        out.append((cat_dir / parts[0]).relative_to(searched).as_posix() if parts else None)
    return out


def _empty_mask_folders(records, tops, threshold) -> Dict[str, int]:
    """{folder: number of masks} for the folders whose anomalous images' masks are all empty."""
    masks = defaultdict(list)
    for r, top in zip(records, tops):
        if r.gt_label == 1 and r.mask_path and top is not None:
            masks[top].append(r.mask_path)
    return {top: len(paths) for top, paths in masks.items()
            if not any(load_mask(p, threshold=threshold).any() for p in paths)}  # stops at the first defect


def count_hints(label: str, records: Sequence[SampleRecord]) -> List[str]:
    """Any format: a line when the labelled images are all normal or all anomalous."""
    labels = Counter(r.gt_label for r in records)
    if labels[0] and labels[1] or not (labels[0] or labels[1]):
        return []
    missing = "normal" if not labels[0] else "anomalous"
    return [f"{label}: 0 {missing} images ({labels[0] + labels[1]} labelled): image AUROC and AP are "
            "undefined; check the root and the categories"]


def label_hints(label: str, records: Sequence[SampleRecord], root, split: str = "test", mask_dir=None,
                normal_dirs=None, abnormal_dirs=None, mask_threshold: Optional[float] = None) -> List[str]:
    """Folder format: hint lines (none when the labels look right), each with its fix.

    Args:
        label: the set's name in the report.
        records: what :func:`promptmoe.data.folder.find_samples` returned for these options.
        root, split, mask_dir, normal_dirs, abnormal_dirs: the options it was called with.
        mask_threshold: the mask rule (None: the documented one), for the empty-mask check.
    """
    rule = folder.LabelRule.from_names(normal_dirs, abnormal_dirs)
    skip = [Path(mask_dir).expanduser()] if mask_dir is not None else []
    _, searched, cat_dirs = folder._layout(Path(root), split, skip, rule)
    labelled = [r for r in records if r.gt_label in (0, 1)]
    if not labelled:
        return []  # images without labels: predict only (train and eval refuse them by name)
    tops = _top_folders(labelled, searched, cat_dirs)
    n_normal = sum(r.gt_label == 0 for r in labelled)
    n_anom = len(labelled) - n_normal
    empty = _empty_mask_folders(labelled, tops, mask_threshold)
    found = _listing(Counter(t for t in tops if t is not None))
    normal_names = folder._shown(rule.normal)
    if n_normal == 0:
        if rule.normal_given:
            why = f"--normal-dir {normal_names} matches no folder"
        else:
            why = f"only folders named {normal_names} count as normal"
        guess = ""
        if empty:
            top, n = max(empty.items(), key=lambda kv: kv[1])
            guess = f"; probably --normal-dir {Path(top).name} (all {n} masks in {top}/ are empty)"
        return [f"{label}: 0 normal images, so image AUROC and AP are undefined: {why} (found: {found}); "
                f"name the defect-free folder with "
                f"--normal-dir NAME (Python: normal_dirs=[NAME]){guess}"]
    if n_anom == 0:
        return [f"{label}: 0 anomalous images: all {n_normal} labelled images lie under a normal folder "
                f"({normal_names}; found: {found}), so image AUROC and AP are undefined; if some are "
                "defects, check --normal-dir (a name matches at any depth) or name the defect folders "
                "with --abnormal-dir NAME"]
    # the names replace the defaults: the fix names the normal folders in use too
    in_use = [n for n in rule.normal if any(folder._contains(
        [d.lower() for d in Path(r.image_path).parent.relative_to(cat_dirs[r.category]).parts], n)
        for r in labelled if r.gt_label == 0)]
    flags = " ".join(f"--normal-dir {'/'.join(n)}" for n in in_use)
    return [f"{label}: all {n} masks in {top}/ are empty, so its anomalous images have no defect pixels: "
            f"it is probably a defect-free folder; pass {flags} --normal-dir {Path(top).name}"
            for top, n in sorted(empty.items())]
