"""Shared pieces of every dataset loader: records, robust image/mask reading (the torch Dataset: dataset.py).

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets). Every on-disk format (``mvtec.py``, ``visa.py``, ...)
only *finds* files and returns a list of :class:`SampleRecord`; everything that opens a file lives
here, so one set of rules (RGB conversion with EXIF orientation, mask binarisation, CLIP
normalisation) holds for all 15 datasets.

Mask rule (:func:`mask_foreground`): a mask whose largest value is at most ``CLASS_ID_MAX`` (31)
holds class ids (VisA's 1, 2, 3 look black in a viewer) and its foreground is ``> 0``; any other
mask is an intensity mask and its foreground is ``> 127`` (8-bit values) or ``> 32767`` (values above
255: 16-bit), half its bit depth's range, so JPEG ringing (faint values around an edge) and
anti-aliasing do not grow the foreground. Palette masks use their colours, ``> 0``. A reader's
``mask_threshold`` replaces the rule: foreground is ``value > mask_threshold`` (0: the peers' ``> 0``).

Images larger than ``MAX_IMAGE_PIXELS`` (PIL's decompression-bomb limit, 89.5 Mpx) are refused with
a DatasetError naming the file; opt in to larger ones with the environment variable
``PROMPTMOE_MAX_IMAGE_PIXELS`` (a pixel count, or ``0`` for no limit).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

# open_clip's OPENAI_DATASET_MEAN / OPENAI_DATASET_STD: the statistics CLIP was trained with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

PathLike = Union[str, Path]
CLASS_ID_MAX = 31  # a mask whose largest value is <= this holds class ids: foreground is > 0
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # PIL's default decompression-bomb limit


class DatasetError(ValueError):
    """A dataset root, image or mask that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class SampleRecord:
    """One test (or train) image as found on disk; nothing is opened yet."""

    image_path: str
    mask_path: Optional[str]  # None: no pixel annotation (normal image, or image-level-only data)
    gt_label: int  # 0 normal, 1 anomalous, -1 unknown (a plain folder used for prediction only)
    category: str
    dataset: str


def is_image_file(path: PathLike) -> bool:
    """True for a non-hidden file whose extension (any case) is in IMAGE_EXTENSIONS."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def list_images(folder: PathLike) -> List[Path]:
    """Image files directly inside ``folder``, sorted by name; [] when the folder does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def pair_by_stem(
    image_paths: Sequence[PathLike],
    mask_dir: PathLike,
    suffixes: Sequence[str] = ("", "_mask", "_label", "_Segmentation", "_segmentation"),
) -> List[Optional[str]]:
    """Find each image's mask in ``mask_dir`` by file stem (plus an optional suffix), never by index.

    Sorted-index pairing silently misaligns as soon as one mask is missing or names sort differently
    (``10.png`` before ``2.png``); matching stems cannot.

    Args:
        image_paths: images to pair.
        mask_dir: folder holding the masks (may be missing: every entry is then None).
        suffixes: tried in order after the image stem, e.g. ``000`` -> ``000_mask.png``.

    Returns:
        One mask path (str) or None per image, in the order of ``image_paths``.
    """
    by_stem: Dict[str, List[Path]] = {}
    for m in list_images(mask_dir):
        by_stem.setdefault(m.stem, []).append(m)
    lowered = {k.lower(): v for k, v in by_stem.items()}
    out: List[Optional[str]] = []
    for img in image_paths:
        stem, found = Path(img).stem, None
        for suffix in suffixes:
            found = by_stem.get(stem + suffix) or lowered.get((stem + suffix).lower())
            if found:
                break
        if found and len(found) > 1:
            raise DatasetError(f"Image {img} matches several masks {[str(f) for f in found]}; keep one.")
        out.append(str(found[0]) if found else None)
    return out


def select_categories(
    requested: Optional[Iterable[str]], available: Sequence[str], dataset: str, root: PathLike
) -> List[str]:
    """Validate requested categories against those present; None means all of them."""
    available = list(available)
    if requested is None:
        return available
    requested = [requested] if isinstance(requested, str) else list(requested)
    unknown = [c for c in requested if c not in available]
    if unknown:
        raise DatasetError(
            f"{dataset}: unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown} under {root}. "
            f"Available: {sorted(available)}"
        )
    return requested


def max_image_pixels() -> Optional[int]:
    """The largest image (pixels) we open: ``PROMPTMOE_MAX_IMAGE_PIXELS`` if set (0 = no limit)."""
    raw = os.environ.get("PROMPTMOE_MAX_IMAGE_PIXELS", "").strip()
    if not raw:
        return MAX_IMAGE_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise DatasetError(f"PROMPTMOE_MAX_IMAGE_PIXELS must be a pixel count (0 = no limit), got {raw!r}") from None
    return None if value <= 0 else value


def _open(path: PathLike) -> Image.Image:
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size ourselves
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        w, h = img.size
        if limit is not None and w * h > limit:
            raise DatasetError(
                f"Image {path} is {w}x{h} = {w * h:,} pixels, above the limit of {limit:,} (a possible "
                "decompression bomb). If the file is genuine, set PROMPTMOE_MAX_IMAGE_PIXELS to a larger "
                "count (0 = no limit) or shrink the image."
            )
        img.load()  # decode now, so a truncated file fails here and not deep inside a DataLoader
        return img
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three for broken files
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"Cannot read image file {path}: {e}. Re-download or remove it.") from e


