"""Six kinds of defect drawn on a whole batch at once, in torch, for pretraining the micro CLIP.

Taught in chapter 10. These are deliberately *not* the book's evaluation defects
(:mod:`promptmoe.data._defects`, drawn one image at a time in numpy): the micro CLIP is pretrained
on these and evaluated on those, so the zero-shot numbers also measure transfer to another way of
drawing a scratch or a stain. Every defect is a soft alpha map (B, S, S) from a distance field
around a centre, blended towards a colour: cheap enough to draw thousands per second on a CPU.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

KINDS = ("scratch", "crack", "hole", "stain", "missing", "blotch")
# the colours of a blotch, named in its caption ("a red stained ...")
BLOTCH_COLOURS = {"red": (0.85, 0.1, 0.1), "green": (0.1, 0.7, 0.15), "blue": (0.1, 0.2, 0.85),
                  "yellow": (0.95, 0.85, 0.1), "orange": (0.95, 0.5, 0.05),
                  "purple": (0.55, 0.15, 0.65), "white": (0.97, 0.97, 0.97),
                  "black": (0.03, 0.03, 0.03)}
_STAINS = torch.tensor([[0.45, 0.30, 0.12], [0.60, 0.25, 0.08], [0.15, 0.12, 0.08],
                        [0.35, 0.35, 0.2]])
_CRACK_SEGMENTS = 5


def _segment_distance(yy, xx, a, b):
    """Distance of every pixel to the segments a -> b: yy, xx (S, S); a, b (B, 2) -> (B, S, S)."""
    ay, ax = a[:, 0, None, None], a[:, 1, None, None]
    dy, dx = (b - a)[:, 0, None, None], (b - a)[:, 1, None, None]
    t = ((yy - ay) * dy + (xx - ax) * dx) / (dy * dy + dx * dx).clamp_min(1e-6)
    t = t.clamp(0, 1)
    return torch.hypot(yy - (ay + t * dy), xx - (ax + t * dx))


def _uniform(g, n, lo, hi, device):
    return lo + (hi - lo) * torch.rand(n, generator=g).to(device)


def draw_defects(images: torch.Tensor, kinds: torch.Tensor, centres: torch.Tensor,
                 g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one defect per image.

    Args:
        images: (B, 3, S, S) float in [0, 1] (not modified).
        kinds: (B,) long, indices into :data:`KINDS`.
        centres: (B, 2) float (row, column) pixel centres of the defects.
        g: a CPU ``torch.Generator``: every random choice comes from it (same state, same
            defects). The same numbers are drawn whatever the mix of kinds.
    Returns:
        defective (B, 3, S, S) in [0, 1], alpha (B, S, S) in [0, 1] (how much each pixel was
        painted over), and colour (B,) long: the index into :data:`BLOTCH_COLOURS` of each
        blotch (-1 for the other kinds).
    """
    B, _, S, _ = images.shape
    dev = images.device
    p = _draw_parameters(B, S, g, dev)
    alpha = torch.zeros(B, S, S, device=dev)
    out = images.clone()
    kinds = kinds.to(dev)
    for k, painter in enumerate(_PAINTERS):
        sel = (kinds == k).nonzero().flatten()
        if len(sel):  # each kind is painted only on its own images
            a, target = painter(images[sel], centres[sel].to(dev), {n: v[sel] for n, v in p.items()})
            alpha[sel] = a
            out[sel] = images[sel] * (1 - a[:, None]) + target * a[:, None]
    blotch = kinds.cpu() == KINDS.index("blotch")
    colour = torch.where(blotch, p["pick"].cpu(), torch.full((B,), -1, dtype=torch.long))
    return out.clamp(0, 1), alpha, colour


def _draw_parameters(B, S, g, dev):
    """Every random number a defect may need, for the whole batch (B rows each)."""
    scale = S / 64.0
    u = lambda lo, hi: _uniform(g, B, lo, hi, dev)  # noqa: E731
    return {"theta": u(0, math.pi), "half": u(5, 15) * scale, "width": u(0.5, 1.4) * scale,
            "steps": _uniform(g, B * _CRACK_SEGMENTS, 2.5, 5.0, dev).view(B, -1) * scale,
            "turns": torch.randn(B, _CRACK_SEGMENTS, generator=g).to(dev) * 0.7,
            "ra": u(2, 5) * scale, "rb": u(2, 5) * scale, "radius": u(3, 7) * scale,
            "strength": u(0.6, 0.9), "stain": torch.randint(len(_STAINS), (B,), generator=g).to(dev),
            "hy": u(2, 6) * scale, "hx": u(2, 6) * scale,
            "pick": torch.randint(len(BLOTCH_COLOURS), (B,), generator=g).to(dev),
            "blob": torch.randn(B, 3, 2, generator=g).to(dev), "sig": torch.rand(B, 3, generator=g).to(dev)}


def _grid(images):
    S, dev = images.shape[-1], images.device
    ar = torch.arange(S, device=dev, dtype=torch.float32) + 0.5  # pixel centres
    return torch.meshgrid(ar, ar, indexing="ij")  # yy, xx: (S, S)


