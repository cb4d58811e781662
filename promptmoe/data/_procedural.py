"""Procedural base pictures for the synthetic dataset: a weave, a perforated plate, a nut, a PCB,
a capsule and a bottle top, each a (n, n, 3) float image in [0, 1].

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets) with :mod:`promptmoe.data.synthetic`, which varies
each picture per sample (crop, rotation, light, noise). Each uses a fixed random stream, so a
category always shows the same object: the seed varies the samples, not the object.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import draw


def woven(n=384):
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    p = 12.0
    fx, fy = (xx % p) / p, (yy % p) / p
    over = ((xx // p + yy // p) % 2) == 0  # warp over weft on a checkerboard: a plain weave
    warp = np.sqrt(np.sin(np.pi * fx)) * (0.8 + 0.2 * np.sin(np.pi * fy))
    weft = np.sqrt(np.sin(np.pi * fy)) * (0.8 + 0.2 * np.sin(np.pi * fx))
    rng = np.random.default_rng(1)
    fibre = ndimage.gaussian_filter(rng.normal(0, 1, (n, n)), (0.5, 3)) * 0.15
    val = np.where(over, warp, weft) + fibre
    return np.clip(0.1 + val[..., None] * np.array([0.75, 0.68, 0.52]), 0, 1)


def mesh(n=384, s=16.0, r=5.0):
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    sy = s * np.sqrt(3) / 2  # hexagonal lattice: every other row shifted by half a pitch
    d = np.full((n, n), np.inf, np.float32)
    for k in (np.floor(yy / sy), np.floor(yy / sy) + 1):
        shift = (k % 2) * s / 2
        cx = np.round((xx - shift) / s) * s + shift
        d = np.minimum(d, np.hypot(yy - k * sy, xx - cx))
    rng = np.random.default_rng(2)
    brushed = 0.62 + ndimage.gaussian_filter(rng.normal(0, 1, (n, n)), (0.4, 10)) * 0.4
    val = np.where(d < r, 0.08, brushed) + 0.25 * ((d >= r) & (d < r + 1.5))  # bright bevel
    return np.clip(val[..., None] * np.array([0.92, 0.95, 1.0]), 0, 1)


def nut(n=256):
    yy, xx = np.mgrid[:n, :n].astype(np.float32) - n / 2
    rad, ang = np.hypot(yy, xx), np.arctan2(yy, xx)
    img = np.full((n, n), 0.12, np.float32)
    hexa = np.zeros((n, n), bool)
    t = np.arange(6) * np.pi / 3
    rr, cc = draw.polygon(n / 2 + 0.36 * n * np.sin(t), n / 2 + 0.36 * n * np.cos(t), (n, n))
    hexa[rr, cc] = True
    sheen = 0.55 + 0.2 * np.cos(ang - 0.8) + 0.08 * np.cos(rad * 0.25)  # brushed, lit from one side
    img = np.where(hexa, sheen, img)
    img = np.where(hexa & (np.abs(rad - 0.3 * n) < 2), 0.85, img)  # chamfer highlight
    thread = 0.15 + 0.1 * np.sin(rad * 1.4)
    img = np.where(rad < 0.16 * n, thread, img)
    return np.repeat(img[..., None], 3, axis=2) * np.array([1.0, 0.97, 0.9])


def pcb(n=256):
    rng = np.random.default_rng(3)  # fixed: every image shows the same board
    board = np.array([0.10, 0.35, 0.16]) + rng.normal(0, 0.015, (n, n, 1))
    copper, pads = np.zeros((n, n), bool), np.zeros((n, n), bool)
    for _ in range(16):  # Manhattan traces ending in pads
        y, x = rng.integers(20, n - 20, size=2)
        for _ in range(int(rng.integers(2, 4))):
            dy, dx = [(0, 1), (1, 0), (1, 1), (0, -1), (-1, 0)][rng.integers(5)]
            L = int(rng.integers(15, 60))
            y2, x2 = int(np.clip(y + dy * L, 10, n - 10)), int(np.clip(x + dx * L, 10, n - 10))
            copper[draw.line(y, x, y2, x2)] = True
            y, x = y2, x2
        pads[draw.disk((y, x), 5, shape=(n, n))] = True
    copper = ndimage.binary_dilation(copper, iterations=1)
    img = np.where(copper[..., None], [0.80, 0.60, 0.30], board)
    img = np.where(pads[..., None], [0.85, 0.85, 0.80], img)
    c = n // 2
    img[c - 30:c + 30, c - 40:c + 40] = 0.08  # a chip with pins on two sides
    for x in range(c - 36, c + 36, 8):
        img[c - 36:c - 30, x:x + 4] = img[c + 30:c + 36, x:x + 4] = 0.82
    return np.clip(img, 0, 1)


def pill(n=256):
    yy, xx = np.mgrid[:n, :n].astype(np.float32) - n / 2
    r, half = 0.15 * n, 0.22 * n  # a stadium: points within r of a segment
    dist = np.hypot(yy, np.clip(np.abs(xx) - half, 0, None))
    back = 0.86 - 0.05 * yy / n
    under = np.hypot(yy - 6, np.clip(np.abs(xx - 4) - half, 0, None)) < r  # offset: a shadow
    shadow = ndimage.gaussian_filter(under.astype(np.float32), 6)
    img = (back * (1 - 0.35 * shadow))[..., None] * np.array([1.0, 1.0, 0.96])
    body = dist < r
    cyl = np.sqrt(np.clip(1 - (yy / r) ** 2, 0, 1))  # cylinder shading across the capsule
    colour = np.where((xx < 0)[..., None], [0.75, 0.20, 0.15], [0.93, 0.90, 0.84])
    shade = (0.55 + 0.45 * cyl + 0.25 * np.exp(-((yy + 0.4 * r) / (0.12 * r)) ** 2))[..., None]
    return np.clip(np.where(body[..., None], colour * shade, img), 0, 1)


def bottle(n=256):
    yy, xx = np.mgrid[:n, :n].astype(np.float32) - n / 2
    rad = np.hypot(yy, xx) / n  # the top of a bottle seen from above: rings of glass
    img = np.full((n, n), 0.05, np.float32)
    img = np.where(rad < 0.44, 0.25 + 0.1 * np.cos(rad * 60), img)
    img = np.where(np.abs(rad - 0.36) < 0.03, 0.75 - 4 * np.abs(rad - 0.36), img)  # the lip
    img = np.where(rad < 0.24, 0.06 + 0.3 * np.exp(-((rad - 0.12) / 0.03) ** 2), img)
    return np.repeat(img[..., None], 3, axis=2) * np.array([0.75, 0.95, 0.8])
