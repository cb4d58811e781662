"""Score a reader's own images: an anomaly score, a label at a threshold, and an overlay PNG.

Taught in chapter 6 (``promptmoe predict``). Works with a trained checkpoint; without one the
prompts are untrained and the caller is told so.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image

from .checkpoint import atomic_write
from .data import folder
from .data.base import AnomalyDataset, DatasetError, SampleRecord, is_image_file
from .evaluate import predict


def image_dataset(path, image_size: int) -> AnomalyDataset:
    """One image file, or a folder in the ``folder`` layout (labels from subfolders, if any)."""
    path = Path(path)
    if path.is_file():
        if not is_image_file(path):
            raise DatasetError(f"{path} is not an image file (expected one of png/jpg/bmp/tif)")
        records = [SampleRecord(str(path), None, -1, path.parent.name or "image", "folder")]
    elif path.is_dir():
        records = folder.find_samples(path)
    else:
        raise DatasetError(f"{path} does not exist: give an image file or a folder of images")
    if not records:
        raise DatasetError(f"no images found in {path}; expected layout:\n{folder.LAYOUT}")
    return AnomalyDataset(records, image_size, name="folder")


def score_images(model, path, out_dir, threshold: float = 0.5, batch_size: int = 8,
                 progress: bool = True, num_workers=None) -> pd.DataFrame:
    """Score every image under ``path``; write ``scores.csv`` and ``<stem>_overlay.png`` files.

    Returns:
        One row per image: image_path, pred_score, pred_label (score >= threshold), overlay.
    """
    from .plots import overlay  # matplotlib only when needed

    ds = image_dataset(path, model.config.image_size)
    pred = predict(model, ds, batch_size=batch_size, progress=progress, num_workers=num_workers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, rec in enumerate(ds.records):
        src = Path(rec.image_path)
        target = out / f"{src.parent.name}_{src.stem}_overlay.png"  # defect folders share stems
        if target.name in {r["overlay"] for r in rows}:
            target = out / f"{src.parent.name}_{src.stem}_{i}_overlay.png"
        img = overlay(ds.display_image(i), pred.maps[i])
        atomic_write(target, lambda tmp, a=img: Image.fromarray(a).save(tmp, format="PNG"))
        rows.append({"image_path": rec.image_path, "pred_score": float(pred.scores[i]),
                     "pred_label": int(pred.scores[i] >= threshold), "overlay": target.name})
    table = pd.DataFrame(rows)
    atomic_write(out / "scores.csv", lambda tmp: table.to_csv(tmp, index=False))
    return table


__all__ = ["image_dataset", "score_images"]
