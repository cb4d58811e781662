"""The torch Dataset every loader returns: resized, CLIP-normalised images with labels and masks.

Taught in chapter 1 (the data section). Records come from a format's ``find_samples``; files are
opened with :mod:`promptmoe.data.base`'s rules (EXIF, 16-bit, the documented mask threshold).
"""
from __future__ import annotations

import warnings
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .base import (
    CLIP_MEAN, CLIP_STD, DatasetError, SampleRecord, load_image, load_mask, resize_mask, select_categories,
)


class AnomalyDataset(torch.utils.data.Dataset):
    """Images (resized, CLIP-normalised), labels and masks from a list of :class:`SampleRecord`.

    Each item is a dict with anomalib's field names: ``image`` (3, S, S) float32, ``gt_label``
    int64 scalar, ``gt_mask`` (S, S) float32 in {0, 1} (zeros without a mask), ``has_mask`` bool,
    ``image_path``, ``mask_path`` ("" without a mask), ``category``, ``dataset``. With
    ``original_size=True`` also ``original_size`` = (H, W): masks are still returned at S so that
    batches stack; re-read them with :func:`load_mask` to score at the original resolution.
    ``mask_threshold`` (None = the module's rule) is passed to :func:`load_mask`. ``name`` is the
    reader's label of the set; :attr:`format` is the on-disk format the records came from.
    """

    def __init__(self, records: Sequence[SampleRecord], image_size: int, name: str = "",
                 original_size: bool = False, mask_threshold: Optional[float] = None):
        if len(records) == 0:
            raise DatasetError(f"Dataset {name!r} has no images: check the root folder and its layout.")
        if int(image_size) <= 0:
            raise DatasetError(f"image_size must be positive, got {image_size}")
        self._records = list(records)
        self.image_size = int(image_size)
        self.name = name or self._records[0].dataset
        self.original_size = original_size
        self.mask_threshold = mask_threshold
        self._mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self._records)

    @property
    def records(self) -> List[SampleRecord]:
        return list(self._records)

    @property
    def categories(self) -> List[str]:
        return sorted({r.category for r in self._records})

    @property
    def format(self) -> str:
        """The on-disk format of the records (``"mvtec"``, ``"folder"`` ...)."""
        return self._records[0].dataset

    def missing_masks(self) -> List[str]:
        """Paths of the anomalous images that have no mask file (their pixels cannot be scored)."""
        return [r.image_path for r in self._records if r.gt_label == 1 and not r.mask_path]

    @property
    def has_masks(self) -> bool:
        return any(r.mask_path for r in self._records)

    def _resized(self, img: Image.Image) -> Image.Image:
        # open_clip's eval transform is Resize(bicubic) + CenterCrop; we resize straight to S x S so
        # that no border of an image (and of its defect) is cropped away.
        return img.resize((self.image_size, self.image_size), Image.BICUBIC)

    def _mask_for(self, rec: SampleRecord, image_size_wh: Tuple[int, int]) -> np.ndarray:
        mask = load_mask(rec.mask_path, threshold=self.mask_threshold)
        if mask.shape[::-1] != tuple(image_size_wh):
            raise DatasetError(
                f"Mask {rec.mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                f"{rec.image_path} is {image_size_wh[0]}x{image_size_wh[1]}: the pair does not match."
            )
        return resize_mask(mask, self.image_size)

    def __getitem__(self, i: int) -> dict:
        rec = self._records[i]
        img = load_image(rec.image_path)
        pixels = torch.from_numpy(np.asarray(self._resized(img), dtype=np.float32) / 255.0)  # (S, S, 3)
        image = (pixels.permute(2, 0, 1) - self._mean) / self._std  # (3, S, S)
        if rec.mask_path:
            gt_mask = torch.from_numpy(self._mask_for(rec, img.size).astype(np.float32))  # (S, S)
        else:
            gt_mask = torch.zeros(self.image_size, self.image_size)
        item = {
            "image": image,
            "gt_label": torch.tensor(rec.gt_label, dtype=torch.int64),
            "gt_mask": gt_mask,
            "has_mask": torch.tensor(bool(rec.mask_path)),
            "image_path": rec.image_path,
            "mask_path": rec.mask_path or "",
            "category": rec.category,
            "dataset": rec.dataset,
        }
        if self.original_size:
            item["original_size"] = torch.tensor([img.size[1], img.size[0]], dtype=torch.long)  # (H, W)
        return item

    def display_image(self, i: int) -> np.ndarray:
        """The resized, unnormalised image as uint8 (S, S, 3), for plots."""
        return np.asarray(self._resized(load_image(self._records[i].image_path)), dtype=np.uint8)

    def counts(self) -> Dict[str, Dict[str, int]]:
        """Per category: normal / anomalous / with_mask counts (+ "unknown" where labels are -1)."""
        out: Dict[str, Dict[str, int]] = {}
        any_unknown = any(r.gt_label < 0 for r in self._records)
        for cat in self.categories:
            recs = [r for r in self._records if r.category == cat]
            labels = Counter(r.gt_label for r in recs)
            out[cat] = {"normal": labels[0], "anomalous": labels[1], "with_mask": sum(bool(r.mask_path) for r in recs)}
            if any_unknown:
                out[cat]["unknown"] = sum(n for lab, n in labels.items() if lab < 0)
        return out

    def summary(self) -> str:
        """A printable per-category table of counts with a total row."""
        counts = self.counts()
        cols = list(next(iter(counts.values())).keys())
        width = max(len("category"), len("total"), *(len(c) for c in counts))
        head = f"{'category':<{width}} " + " ".join(f"{c:>10}" for c in cols) + f" {'images':>8}"
        lines = [f"{self.name}: {len(self)} images, {len(counts)} categories, size {self.image_size}", head, "-" * len(head)]
        totals = dict.fromkeys(cols, 0)
        for cat, row in counts.items():
            n = len([r for r in self._records if r.category == cat])
            lines.append(f"{cat:<{width}} " + " ".join(f"{row[c]:>10}" for c in cols) + f" {n:>8}")
            for c in cols:
                totals[c] += row[c]
        lines += ["-" * len(head), f"{'total':<{width}} " + " ".join(f"{totals[c]:>10}" for c in cols) + f" {len(self):>8}"]
        return "\n".join(lines)

    def subset(self, categories: Union[str, Iterable[str]]) -> "AnomalyDataset":
        """A new dataset with only the given categories (same size and options)."""
        keep = set(select_categories(categories, self.categories, self.name, "this dataset"))
        recs = [r for r in self._records if r.category in keep]
        return AnomalyDataset(recs, self.image_size, self.name, self.original_size, self.mask_threshold)

    def check(self) -> int:
        """Open every image and mask (and compare their sizes); raise one DatasetError listing all bad files.

        Warns (UserWarning) naming the anomalous images whose mask file is empty at its own size.

        Returns:
            The number of images checked.
        """
        problems, empty = [], []
        for rec in self._records:
            try:
                size = load_image(rec.image_path).size
                if rec.mask_path:
                    mask = load_mask(rec.mask_path, threshold=self.mask_threshold)
                    self._mask_for(rec, size)
                    if rec.gt_label == 1 and not mask.any():
                        empty.append(rec.mask_path)
            except DatasetError as e:
                problems.append(str(e))
        if problems:
            raise DatasetError(f"{len(problems)} bad file(s) in {self.name}:\n  " + "\n  ".join(problems))
        if empty:
            warnings.warn(f"{self.name}: {len(empty)} anomalous image(s) have an all-zero mask (after the mask "
                          f"rule), e.g. {empty[:3]}; check the files or the mask_threshold.", UserWarning, stacklevel=2)
        return len(self._records)

    def __repr__(self) -> str:
        c = Counter(r.gt_label for r in self._records)
        return (
            f"AnomalyDataset(name={self.name!r}, images={len(self)}, normal={c[0]}, anomalous={c[1]}, "
            f"categories={len(self.categories)}, image_size={self.image_size}, has_masks={self.has_masks})"
        )
