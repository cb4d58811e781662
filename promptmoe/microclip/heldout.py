"""Held-out images and the training-free zero-shot score of a micro CLIP on them.

Taught in chapter 10. The held-out categories are the ones pretraining never sees: the book's six
unseen synthetic categories and the five reserved scikit-image pictures. Each category gets
``n_per_category`` images at 128 px (half of them with one of the *book's* defects, from
:mod:`promptmoe.data._defects`, not the pretraining painter), resized to 64 px the way the
dataset loader resizes them (bicubic images, bilinear-then-0.5 masks).
"""
from __future__ import annotations

import copy
from typing import Dict, Sequence

import numpy as np
import torch
from PIL import Image

from ..data import synthetic
from ..data._defects import DEFECT_TYPES, make_defect
from ..data.base import CLIP_MEAN, CLIP_STD, resize_mask
from .banks import RESERVED_PICTURES, _skimage, random_crops

HELD_OUT_CATEGORIES = tuple(synthetic.UNSEEN_CATEGORIES) + RESERVED_PICTURES
_TEXTURES = ("moon",)  # reserved pictures cropped like textures (quarter turns)


def _normal(category: str, rng: np.random.Generator, size: int) -> np.ndarray:
    if category in synthetic.UNSEEN_CATEGORIES:
        return synthetic.make_normal(category, rng, size)
    return random_crops(_skimage(category), 1, rng, size=size, texture=category in _TEXTURES,
                        scale=(0.5, 0.9))[0]


def held_out_set(seed: int = 0, n_per_category: int = 24, size: int = 64,
                 categories: Sequence[str] = HELD_OUT_CATEGORIES) -> Dict[str, object]:
    """Images of categories pretraining never saw, half of them defective.

    Returns:
        ``pixels`` (N, 3, size, size) float in [0, 1], ``images`` the same CLIP-normalised,
        ``masks`` (N, size, size) bool, ``labels`` (N,) int, ``categories`` list of N names.
    """
    pixels, masks, labels, cats = [], [], [], []
    for c, cat in enumerate(categories):
        for i in range(n_per_category):
            rng = np.random.default_rng([seed, c, i])
            img = _normal(cat, rng, 128)
            mask = np.zeros(img.shape[:2], bool)
            bad = i % 2 == 1
            if bad:
                kind = DEFECT_TYPES[(i // 2) % len(DEFECT_TYPES)]
                where = synthetic._foreground(cat, img) if cat in synthetic.UNSEEN_CATEGORIES else None
                img, mask = make_defect(img, rng, kind, where=where)
            pixels.append(np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC),
                                     np.float32) / 255.0)
            masks.append(resize_mask(mask, size))
            labels.append(int(bad))
            cats.append(cat)
    px = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return {"pixels": px, "images": (px - mean) / std, "masks": torch.from_numpy(np.stack(masks)),
            "labels": torch.tensor(labels), "categories": cats}


@torch.no_grad()
def zero_shot_scores(model, data: Dict[str, object], batch_size: int = 64) -> Dict[str, np.ndarray]:
    """Maps (N, S, S) and scores (N,) of a PromptMoE-like model on a :func:`held_out_set`."""
    model.eval()
    device = next(model.parameters()).device
    maps, scores = [], []
    for i in range(0, len(data["images"]), batch_size):
        out = model(data["images"][i:i + batch_size].to(device))
        maps.append(out["anomaly_map"].float().cpu())
        scores.append(out["pred_score"].float().cpu())
    return {"maps": torch.cat(maps).numpy(), "scores": torch.cat(scores).numpy()}


def held_out_metrics(data: Dict[str, object], maps: np.ndarray, scores: np.ndarray) -> Dict[str, float]:
    """Pixel and image AUROC per category, averaged over categories (as papers report them)."""
    from ..metrics import evaluate_by_category

    per = evaluate_by_category(data["categories"], data["labels"].numpy(), scores,
                               data["masks"].numpy(), maps, compat=False)
    return {"pixel_auroc": per["mean"]["pixel_auroc"], "image_auroc": per["mean"]["image_auroc"]}


def hand_prompt_metrics(clip, config, data: Dict[str, object]) -> Dict[str, float]:
    """Training-free zero-shot metrics of an open_clip model (copied, then frozen) with the two
    hand-written prompts, the config's blocks and V-V path."""
    from ..backbone import FrozenCLIP
    from ..baselines import HandPrompts

    frozen = FrozenCLIP(config, clip=copy.deepcopy(clip).float())
    out = zero_shot_scores(HandPrompts(frozen), data)
    return held_out_metrics(data, out["maps"], out["scores"])
