"""AnomalyCLIP's ``meta.json`` index, the format most zero-shot repositories generate.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets). Structure::

    {"train"|"test": {cls: [{"img_path", "mask_path", "cls_name", "specie_name", "anomaly"}]}}

Paths are relative to the root (the folder holding ``meta.json``) or absolute; some generators
write ``Test`` / ``Train``, so split keys are matched case-insensitively. An empty ``mask_path``
means no mask.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List, Optional

from .base import DatasetError, PathLike, SampleRecord, select_categories

NAME = "meta_json"
CATEGORIES: tuple = ()  # whatever the file lists
LAYOUT = """\
my_dataset/                         <- root
  meta.json                          {"test": {"bottle": [{"img_path": "bottle/test/good/000.png",
                                                           "mask_path": "", "cls_name": "bottle",
                                                           "specie_name": "good", "anomaly": 0}, ...]}}
  bottle/test/good/000.png ...       (paths relative to root, or absolute)"""
INSTRUCTIONS = "meta.json is written by the AnomalyCLIP / AdaCLIP data scripts or by hand; see LAYOUT."


def _resolve(root: Path, path: str) -> Optional[Path]:
    if not path:
        return None
    p = Path(path)
    return p if p.is_absolute() else root / p


def find_samples(root: PathLike, categories: Optional[Iterable[str]] = None, split: str = "test") -> List[SampleRecord]:
    """Records listed under ``split`` in ``root/meta.json`` (or ``root`` itself when it is the file)."""
    root = Path(root).expanduser()
    meta_path = root if root.is_file() else root / "meta.json"
    root = meta_path.parent
    if not meta_path.is_file():
        raise DatasetError(f"meta_json: no meta.json in {root} (pass the folder holding it, or the file itself)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{meta_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_path}: the top level must be an object {{\"test\": {{class: [entries]}}}}, "
                           f"got a JSON {type(meta).__name__}")
    keys = {k.lower(): k for k in meta}
    if split.lower() not in keys:
        raise DatasetError(f"{meta_path} has no {split!r} split; its top-level keys are {sorted(keys.values())}")
    by_class = meta[keys[split.lower()]]
    if not isinstance(by_class, dict):
        raise DatasetError(f"{meta_path}: {keys[split.lower()]!r} must map class names to lists of entries, "
                           f"got a JSON {type(by_class).__name__}")
    records, missing = [], []
    for cls in select_categories(categories, sorted(by_class), NAME, meta_path):
        if not isinstance(by_class[cls], list):
            raise DatasetError(f"{meta_path}: class {cls!r} must hold a list of entries, "
                               f"got a JSON {type(by_class[cls]).__name__}")
        for i, entry in enumerate(by_class[cls]):
            try:
                if not isinstance(entry, dict):
                    raise TypeError("not an object")
                image = _resolve(root, entry["img_path"])
                mask = _resolve(root, entry.get("mask_path") or "")
                label = int(entry["anomaly"])
                if label not in (0, 1):
                    raise ValueError(label)
            except (KeyError, TypeError, ValueError) as e:
                raise DatasetError(f"{meta_path}: entry {i} of {cls!r} needs img_path and anomaly (0/1): {entry}") from e
            missing += [str(p) for p in (image, mask) if p is not None and not p.is_file()]
            records.append(SampleRecord(str(image), str(mask) if mask else None, label, entry.get("cls_name") or cls, NAME))
    if missing:
        raise DatasetError(f"{len(missing)} file(s) listed in {meta_path} do not exist, e.g. {missing[:3]}")
    return records
