"""Two training-free baselines: hand-written prompts, and a colour distance that needs no CLIP.

Taught in chapter 2 (hand-written prompts) and chapter 10 (both, beside the micro CLIP).

* :class:`HandPrompts` is PromptMoE with its learned text features replaced by two fixed
  sentences (a normal and an abnormal one): the same maps (Eq. 6), smoothing and score (Eq. 7).
  It is the zero-shot CLIP baseline of the paper's Table 1 in the form this package computes it.
* :func:`colour_distance_maps` scores each 8x8 cell by the distance of its mean colour to the
  image's median colour. It knows nothing about text; on synthetic defects (flat colours on a
  texture) it is strong, which is why the book shows it beside every offline number: the point of
  the micro CLIP is that *text* finds the defect, not that it beats colour statistics.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .backbone import FrozenCLIP
from .model import PromptMoE

HAND_PROMPTS = ("a photo of a flawless object.", "a photo of a damaged object.")


class HandPrompts(PromptMoE):
    """PromptMoE whose text features are two fixed sentences (normal first): nothing is learned.

    Args:
        backbone: the frozen CLIP (its config gives blocks, V-V path, tau, sigma).
        sentences: (normal, abnormal) sentences.
    """

    def __init__(self, backbone: FrozenCLIP, sentences: Sequence[str] = HAND_PROMPTS):
        if len(sentences) != 2:
            raise ValueError(f"give two sentences (normal, abnormal), got {len(sentences)}")
        super().__init__(backbone.config.replace(prompt_mode="static"), backbone=backbone)
        self.sentences = tuple(sentences)
        device = backbone.clip.token_embedding.weight.device
        self.register_buffer("hand_text", backbone.encode_text(self.sentences).to(device),
                             persistent=False)  # (2, D) unit rows

    def encode_prompts(self, prompt_out, cut: bool = True) -> torch.Tensor:
        """The two sentences for every layer: (1, P, 2, D)."""
        return self.hand_text.expand(1, len(self.config.layers), 2, -1)


def colour_distance_maps(images: torch.Tensor, cell: int = 8) -> torch.Tensor:
    """Distance of each cell's mean colour to the image's median cell colour.

    Args:
        images: (B, 3, S, S) pixels in [0, 1] (not CLIP-normalised), S a multiple of ``cell``.
        cell: side of a cell in pixels (8 = one patch of the micro CLIP).
    Returns:
        (B, S, S) maps: each cell's Euclidean RGB distance, bilinearly upsampled.
    """
    B, _, S, _ = images.shape
    if S % cell:
        raise ValueError(f"image side {S} is not a multiple of the cell size {cell}")
    means = F.avg_pool2d(images, cell)  # (B, 3, S/c, S/c)
    median = means.flatten(2).median(dim=2).values  # (B, 3): per channel over cells
    dist = (means - median[:, :, None, None]).norm(dim=1, keepdim=True)  # (B, 1, S/c, S/c)
    return F.interpolate(dist, size=(S, S), mode="bilinear", align_corners=False)[:, 0]
