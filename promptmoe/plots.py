"""Plots of the book. Taught in chapters 4-9.

Inputs are plain numpy arrays and pandas tables (this module never imports the model); every
function returns the ``Figure`` and never calls ``plt.show()``. Single-panel plots take ``ax=``.
A ``tiny``-preset number is plumbing, never a result: every plot of this run's numbers takes
keyword-only ``preset=`` and ``data=`` (no defaults) and writes :func:`run_label` under the
figure, or into the title when drawing on a caller's ``ax``.
"""
from __future__ import annotations

import math
import textwrap
import warnings
from typing import Mapping, Optional, Sequence, Tuple

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .paper import PRO_COMPAT, PRO_OFFICIAL, PRO_PAPER

LOSS_TERMS = ("total", "focal", "dice", "bce", "balance", "decouple")
BRANCHES = ("normal", "abnormal")
# The book's content column shows about 7 inches of a 100-dpi figure at 1280 px without shrinking
# it much, so 9-point text stays >= 9 points on the page (tools/check_pages.py looks at the page).
COLUMN_INCHES = 7.0
MIN_FONT = 9
BOOK_STYLE = {"figure.dpi": 100, "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10,
              "xtick.labelsize": MIN_FONT, "ytick.labelsize": MIN_FONT, "legend.fontsize": MIN_FONT,
              "figure.titlesize": 11}


def fit(width: float, height: float, column: float = COLUMN_INCHES) -> Tuple[float, float]:
    """``(width, height)`` in inches scaled down (aspect kept) to at most the column's width."""
    scale = min(1.0, column / width)
    return width * scale, height * scale


def run_label(preset: str, data: str) -> str:
    """Which preset and data produced a figure; offline presets say what they are (tiny:
    plumbing; micro: a stand-in CLIP pretrained by this project)."""
    from .runtime import preset_note

    note = f" ({preset_note(preset)})" if preset_note(preset) else ""
    return f"this run: preset={preset}{note}, data={data}"


def _label(fig, preset: str, data: str, caller_ax=None, legend=None):
    """Caption ``fig`` with the run label; on a caller's Axes put it in that Axes' title instead.

    ``legend``: optional (handles, labels) drawn as one row under the Axes, above the caption,
    where it can cover no bar (the Axes are laid out above it)."""
    label = run_label(preset, data)
    if caller_ax is not None:  # the caller owns the figure: a caption could collide with theirs
        title = caller_ax.get_title()
        # wrapped to the Axes' width (~12 characters per inch at 9 pt), never wider than the figure
        inches = caller_ax.get_position().width * fig.get_figwidth()
        label = "\n".join(textwrap.wrap(label, max(30, int(inches * 12))))
        caller_ax.set_title(f"{title}\n{label}" if title else label, fontsize=MIN_FONT)
        return fig
    # wrap to the figure's width (~12 characters per inch at 9 pt): a narrow plot must not crop it
    lines = textwrap.wrap(label, max(20, int(fig.get_figwidth() * 12)))
    caption_in = 0.15 + 0.15 * len(lines)  # inches under the Axes kept for the caption
    legend_in = 0.0 if legend is None else 0.35  # one row of 9 pt entries
    with warnings.catch_warnings():  # tight_layout warns on colorbars and legends: cosmetic
        warnings.simplefilter("ignore")
        fig.tight_layout(rect=(0, (caption_in + legend_in) / fig.get_figheight(), 1, 1))
    if legend is not None:
        fig.legend(*legend, loc="lower center", ncol=len(legend[1]), frameon=False,
                   fontsize=MIN_FONT, bbox_to_anchor=(0.5, caption_in / fig.get_figheight()))
    fig.text(0.5, 0.05 / fig.get_figheight(), "\n".join(lines), ha="center", va="bottom",
             fontsize=MIN_FONT, color="dimgray")
    return fig


def _axes(ax, figsize):
    """``(fig, ax)``: the caller's Axes, or one on a fresh figure."""
    return plt.subplots(figsize=fit(*figsize)) if ax is None else (ax.figure, ax)


