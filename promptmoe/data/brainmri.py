"""BrainMRI: brain MR slices sorted into ``yes`` (tumour) and ``no``; image-level labels only.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets). :func:`find_yes_no` is shared with Br35H.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional

from .base import PathLike, SampleRecord, list_images, select_categories

NAME = "brainmri"
CATEGORIES = ("brain",)
EXPECTED_COUNTS = {"total": 253, "anomalous": 155}
LAYOUT = """\
BrainMRI/                           <- root (or a parent of the yes/no pair, e.g. brain_tumor_dataset/)
  yes/Y1.jpg ...                     tumour = anomalous
  no/1 no.jpeg ...                   normal"""
INSTRUCTIONS = """\
BrainMRI: `kaggle datasets download -d navoneel/brain-mri-images-for-brain-tumor-detection`,
unzip it and pass the folder holding yes/ and no/ as root."""


def _yes_no_dir(root: Path) -> Optional[Path]:
    # The shallowest folder holding both yes/ and no/: Kaggle's BrainMRI zip has that pair twice
    # (top level and brain_tumor_dataset/), and taking both would count every image twice.
    for d in [root] + sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: (len(p.parts), str(p))):
        if (d / "yes").is_dir() and (d / "no").is_dir():
            return d
    return None


def find_yes_no(root: PathLike, categories, dataset: str, category: str = "brain") -> List[SampleRecord]:
    """Records from ``yes/`` (anomalous) and ``no/`` (normal); any other folder (``pred/``) is ignored."""
    root = Path(root)
    select_categories(categories, (category,), dataset, root)
    folder = _yes_no_dir(root)
    if folder is None:
        return []
    return [SampleRecord(str(p), None, 0, category, dataset) for p in list_images(folder / "no")] + [
        SampleRecord(str(p), None, 1, category, dataset) for p in list_images(folder / "yes")
    ]


def find_samples(root: PathLike, categories: Optional[Iterable[str]] = None, split: str = "test") -> List[SampleRecord]:
    """BrainMRI images; the whole set is the test set (``split`` is ignored)."""
    return find_yes_no(root, categories, NAME)
