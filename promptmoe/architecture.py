"""Architecture figures of the book, drawn from a config's own shapes (the paper's Fig. 3 and 4).

:func:`architecture_shapes` reads every size from the :class:`PromptMoEConfig` and open_clip's
architecture table (no weights needed); :func:`draw_promptmoe` draws the whole pipeline and
:func:`draw_vgmop_layer` one VGMoP layer and branch, each box labelled with its tensor's shape
and its equation number. :func:`draw_monolithic_vs_compositional` draws the idea of the paper's
Fig. 1: one prompt for every image against a prompt composed per image from expert prompts.
Chapter 3 draws all three at build time.
"""
from __future__ import annotations

import textwrap
from typing import Dict

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from .config import PromptMoEConfig
from .plots import MIN_FONT, fit

COLORS = {"frozen": "#d9e3f0", "learned": "#fde2c4", "output": "#d8efd3", "loss": "#f3d1dc"}


def architecture_shapes(config: PromptMoEConfig) -> Dict[str, int]:
    """Sizes the figures print: S, patch, grid, HW, width W, embedding D, P, N_q, E, k, M_n ..."""
    import open_clip

    from . import backbone  # noqa: F401  registers the tiny model's config with open_clip

    arch = open_clip.get_model_config(config.clip_model)
    if arch is None:
        raise ValueError(f"open_clip has no architecture named {config.clip_model!r}")
    patch = arch["vision_cfg"]["patch_size"]
    grid = config.image_size // patch
    return {"S": config.image_size, "patch": patch, "grid": grid, "HW": grid * grid,
            "W": arch["vision_cfg"]["width"], "blocks": arch["vision_cfg"]["layers"],
            "D": arch["embed_dim"], "P": len(config.layers), "N_q": config.n_queries,
            "E": config.n_experts, "k": config.top_k, "M_n": config.len_normal,
            "M_a": config.len_abnormal, "M_q": config.len_context, "hidden": config.router_hidden}


def _box(ax, x, y, w, h, text, kind):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=COLORS[kind], ec="0.35", lw=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=MIN_FONT)


def _arrow(ax, start, end, text=""):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, lw=0.9,
                                 color="0.25"))
    if text:
        horizontal = abs(end[1] - start[1]) < 1e-6  # label above a horizontal arrow, else beside
        ax.text((start[0] + end[0]) / 2 + (0 if horizontal else 0.08),
                (start[1] + end[1]) / 2 + (0.12 if horizontal else 0), text, fontsize=MIN_FONT,
                color="0.25", ha="center" if horizontal else "left",
                va="bottom" if horizontal else "center")


def _canvas(width, height, title):
    fig, ax = plt.subplots(figsize=fit(width, height))
    ax.set(xlim=(-0.1, width + 0.1), ylim=(-0.2, height), xticks=[], yticks=[])  # room for box padding
    ax.axis("off")
    ax.set_title(title, fontsize=MIN_FONT + 1)
    return fig, ax