def _scratch(images, centres, p):
    """A straight stroke through the centre: bright metal on a dark part, a dark groove on a bright one."""
    yy, xx = _grid(images)
    along = torch.stack([torch.sin(p["theta"]), torch.cos(p["theta"])], dim=1)  # (b, 2)
    ends = p["half"][:, None] * along
    d = _segment_distance(yy, xx, centres - ends, centres + ends)  # (b, S, S)
    alpha = (p["width"][:, None, None] + 0.5 - d).clamp(0, 1)
    S = images.shape[-1]
    cy, cx = centres.long().clamp(0, S - 1).unbind(1)
    local = images.mean(1)[torch.arange(len(images), device=images.device), cy, cx]  # (b,)
    target = torch.where(local < 0.5, 0.95, 0.05)[:, None, None, None].expand_as(images)
    return alpha, target


def _crack(images, centres, p):
    """A random walk of a few short segments, dark."""
    yy, xx = _grid(images)
    turns = p["turns"].cumsum(1) + 2 * p["theta"][:, None]  # (b, n)
    offsets = torch.stack([torch.sin(turns), torch.cos(turns)], -1) * p["steps"][..., None]  # (b, n, 2)
    points = torch.cat([offsets[:, :1] * 0, offsets.cumsum(1)], 1)  # (b, n+1, 2)
    points = points - points.mean(1, keepdim=True) + centres[:, None]
    d = torch.stack([_segment_distance(yy, xx, points[:, k], points[:, k + 1])
                     for k in range(_CRACK_SEGMENTS)]).amin(0)  # (b, S, S)
    return (0.6 * p["width"][:, None, None] + 0.5 - d).clamp(0, 1), images * 0.12


def _ellipse_coords(images, centres, p):
    yy, xx = _grid(images)
    c, s = torch.cos(p["theta"])[:, None, None], torch.sin(p["theta"])[:, None, None]
    dy, dx = yy - centres[:, 0, None, None], xx - centres[:, 1, None, None]
    return c * dy + s * dx, -s * dy + c * dx  # rotated offsets (b, S, S)


def _hole(images, centres, p):
    """A dark ellipse whose inner wall is lit from one side."""
    along, across = _ellipse_coords(images, centres, p)
    u, v = along / p["ra"][:, None, None], across / p["rb"][:, None, None]
    r = torch.sqrt(u * u + v * v)
    alpha = ((1.0 - r) * p["ra"].minimum(p["rb"])[:, None, None] + 0.5).clamp(0, 1)
    shade = 0.04 + 0.15 * r.clamp(0, 1) * (0.5 + 0.5 * u.clamp(-1, 1))  # (b, S, S)
    return alpha, shade[:, None].expand_as(images)


def _blob(images, centres, radius, p):
    """Soft irregular blob: three Gaussians scattered around each centre, (b, S, S) in [0, 1]."""
    yy, xx = _grid(images)
    field = 0
    for j in range(3):
        o = centres + p["blob"][:, j] * radius[:, None] * 0.4
        sig = radius * (0.45 + 0.35 * p["sig"][:, j])
        d2 = (yy - o[:, 0, None, None]) ** 2 + (xx - o[:, 1, None, None]) ** 2
        field = field + torch.exp(-d2 / (2 * sig[:, None, None] ** 2))
    return ((field - 0.35) * 2.5).clamp(0, 1)


def _stain(images, centres, p):
    """A soft brownish blob that keeps some of the texture underneath."""
    alpha = _blob(images, centres, p["radius"], p) * p["strength"][:, None, None]
    colour = _STAINS.to(images.device)[p["stain"]][:, :, None, None]  # (b, 3, 1, 1)
    return alpha, 0.6 * colour + 0.4 * images * colour * 1.5


def _missing(images, centres, p):
    """A flat rotated rectangle: the background shows through (or a dark backing on a texture)."""
    along, across = _ellipse_coords(images, centres, p)
    box = torch.maximum(along.abs() - p["hy"][:, None, None], across.abs() - p["hx"][:, None, None])
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], -1)
    fill = border.median(dim=-1).values  # (b, 3)
    flat = (fill - images.mean(dim=(2, 3))).abs().amax(1) < 0.2  # a texture: no background
    fill = torch.where(flat[:, None], torch.full_like(fill, 0.04), fill)
    return (0.5 - box).clamp(0, 1), fill[:, :, None, None].expand_as(images)


def _blotch(images, centres, p):
    """A blob of one of the named colours."""
    alpha = _blob(images, centres, p["radius"] * 1.2, p) * (p["strength"] + 0.05)[:, None, None]
    rgb = torch.tensor(list(BLOTCH_COLOURS.values()), device=images.device)[p["pick"]]  # (b, 3)
    return alpha, rgb[:, :, None, None].expand_as(images)


_PAINTERS = (_scratch, _crack, _hole, _stain, _missing, _blotch)  # in the order of KINDS
