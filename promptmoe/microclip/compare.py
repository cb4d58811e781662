"""What the micro CLIP lets PromptMoE show offline: five methods, several seeds, unseen categories.

Taught in chapter 10 (and quoted in chapters 1 and 6). For each seed, the book's synthetic dataset
is generated with that seed; the trained methods learn on its *seen* categories (with that seed),
and every method is scored on its *unseen* categories, which pretraining never saw either:

* ``colour distance``: no CLIP, no text (:func:`promptmoe.baselines.colour_distance_maps`);
* ``hand prompts, random weights``: the same pipeline as the next row on a random micro CLIP;
* ``hand prompts``: two fixed sentences, training-free (:class:`promptmoe.baselines.HandPrompts`);
* ``static prompt``: one learned prompt pair for every image and layer, the paper's "Static
  Prompt" row of Table 2 (``prompt_mode="static"``, ``layerwise_prompts=False``);
* ``PromptMoE``: the full model (``prompt_mode="vgmop"``).

Metrics are the package's: per category, then the mean over categories (:func:`promptmoe.evaluate.evaluate`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Sequence

import pandas as pd
import torch
from torch import nn

from ..baselines import HandPrompts, colour_distance_maps
from ..config import PromptMoEConfig
from ..data import load_dataset
from ..data.base import CLIP_MEAN, CLIP_STD
from ..data.synthetic import make_synthetic
from ..evaluate import evaluate
from ..model import build_model, gaussian_blur
from ..train import train

METHODS = ("colour distance", "hand prompts, random weights", "hand prompts", "static prompt",
           "PromptMoE")
METRICS = ("pixel_auroc", "pro_compat", "image_auroc", "image_ap")


class ColourDistance(nn.Module):
    """:func:`colour_distance_maps` as a model the package's evaluation can score: the map smoothed
    like PromptMoE's (sigma), the image score its maximum."""

    def __init__(self, config: PromptMoEConfig):
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self._anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # gives it a device

    def forward(self, images: torch.Tensor) -> Dict[str, object]:
        maps = colour_distance_maps(images * self.std + self.mean)  # (B, S, S)
        maps = gaussian_blur(maps, self.config.sigma)
        return {"anomaly_map": maps, "pred_score": maps.flatten(1).max(dim=1).values, "routing": {}}


def synthetic_sets(seed: int, data_root, image_size: int, size: int = 128):
    """(seen, unseen) datasets of the book's synthetic data generated with ``seed``."""
    root = Path(data_root) / f"synthetic_s{seed}_{size}"
    make_synthetic(root, seed=seed, size=size, progress=False)
    return tuple(load_dataset("synthetic", root / part, image_size=image_size, verbose=False)
                 for part in ("seen", "unseen"))


def compare_methods(config: PromptMoEConfig, data_root, out_dir, seeds: Sequence[int] = (0, 1, 2),
                    methods: Sequence[str] = METHODS, device=None,
                    progress: bool = False) -> pd.DataFrame:
    """Score each method on the unseen synthetic categories of each seed.

    Args:
        config: the PromptMoE config of the trained methods (its seed is replaced per run);
            the hand-prompt rows use its backbone, blocks and V-V path.
        data_root: where the synthetic datasets are (generated if missing).
        out_dir: run folders of the trained methods (``<method>_s<seed>``).
    Returns:
        one row per (method, seed): ``method``, ``seed`` and :data:`METRICS` (fractions).
    """
    rows = []
    for seed in seeds:
        seen, unseen = synthetic_sets(seed, data_root, config.image_size)
        for method in methods:
            model = _model(method, config.replace(seed=seed), seen, Path(out_dir), device, progress)
            summary = evaluate(model, {"synthetic": unseen}, progress=False, num_workers=0).summary
            rows.append({"method": method, "seed": seed, **summary.iloc[0][list(METRICS)].to_dict()})
    return pd.DataFrame(rows)


def _model(method, config, seen, out_dir, device, progress):
    name = f"{method.replace(' ', '_').replace(',', '')}_s{config.seed}"
    if method == "colour distance":
        return ColourDistance(config).to(device or "cpu")
    if method in ("hand prompts", "hand prompts, random weights"):
        cfg = config.replace(pretrained=None) if method.endswith("random weights") else config
        return HandPrompts(build_model(cfg, device=device).backbone)
    if method in ("static prompt", "PromptMoE"):
        # the paper's "Static Prompt" row (Table 2): one learned pair for all images and layers
        cfg = (config.replace(prompt_mode="static", layerwise_prompts=False)
               if method == "static prompt" else config.replace(prompt_mode="vgmop"))
        run = out_dir / name
        resume = (run / "checkpoint.safetensors").exists()
        return train(cfg, seen, run, device=device, progress=progress, num_workers=0,
                     train_data="synthetic/seen", resume=resume).model
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def summarise_seeds(rows: pd.DataFrame, metrics: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Mean and standard deviation over seeds, per method, in percent: columns ``<metric> mean``,
    ``<metric> std`` and ``seeds``; methods in the order of :data:`METHODS`."""
    metrics = list(metrics or METRICS)
    g = rows.groupby("method", sort=False)[metrics]
    out = pd.concat({"mean": g.mean() * 100, "std": g.std(ddof=1) * 100}, axis=1)
    out.columns = [f"{m} {stat}" for stat, m in out.columns]
    out = out[[f"{m} {s}" for m in metrics for s in ("mean", "std")]]
    out["seeds"] = rows.groupby("method", sort=False)["seed"].nunique()
    order = [m for m in METHODS if m in out.index] + [m for m in out.index if m not in METHODS]
    return out.loc[order]


def paper_reference() -> pd.DataFrame:
    """The paper's numbers for the rows that have one (percent): Table 1's CLIP for the hand
    prompts, Table 2's Static Prompt, Table 1's PromptMoE; MVTec AD and VisA columns (NaN where
    the paper has no such number: Table 2 reports no pixel AUROC)."""
    from .. import paper

    rows = {}
    for method, source in (("hand prompts", "CLIP"), ("PromptMoE", "PromptMoE")):
        rows[method] = {f"paper {d} {m}": paper.paper_value(d, m, source)
                        for d in ("mvtec", "visa") for m in ("pixel_auroc", "image_auroc")}
    static = paper.ablation(2, wide=True).loc["Static Prompt"]
    rows["static prompt"] = {f"paper {d} {m}": (static[f"{d} {m}"] if m == "image_auroc" else math.nan)
                             for d in ("mvtec", "visa") for m in ("pixel_auroc", "image_auroc")}
    return pd.DataFrame(rows).T.astype(float)