def draw_promptmoe(config: PromptMoEConfig):
    """The whole model: frozen CLIP, one VGMoP per layer and branch, map, score and loss."""
    s = architecture_shapes(config)
    blocks = ", ".join(str(b) for b in config.layers)
    fig, ax = _canvas(7.0, 6.4, f"PromptMoE, preset {config.preset!r} (sizes from its config)")
    _box(ax, 0.2, 5.4, 2.6, 0.7, f"image x\n(B, 3, {s['S']}, {s['S']})", "output")
    _box(ax, 3.4, 5.2, 3.4, 1.1, f"frozen CLIP image tower\n{config.clip_model}, {s['blocks']} blocks\n"
         f"V-V path from block {config.vv_start or config.layers[0]}", "frozen")
    _arrow(ax, (2.8, 5.75), (3.4, 5.75))
    _box(ax, 0.2, 3.8, 3.0, 1.0, f"F_x per block {blocks}\n(B, {s['HW']}+1, {s['D']})\n"
         f"patches + F_cls", "frozen")
    _box(ax, 3.8, 3.8, 3.0, 1.0, f"F_cls (global)\n(B, {s['D']})", "frozen")
    _arrow(ax, (4.4, 5.2), (1.7, 4.8))
    _arrow(ax, (5.3, 5.2), (5.3, 4.8))
    _box(ax, 0.2, 2.3, 3.0, 1.0, f"VGMoP x {s['P']} layers x 2 branches\n(Eq. 2-3): top-{s['k']} of "
         f"{s['E']} experts", "learned")
    _arrow(ax, (1.7, 3.8), (1.7, 3.3))
    _box(ax, 3.8, 2.3, 3.0, 1.0, f"prompts (Eq. 1) -> frozen\ntext tower: F_T\n(B, {s['P']}, 2, "
         f"{s['D']})", "frozen")
    _arrow(ax, (3.2, 2.8), (3.8, 2.8), "S_agg")  # label sits above the arrow
    _box(ax, 0.2, 0.8, 3.0, 1.0, f"anomaly map M (Eq. 6)\nmean over {s['P']} layers\n"
         f"(B, {s['S']}, {s['S']})", "output")
    _box(ax, 3.8, 0.8, 3.0, 1.0, "image score s (Eq. 7)\n1/2 (max M + p_abnormal(F_cls))\n(B,)",
         "output")
    _arrow(ax, (4.6, 2.3), (2.4, 1.8), "cos / tau")
    _arrow(ax, (5.3, 2.3), (5.3, 1.8))
    _arrow(ax, (6.4, 3.8), (6.4, 1.8))
    _arrow(ax, (3.2, 1.3), (3.8, 1.3))
    _box(ax, 0.2, 0.0, 6.6, 0.6, "training loss (Eq. 8): BCE(s) + Dice(M) + Focal(M)\n"
         "+ alpha L_balance (Eq. 4) + beta L_decouple (Eq. 5)", "loss")
    return fig


def draw_vgmop_layer(config: PromptMoEConfig, branch: str = "abnormal"):
    """One VGMoP layer and branch: queries, cross-attention, router, top-k and the mixture."""
    s = architecture_shapes(config)
    m = s["M_a"] if branch == "abnormal" else s["M_n"]
    fig, ax = _canvas(7.0, 5.6, f"one VGMoP layer, {branch} branch, preset {config.preset!r}")
    _box(ax, 0.2, 4.5, 2.8, 0.8, f"F_x^(l)\n(B, {s['HW']}+1, {s['D']})", "frozen")
    _box(ax, 3.8, 4.5, 3.0, 0.8, f"queries q\n({s['N_q']}, {s['D']})", "learned")
    _box(ax, 1.6, 3.1, 3.8, 0.9, f"cross-attention (Eq. 2), {config.n_heads} heads\nK, V = F_x W_K, "
         f"F_x W_V -> O: (B, {s['N_q']}, {s['D']})", "learned")
    _arrow(ax, (1.6, 4.5), (2.4, 4.0), "K, V")
    _arrow(ax, (5.3, 4.5), (4.6, 4.0), "q")
    _box(ax, 0.2, 1.7, 3.0, 0.9, f"r = mean of O\n(B, {s['D']})", "learned")
    _arrow(ax, (2.6, 3.1), (1.7, 2.6))
    _box(ax, 3.8, 1.7, 3.0, 0.9, f"router G (Eq. 3): {s['D']}-{s['hidden']}-{s['E']}\nz: (B, {s['E']}), "
         f"top-{s['k']}, softmax -> w", "learned")
    _arrow(ax, (3.2, 2.15), (3.8, 2.15))
    _box(ax, 0.2, 0.2, 3.0, 0.9, f"expert pool E^(l,{branch[0]})\n({s['E']}, {m}, {s['D']})",
         "learned")
    _box(ax, 4.0, 0.2, 2.8, 0.9, f"S_agg = sum_i w_i s_i (Eq. 3)\n(B, {m}, {s['D']})", "output")
    _arrow(ax, (3.2, 0.65), (4.0, 0.65), "s_i")
    _arrow(ax, (5.3, 1.7), (5.3, 1.1), "indices, w")
    return fig


def _example_weights(config: PromptMoEConfig, n_images: int = 2):
    """Illustrative dense routing weights (n, E): image i picks k experts starting at 3i, with
    unequal weights that sum to 1 (Fig. 1 of the paper shows non-uniform weights)."""
    import numpy as np

    E, k = config.n_experts, config.top_k
    raw = np.arange(k, 0, -1, dtype=float)  # k, k-1, ..., 1: the first choice weighs most
    out = np.zeros((n_images, E))
    for i in range(n_images):
        out[i, [(3 * i + j * 2) % E for j in range(k)]] = raw / raw.sum()
    return out