def _grid(n: int, ncols: int = 3, size=(4.0, 3.0)):
    """A figure with ``n`` Axes in rows of ``ncols`` (spare cells removed), returned flat."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=fit(size[0] * ncols, size[1] * nrows),
                             squeeze=False)
    for spare in axes.ravel()[n:]:
        spare.remove()
    return fig, list(axes.ravel()[:n])


def _smooth(series: pd.Series, window: int) -> pd.Series:
    # min_periods=1: no NaN ramp at the start, and a NaN step is skipped, not spread
    return series.rolling(max(1, int(window)), min_periods=1).mean()


# ----------------------------------------------------------------------------- training (ch. 5)
def plot_loss_curves(log, terms: Sequence[str] = LOSS_TERMS, smooth: int = 1,
                     show_lr: bool = True, *, preset: str, data: str):
    """One panel per loss term against the step (+1 for ``lr``), dotted lines at new epochs.

    ``log`` is a DataFrame or CSV path, one row per step: step, epoch, lr and the terms
    (``balance`` and ``decouple`` unweighted). ``smooth`` is a rolling-mean window in steps;
    the raw curve stays faint behind the smoothed one.
    """
    df = log if isinstance(log, pd.DataFrame) else pd.read_csv(log)
    missing = [c for c in ("step", *terms) if c not in df.columns]
    if missing:
        raise ValueError(f"loss log lacks columns {missing}; it has {list(df.columns)}")
    panels = list(terms) + (["lr"] if show_lr and "lr" in df.columns else [])
    fig, axes = _grid(len(panels))
    starts = df["step"][df["epoch"].diff().fillna(0) != 0] if "epoch" in df.columns else []
    for ax, term in zip(axes, panels):
        if smooth > 1 and term != "lr":
            ax.plot(df["step"], df[term], color="C0", alpha=0.25, lw=0.8)
        ax.plot(df["step"], _smooth(df[term], 1 if term == "lr" else smooth), color="C0")
        for s in starts:
            ax.axvline(s, color="gray", ls=":", lw=0.8)
        ax.set_title(term + (" (unweighted)" if term in ("balance", "decouple") else ""))
        ax.set_xlabel("step")
    fig.suptitle("Training losses" + (f" (rolling mean of {smooth} steps)" if smooth > 1 else ""))
    return _label(fig, preset, data)


def plot_decouple_dynamics(logs: Mapping[str, pd.DataFrame], smooth: int = 1,
                           *, preset: str, data: str):
    """Fig. 7 style: L_balance and L_decouple against the step, one line per run.

    ``logs`` maps run name -> loss log; a name with "without" or "w/o" is drawn dashed.
    """
    fig, axes = _grid(2, ncols=2, size=(5.0, 5.0))  # tall enough for the legend and caption under it
    for i, (name, log) in enumerate(logs.items()):
        df = log if isinstance(log, pd.DataFrame) else pd.read_csv(log)
        dashed = "without" in name.lower() or "w/o" in name.lower()
        for ax, term in zip(axes, ("balance", "decouple")):
            if term in df.columns:
                ax.plot(df["step"], _smooth(df[term], smooth), ls="--" if dashed else "-",
                        color=f"C{i}", label=name)
    for ax, term in zip(axes, ("balance", "decouple")):
        ax.set(title=f"$L_{{{term}}}$ (unweighted)", xlabel="step")
    # one legend for both panels, under them: inside a panel it covers the curves
    handles, names = axes[0].get_legend_handles_labels()
    fig.suptitle("Effect of $L_{decouple}$ on MoE training dynamics")
    return _label(fig, preset, data, legend=(handles, names) if names else None)


# ----------------------------------------------------------------------------- maps (ch. 2, 6)
def _as_uint8(image) -> np.ndarray:
    """(H, W) or (H, W, 3), uint8 or float in [0, 1] -> (H, W, 3) uint8."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.dtype != np.uint8:
        image = np.clip(np.nan_to_num(image.astype(np.float64)) * 255.0, 0, 255).round()
    return image.astype(np.uint8)


