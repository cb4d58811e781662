"""ISIC 2016 (Part 1, lesion segmentation test set): every image shows a lesion, so all are anomalous.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets). With no normal images, image AUROC is undefined on
ISIC; only the pixel metrics are reported (as in the paper).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional

from .base import DatasetError, PathLike, SampleRecord, list_images, pair_by_stem, select_categories

NAME = "isic"
CATEGORIES = ("skin",)
EXPECTED_COUNTS = {"total": 379, "anomalous": 379}
LAYOUT = """\
ISIC2016/                           <- root
  ISBI2016_ISIC_Part1_Test_Data/ISIC_0000003.jpg ...
  ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png ...
  (ISBI2016_ISIC_Part1_Training_Data/ and _GroundTruth/ are used for split="train")"""
INSTRUCTIONS = """\
ISIC 2016: download ISBI2016_ISIC_Part1_Test_Data.zip and ISBI2016_ISIC_Part1_Test_GroundTruth.zip
from https://challenge.isic-archive.com/data/#2016, unzip both into one folder and pass it as root."""


def _folders(root: Path, masks: bool) -> List[Path]:
    dirs = [d for d in [root, *root.glob("*"), *root.glob("*/*")] if d.is_dir() and list_images(d)]
    return [d for d in dirs if ("groundtruth" in d.name.lower().replace("_", "").replace(" ", "")) == masks]


def _pick(dirs: List[Path], split: str, what: str, root: Path) -> Optional[Path]:
    if len(dirs) <= 1:
        return dirs[0] if dirs else None
    key = "test" if split == "test" else "train"
    chosen = [d for d in dirs if key in d.name.lower()]
    if len(chosen) != 1:
        raise DatasetError(f"ISIC: cannot tell which {what} folder under {root} is the {split} split: {[str(d) for d in dirs]}")
    return chosen[0]


def find_samples(root: PathLike, categories: Optional[Iterable[str]] = None, split: str = "test") -> List[SampleRecord]:
    """ISIC images (all anomalous) with ``*_Segmentation.png`` masks paired by stem."""
    root = Path(root)
    cat = select_categories(categories, CATEGORIES, NAME, root)[0]
    image_dir = _pick(_folders(root, masks=False), split, "image", root)
    if image_dir is None:
        return []
    mask_dir = _pick(_folders(root, masks=True), split, "ground-truth", root)
    images = list_images(image_dir)
    masks = pair_by_stem(images, mask_dir) if mask_dir else [None] * len(images)
    return [SampleRecord(str(p), m, 1, cat, NAME) for p, m in zip(images, masks)]
