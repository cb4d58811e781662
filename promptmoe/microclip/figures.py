"""Figures of chapter 10: twin pairs with their windows and captions, and the pretraining curves.

Both label themselves with the preset and data they show, like every figure of the book.
"""
from __future__ import annotations

from typing import Sequence

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from ..plots import MIN_FONT, _label, fit
from .pretrain import PATCH


def show_twins(clean, defective, corners, side: int, clean_captions: Sequence[str],
               defective_captions: Sequence[str], *, preset: str, data: str):
    """Each twin pair as a column: the clean crop over its defective twin, the window the tower
    sees drawn on both, each image's caption under it.

    Args:
        clean, defective: (n, 3, S, S) pixels in [0, 1].
        corners: (n, 2) window corners (row, column) in patches; ``side`` its side in patches.
    """
    n = len(clean)
    fig, axes = plt.subplots(2, n, figsize=fit(1.75 * n, 5.6), squeeze=False)
    for j in range(n):
        for i, (imgs, caps) in enumerate(((clean, clean_captions), (defective, defective_captions))):
            ax = axes[i, j]
            ax.imshow(np.clip(np.asarray(imgs[j]).transpose(1, 2, 0), 0, 1), interpolation="nearest")
            r, c = (int(v) * PATCH for v in corners[j])
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), side * PATCH, side * PATCH, fill=False,
                                   edgecolor="yellow", linewidth=1.5))
            ax.set(xticks=[], yticks=[])
            ax.set_xlabel("\n".join(textwrap.wrap(caps[j], 18)), fontsize=MIN_FONT)
    axes[0, 0].set_ylabel("clean", fontsize=MIN_FONT, labelpad=2)
    axes[1, 0].set_ylabel("twin", fontsize=MIN_FONT, labelpad=2)
    return _label(fig, preset, data)


def plot_pretraining(log: pd.DataFrame, smooth: int = 5, *, preset: str, data: str):
    """Loss, twin accuracy and the cosine between the two hand-written prompts against samples seen."""
    panels = (("loss", "loss (contrastive + twin)"), ("twin_accuracy", "twin accuracy"),
              ("hand_cosine", "cos(flawless, damaged prompt)"))
    fig, axes = plt.subplots(1, 3, figsize=fit(10, 3.2))
    x = log["samples"] / 1e6
    for ax, (col, title) in zip(axes, panels):
        ax.plot(x, log[col], color="C0", alpha=0.3, linewidth=0.8)
        ax.plot(x, log[col].rolling(smooth, min_periods=1).mean(), color="C0")
        ax.set_title(title)
        ax.set_xlabel("samples seen (millions)")
        ax.grid(alpha=0.3)
    axes[1].axhline(0.5, color="gray", linestyle=":", linewidth=1)
    return _label(fig, preset, data)


def plot_method_comparison(summary: pd.DataFrame, metrics=("pixel_auroc", "image_auroc"), *,
                           preset: str, data: str):
    """Horizontal bars of the mean over seeds with the standard deviation as error bars, one panel
    per metric (``summary`` from :func:`promptmoe.microclip.compare.summarise_seeds`, percent)."""
    titles = {"pixel_auroc": "pixel AUROC (%)", "image_auroc": "image AUROC (%)",
              "image_ap": "image AP (%)", "pro_compat": "PRO, compat (%)"}
    n = len(summary)
    fig, axes = plt.subplots(1, len(metrics), figsize=fit(4 * len(metrics) + 1.5, 0.45 * n + 1.8),
                             squeeze=False, sharey=True)
    pos = np.arange(n)
    for ax, metric in zip(axes[0], metrics):
        mean, std = summary[f"{metric} mean"], summary[f"{metric} std"]
        ax.barh(pos, mean, xerr=std, capsize=3, color=[f"C{i}" for i in range(n)])
        ax.axvline(50, color="gray", linestyle=":", linewidth=1)
        ax.set_xlim(max(0, float((mean - std).min()) - 10), 100)
        ax.set_title(titles.get(metric, metric))
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(pos, list(summary.index), fontsize=MIN_FONT)
    axes[0, 0].invert_yaxis()  # first method on top
    return _label(fig, preset, data)
