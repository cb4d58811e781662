"""MPDD (Metal Parts Defect Detection): the MVTec layout, 6 categories.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets).
"""
from __future__ import annotations

from typing import Iterable, List, Optional

from .base import PathLike, SampleRecord
from .mvtec import find_mvtec_layout

NAME = "mpdd"
CATEGORIES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")
EXPECTED_COUNTS = {"total": 458, "anomalous": 282}
LAYOUT = """\
MPDD/                               <- root
  bracket_black/
    test/good/000.png, test/hole/000.png ...
    ground_truth/hole/000_mask.png ...
  bracket_brown/ ... tubes/          (6 categories)"""
INSTRUCTIONS = """\
MPDD: download MPDD.zip from the link at https://github.com/stepanje/MPDD (Google Drive),
unzip it and pass the folder holding bracket_black/ ... tubes/ as root."""


def find_samples(root: PathLike, categories: Optional[Iterable[str]] = None, split: str = "test") -> List[SampleRecord]:
    """MPDD images; masks ``ground_truth/{defect}/{stem}_mask.png``."""
    return find_mvtec_layout(root, categories, split, NAME)