def _sixteen_bit_to_uint8(arr: np.ndarray, bits: int) -> np.ndarray:
    # Scale by the format's bit depth, not the image's min/max: every image of a dataset then keeps
    # the same intensity scale (a per-image stretch, or reading a dark 16-bit image's values <= 255
    # as 8-bit, would change brightness image by image).
    arr = arr.astype(np.float64)
    if bits == 16 and arr.min(initial=0) >= 0 and arr.max(initial=0) <= 65535:
        return np.round(arr / 257.0).astype(np.uint8)  # 65535 / 257 = 255 exactly
    if arr.min(initial=0) >= 0 and arr.max(initial=0) <= 255:
        return arr.astype(np.uint8)  # a 32-bit "I" image that only holds 8-bit values
    if arr.min(initial=0) >= 0 and arr.max(initial=0) <= 65535:
        return np.round(arr / 257.0).astype(np.uint8)
    lo, hi = arr.min(), arr.max()  # 32-bit data or negative values: no fixed range to use
    return np.round((arr - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)


def _bit_depth(img: Image.Image) -> int:
    if img.mode.startswith("I;16"):
        return 16
    tag = getattr(img, "tag_v2", None)  # TIFF: BitsPerSample
    bits = tag.get(258) if tag is not None else None
    if isinstance(bits, tuple) and bits:
        bits = bits[0]
    return int(bits) if bits else (16 if img.format == "PNG" else 32)


def load_image(path: PathLike) -> Image.Image:
    """Open any image as 8-bit RGB.

    The EXIF orientation tag is applied (a phone photo shows upright, as in a viewer, and its mask,
    drawn on the upright image, matches). Grayscale and palette images are expanded, alpha is
    dropped, CMYK converted, and 16-bit images (``I;16``) divided by 257 (65535 -> 255) by their bit
    depth, whatever their own maximum, rather than clipped at 255 as PIL's ``convert("L")`` would
    do. Raises DatasetError naming the file when it cannot be decoded or is too large.
    """
    img = _open(path)
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError) as e:  # a malformed EXIF block
        raise DatasetError(f"Cannot apply the EXIF orientation of {path}: {e}") from e
    if img.mode.startswith("I;16") or img.mode == "I":
        img = Image.fromarray(_sixteen_bit_to_uint8(np.asarray(img), _bit_depth(img)))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = arr * 255 if arr.max(initial=0) <= 1.0 else arr
        img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    elif img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # through RGBA so a transparent palette entry converts cleanly
    return img.convert("RGB")


def mask_foreground(arr: np.ndarray, threshold: Optional[float] = None) -> np.ndarray:
    """Binarise raw mask values (H, W) by the module's rule (see the module docstring).

    Args:
        arr: (H, W) raw values (already reduced over colour channels).
        threshold: None = the rule (class ids ``> 0``, else ``> 127`` / ``> 32767``); a number
            = foreground is ``arr > threshold``.
    """
    if threshold is not None:
        return arr > threshold
    top = arr.max(initial=0)
    if top <= CLASS_ID_MAX:
        return arr > 0  # empty, binary 0/1, or class ids 1, 2, 3 ...
    return arr > (127 if top <= 255 else 32767)


def load_mask(path: PathLike, size: Union[None, int, Tuple[int, int]] = None,
              threshold: Optional[float] = None) -> np.ndarray:
    """Read a ground-truth mask as a boolean (H, W) array (foreground by :func:`mask_foreground`).

    0/255 masks, VisA's class ids, JPEG masks with ringing, anti-aliased edges, RGB masks (any
    channel) and 16-bit masks all binarise as drawn. EXIF orientation is applied, as for images.

    Args:
        path: the mask file.
        size: None keeps the original size; S or (H, W) resizes the *binary* mask as float with
            bilinear interpolation and keeps pixels > 0.5 (REFERENCE D8).
        threshold: None = the documented rule; a number = foreground is raw value > threshold
            (``0`` reproduces the peers' ``> 0``, which keeps JPEG ringing).
    """
    img = _open(path)
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError) as e:
        raise DatasetError(f"Cannot apply the EXIF orientation of mask {path}: {e}") from e
    palette = img.mode in ("P", "PA")
    if palette:
        img = img.convert("RGB")  # palette indices are not intensities: use the colours shown
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]  # drop alpha
    mask = (arr > 0) if palette and threshold is None else mask_foreground(arr, threshold)
    return mask if size is None else resize_mask(mask, size)


def resize_mask(mask: np.ndarray, size: Union[int, Tuple[int, int]]) -> np.ndarray:
    """Resize a boolean (H, W) mask to ``size`` ((H, W) or S): bilinear on 0/1 floats, then > 0.5."""
    h, w = (size, size) if isinstance(size, int) else size
    if mask.shape == (h, w):
        return mask.astype(bool)
    f = Image.fromarray(mask.astype(np.float32)).resize((w, h), Image.BILINEAR)
    return np.asarray(f) > 0.5


# The torch Dataset lives in dataset.py (this file keeps records and file reading); re-exported here.
from .dataset import AnomalyDataset  # noqa: E402