def overlay(image, amap, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a colour-mapped anomaly map onto an image: ``(1 - alpha) image + alpha cmap(amap)``.

    ``image`` is (H, W, 3) uint8 (or float in [0, 1], or (H, W) grey); ``amap`` is (H, W) in
    [0, 1], clipped, and its NaN pixels keep the image. Returns (H, W, 3) uint8.
    """
    image, amap = _as_uint8(image), np.asarray(amap, dtype=np.float64)
    if amap.shape != image.shape[:2]:
        raise ValueError(f"anomaly map {amap.shape} and image {image.shape} differ in (H, W); "
                         "resize the map to the image first")
    colours = matplotlib.colormaps[cmap](np.clip(np.nan_to_num(amap), 0, 1))[..., :3] * 255.0
    a = np.where(np.isnan(amap), 0.0, float(alpha))[..., None]  # (H, W, 1)
    out = (1.0 - a) * image + a * colours  # (H, W, 3)
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def _to_unit(maps):
    """Maps already in [0, 1] keep their absolute scale; others share one min-max range."""
    values = np.concatenate([m[np.isfinite(m)] for m in maps] + [np.zeros(0)])
    if values.size == 0 or (values.min() >= 0.0 and values.max() <= 1.0):
        return maps
    lo, hi = values.min(), values.max()
    return [(m - lo) / (hi - lo if hi > lo else 1.0) for m in maps]


def show_maps(images, maps, masks=None, titles=None, scores=None, *, preset: str, data: str,
              ncols: Optional[int] = None, alpha: float = 0.5, cmap: str = "jet"):
    """Fig. 5 style grid: per sample a column of image / ground truth / anomaly-map overlay.

    Args:
        images: N images (H, W, 3), uint8 or float in [0, 1].
        maps: N anomaly maps (H, W); if not all in [0, 1] they share one min-max scale.
        masks: N masks (H, W) or None entries (drawn as "no mask"); masks=None drops the row.
        titles, scores: per-sample column titles and image scores (``pred_score``).
        ncols: samples per block of rows (default 4, so that the grid fits the book's column).

    Returns a figure of ``rows * ceil(N / ncols) * ncols`` Axes, rows = 3 (2 without masks).
    """
    n = len(images)
    if len(maps) != n:
        raise ValueError(f"{n} images but {len(maps)} maps")
    maps = _to_unit([np.asarray(m, dtype=np.float64) for m in maps])
    ncols = min(ncols or 4, n)
    rows = ["image", "ground truth", "overlay"] if masks is not None else ["image", "overlay"]
    blocks = math.ceil(n / ncols)
    fig, axes = plt.subplots(len(rows) * blocks, ncols, squeeze=False,
                             figsize=fit(2.2 * ncols, 2.2 * len(rows) * blocks + 0.4))
    for ax in axes.ravel():
        ax.set(xticks=[], yticks=[])
    for b in range(blocks):
        for r, name in enumerate(rows):
            axes[b * len(rows) + r, 0].set_ylabel(name)
    for i in range(n):
        col, top = i % ncols, (i // ncols) * len(rows)
        axes[top, col].imshow(_as_uint8(images[i]))
        head = titles[i] if titles is not None else f"sample {i}"
        head += f"\nscore={float(scores[i]):.3f}" if scores is not None else ""
        axes[top, col].set_title(head, fontsize=MIN_FONT)
        if masks is not None and masks[i] is None:
            axes[top + 1, col].text(0.5, 0.5, "no mask", ha="center", va="center")
            axes[top + 1, col].set_facecolor("0.85")  # not white: white means "all anomalous"
        elif masks is not None:
            axes[top + 1, col].imshow(np.asarray(masks[i], float), cmap="gray", vmin=0, vmax=1)
        axes[top + len(rows) - 1, col].imshow(overlay(images[i], maps[i], alpha, cmap))
    for i in range(n, blocks * ncols):  # the unused cells of the last block: no empty frames
        for r in range(len(rows)):
            axes[(i // ncols) * len(rows) + r, i % ncols].set_axis_off()
    return _label(fig, preset, data)


def plot_similarity_maps(image, maps: Mapping[str, np.ndarray], *, preset: str, data: str,
                         cmap: str = "jet", per_row: int = 4):
    """The image, then each map on its own colour scale (chapter 2, layer by layer), in rows of
    at most ``per_row`` panels so that each stays legible at the column's width."""
    fig, axes = _grid(1 + len(maps), ncols=per_row, size=(2.6, 2.9))
    axes[0].imshow(_as_uint8(image))
    for ax, amap in zip(axes[1:], maps.values()):
        ax.imshow(np.asarray(amap, dtype=float), cmap=cmap)  # NaN pixels stay blank
    for ax, name in zip(axes, ["image", *maps]):
        ax.set(xticks=[], yticks=[])
        ax.set_title(name, fontsize=9)
    return _label(fig, preset, data)


# ----------------------------------------------------------------------------- experts (ch. 8)
def activation_frequency(routing: pd.DataFrame, layer: Optional[int] = None,
                         reduce: str = "mean") -> pd.DataFrame:
    """Share of a dataset's images that chose each expert, ``count / n_images``.

    ``routing`` has columns dataset, branch, layer (1-based), expert (0-based), count, n_images;
    ``layer`` picks one block, None combines the blocks by ``reduce`` ("mean" or "sum"). A
    missing (layer, expert) row counts 0. Returns dataset, branch, expert, frequency rows.
    """
    df = routing if layer is None else routing[routing["layer"] == layer]
    if df.empty:
        raise ValueError(f"no routing rows for layer={layer}; "
                         f"layers present: {sorted(routing['layer'].unique())}")
    n_experts = int(routing["expert"].max()) + 1
    rows = []
    for (dataset, branch), g in df.groupby(["dataset", "branch"], sort=False):
        counts = g.pivot_table(index="layer", columns="expert", values="count", aggfunc="sum")
        counts = counts.reindex(columns=range(n_experts)).fillna(0.0)  # (layers, E)
        n_images = g["n_images"].iloc[0]
        freq = counts / n_images if n_images else counts * np.nan  # no images: undefined
        per_expert = freq.sum(axis=0) if reduce == "sum" else freq.mean(axis=0)  # (E,)
        rows += [dict(dataset=dataset, branch=branch, expert=e, frequency=float(per_expert[e]))
                 for e in range(n_experts)]
    return pd.DataFrame(rows)


def plot_expert_activation(routing: pd.DataFrame, branch: Optional[str] = None,
                           datasets: Optional[Sequence[str]] = None,
                           layer: Optional[int] = None, reduce: str = "mean",
                           *, preset: str, data: str):
    """Fig. 6 style: activation frequency of E1..EE, bars grouped by dataset, a panel per branch.

    One ``BarContainer`` per dataset (``ax.containers``, label = dataset), bars in expert order,
    so the heights can be read back. See :func:`activation_frequency` for the arguments.
    """
    freq = activation_frequency(routing, layer, reduce)
    branches = [branch] if branch else [b for b in BRANCHES if b in set(freq["branch"])]
    datasets = list(datasets) if datasets else list(dict.fromkeys(freq["dataset"]))
    n_experts, width = int(freq["expert"].max()) + 1, 0.8 / max(1, len(datasets))
    # one panel per row, each the column's width: side by side they shrank to a strip
    fig, axes = _grid(len(branches), 1, (7.0, 2.4))
    palette = sns.color_palette("tab10", len(datasets))
    where = f"block {layer}" if layer is not None else f"{reduce} over layers"
    for ax, b in zip(axes, branches):
        for j, d in enumerate(datasets):
            f = freq[(freq["branch"] == b) & (freq["dataset"] == d)].set_index("expert")
            ax.bar(np.arange(n_experts) + (j - (len(datasets) - 1) / 2) * width,
                   f["frequency"].reindex(range(n_experts)).to_numpy(), width, label=d,
                   color=palette[j])
        ax.set_xticks(range(n_experts), [f"E{e + 1}" for e in range(n_experts)])
        ax.set(title=f"{b} experts ({where})", ylabel="frequency")
        if reduce != "sum":  # a share of the images: at most 1
            ax.set_ylim(0, 1.05)
    handles, names = axes[0].get_legend_handles_labels()  # one legend under the panels
    return _label(fig, preset, data, legend=(handles, names))


def plot_expert_tsne(normal_means, abnormal_means, perplexity: Optional[float] = None,
                     seed: int = 0, labels: Optional[Sequence[str]] = None,
                     *, preset: str, data: str, ax=None):
    """Fig. 8: t-SNE of the mean expert embeddings of both pools, one point per expert.

    Args:
        normal_means, abnormal_means: (n_n, D) and (n_a, D), e.g. layers x E rows each.
        perplexity: default ``min(5, n - 1)``; any value is clipped below n, as t-SNE needs.
        labels: n_n + n_a names (normal rows first), e.g. "L1E3", written beside the points.
            Rows with NaN are dropped together with their names.
    """
    from sklearn.manifold import TSNE  # here, not at the top: slow import, one function

    x = np.vstack([np.asarray(normal_means, float), np.asarray(abnormal_means, float)])  # (n, D)
    pool = np.array(["normal"] * len(normal_means) + ["abnormal"] * len(abnormal_means))
    names = np.asarray(labels if labels is not None else [""] * len(x), dtype=object)
    if len(names) != len(x):
        raise ValueError(f"{len(names)} labels for {len(x)} expert embeddings")
    keep = np.isfinite(x).all(axis=1)
    x, pool, names = x[keep], pool[keep], names[keep]
    if len(x) < 3:
        raise ValueError(f"t-SNE needs at least 3 finite embeddings, got {len(x)}")
    perplexity = min(5.0 if perplexity is None else float(perplexity), len(x) - 1.0)
    # exact gradients: a few hundred points at most, and several times faster than Barnes-Hut
    xy = TSNE(n_components=2, perplexity=perplexity, random_state=seed, method="exact",
              init="pca" if x.shape[1] >= 2 else "random").fit_transform(x)  # (n, 2)
    fig, axis = _axes(ax, (5.0, 4.5))
    for name, colour in zip(BRANCHES, ("C0", "C3")):
        axis.scatter(*xy[pool == name].T, c=colour, label=f"{name} experts", s=30)
    for point, name in zip(xy, names):
        if name:
            axis.annotate(str(name), point, fontsize=MIN_FONT, xytext=(3, 3), textcoords="offset points")
    axis.set_title(f"t-SNE of mean expert embeddings (perplexity={perplexity:g})")
    axis.legend(fontsize=MIN_FONT)
    return _label(fig, preset, data, ax)


def plot_routing_weights(weights, expert_labels: Optional[Sequence[str]] = None,
                         image_titles: Optional[Sequence[str]] = None,
                         *, preset: str, data: str, ax=None):
    """Heatmap of per-image router weights (the instances of Fig. 1), plus a colorbar Axes.

    ``weights`` is (N, E), 0 for the experts the top-k did not choose: those cells stay blank.
    """
    w = np.asarray(weights, dtype=float)
    n, e = w.shape  # (N, E)
    experts = list(expert_labels) if expert_labels is not None else [f"E{k + 1}" for k in range(e)]
    images = list(image_titles) if image_titles is not None else [f"image {i}" for i in range(n)]
    fig, axis = _axes(ax, (0.7 * e + 2.5, 0.45 * n + 1.8))
    sns.heatmap(pd.DataFrame(w, index=images, columns=experts), mask=~(w > 0), ax=axis,
                annot=w.size <= 200, fmt=".2f", cmap="viridis", vmin=0, linewidths=0.5,
                cbar_kws={"label": "router weight"})
    axis.set_title("Router weights per image (blank = expert not chosen)")
    return _label(fig, preset, data, ax)


# ----------------------------------------------------------------------------- results (ch. 6-7)
def plot_pro_curves(curves: Mapping[str, Tuple[np.ndarray, np.ndarray]], fpr_limit: float = 0.3,
                    *, preset: str, data: str, ax=None, legend: bool = True):
    """PRO against FPR, one line per curve; AU-PRO integrates the shaded part up to fpr_limit.

    ``legend=False`` leaves the legend out, for a grid of panels that shares one figure legend
    (inside a small panel it covers the curves)."""
    fig, axis = _axes(ax, (5.0, 4.0))
    axis.axvspan(0, fpr_limit, color="gray", alpha=0.12,
                 label=f"integrated: FPR \u2264 {fpr_limit:g}")
    for name, (fprs, pros) in curves.items():
        fprs, pros = np.asarray(fprs, float), np.asarray(pros, float)
        ok = np.isfinite(fprs) & np.isfinite(pros)
        order = np.argsort(fprs[ok], kind="stable")
        axis.plot(fprs[ok][order], pros[ok][order], label=name)
    axis.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate",
             ylabel="per-region overlap", title="PRO curves")
    if legend:
        axis.legend(fontsize=MIN_FONT)
    return _label(fig, preset, data, ax)


def _paired_bars(ax, names, paper, ours, horizontal=False, extra=None, errors=None):
    """Paper and this-run bars side by side at each position; a NaN value gets no bar.

    ``extra``: an optional (label, values) third bar, e.g. the official AU-PRO beside the compat
    PRO that is compared with the paper. ``errors``: {label: values} error bars (e.g. the standard
    deviation over seeds) for the series of that label."""
    series = [(paper, "paper", "0.6"), (ours, "this run", "C0")]
    if extra is not None:
        series.append((extra[1], extra[0], "C1"))
    errors = errors or {}
    pos, w = np.arange(len(names)), 0.76 / len(series)
    bar = ax.barh if horizontal else ax.bar
    texts = []
    for i, (values, label, colour) in enumerate(series):
        values = np.asarray(values, dtype=float)
        ok = np.isfinite(values)
        shift = (i - (len(series) - 1) / 2) * w
        err = None
        if label in errors:
            err = np.nan_to_num(np.asarray(errors[label], dtype=float)[ok])
            err = {("xerr" if horizontal else "yerr"): err, "capsize": 2,
                   "error_kw": {"elinewidth": 0.8, "ecolor": "0.2"}}
        texts += ax.bar_label(bar(pos[ok] + shift, values[ok], w, label=label, color=colour,
                                  **(err or {})),
                              fmt="%.1f", fontsize=MIN_FONT, padding=1)
    (ax.set_yticks if horizontal else ax.set_xticks)(pos, names)
    ax.legend(fontsize=MIN_FONT)
    return _fit_bar_labels(ax, texts, w, horizontal)


def _fit_bar_labels(ax, texts, width, horizontal) -> bool:
    """Turn the labels of vertical bars upright (90 degrees) when one is wider than its bar, so
    that neighbours cannot overlap; returns whether it did (the caller then needs headroom)."""
    if horizontal or not texts:
        return False
    renderer = ax.figure.canvas.get_renderer()
    x0, x1 = ax.transData.transform([(0, 0), (width, 0)])[:, 0]
    widest = max(t.get_window_extent(renderer).width for t in texts)
    if widest <= 0.9 * abs(x1 - x0):  # 10% margin: the layout may still shrink the Axes a little
        return False
    for t in texts:
        t.set_rotation(90)
        t.set_horizontalalignment("center")
        t.set_verticalalignment("bottom")
    return True


def _panels(table: pd.DataFrame) -> list:
    """(key, title, paper column, this-run column, extra (label, column) or None) per panel."""
    panels = []
    for m in dict.fromkeys(c.rsplit(" (", 1)[0] for c in table if c.endswith(")")):
        if m in ("pro", "pro_compat") or (m == "au_pro" and PRO_PAPER in table):  # one PRO group
            if not any(p[0] == "pro" for p in panels):
                panels.append(("pro", "PRO (paper's protocol = pro_compat)", PRO_PAPER, PRO_COMPAT,
                               ("this run, official AU-PRO", PRO_OFFICIAL)))
        else:
            panels.append((m, m, f"{m} (paper)", f"{m} (this run)", None))
    return panels


def plot_side_by_side(table: pd.DataFrame, metrics: Optional[Sequence[str]] = None,
                      *, preset: str, data: str):
    """Bars of the paper's number beside this run's, per dataset; one panel per metric.

    Args:
        table: index = datasets, columns ``"<metric> (paper)"`` and ``"<metric> (this run)"`` in
            percent, as :func:`promptmoe.paper.side_by_side` returns; NaN cells get no bar. Its
            PRO columns give one panel: the paper's PRO beside this run's compat PRO (the same
            protocol) with the official AU-PRO as a third, labelled bar.
        metrics: which metrics (default: every metric with a column in ``table``); the paper's
            ``"pro"`` selects the PRO panel (so do this run's ``"pro_compat"`` and ``"au_pro"``,
            whose bars it holds).
    """
    panels = _panels(table)
    if metrics is not None:
        keys = {p[0] for p in panels}
        wanted = ["pro" if m in ("pro", "au_pro", "pro_compat") and "pro" in keys else m
                  for m in metrics]
        missing = [m for m in wanted if m not in keys]
        if missing:
            raise ValueError(f"no '{missing[0]} (paper)' or '{missing[0]} (this run)' column in "
                             f"{list(table)}")
        panels = [p for p in panels if p[0] in wanted]
    nan = pd.Series(np.nan, index=table.index)
    fig, axes = _grid(len(panels), 2, (max(4.0, 0.9 * len(table) + 2), 4.5))
    for ax, (_, title, paper_col, ours_col, extra) in zip(axes, panels):
        third = None if extra is None else (extra[0], table.get(extra[1], nan))
        _paired_bars(ax, list(table.index), table.get(paper_col, nan), table.get(ours_col, nan),
                     extra=third)
        ax.set(title=title, ylabel="%", ylim=(0, 108), yticks=range(0, 101, 25))
        ax.tick_params(axis="x", labelrotation=30)
    # one legend for all panels, under them: inside a panel it covers bars at column width
    entries = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(name, handle)
        ax.get_legend().remove()
    fig.suptitle("Paper vs this run")
    _label(fig, preset, data, legend=(list(entries.values()), list(entries)))
    for ax in axes:  # after the layout: the panels have their final height
        _room_for_labels(ax)
    return fig


def _room_for_labels(ax) -> None:
    """Raise the top of a bar panel until every bar label (upright ones are tall) fits inside."""
    texts = [t for t in ax.texts if hasattr(t, "xy")]  # bar_label annotations, anchored at bar tops
    if not texts:
        return
    renderer = ax.figure.canvas.get_renderer()
    height = ax.bbox.height  # pixels
    top = ax.get_ylim()[1]
    for t in texts:
        label = t.get_window_extent(renderer).height + 3  # + bar_label's padding
        if label < height:
            top = max(top, t.xy[1] * height / (height - label))
    ax.set_ylim(0, top * 1.02)


def plot_ablation(table: pd.DataFrame, metric: str = "", *, preset: str, data: str, ax=None):
    """Horizontal bars: rows = configurations, columns "paper" and "this run" (percent), and
    "this run, official AU-PRO" as a third bar when present. Columns ending in " std" (e.g.
    "this run std", the standard deviation over seeds) become error bars of their series."""
    fig, axis = _axes(ax, (6.0, 0.6 * len(table) + 1.5))
    nan = pd.Series(np.nan, index=table.index)
    third = "this run, official AU-PRO"  # beside the compat PRO (ablation.plot_table)
    errors = {c[:-4]: table[c] for c in table.columns if c.endswith(" std")}
    _paired_bars(axis, [str(i) for i in table.index], table.get("paper", nan),
                 table.get("this run", nan), horizontal=True,
                 extra=(third, table[third]) if third in table else None, errors=errors)
    axis.invert_yaxis()  # first configuration on top, as in the paper's tables
    axis.set(xlabel=f"{metric} (%)" if metric else "%", xlim=(0, 108),
             title=f"Ablation: {metric}" if metric else "Ablation")
    return _label(fig, preset, data, ax)
