"""Datasets: one file per on-disk format, one registry, one loader.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets). Each format exposes ``NAME``, ``CATEGORIES``,
``LAYOUT``, ``EXPECTED_COUNTS`` (the paper's test-set counts, where known) and
``find_samples(root, categories=None, split="test") -> list[SampleRecord]``; :func:`load_dataset`
turns those records into an :class:`AnomalyDataset`::

    ds = load_dataset("mvtec", "~/data/mvtec", image_size=518)

A reader names a set on the command line as ``NAME=ROOT`` (NAME is both the format and the label)
or ``LABEL=FORMAT:ROOT`` (``mine=folder:~/photos``); :func:`parse_data_spec` reads one such spec
and :func:`validate_data_specs` a list of them, before any model is built. ``load_dataset`` says
in one line (a warning, after the counts) when a set has no normal or no anomalous images, with the
fix; :func:`require_labels` refuses images without a label before training or evaluation.
"""
from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path
from typing import Iterable, List, NamedTuple, Optional, Sequence, Union

from . import btad, br35h, brainmri, dagm, dtd, folder, headct, isic, meta_json, mpdd, mvtec, polyp, sdd, visa
from .base import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_EXTENSIONS,
    AnomalyDataset,
    DatasetError,
    SampleRecord,
    CLASS_ID_MAX,
    load_image,
    load_mask,
    mask_foreground,
    pair_by_stem,
    resize_mask,
)


class _LazyFormat:
    """A registry entry whose module is imported on first use (keeps ``import promptmoe.data`` light)."""

    def __init__(self, module: str):
        self._module_name = module

    def __getattr__(self, attr):
        if attr.startswith("_"):  # copy / pickle probes must not trigger an import
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._module_name), attr)

    def __repr__(self) -> str:
        return f"<lazy dataset format {self._module_name}>"


# key -> module (or an object with a module's attributes: the polyp sets and the lazy synthetic entry)
DATASETS = {
    "mvtec": mvtec, "visa": visa, "mpdd": mpdd, "btad": btad, "sdd": sdd, "dagm": dagm, "dtd": dtd,
    "headct": headct, "brainmri": brainmri, "br35h": br35h, "isic": isic,
    **polyp.FORMATS,  # clinicdb, colondb, kvasir, endo
    "meta_json": meta_json, "folder": folder,
    "synthetic": _LazyFormat("promptmoe.data.synthetic"),  # the offline quick-mode data
}

# The 15 evaluation datasets in the order of the paper's Table 1.
PAPER_DATASETS = (
    "mvtec", "visa", "mpdd", "btad", "sdd", "dagm", "dtd", "headct", "brainmri", "br35h",
    "isic", "colondb", "clinicdb", "kvasir", "endo",
)
DISPLAY_NAMES = {
    "mvtec": "MVTec AD", "visa": "VisA", "mpdd": "MPDD", "btad": "BTAD", "sdd": "SDD", "dagm": "DAGM",
    "dtd": "DTD-Synthetic", "headct": "HeadCT", "brainmri": "BrainMRI", "br35h": "Br35H", "isic": "ISIC",
    "colondb": "CVC-ColonDB", "clinicdb": "CVC-ClinicDB", "kvasir": "Kvasir", "endo": "Endo",
}


def get_format(name: str):
    """The registry entry for ``name``; DatasetError listing the known names otherwise."""
    if name not in DATASETS:
        raise DatasetError(f"Unknown dataset {name!r}. Known: {sorted(DATASETS)}")
    return DATASETS[name]


def _layout_hint(fmt) -> str:
    return f"Expected layout for {fmt.NAME}:\n{fmt.LAYOUT}"


def expected_counts_line(name: str, ds: AnomalyDataset) -> Optional[str]:
    """One line comparing the images found with the paper's test-set counts (None when unknown)."""
    expected = getattr(get_format(name), "EXPECTED_COUNTS", None)
    if not expected:
        return None
    found = {"total": len(ds), "anomalous": sum(r.gt_label == 1 for r in ds.records)}
    ok = found == {k: expected[k] for k in found}
    verdict = "matches the paper" if ok else "differs from the paper's test set: check the download and the root"
    return (
        f"{DISPLAY_NAMES.get(name, name)}: found {found['total']} images ({found['anomalous']} anomalous), "
        f"expected {expected['total']} ({expected['anomalous']}): {verdict}"
    )


IMAGE_LEVEL_FORMATS = frozenset({"headct", "brainmri", "br35h"})  # no masks by design: no warning
FOLDER_ONLY_OPTIONS = ("mask_dir", "mask_suffix", "normal_dirs", "abnormal_dirs")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class DataSpec(NamedTuple):
    """One data set a reader names: its label (report rows, output folders), format and root."""

    label: str
    format: str
    root: Path


