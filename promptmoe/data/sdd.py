"""SDD (KolektorSDD), in the pre-split MVTec layout the zero-shot papers use.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets).
"""
from __future__ import annotations

from typing import Iterable, List, Optional

from .base import PathLike, SampleRecord
from .mvtec import find_mvtec_layout

NAME = "sdd"
CATEGORIES = ("electrical commutators",)
EXPECTED_COUNTS = {"total": 255, "anomalous": 74}
LAYOUT = """\
SDD/                                <- root
  electrical commutators/
    test/good/kos01_Part0.png ...
    test/defect/kos01_Part5.png ...
    ground_truth/defect/kos01_Part5.png  (or *_mask / *_label)"""
INSTRUCTIONS = """\
SDD: download KolektorSDD from https://www.vicos.si/resources/kolektorsdd/ and arrange its test
images as shown in LAYOUT (normal parts in test/good, defective in test/defect, their label
images in ground_truth/defect with the same stem)."""


def find_samples(root: PathLike, categories: Optional[Iterable[str]] = None, split: str = "test") -> List[SampleRecord]:
    """SDD images: ``good`` normal, ``defect`` anomalous."""
    return find_mvtec_layout(root, categories, split, NAME)
