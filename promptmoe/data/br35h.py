"""Br35H: 3000 brain MR slices, ``yes`` (tumour) / ``no``; image-level labels only.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets). The Kaggle archive also has a ``pred/`` folder of
unlabelled images; it is ignored.
"""
from __future__ import annotations

from typing import Iterable, List, Optional

from .base import PathLike, SampleRecord
from .brainmri import find_yes_no

NAME = "br35h"
CATEGORIES = ("brain",)
EXPECTED_COUNTS = {"total": 3000, "anomalous": 1500}
LAYOUT = """\
Br35H/                              <- root
  yes/y0.jpg ...                     tumour = anomalous
  no/no0.jpg ...                     normal
  pred/ ...                          ignored (no labels)"""
INSTRUCTIONS = """\
Br35H: `kaggle datasets download -d ahmedhamada0/brain-tumor-detection`, unzip it and pass the
folder holding yes/ and no/ as root."""


def find_samples(root: PathLike, categories: Optional[Iterable[str]] = None, split: str = "test") -> List[SampleRecord]:
    """Br35H images; the whole set is the test set (``split`` is ignored)."""
    return find_yes_no(root, categories, NAME)
