"""Banks of normal 64-px crops for pretraining the micro CLIP, and the pictures kept out of it.

Taught in chapter 10 (pretraining a micro CLIP). A *category* is one base picture: a photograph
that ships inside scikit-image or scikit-learn, or a procedural texture drawn here. Its *bank* is a
fixed set of random crops of it (scale, flips, quarter turns, brightness and saturation jitter),
drawn once per run from the run's seed; pretraining then samples crops from the banks.

Held out (never in a bank, so zero-shot numbers are on pictures the micro CLIP never saw): the
book's unseen synthetic categories (:data:`promptmoe.data.synthetic.UNSEEN_CATEGORIES`, built from
gravel, immunohistochemistry, coins and three procedural drawings) and five more scikit-image
pictures, :data:`RESERVED_PICTURES`. ``skimage.data.cat`` is ``chelsea`` under another name, so it
is held out too; ``tests/test_microclip.py`` compares pixels, not just names.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, Sequence

import numpy as np
import torch
from PIL import Image

from ..data import _procedural as proc

BANK_SIZE = 64  # pixels: the micro CLIP's input side

# scikit-image pictures reserved for zero-shot evaluation (issue 13): never pretrained on
RESERVED_PICTURES = ("chelsea", "clock", "coffee", "moon", "rocket")
# scikit-image pictures behind the book's unseen synthetic categories (gravel, tissue, coins)
UNSEEN_SYNTHETIC_PICTURES = ("gravel", "immunohistochemistry", "coins")
# every scikit-image function whose picture must stay out of pretraining (cat == chelsea)
HELD_OUT_PICTURES = RESERVED_PICTURES + UNSEEN_SYNTHETIC_PICTURES + ("cat",)


def _skimage(name: str) -> np.ndarray:
    from skimage import data as skdata

    return _as_rgb(getattr(skdata, name)())


def _sklearn(name: str) -> np.ndarray:
    from sklearn.datasets import load_sample_image

    return _as_rgb(load_sample_image(name))


def _as_rgb(img) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from bool, gray, RGB or RGBA arrays of any range."""
    a = np.asarray(img)
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    else:
        a = a.astype(np.float32)
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:  # RGBA over white
        a = a[..., :3] * a[..., 3:] + (1.0 - a[..., 3:])
    return np.ascontiguousarray(a[..., :3])


def _tinted(name: str, tint) -> Callable[[], np.ndarray]:
    return lambda: _skimage(name) * np.asarray(tint, np.float32)


# ---------------------------------------------------------------- procedural textures (256 px)
def _grid(n=256):
    return np.mgrid[:n, :n].astype(np.float32) / n  # (2, n, n) in [0, 1)


def _smooth_noise(rng, n, sigma):
    from scipy import ndimage

    f = ndimage.gaussian_filter(rng.normal(0, 1, (n, n)), sigma, mode="wrap")
    return (f - f.min()) / (f.max() - f.min())


def _colour(val, lo, hi):
    """Map a (n, n) field in [0, 1] onto a colour ramp lo -> hi: (n, n, 3)."""
    lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
    return lo + val[..., None] * (hi - lo)


def stripes():
    yy, xx = _grid()
    return _colour(0.5 + 0.5 * np.sin(2 * np.pi * 14 * (xx + 0.3 * yy)), [0.2, 0.25, 0.5], [0.9, 0.85, 0.7])


def marble():
    yy, xx = _grid()
    turb = _smooth_noise(np.random.default_rng(11), 256, 6)
    return _colour(0.5 + 0.5 * np.sin(2 * np.pi * (4 * xx + 3 * turb)), [0.55, 0.5, 0.45], [0.95, 0.95, 0.92])


def dots():
    yy, xx = _grid()
    d = np.hypot((yy * 16) % 1 - 0.5, (xx * 16) % 1 - 0.5)
    return _colour((d < 0.25).astype(np.float32), [0.85, 0.8, 0.3], [0.3, 0.15, 0.1])


def checker():
    yy, xx = _grid()
    return _colour((((yy * 10).astype(int) + (xx * 10).astype(int)) % 2).astype(np.float32),
                   [0.15, 0.15, 0.2], [0.8, 0.8, 0.75])


def clouds():
    return _colour(_smooth_noise(np.random.default_rng(12), 256, 12), [0.35, 0.55, 0.85], [0.97, 0.97, 1.0])


def tiles():
    yy, xx = _grid()
    grout = ((yy * 8) % 1 < 0.08) | ((xx * 8) % 1 < 0.08)
    base = _colour(_smooth_noise(np.random.default_rng(13), 256, 3) * 0.3 + 0.6,
                   [0.3, 0.1, 0.05], [0.9, 0.5, 0.3])
    return np.where(grout[..., None], np.float32(0.75), base)


def speckle():
    rng = np.random.default_rng(14)
    return _colour((rng.random((256, 256)) < 0.15).astype(np.float32) * 0.8
                   + 0.2 * _smooth_noise(rng, 256, 8), [0.5, 0.5, 0.45], [0.1, 0.1, 0.1])


