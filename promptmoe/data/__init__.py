"""Datasets: one file per on-disk format, one registry, one loader.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets). Each format exposes ``NAME``, ``CATEGORIES``,
``LAYOUT``, ``EXPECTED_COUNTS`` (the paper's test-set counts, where known) and
``find_samples(root, categories=None, split="test") -> list[SampleRecord]``; :func:`load_dataset`
turns those records into an :class:`AnomalyDataset`::

    ds = load_dataset("mvtec", "~/data/mvtec", image_size=518)
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Iterable, Optional, Union

from . import btad, br35h, brainmri, dagm, dtd, folder, headct, isic, meta_json, mpdd, mvtec, polyp, sdd, visa
from .base import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_EXTENSIONS,
    AnomalyDataset,
    DatasetError,
    SampleRecord,
    load_image,
    load_mask,
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


def load_dataset(
    name: str,
    root: Union[str, Path],
    image_size: int,
    categories: Optional[Iterable[str]] = None,
    split: str = "test",
    original_size: bool = False,
    verbose: bool = True,
) -> AnomalyDataset:
    """Find a dataset's images under ``root`` and wrap them in an :class:`AnomalyDataset`.

    Args:
        name: a key of :data:`DATASETS` (``"mvtec"``, ``"visa"``, ``"folder"`` ...).
        root: the folder the format's ``LAYOUT`` starts from.
        image_size: side S of the square model input (518 for the paper).
        categories: category names to keep; None = all found.
        split: ``"test"`` (default; the zero-shot protocol uses test splits only) or ``"train"``.
        original_size: also return each image's (H, W).
        verbose: print the per-category table and the comparison with the paper's counts.

    Raises:
        DatasetError: unknown name, missing or empty root, unknown categories, or no images found;
            the message shows the expected layout.
    """
    fmt = get_format(name)
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"{name}: root {root} does not exist.\n{_layout_hint(fmt)}")
    if not root.is_dir():
        raise DatasetError(f"{name}: root {root} is not a directory.\n{_layout_hint(fmt)}")
    if not any(root.iterdir()):
        raise DatasetError(f"{name}: root {root} is empty.\n{_layout_hint(fmt)}")
    records = fmt.find_samples(root, categories, split)
    if not records:
        raise DatasetError(f"{name}: no {split} images found under {root}.\n{_layout_hint(fmt)}")
    ds = AnomalyDataset(records, image_size, name=name, original_size=original_size)
    if verbose:
        print(ds.summary())
        line = expected_counts_line(name, ds) if categories is None and split == "test" else None
        if line:
            print(line)
    return ds


__all__ = [
    "CLIP_MEAN", "CLIP_STD", "IMAGE_EXTENSIONS", "AnomalyDataset", "DatasetError", "SampleRecord",
    "DATASETS", "DISPLAY_NAMES", "PAPER_DATASETS", "get_format", "load_dataset", "load_image", "load_mask",
    "pair_by_stem", "resize_mask", "expected_counts_line",
]
