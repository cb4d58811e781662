"""DAGM 2007: ten synthetic texture classes; an image is anomalous exactly when it has a label file.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets). The labels are rough ellipses around each defect,
so pixel metrics on DAGM are coarser than on MVTec AD.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional

from .base import PathLike, SampleRecord, list_images, pair_by_stem, select_categories

NAME = "dagm"
CATEGORIES = tuple(f"Class{i}" for i in range(1, 11))
EXPECTED_COUNTS = {"total": 8050, "anomalous": 1054}
LAYOUT = """\
DAGM_KaggleUpload/                  <- root
  Class1/
    Train/0001.PNG ...   Train/Label/0002_label.PNG ...
    Test/0001.PNG ...    Test/Label/0002_label.PNG, Test/Label/Labels.txt
  Class2/ ... Class10/"""
INSTRUCTIONS = """\
DAGM 2007: download from https://www.kaggle.com/datasets/mhskjelvareid/dagm-2007-competition-dataset-optical-inspection
(`kaggle datasets download -d mhskjelvareid/dagm-2007-competition-dataset-optical-inspection`),
unzip it and pass the folder holding Class1/ ... Class10/ as root."""


def find_samples(root: PathLike, categories: Optional[Iterable[str]] = None, split: str = "test") -> List[SampleRecord]:
    """DAGM images of ``Class*/Test`` (split "test") or ``Class*/Train``; label file = anomalous."""
    root = Path(root)
    split_dir = split.capitalize()  # DAGM spells its folders Train / Test
    present = sorted((d.name for d in root.glob("Class*") if (d / split_dir).is_dir()), key=lambda n: (len(n), n))
    records = []
    for cat in select_categories(categories, present, NAME, root):
        images = list_images(root / cat / split_dir)
        labels = pair_by_stem(images, root / cat / split_dir / "Label", suffixes=("_label", ""))
        records += [SampleRecord(str(p), m, int(m is not None), cat, NAME) for p, m in zip(images, labels)]
    return records