def noise():
    return _colour(_smooth_noise(np.random.default_rng(15), 256, 1.2), [0.3, 0.35, 0.3], [0.75, 0.7, 0.6])


PROCEDURAL_TEXTURES = ("stripes", "marble", "dots", "checker", "clouds", "tiles", "speckle", "noise")

# name -> (source of the base picture, noun used in captions, is it a texture)
PRETRAIN_SOURCES: Dict[str, tuple] = {
    "astronaut": (lambda: _skimage("astronaut"), "astronaut", False),
    "brick": (_tinted("brick", [1, 0.62, 0.5]), "brick wall", True),
    "camera": (lambda: _skimage("camera"), "photographer", False),
    "cell": (_tinted("cell", [0.8, 0.9, 1.0]), "cell", True),
    "colorwheel": (lambda: _skimage("colorwheel"), "color wheel", False),
    "grass": (_tinted("grass", [0.65, 0.95, 0.45]), "lawn", True),
    "hubble": (lambda: _skimage("hubble_deep_field"), "galaxy", True),
    "logo": (lambda: _skimage("logo"), "logo", False),
    "microaneurysms": (lambda: _skimage("microaneurysms"), "scan", True),
    "page": (lambda: _skimage("page"), "page", True),
    "retina": (lambda: _skimage("retina"), "retina", False),
    "text": (lambda: _skimage("text"), "sign", True),
    "phantom": (lambda: _skimage("shepp_logan_phantom"), "phantom", False),
    "horse": (lambda: _skimage("horse") * 0.7 + 0.15, "horse", False),
    "blobs": (lambda: _as_rgb(_blobs()) * np.float32([0.9, 0.7, 0.4]), "sponge", True),
    "china": (lambda: _sklearn("china.jpg"), "temple", False),
    "flower": (lambda: _sklearn("flower.jpg"), "flower", False),
    "stripes": (stripes, "striped fabric", True),
    "marble": (marble, "marble slab", True),
    "dots": (dots, "dotted fabric", True),
    "checker": (checker, "checkered floor", True),
    "clouds": (clouds, "sky", True),
    "tiles": (tiles, "tiled wall", True),
    "speckle": (speckle, "granite", True),
    "noise": (noise, "stone", True),
    "woven": (proc.woven, "fabric", True),
    "nut": (proc.nut, "nut", False),
    "pcb": (proc.pcb, "circuit board", False),
}
PRETRAIN_CATEGORIES = tuple(PRETRAIN_SOURCES)


def _blobs():
    from skimage import data as skdata

    return skdata.binary_blobs(length=256, blob_size_fraction=0.08, rng=5)


@functools.lru_cache(maxsize=None)
def base_picture(name: str) -> np.ndarray:
    """The category's base picture, (H, W, 3) float32 in [0, 1]."""
    if name not in PRETRAIN_SOURCES:
        raise ValueError(f"{name!r} is not a pretraining category; choose from {PRETRAIN_CATEGORIES}")
    return np.clip(PRETRAIN_SOURCES[name][0](), 0.0, 1.0).astype(np.float32)


def random_crops(picture: np.ndarray, n: int, rng: np.random.Generator, size: int = BANK_SIZE,
                 texture: bool = True, scale=(0.2, 0.7)) -> np.ndarray:
    """``n`` jittered square crops of ``picture`` resized to ``size``: (n, size, size, 3) uint8.

    Args:
        picture: (H, W, 3) float in [0, 1].
        texture: textures also get quarter turns and vertical flips; objects only mirror.
        scale: side of a crop as a fraction of the picture's shorter side.
    """
    h, w = picture.shape[:2]
    pil = Image.fromarray(np.round(picture * 255).astype(np.uint8))
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        side = max(8, int(min(h, w) * rng.uniform(*scale)))
        y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = np.asarray(pil.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.LANCZOS),
                          np.float32) / 255.0
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if texture:
            crop = np.rot90(crop, int(rng.integers(4)))
        grey = crop.mean(axis=2, keepdims=True)
        crop = grey + (crop - grey) * rng.uniform(0.7, 1.3)  # saturation
        crop = crop * rng.uniform(0.8, 1.2)  # brightness
        out[i] = np.clip(np.round(crop * 255), 0, 255).astype(np.uint8)
    return out


def build_banks(categories: Sequence[str] = PRETRAIN_CATEGORIES, bank_size: int = 160,
                seed: int = 0) -> torch.Tensor:
    """Every category's bank of crops: (C, bank_size, 3, 64, 64) uint8, the same for a seed."""
    banks = []
    for c, name in enumerate(categories):
        rng = np.random.default_rng([seed, c])
        crops = random_crops(base_picture(name), bank_size, rng, texture=PRETRAIN_SOURCES[name][2])
        banks.append(torch.from_numpy(crops).permute(0, 3, 1, 2))  # (N, 3, S, S)
    return torch.stack(banks).contiguous()


def category_noun(name: str) -> str:
    """The noun captions use for a pretraining category ("brick wall", "circuit board")."""
    return PRETRAIN_SOURCES[name][1]
