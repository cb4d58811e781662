"""DTD-Synthetic: textures from DTD with synthetic defects, MVTec layout with ``good`` / ``bad``.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets).
"""
from __future__ import annotations

from typing import Iterable, List, Optional

from .base import PathLike, SampleRecord
from .mvtec import find_mvtec_layout

NAME = "dtd"
CATEGORIES = (
    "Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037",
    "Stratified_154", "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127",
)
EXPECTED_COUNTS = {"total": 1304, "anomalous": 947}
LAYOUT = """\
DTD-Synthetic/                      <- root
  Woven_001/
    test/good/000.png ...
    test/bad/000.png ...
    ground_truth/bad/000_mask.png ...
  Blotchy_099/ ...                   (12 categories)"""
INSTRUCTIONS = """\
DTD-Synthetic (Aota et al., WACV 2023): follow the download link in the AnomalyCLIP README
(https://github.com/zqhang/AnomalyCLIP, Google Drive), unzip it and pass the folder holding
Woven_001/ ... as root."""


def find_samples(root: PathLike, categories: Optional[Iterable[str]] = None, split: str = "test") -> List[SampleRecord]:
    """DTD-Synthetic images; ``good`` is normal, ``bad`` anomalous with ``*_mask.png`` masks."""
    return find_mvtec_layout(root, categories, split, NAME)
