"""FLOPs of the models of an ablation study, counted on the ``meta`` device in seconds.

Used by :mod:`promptmoe.study_plan` (chapter 7). REFERENCE.md section 5.

Counting a training step of the paper preset with ``FlopCounterMode`` on the ``meta`` device
(:mod:`promptmoe.cost`) takes about a second, most of it in the frozen text tower. A study has
19 models, so two exact shortcuts keep its count short:

* models whose prompt side has the same shapes are counted once (:func:`cost_key`). E, k,
  sharing and the loss weights change a step by < 0.1% (``tests/test_study_cost.py``);
* the text tower is counted once per sequence length, for one sequence, and added N times for
  N sequences (:class:`TextTowerTally`). Each of its operations acts on every sequence on its
  own, so its FLOPs are exactly linear in N; the test compares with a plain count.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import cost
from .config import PromptMoEConfig


def feature_shape(config: PromptMoEConfig) -> Tuple[int, int, int]:
    """(patch tokens per image, projected width D, text width) from open_clip's config, no model."""
    import open_clip

    from . import backbone  # noqa: F401  (registers the tiny preset's config)

    cfg = open_clip.get_model_config(config.clip_model)
    patch = cfg["vision_cfg"]["patch_size"]
    grid = (config.image_size // patch) ** 2
    return grid, cfg["embed_dim"], cfg["text_cfg"]["width"]


def cost_key(config: PromptMoEConfig) -> tuple:
    """The fields the FLOPs of a model's prompt side depend on, beyond < 0.1% (module docstring):
    which prompts, how many layers, their lengths and widths, batch and image size."""
    return (config.prompt_mode, config.layerwise_prompts, len(config.layers), config.n_queries,
            config.n_heads, config.router_hidden, config.len_normal, config.len_abnormal,
            config.len_context, config.class_word, config.batch_size, config.image_size,
            config.n_experts if config.prompt_mode == "ensemble" else 0, config.clip_model)


class TextTowerTally:
    """Stands in for ``backbone.encode_embeddings`` while a model is counted: the real tower is
    counted once per length for one sequence (forward, and backward to its input), and that
    count is added to :attr:`forward` / :attr:`backward` once per sequence of each call. The
    stand-in's output (N, D) is a slice of its input, which costs no counted FLOPs."""

    def __init__(self, backbone):
        self.backbone, self.per_length = backbone, {}
        self.forward = self.backward = 0.0
        self.out_dim = backbone.embed_dim

    def count(self, L: int) -> Tuple[float, float]:
        """(forward, backward) FLOPs of one sequence of ``L`` tokens. Call it before, never
        inside, the count of a model: a counter nested in another adds to both."""
        if L not in self.per_length:
            x = torch.zeros(1, L, self.backbone.token_dim, device="meta", requires_grad=True)
            eot = torch.full((1,), L - 1, device="meta")
            real = type(self.backbone).encode_embeddings
            box = {}
            fwd = cost._count(lambda: box.update(y=real(self.backbone, x, eot, length=L)))
            bwd = cost._count(lambda: box["y"].sum().backward())
            self.per_length[L] = (fwd, bwd)
        return self.per_length[L]

    def __call__(self, embeds, eot_index, cut: bool = True, length=None):
        N, L, W = embeds.shape
        L = int(length) if length is not None else L
        if L not in self.per_length:
            raise RuntimeError(f"text length {L} was not counted beforehand (TextTowerTally.count)")
        fwd, bwd = self.per_length[L]
        self.forward += N * fwd
        if embeds.requires_grad and torch.is_grad_enabled():
            self.backward += N * bwd
        first = embeds[:, 0, : self.out_dim]  # (N, min(W, D))
        return F.pad(first, (0, self.out_dim - first.shape[1]))  # (N, D)


def model_flops(configs: Sequence[PromptMoEConfig], group: bool = True) -> Dict[str, Dict[str, float]]:
    """Per-image FLOPs of each config (keyed by ``ablation.config_hash``), at its batch size:
    ``enc`` the frozen pass, ``step`` a training step from cached features (forward, loss and
    backward), ``eval`` an inference forward from them (the step's forward; the Gaussian blur of
    inference, < 0.2%, is left out). ``group=False`` counts every config, even those of one
    :func:`cost_key`."""
    from .ablation import config_hash
    from .backbone import FrozenCLIP, ImageFeatures
    from .losses import total_loss
    from .model import PromptMoE, sequence_length

    first = configs[0]
    union = tuple(sorted({b for c in configs for b in c.layers}))
    holder = cost.meta_model(first.replace(layers=union, vv_start=first.first_vv_block, pretrained=None))
    clip, S = holder.backbone.clip, first.image_size
    with torch.no_grad():
        enc = cost._count(lambda: holder.backbone.encode_image(torch.zeros(1, 3, S, S, device="meta")))
    grid, dim, _ = feature_shape(first)
    side = math.isqrt(grid)
    tally = TextTowerTally(holder.backbone)
    counted, out = {}, {}
    for c in configs:
        key = cost_key(c) if group else config_hash(c)
        if key not in counted:
            model = PromptMoE(c, FrozenCLIP(c, clip=clip)).to("meta").train()
            model.backbone.encode_embeddings = tally  # an instance attribute: this model only
            b, box = c.batch_size, {}
            feats = ImageFeatures([torch.zeros(b, grid + 1, dim, device="meta")] * len(c.layers),
                                  torch.zeros(b, dim, device="meta"), (side, side))
            n_class = model.class_embedding.shape[0]
            longest = sequence_length(c, n_class)  # abnormal prompts; normal ones lack S_a
            for L in (longest, longest - c.len_abnormal):
                tally.count(L)
            tally.forward = tally.backward = 0.0
            fwd = cost._count(lambda: box.update(res=model.forward_features(feats, out_size=(S, S))))
            bwd = cost._count(lambda: total_loss(
                box["res"], torch.zeros(b, S, S, device="meta"), torch.zeros(b, device="meta"),
                model.expert_pools(), c.alpha, c.beta, c.focal_gamma)["total"].backward())
            fwd, bwd = fwd + tally.forward, bwd + tally.backward
            counted[key] = {"step": (fwd + bwd) / b, "eval": fwd / b}
        out[config_hash(c)] = {"enc": enc, **counted[key]}
    return out
