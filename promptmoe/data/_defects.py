"""Seven kinds of synthetic defect, each returned with its exact pixel mask.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets), which shows one image per kind. :func:`make_defect`
draws a defect on a copy of an RGB image and returns ``(image, mask)`` where ``mask`` is exactly the
set of pixels whose value changed by more than :data:`CHANGE_THRESHOLD` (on the 0-255 scale, in any
channel); every pixel outside the mask equals the input, bit for bit. So the ground truth never
marks a pixel that looks untouched, and never misses one that was edited.
:mod:`promptmoe.data.synthetic` uses it to build a whole dataset.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import draw

DEFECT_TYPES = ("scratch", "crack", "hole", "stain", "color_shift", "cut_paste", "missing")
CHANGE_THRESHOLD = 10  # a change of <= 10/255 in every channel is hard to see and is not a defect
AREA_RANGE = (0.003, 0.08)  # fraction of the image a defect may cover (MVTec's are of this order)
_MAX_TRIES = 40


def make_defect(image: np.ndarray, rng: np.random.Generator, kind: str,
                where: np.ndarray | None = None, source: np.ndarray | None = None):
    """Draw one defect of ``kind`` on a copy of ``image``.

    Args:
        image: (H, W, 3) uint8 RGB image; it is not modified.
        rng: numpy Generator; the same generator state gives the same defect.
        kind: one of :data:`DEFECT_TYPES`.
        where: optional (H, W) bool map of allowed defect centres, e.g. an object's foreground,
            so that a defect lands on the nut and not on the table.
        source: optional (H, W, 3) uint8 image for ``cut_paste`` to take its patch from (another
            image of the same category); by default the patch comes from ``image`` itself.

    Returns:
        ``(defective, mask)``: (H, W, 3) uint8 and (H, W) bool. ``defective == image`` exactly
        wherever ``mask`` is False, and the mask covers a fraction of the image inside
        :data:`AREA_RANGE` whenever one of the tries achieves it (else the closest try).
    """
    if kind not in _DRAWERS:
        raise ValueError(f"unknown defect kind {kind!r}: choose one of {DEFECT_TYPES}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    img = image.astype(np.float32) / 255.0  # (H, W, 3) in [0, 1]
    src = img if source is None else source.astype(np.float32) / 255.0
    centres = np.argwhere(where) if where is not None and where.any() else None
    lo, hi = AREA_RANGE
    best, best_gap = None, np.inf
    for _ in range(_MAX_TRIES):
        centre = _pick_centre(rng, img.shape[:2], centres)
        edited = _DRAWERS[kind](img, rng, centre, src)  # (H, W, 3) float, unclipped
        out, mask = _keep_changed(image, edited)
        frac = mask.mean()
        if lo <= frac <= hi:
            return out, mask
        gap = lo - frac if frac < lo else frac - hi
        if mask.any() and gap < best_gap:
            best, best_gap = (out, mask), gap
    if best is None:
        raise RuntimeError(f"{kind}: no visible change in {_MAX_TRIES} tries; is the image flat?")
    return best


def _keep_changed(image: np.ndarray, edited: np.ndarray):
    """Quantise ``edited``; mask = pixels changed beyond the threshold; the rest = ``image``."""
    new = np.clip(np.round(edited * 255.0), 0, 255).astype(np.uint8)  # (H, W, 3)
    diff = np.abs(new.astype(np.int16) - image.astype(np.int16)).max(axis=2)  # (H, W)
    mask = diff > CHANGE_THRESHOLD
    return np.where(mask[..., None], new, image), mask


def _pick_centre(rng, shape, centres):
    h, w = shape
    if centres is not None:
        return centres[rng.integers(len(centres))].astype(float)
    return np.array([rng.uniform(0.15 * h, 0.85 * h), rng.uniform(0.15 * w, 0.85 * w)])


def _blend(img, alpha, target):
    """Per-pixel lerp from ``img`` towards ``target`` by ``alpha`` (H, W)."""
    a = alpha[..., None]  # (H, W, 1)
    return img * (1.0 - a) + target * a


def _stroke(points, shape, width):
    """Rasterise a dense (P, 2) point list into a (H, W) bool line ``width`` px thick."""
    pts = np.round(points).astype(int)
    keep = (pts[:, 0] >= 0) & (pts[:, 0] < shape[0]) & (pts[:, 1] >= 0) & (pts[:, 1] < shape[1])
    line = np.zeros(shape, bool)
    line[pts[keep, 0], pts[keep, 1]] = True
    return ndimage.binary_dilation(line, iterations=width - 1) if width > 1 else line


def _scratch(img, rng, c, src):
    h = img.shape[0]
    length = rng.uniform(0.25, 0.6) * h
    theta, bend = rng.uniform(0, np.pi), rng.uniform(-0.25, 0.25)
    t = np.linspace(-0.5, 0.5, int(length * 3))[:, None]  # (P, 1) position along the scratch
    along = np.array([np.sin(theta), np.cos(theta)])
    across = np.array([np.cos(theta), -np.sin(theta)])
    pts = c + t * length * along + (bend * length * (t ** 2 - 0.25)) * across  # (P, 2) a gentle arc
    line = _stroke(pts, img.shape[:2], width=max(1, round(rng.integers(2, 4) * h / 128)))
    alpha = ndimage.gaussian_filter(line.astype(np.float32), 0.6) * rng.uniform(0.6, 0.9)
    bright = rng.random() < 0.6  # a scratch through a coating shows bright metal, or a dark groove
    return _blend(img, np.clip(alpha * 1.5, 0, 1), 0.95 if bright else 0.05)


def _crack(img, rng, c, src):
    h = img.shape[0]
    pts, walkers = [], [(c, rng.uniform(0, 2 * np.pi), int(rng.uniform(0.25, 0.5) * h))]
    while walkers:  # a random walk that sometimes forks: a crack, not a scratch
        p, angle, steps = walkers.pop()
        for _ in range(steps):
            angle += rng.normal(0, 0.3)
            p = p + 0.7 * np.array([np.sin(angle), np.cos(angle)])
            pts.append(p)
            steps -= 1
            if steps > 8 and rng.random() < 0.025 and len(walkers) < 3:
                walkers.append((p, angle + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2), steps // 2))
    line = _stroke(np.array(pts), img.shape[:2], width=max(1, round(2 * h / 128)))
    alpha = np.clip(ndimage.gaussian_filter(line.astype(np.float32), 0.5) * 1.4, 0, 1)
    return _blend(img, alpha * rng.uniform(0.7, 0.9), img * 0.15)


def _hole(img, rng, c, src):
    h, w = img.shape[:2]
    s = h / 128
    ra, rb = rng.uniform(4, 10, size=2) * s
    rot = rng.uniform(-np.pi, np.pi)
    rr, cc = draw.ellipse(c[0], c[1], ra, rb, shape=(h, w), rotation=rot)
    out = img.copy()
    d = np.hypot((rr - c[0]) / ra, (cc - c[1]) / rb)  # 0 at the centre, ~1 at the rim
    light = np.array([np.sin(rot), np.cos(rot)])
    tilt = ((rr - c[0]) * light[0] + (cc - c[1]) * light[1]) / max(ra, rb)  # lit inner wall
    shade = np.clip(0.04 + 0.12 * d + 0.10 * tilt, 0.0, 0.35)[:, None]  # (P, 1)
    out[rr, cc] = shade * (0.6 + 0.4 * img.mean(axis=(0, 1)))
    return out


def _blob(shape, rng, c, radius):
    """Soft irregular blob: a sum of Gaussians around ``c``; (H, W) in [0, 1]."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    field = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(2, 6))):
        o = c + rng.normal(0, radius * 0.5, size=2)
        sig = radius * rng.uniform(0.35, 0.7)
        field += np.exp(-((yy - o[0]) ** 2 + (xx - o[1]) ** 2) / (2 * sig ** 2))
    return np.clip((field - 0.35) * 2.5, 0, 1)


