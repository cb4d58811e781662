"""Polyp segmentation sets: CVC-ClinicDB, CVC-ColonDB, Kvasir-SEG and Endo (EndoTect).

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets). All four share one layout, ``images/`` + ``masks/``
paired by stem, and every image shows a polyp (all anomalous: pixel metrics only). They are four
registry entries but one loader, so each is a :class:`PolypFormat` object with the same
attributes a format module has (NAME, CATEGORIES, LAYOUT, EXPECTED_COUNTS, find_samples).
Kvasir's masks are JPEGs: the mask rule of :mod:`promptmoe.data.base` (``> 127`` for 8-bit masks)
keeps the drawn polyp and drops the compression ringing around it, which the peers' ``> 0`` keeps
(``load_mask(path, threshold=0)`` shows the difference).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from .base import PathLike, SampleRecord, list_images, pair_by_stem, select_categories

IMAGE_DIRS = ("images", "image", "original", "img")
MASK_DIRS = ("masks", "mask", "ground truth", "groundtruth", "gt")


def _find_pair(root: Path):
    # The images/masks pair may sit at root or one wrapper folder below (Kvasir-SEG/images ...).
    for d in [root] + sorted(p for p in root.iterdir() if p.is_dir()):
        subs = {s.name.lower(): s for s in d.iterdir() if s.is_dir()}
        img = next((subs[n] for n in IMAGE_DIRS if n in subs), None)
        if img is not None:
            return img, next((subs[n] for n in MASK_DIRS if n in subs), None)
    return None, None


@dataclass(frozen=True)
class PolypFormat:
    """One polyp dataset: its registry key, counts and download notes; ``find_samples`` is shared."""

    NAME: str
    DISPLAY: str
    EXPECTED_COUNTS: Dict[str, int]
    INSTRUCTIONS: str
    CATEGORIES: tuple = ("colon",)
    LAYOUT: str = field(default="""\
<dataset>/                          <- root (one wrapper folder such as Kvasir-SEG/ is accepted)
  images/1.png ...                   (CVC-ClinicDB's Original/ also accepted)
  masks/1.png ...                    same stem as the image; any image extension
                                     (CVC-ClinicDB's "Ground Truth/" also accepted)""")

    def find_samples(self, root: PathLike, categories: Optional[Iterable[str]] = None, split: str = "test") -> List[SampleRecord]:
        """All images (anomalous) with masks by stem; ``split`` is ignored (the whole set is test)."""
        root = Path(root)
        cat = select_categories(categories, self.CATEGORIES, self.NAME, root)[0]
        image_dir, mask_dir = _find_pair(root)
        images = list_images(image_dir) if image_dir else []
        masks = pair_by_stem(images, mask_dir) if mask_dir else [None] * len(images)
        return [SampleRecord(str(p), m, 1, cat, self.NAME) for p, m in zip(images, masks)]


CLINICDB = PolypFormat("clinicdb", "CVC-ClinicDB", {"total": 612, "anomalous": 612}, """\
CVC-ClinicDB: download from https://polyp.grand-challenge.org/CVCClinicDB/ (or Kaggle
balraj98/cvcclinicdb), and pass the folder holding images/ (Original/) and masks/ (Ground Truth/).""")
COLONDB = PolypFormat("colondb", "CVC-ColonDB", {"total": 380, "anomalous": 380}, """\
CVC-ColonDB: take the TestDataset/CVC-ColonDB folder of the PraNet test data
(https://github.com/DengPingFan/PraNet) and pass it as root (it holds images/ and masks/).""")
KVASIR = PolypFormat("kvasir", "Kvasir", {"total": 1000, "anomalous": 1000}, """\
Kvasir-SEG: download https://datasets.simula.no/downloads/kvasir-seg.zip, unzip it and pass
Kvasir-SEG/ as root (images/*.jpg, masks/*.jpg).""")
ENDO = PolypFormat("endo", "Endo", {"total": 200, "anomalous": 200}, """\
Endo (EndoTect 2020 segmentation test set): request it from https://endotect.com/ and arrange it
as images/ + masks/ with matching stems.""")
FORMATS = {f.NAME: f for f in (CLINICDB, COLONDB, KVASIR, ENDO)}
