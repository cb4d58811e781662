"""VisA (Visual Anomaly), read through the official ``split_csv/1cls.csv``.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets). VisA masks store small class ids (1, 2, ...),
so they look black in a viewer: :func:`promptmoe.data.base.load_mask` binarises them with ``> 0`` (its class-id rule).
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Iterable, List, Optional

from .base import DatasetError, PathLike, SampleRecord, list_images, pair_by_stem, select_categories
from .mvtec import find_category_dirs, find_mvtec_layout

NAME = "visa"
CATEGORIES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
    "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)
EXPECTED_COUNTS = {"total": 2162, "anomalous": 1200}
LAYOUT = """\
VisA/                               <- root (the extracted VisA_20220922.tar)
  split_csv/1cls.csv                 columns: object,split,label,image,mask
  candle/
    Data/Images/Normal/0000.JPG ...
    Data/Images/Anomaly/000.JPG ...
    Data/Masks/Anomaly/000.png ...   (class ids 1, 2, ...: they look black)
  capsules/ ...                      (12 categories)
Also accepted: the MVTec-style copy that VisA's prepare_data.py writes ({cls}/test/good ...)."""
URL = "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar"
SHA256 = None  # the publishers give none (anomalib checks an MD5 only)
INSTRUCTIONS = f"""\
VisA (CC BY 4.0, 1.8 GB): download {URL}, extract it with `tar -xf VisA_20220922.tar -C VisA`
and pass VisA/ as root. If split_csv/1cls.csv is missing, take it from
https://github.com/amazon-science/spot-diff/tree/main/split_csv."""

CSV_CANDIDATES = ("split_csv/1cls.csv", "1cls.csv")


def _from_csv(csv_path: Path, root: Path, categories, split: str) -> List[SampleRecord]:
    with open(csv_path, newline="") as f:
        rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(f)]
    missing_cols = {"object", "split", "label", "image", "mask"} - set(rows[0] if rows else {})
    if missing_cols:
        raise DatasetError(f"{csv_path} lacks the columns {sorted(missing_cols)}; expected object,split,label,image,mask")
    wanted = select_categories(categories, sorted({r["object"] for r in rows}), NAME, root)
    records, missing = [], []
    for r in rows:
        if r["object"] not in wanted or r["split"] != split:
            continue
        label = 0 if r["label"] == "normal" else 1
        image = root / r["image"]
        mask = root / r["mask"] if r["mask"] and label == 1 else None
        missing += [str(p) for p in (image, mask) if p is not None and not p.is_file()]
        records.append(SampleRecord(str(image), str(mask) if mask else None, label, r["object"], NAME))
    if missing:
        raise DatasetError(
            f"{len(missing)} file(s) listed in {csv_path} do not exist, e.g. {missing[:3]}. Root should be the "
            f"folder that holds split_csv/ and the category folders."
        )
    return records


def _from_raw_folders(root: Path, categories) -> List[SampleRecord]:
    cats = sorted(d.name for d in root.iterdir() if (d / "Data" / "Images").is_dir())
    records = []
    for cat in select_categories(categories, cats, NAME, root):
        images_dir = root / cat / "Data" / "Images"
        normal = list_images(images_dir / "Normal")
        anomalous = list_images(images_dir / "Anomaly")
        masks = pair_by_stem(anomalous, root / cat / "Data" / "Masks" / "Anomaly")
        records += [SampleRecord(str(p), None, 0, cat, NAME) for p in normal]
        records += [SampleRecord(str(p), m, 1, cat, NAME) for p, m in zip(anomalous, masks)]
    if records:
        warnings.warn(
            f"VisA: no split_csv/1cls.csv under {root}; using every image of Data/Images (train and test "
            f"together), so counts will not match the paper's test split."
        )
    return records


def find_samples(root: PathLike, categories: Optional[Iterable[str]] = None, split: str = "test") -> List[SampleRecord]:
    """VisA images of one split from ``1cls.csv``; falls back to an MVTec-style copy, then raw folders."""
    root = Path(root)
    for rel in CSV_CANDIDATES:
        if (root / rel).is_file():
            return _from_csv(root / rel, root, categories, split)
    if find_category_dirs(root, split):
        return find_mvtec_layout(root, categories, split, NAME)
    return _from_raw_folders(root, categories)