_STAIN_COLOURS = np.array([[0.45, 0.30, 0.12], [0.60, 0.25, 0.08], [0.12, 0.12, 0.08],
                           [0.20, 0.25, 0.60], [0.80, 0.70, 0.20]], np.float32)


def _stain(img, rng, c, src):
    alpha = _blob(img.shape[:2], rng, c, rng.uniform(5, 12) * img.shape[0] / 128)
    colour = _STAIN_COLOURS[rng.integers(len(_STAIN_COLOURS))]
    target = 0.5 * colour + 0.5 * img * colour * 1.6  # keeps some of the texture under the stain
    return _blend(img, alpha * rng.uniform(0.55, 0.85), target)


def _color_shift(img, rng, c, src):
    alpha = _blob(img.shape[:2], rng, c, rng.uniform(7, 15) * img.shape[0] / 128)
    # A pure chroma step: orthogonal to grey (1, 1, 1), so it tints grey images too.
    u1, u2 = np.array([1, -1, 0]) / np.sqrt(2), np.array([1, 1, -2]) / np.sqrt(6)
    phi = rng.uniform(0, 2 * np.pi)
    step = (np.cos(phi) * u1 + np.sin(phi) * u2).astype(np.float32) * rng.uniform(0.18, 0.3)
    return img + alpha[..., None] * step


def _cut_paste(img, rng, c, src):
    h, w = img.shape[:2]
    ph, pw = (rng.uniform(0.08, 0.22, size=2) * np.array([h, w])).astype(int) + 2
    y0, x0 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    patch = src[y0:y0 + ph, x0:x0 + pw]  # (ph, pw, 3)
    patch = patch[::-1] if rng.random() < 0.5 else patch[:, ::-1]  # mirrored, so it cannot blend in
    patch = patch * rng.uniform(0.8, 1.2)
    ty = int(np.clip(c[0] - ph // 2, 0, h - ph))
    tx = int(np.clip(c[1] - pw // 2, 0, w - pw))
    out = img.copy()
    out[ty:ty + ph, tx:tx + pw] = patch
    return out


def _missing(img, rng, c, src):
    h, w = img.shape[:2]
    n = int(rng.integers(5, 10))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(5, 13, n) * h / 128
    rr, cc = draw.polygon(c[0] + radii * np.sin(angles), c[1] + radii * np.cos(angles), (h, w))
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])  # (2H+2W, 3)
    fill = np.median(border, axis=0)  # an object's background shows through the gap ...
    if rr.size and np.abs(img[rr, cc].mean(axis=0) - fill).max() < 0.25:
        fill = np.full(3, 0.05, np.float32)  # ... or, on a texture, the dark backing behind it
    out = img.copy()
    out[rr, cc] = fill
    return out


_DRAWERS = {"scratch": _scratch, "crack": _crack, "hole": _hole, "stain": _stain,
            "color_shift": _color_shift, "cut_paste": _cut_paste, "missing": _missing}
