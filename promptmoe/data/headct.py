"""HeadCT: 200 head CT slices, 100 with haemorrhage; image-level labels only.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets). Two layouts are accepted: the MVTec-style copy the
zero-shot papers use (``brain/test/{good,<abnormal>}``) and Kaggle's original
(``head_ct/*.png`` + ``labels.csv`` with columns ``id, hemorrhage``).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, List, Optional

from .base import DatasetError, PathLike, SampleRecord, is_image_file, select_categories
from .mvtec import find_category_dirs, find_mvtec_layout

NAME = "headct"
CATEGORIES = ("brain",)
EXPECTED_COUNTS = {"total": 200, "anomalous": 100}
LAYOUT = """\
HeadCT/                             <- root, either
  brain/test/good/*.png
  brain/test/<abnormal>/*.png
or (Kaggle "head-ct-hemorrhage")
  labels.csv                         columns: id, hemorrhage (1 = anomalous)
  head_ct/000.png ... 199.png        (possibly head_ct/head_ct/)"""
INSTRUCTIONS = """\
HeadCT: `kaggle datasets download -d felipekitamura/head-ct-hemorrhage`, unzip it and pass the
folder holding labels.csv as root."""


def _from_labels_csv(csv_path: Path, root: Path) -> List[SampleRecord]:
    images = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and is_image_file(p) and p.stem.isdigit():
            images.setdefault(int(p.stem), p)
    records = []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            if "id" not in row or "hemorrhage" not in row:
                raise DatasetError(f"{csv_path} needs the columns id and hemorrhage, found {sorted(row)}")
            image = images.get(int(row["id"]))
            if image is None:
                raise DatasetError(f"{csv_path} lists id {row['id']} but no image {int(row['id']):03d}.png under {root}")
            records.append(SampleRecord(str(image), None, int(row["hemorrhage"]), "brain", NAME))
    return records


def find_samples(root: PathLike, categories: Optional[Iterable[str]] = None, split: str = "test") -> List[SampleRecord]:
    """HeadCT images (all of Kaggle's 200 form the test set; there is no train split)."""
    root = Path(root)
    if find_category_dirs(root, split):
        return find_mvtec_layout(root, categories, split, NAME)
    select_categories(categories, CATEGORIES, NAME, root)
    csvs = sorted(root.rglob("labels.csv"))
    return _from_labels_csv(csvs[0], root) if csvs else []
