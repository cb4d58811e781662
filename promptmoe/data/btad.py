"""BTAD (BeanTech Anomaly Detection): the MVTec layout with ``ok`` / ``ko`` folders.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets). Masks are ``.png`` for some products and
``.bmp`` for others; pairing by stem handles both.
"""
from __future__ import annotations

from typing import Iterable, List, Optional

from .base import PathLike, SampleRecord
from .mvtec import find_mvtec_layout

NAME = "btad"
CATEGORIES = ("01", "02", "03")
EXPECTED_COUNTS = {"total": 741, "anomalous": 290}
LAYOUT = """\
BTech_Dataset_transformed/          <- root (one wrapper folder above it is accepted)
  01/
    train/ok/0000.bmp ...
    test/ok/0000.bmp, test/ko/0000.bmp ...
    ground_truth/ko/0000.png  (or .bmp)
  02/ 03/"""
URL = "https://avires.dimi.uniud.it/papers/btad/btad.zip"
SHA256 = None  # no checksum published by the authors
INSTRUCTIONS = f"""\
BTAD: download {URL}, unzip it and pass BTech_Dataset_transformed/ as root."""


def find_samples(root: PathLike, categories: Optional[Iterable[str]] = None, split: str = "test") -> List[SampleRecord]:
    """BTAD images: ``ok`` normal, ``ko`` anomalous, masks in ``ground_truth/ko/`` by stem."""
    return find_mvtec_layout(root, categories, split, NAME, normal_dir="ok")