def draw_monolithic_vs_compositional(config: PromptMoEConfig, weights=None,
                                     source: str = "illustrative weights"):
    """The paper's Fig. 1 idea: (a) one learned prompt for every image, (b) a prompt composed per
    image from k of E expert prompts, with the weights the router gave.

    Args:
        config: gives E (``n_experts``) and k (``top_k``).
        weights: dense routing weights (n_images, E), 0 for experts not chosen, each row summing
            to 1 (``Routing.dense_weights()`` of one layer and branch), one or two images.
            ``None`` draws illustrative weights.
        source: where the weights come from (printed under panel b: say preset and model).
    """
    import numpy as np

    w = _example_weights(config) if weights is None else np.asarray(weights, dtype=float)
    E = config.n_experts
    if w.ndim != 2 or w.shape[1] != E or not 1 <= len(w) <= 2:
        raise ValueError(f"weights must be (n_images = 1 or 2, E={E}), got shape {w.shape}")
    if (w < 0).any() or not np.allclose(w.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError(f"weights: each row must be >= 0 and sum to 1, got sums {w.sum(axis=1)}")
    n = len(w)
    fig, ax = _canvas(14.0, 7.9, "")
    ax.plot([6.7, 6.7], [0.2, 7.6], ls="--", lw=0.8, color="0.6")  # the two panels
    # (a) monolithic: one prompt, one text feature, the same for every image
    ax.text(3.2, 7.4, "(a) monolithic prompt", ha="center", fontsize=MIN_FONT + 1, weight="bold")
    _box(ax, 0.3, 5.9, 5.8, 1.1, "one learned prompt pair\n[S_n] [S_a] [object] [Q_ctx]", "learned")
    _box(ax, 0.3, 4.2, 5.8, 0.9, "frozen text tower -> F_T", "frozen")
    _arrow(ax, (3.2, 5.9), (3.2, 5.1))
    for i in range(n):
        x = 0.3 + i * 6.0 / n
        _box(ax, x, 1.9, 6.0 / n - 0.3, 1.0, f"image {i + 1}:\nsame F_T", "output")
        _arrow(ax, (3.2, 4.2), (x + (6.0 / n - 0.3) / 2, 2.9))
    ax.text(3.2, 1.0, "one description of 'normal' and\n'abnormal' for every image",
            ha="center", va="center", fontsize=MIN_FONT)
    # (b) compositional: per image, the router weighs k of the E expert prompts
    ax.text(10.4, 7.4, "(b) compositional prompt (PromptMoE)", ha="center",
            fontsize=MIN_FONT + 1, weight="bold")
    x0, cell = 7.0, 6.8 / E
    for j in range(E):
        _box(ax, x0 + j * cell + 0.04, 6.4, cell - 0.12, 0.6, f"E{j + 1}", "learned")
    ax.text(10.4, 5.95, f"expert pool: E = {E} prompts", ha="center", va="center",
            fontsize=MIN_FONT)
    row_h = 2.3 / n  # the rows of weights fill y = 3.3 ... 5.6
    for i in range(n):
        y = 5.6 - (i + 1) * row_h
        ax.text(x0, y + 0.72 * row_h, f"image {i + 1}: weights of its top-{int((w[i] > 0).sum())}",
                fontsize=MIN_FONT, va="center")
        for j in range(E):
            chosen = w[i, j] > 0
            ax.add_patch(FancyBboxPatch((x0 + j * cell + 0.04, y), cell - 0.12, 0.42 * row_h,
                                        boxstyle="round,pad=0.01", ec="0.5", lw=0.6,
                                        fc=COLORS["learned"] if chosen else "white"))
            ax.text(x0 + j * cell + cell / 2 - 0.04, y + 0.21 * row_h,
                    f"{w[i, j]:.2f}".lstrip("0") if chosen else "-", ha="center", va="center",
                    fontsize=MIN_FONT)
    _box(ax, 7.0, 1.9, 6.8, 1.0, "S_agg(image) = sum_i w_i s_i\n-> frozen text tower -> F_T(image)",
         "frozen")
    _arrow(ax, (10.4, 3.3), (10.4, 2.9))
    note = "a prompt per image from k of E experts (" + source + ")"
    ax.text(10.4, 0.9, "\n".join(textwrap.wrap(note, 44)), ha="center", va="center",
            fontsize=MIN_FONT)
    return fig
