"""MVTec AD, and the MVTec folder layout that MPDD, BTAD, SDD, DTD-Synthetic and our synthetic set share.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets). The layout is
``{category}/{split}/{defect}/*.png`` with ``good`` as the normal folder and masks at
``{category}/ground_truth/{defect}/{stem}_mask.png``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional

from .base import DatasetError, PathLike, SampleRecord, list_images, pair_by_stem, select_categories

NAME = "mvtec"
CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
EXPECTED_COUNTS = {"total": 1725, "anomalous": 1258}
LAYOUT = """\
mvtec_anomaly_detection/            <- pass this folder as root
  bottle/
    train/good/000.png ...
    test/good/000.png ...
    test/broken_large/000.png ...
    ground_truth/broken_large/000_mask.png ...
  cable/ ...                         (15 categories)"""
URL = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/"
    "download/420938113-1629952094/mvtec_anomaly_detection.tar.xz"
)
SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"  # as listed by anomalib
INSTRUCTIONS = """\
MVTec AD (CC BY-NC-SA 4.0, 4.9 GB): accept the licence at
https://www.mvtec.com/company/research/datasets/mvtec-ad, download mvtec_anomaly_detection.tar.xz,
then `mkdir mvtec && tar -xf mvtec_anomaly_detection.tar.xz -C mvtec` and pass mvtec/ as root."""


def _subdirs(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_category_dirs(root: PathLike, split: str = "test") -> List[Path]:
    """Category folders under ``root``: the subfolders that contain a ``{split}/`` folder.

    Two common slips are accepted: ``root`` pointing at one category (it has ``{split}/`` itself),
    and one extra wrapper folder from an archive (``root/BTech_Dataset_transformed/01/...``).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = [d for d in _subdirs(root) if (d / split).is_dir()]
    if found:
        return found
    if (root / split).is_dir():
        return [root]
    subdirs = _subdirs(root)
    return find_category_dirs(subdirs[0], split) if len(subdirs) == 1 else []


def find_mvtec_layout(
    root: PathLike,
    categories: Optional[Iterable[str]] = None,
    split: str = "test",
    dataset: str = NAME,
    normal_dir: str = "good",
    mask_suffixes=("", "_mask", "_label", "_Segmentation", "_segmentation"),
) -> List[SampleRecord]:
    """Records for every image under ``{category}/{split}/{defect}/`` of an MVTec-style root.

    Args:
        root: the dataset folder (holding the category folders).
        categories: names to keep; None = every category folder found on disk.
        split: ``"test"`` (the zero-shot protocol trains and tests on test splits) or ``"train"``.
        dataset: name written into each record.
        normal_dir: the defect folder that holds normal images (``good``; BTAD uses ``ok``).
        mask_suffixes: tried after the image stem when pairing masks.

    Returns:
        Records sorted by category, defect folder and file name; masks only for anomalous images.
    """
    cat_dirs = {d.name: d for d in find_category_dirs(root, split)}
    records: List[SampleRecord] = []
    for cat in select_categories(categories, sorted(cat_dirs), dataset, root):
        cat_dir = cat_dirs[cat]
        for defect_dir in _subdirs(cat_dir / split):
            images = list_images(defect_dir)
            if defect_dir.name == normal_dir:
                masks = [None] * len(images)
            else:
                masks = pair_by_stem(images, cat_dir / "ground_truth" / defect_dir.name, mask_suffixes)
            label = 0 if defect_dir.name == normal_dir else 1
            records += [SampleRecord(str(p), m, label, cat, dataset) for p, m in zip(images, masks)]
    if records and not any(r.gt_label == 0 for r in records) and split == "test":
        names = sorted({Path(r.image_path).parent.name for r in records})
        raise DatasetError(
            f"{dataset}: no '{normal_dir}' folder under {root}/*/{split}/ (found {names}). "
            f"The normal images must sit in {split}/{normal_dir}/."
        )
    return records


def find_samples(root: PathLike, categories: Optional[Iterable[str]] = None, split: str = "test") -> List[SampleRecord]:
    """MVTec AD test (or train) images with masks paired by stem."""
    return find_mvtec_layout(root, categories, split, NAME)
