"""Score a reader's own images: an anomaly score, a label at a threshold, and an overlay PNG.

Taught in chapter 6 (``promptmoe predict``). Works with a trained checkpoint; without one the
prompts are untrained and the caller is told so. Inputs may be several image files, folders (the
``folder`` layout: labels from subfolders, masks skipped) and glob patterns at once. Each overlay
(and each saved map) is written at the image's *original* size and aspect ratio: the model's
S x S map is resized back with bilinear interpolation. ``scores.csv`` names the input each image
came from.
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterable, List, Optional, Tuple, Union

import numpy as np
import pandas as pd
from PIL import Image

from .checkpoint import atomic_write
from .data import folder
from .data.base import AnomalyDataset, DatasetError, SampleRecord, is_image_file, load_image
from .evaluate import check_finite, predict

Inputs = Union[str, Path, Iterable[Union[str, Path]]]
_GLOB_CHARS = set("*?[")


def _as_list(inputs: Inputs) -> List[str]:
    if isinstance(inputs, (str, Path)):
        return [str(inputs)]
    items = [str(i) for i in inputs]
    if not items:
        raise DatasetError("no inputs given: pass image files, folders or glob patterns")
    return items


def _records(inputs: Inputs, mask_dir=None, mask_suffix: Optional[str] = None) -> List[Tuple[str, SampleRecord]]:
    """(input as given, record) for every image, in input order, each file once."""
    out, seen = [], set()
    for item in _as_list(inputs):
        path = Path(item).expanduser()
        if path.is_file():
            if not is_image_file(path):
                raise DatasetError(f"input {item}: not an image file (expected one of png/jpg/bmp/tif/webp)")
            recs = [SampleRecord(str(path), None, -1, path.parent.name or "image", "folder")]
        elif path.is_dir():
            recs = folder.find_samples(path, mask_dir=mask_dir, mask_suffix=mask_suffix)
            if not recs:
                raise DatasetError(f"input {item}: no images found in this folder; expected layout:\n{folder.LAYOUT}")
        elif _GLOB_CHARS & set(item):
            matches = sorted(m for m in glob.glob(str(path), recursive=True) if Path(m).is_file() and is_image_file(m))
            if not matches:
                raise DatasetError(f"input {item}: the pattern matches no image file")
            recs = [SampleRecord(m, None, -1, Path(m).parent.name or "image", "folder") for m in matches]
        else:
            raise DatasetError(f"input {item} does not exist: give image files, folders or glob patterns")
        for r in recs:
            key = str(Path(r.image_path).resolve())
            if key not in seen:
                seen.add(key)
                out.append((item, r))
    return out


def collect_inputs(inputs: Inputs, mask_dir=None, mask_suffix: Optional[str] = None) -> List[Path]:
    """Every image named by ``inputs`` (files, folders, globs), in order, each once (``mask_dir`` and
    ``mask_suffix`` as in :func:`score_images`: files that are masks are not inputs).

    Raises:
        DatasetError naming the input that does not exist, is not an image, or holds no image.
    """
    return [Path(r.image_path) for _, r in _records(inputs, mask_dir, mask_suffix)]


def image_dataset(path: Inputs, image_size: int, mask_threshold: Optional[float] = None,
                  mask_dir=None, mask_suffix: Optional[str] = None) -> AnomalyDataset:
    """The images named by ``path`` (one or several files, folders, globs) as a dataset."""
    records = [r for _, r in _records(path, mask_dir, mask_suffix)]
    return AnomalyDataset(records, image_size, name="folder", mask_threshold=mask_threshold)


def resize_map(amap: np.ndarray, size_hw: Tuple[int, int]) -> np.ndarray:
    """An (S, S) anomaly map resized to the original (H, W) (bilinear, float32)."""
    h, w = size_hw
    if amap.shape == (h, w):
        return amap.astype(np.float32)
    return np.asarray(Image.fromarray(amap.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))


def _save_npy(path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array)


# folders that hold images but say nothing about them (MTD's MT_Blowhole/Imgs, VOC's JPEGImages):
# an overlay is named after the first folder above them instead
CONTAINER_FOLDERS = frozenset({"imgs", "img", "images", "image", "jpegimages", "pictures", "photos",
                               "pics", "rgb"})


def _unique_name(src: Path, i: int, taken: set) -> str:
    """``<folder>_<stem>`` for an overlay: defect folders share stems (000.png in every one)."""
    folder = next((p.name for p in src.parents if p.name and p.name.lower() not in CONTAINER_FOLDERS), "")
    base = f"{folder}_{src.stem}" if folder else src.stem  # a file in the current folder: its stem
    name, k = base, i
    while name in taken:  # "<base>_<i>", and further if even that name is taken
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def score_images(model, inputs: Inputs, out_dir, threshold: float = 0.5, batch_size: int = 8,
                 progress: bool = True, mask_threshold: Optional[float] = None, mask_dir=None,
                 mask_suffix: Optional[str] = None, save_maps: bool = False, num_workers=None) -> pd.DataFrame:
    """Score every image named by ``inputs``; write ``scores.csv`` and ``<name>_overlay.png`` files.

    Args:
        inputs: an image file, a folder, a glob pattern, or a list of them.
        threshold: pred_label = score >= threshold.
        mask_threshold, mask_dir, mask_suffix: the ``folder`` mask options (masks are not scored,
            but files that are masks are kept out of the inputs).
        save_maps: also write each map as ``<name>_map.npy`` (float16, original H x W).
        num_workers: data loader workers (None: the machine's default, see promptmoe.loading).

    Returns:
        One row per image: input (as given), image_path, width, height, pred_score, pred_label,
        overlay (and map).
    """
    from tqdm.auto import tqdm

    from .plots import overlay  # matplotlib only when needed

    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    pairs = _records(inputs, mask_dir, mask_suffix)
    ds = AnomalyDataset([r for _, r in pairs], model.config.image_size, name="folder", mask_threshold=mask_threshold)
    pred = predict(model, ds, batch_size=batch_size, progress=progress, num_workers=num_workers)
    check_finite(pred)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, taken = [], set()
    for i, (given, rec) in enumerate(tqdm(pairs, desc="writing overlays", disable=not progress, leave=False)):
        src = Path(rec.image_path)
        image = np.asarray(load_image(src), dtype=np.uint8)  # (H, W, 3), EXIF-upright as scored
        amap = resize_map(pred.maps[i], image.shape[:2])  # (H, W)
        name = _unique_name(src, i, taken)
        target = out / f"{name}_overlay.png"
        img = overlay(image, amap)
        atomic_write(target, lambda tmp, a=img: Image.fromarray(a).save(tmp, format="PNG"))
        row = {"input": given, "image_path": rec.image_path, "width": image.shape[1], "height": image.shape[0],
               "pred_score": float(pred.scores[i]), "pred_label": int(pred.scores[i] >= threshold),
               "overlay": target.name}
        if save_maps:
            map_path = out / f"{name}_map.npy"
            atomic_write(map_path, lambda tmp, a=amap: _save_npy(tmp, a.astype(np.float16)))
            row["map"] = map_path.name
        rows.append(row)
    table = pd.DataFrame(rows)
    atomic_write(out / "scores.csv", lambda tmp: table.to_csv(tmp, index=False))
    return table


__all__ = ["collect_inputs", "image_dataset", "resize_map", "score_images"]