def parse_data_spec(spec: str) -> DataSpec:
    """Read ``NAME=ROOT`` (NAME is the format and the label) or ``LABEL=FORMAT:ROOT``.

    ``ROOT`` may itself contain ``:`` (``mvtec=/data/a:b``); a prefix before the first ``:`` counts
    as a format only when it is a known one. Raises DatasetError naming the spec for a missing
    ``=``, a bad label, an unknown format or a root that does not exist.
    """
    if not isinstance(spec, str) or "=" not in spec:
        raise DatasetError(f"data spec {spec!r} must be NAME=ROOT or LABEL=FORMAT:ROOT "
                           f"(e.g. mvtec=~/data/mvtec or mine=folder:~/photos)")
    label, rest = (x.strip() for x in spec.split("=", 1))
    fmt, root = None, rest
    if ":" in rest:
        head, tail = rest.split(":", 1)
        if head in DATASETS:
            fmt, root = head, tail
    if fmt is None:
        if label not in DATASETS:
            raise DatasetError(
                f"data spec {spec!r}: {label!r} is not a dataset format, so name one: "
                f"{label}=FORMAT:ROOT with FORMAT in {sorted(DATASETS)}")
        fmt = label
    if not _LABEL_RE.match(label):
        raise DatasetError(f"data spec {spec!r}: label {label!r} must be letters, digits and _.+- "
                           "(it names report rows and output folders)")
    if not root:
        raise DatasetError(f"data spec {spec!r} has no root folder after the format")
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"data spec {spec!r}: root {path} does not exist.\n{_layout_hint(get_format(fmt))}")
    return DataSpec(label, fmt, path)


def validate_data_specs(specs: Sequence[Union[str, DataSpec]]) -> List[DataSpec]:
    """Parse every spec; duplicate labels are an error (the same format under two labels is fine)."""
    parsed = [s if isinstance(s, DataSpec) else parse_data_spec(s) for s in specs]
    seen = {}
    for raw, ds in zip(specs, parsed):
        if ds.label in seen:
            raise DatasetError(f"data specs {seen[ds.label]!r} and {raw!r} both use the label {ds.label!r}; "
                               f"give each set its own label (LABEL=FORMAT:ROOT)")
        seen[ds.label] = raw
    return parsed


def _warn_missing_masks(label: str, fmt: str, ds: AnomalyDataset, root: Path, **mask_options) -> None:
    missing = ds.missing_masks()
    if not missing or fmt in IMAGE_LEVEL_FORMATS:
        return
    n_anom = sum(r.gt_label == 1 for r in ds.records)
    where = folder.where_masks_looked(root, **mask_options) if fmt == "folder" else _layout_hint(get_format(fmt))
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    warnings.warn(
        f"{label}: {len(missing)} of {n_anom} anomalous images have no mask ({shown}); they count for "
        f"the image metrics only and are excluded from the pixel metrics (column n_no_mask). {where}",
        UserWarning, stacklevel=3)


