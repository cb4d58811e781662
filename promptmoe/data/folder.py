"""A plain folder of a reader's own images, with optional masks.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets) and used by ``promptmoe predict``. Rules:

* images in subfolders get labels from the folder name: ``good`` / ``normal`` / ``ok`` -> 0,
  any other subfolder (``scratch``, ``bad``, ...) -> 1;
* images directly in the root have **no label** (``gt_label = -1``): such a folder can be scored
  and visualised, not evaluated (metrics need labels; move the images into ``good/`` and a defect
  folder for that);
* masks, optional, live in ``root/masks/`` (or ``root/masks/<subfolder>/``) and are matched by stem
  (``a.png`` <- ``masks/a.png`` or ``masks/a_mask.png``); normal images never get a mask.
The category is the folder's name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional

from .base import PathLike, SampleRecord, list_images, pair_by_stem, select_categories

NAME = "folder"
CATEGORIES: tuple = ()  # the folder's own name
NORMAL_DIRS = ("good", "normal", "ok")
MASK_DIR = "masks"
LAYOUT = """\
my_images/                          <- root; its name becomes the category
  good/a.png ...                     normal (also: normal/, ok/)          optional
  scratch/b.png ...                  anomalous (any other folder name)   optional
  c.png ...                          label unknown (-1): predict only
  masks/b_mask.png ...               optional, matched by stem (or masks/scratch/b.png)"""


def find_samples(root: PathLike, categories: Optional[Iterable[str]] = None, split: str = "test") -> List[SampleRecord]:
    """Every image in ``root`` and its subfolders (one level, ``masks/`` excluded); ``split`` is ignored."""
    root = Path(root)
    cat = select_categories(categories, (root.name,), NAME, root)[0]
    groups = [(root, -1)] + [
        (d, 0 if d.name.lower() in NORMAL_DIRS else 1)
        for d in sorted(root.iterdir())
        if d.is_dir() and d.name != MASK_DIR and not d.name.startswith(".")
    ]
    records = []
    for folder, label in groups:
        images = list_images(folder)
        masks = [None] * len(images)
        if label != 0:
            sub_masks = root / MASK_DIR / folder.name
            masks = pair_by_stem(images, sub_masks if folder != root and sub_masks.is_dir() else root / MASK_DIR)
        records += [SampleRecord(str(p), m, label, cat, NAME) for p, m in zip(images, masks)]
    return records