def load_dataset(
    name: str,
    root: Union[str, Path],
    image_size: Optional[int] = None,
    categories: Optional[Iterable[str]] = None,
    split: str = "test",
    mask_threshold: Optional[float] = None,
    mask_dir: Union[None, str, Path] = None,
    mask_suffix: Optional[str] = None,
    normal_dirs: Union[None, str, Sequence[str]] = None,
    abnormal_dirs: Union[None, str, Sequence[str]] = None,
    original_size: bool = False,
    verbose: bool = True,
    label: Optional[str] = None,
) -> AnomalyDataset:
    """Find a dataset's images under ``root`` and wrap them in an :class:`AnomalyDataset`.

    Args:
        name: the format, a key of :data:`DATASETS` (``"mvtec"``, ``"visa"``, ``"folder"`` ...).
        root: the folder the format's ``LAYOUT`` starts from (``meta_json``: also the file itself).
        image_size: side S of the square model input; None = the paper preset's (518).
        categories: category names to keep; None = all found.
        split: ``"test"`` (default; the zero-shot protocol uses test splits only) or ``"train"``.
        mask_threshold: None = the documented mask rule of :mod:`promptmoe.data.base` (class ids
            ``> 0``, else ``> 127`` for 8-bit); a number = foreground is raw value > it.
        mask_dir, mask_suffix: ``folder`` format only: an extra mask folder, and the suffix of masks
            stored beside their images (default ``_mask``).
        normal_dirs, abnormal_dirs: ``folder`` format only: the names of the normal folders
            (default ``good``, ``normal``, ``ok``; names given replace them) and of the defect
            folders (default: every other folder), matched at any depth, case ignored
            (``normal_dirs=["MT_Free"]``); see :mod:`promptmoe.data.folder`.
        original_size: also return each image's (H, W).
        verbose: print the per-category table and the comparison with the paper's counts.
        label: the reader's name for the set (report rows); default ``name``.

    Warns:
        UserWarning naming the anomalous images that have no mask and where masks were sought;
        one line when the set has no normal or no anomalous images (or, folder format, a folder
        whose masks are all empty), with the fix (``--normal-dir``); folder format: the folders
        named by neither ``normal_dirs`` nor ``abnormal_dirs`` (left out).

    Raises:
        DatasetError: unknown name, missing or empty root, unknown categories, or no images found;
            the message shows the expected layout.
    """
    fmt = get_format(name)
    if image_size is None:
        from ..config import PromptMoEConfig

        image_size = PromptMoEConfig.paper().image_size
    root = Path(root).expanduser()
    extra = {k: v for k, v in (("mask_dir", mask_dir), ("mask_suffix", mask_suffix), ("normal_dirs", normal_dirs),
                               ("abnormal_dirs", abnormal_dirs)) if v is not None}
    if extra and name != "folder":
        raise DatasetError(f"{name}: {' and '.join(extra)} only apply to the folder format")
    if mask_threshold is not None and not (0 <= float(mask_threshold) < 65535):
        raise DatasetError(f"mask_threshold must be in [0, 65535), got {mask_threshold!r}")
    if not root.exists():
        raise DatasetError(f"{name}: root {root} does not exist.\n{_layout_hint(fmt)}")
    if not root.is_dir() and not (name == "meta_json" and root.is_file()):
        raise DatasetError(f"{name}: root {root} is not a directory.\n{_layout_hint(fmt)}")
    if root.is_dir() and not any(root.iterdir()):
        raise DatasetError(f"{name}: root {root} is empty.\n{_layout_hint(fmt)}")
    records = fmt.find_samples(root, categories, split, **extra)
    if not records:
        raise DatasetError(f"{name}: no {split} images found under {root}.\n{_layout_hint(fmt)}")
    ds = AnomalyDataset(records, image_size, name=label or name, original_size=original_size,
                        mask_threshold=mask_threshold)
    masks = {k: v for k, v in extra.items() if k in ("mask_dir", "mask_suffix")}
    _warn_missing_masks(label or name, name, ds, root, **masks)
    if verbose:
        print(ds.summary())
        line = expected_counts_line(name, ds) if categories is None and split == "test" else None
        if line:
            print(line)
    if split == "test":  # a train split may hold normal images only (MVTec AD's does)
        from ._folder_hints import count_hints, label_hints

        if name == "folder":
            hints = label_hints(label or name, records, root, split, mask_dir, normal_dirs, abnormal_dirs,
                                mask_threshold)
        else:  # the paper's sets are checked against their known counts (ISIC etc. are all anomalous)
            hints = [] if getattr(fmt, "EXPECTED_COUNTS", None) else count_hints(label or name, records)
        for hint in hints:
            warnings.warn(hint, UserWarning, stacklevel=2)
    return ds


def require_labels(ds, task: str) -> None:
    """DatasetError naming the images without a label (directly in a folder root) before ``task``.

    Such images can be scored (``promptmoe predict``), not trained on or evaluated: a label comes
    from the folder an image lies in. Objects without ``records`` are let through.
    """
    loose = [r.image_path for r in getattr(ds, "records", []) if r.gt_label not in (0, 1)]
    if not loose:
        return
    shown = ", ".join(loose[:3]) + (f" and {len(loose) - 3} more" if len(loose) > 3 else "")
    masks = ", with a mask each (<stem>_mask.png beside it, --mask-suffix, --mask-dir)" if task == "training" else ""
    raise DatasetError(
        f"{getattr(ds, 'name', 'data')}: {len(loose)} of {len(ds)} images have no label ({shown}): they lie "
        f"directly in the data root, and {task} needs each image in a folder that says its label: "
        f"ROOT/good/ (or a folder named by --normal-dir) for normal images, any other folder (or "
        f"--abnormal-dir) for defects{masks}; promptmoe predict scores unlabelled images")


def load_spec(spec: Union[str, DataSpec], image_size: Optional[int] = None, **options) -> AnomalyDataset:
    """:func:`load_dataset` for one ``NAME=ROOT`` / ``LABEL=FORMAT:ROOT`` spec (label kept)."""
    spec = spec if isinstance(spec, DataSpec) else parse_data_spec(spec)
    return load_dataset(spec.format, spec.root, image_size, label=spec.label, **options)


__all__ = [
    "CLIP_MEAN", "CLIP_STD", "CLASS_ID_MAX", "IMAGE_EXTENSIONS", "AnomalyDataset", "DatasetError", "SampleRecord",
    "DataSpec", "parse_data_spec", "validate_data_specs", "load_spec", "mask_foreground",
    "DATASETS", "DISPLAY_NAMES", "PAPER_DATASETS", "get_format", "load_dataset", "load_image", "load_mask",
    "pair_by_stem", "resize_mask", "expected_counts_line", "require_labels",
]
