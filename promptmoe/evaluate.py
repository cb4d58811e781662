"""Zero-shot evaluation: per-category metrics, tables beside the paper's, routing statistics.

Taught in chapter 6 (and used by chapters 7-9). For each dataset and category the model scores
every image; metrics follow REFERENCE.md D8 (image AUROC/AP, pixel AUROC, AU-PRO, and the compat
PRO of most ZSAD papers); the dataset value is the mean over its categories, as in the paper.
Pixel metrics use only images with a ground-truth mask (all normal images count: their mask is
empty); a category whose anomalies have no masks (HeadCT, BrainMRI, Br35H) gets NaN there.
Anomalous images without a mask are counted per category (``n_no_mask``) and left out of the pixel
metrics; anomalous images whose mask is empty at the evaluation size are warned about and counted
(``n_empty_mask``). A dataset's mean skips undefined (NaN) categories and says so: ``n_categories``
and, when some were undefined, ``note`` (e.g. "pixel_auroc: mean of 2 of 3 categories"); the
Markdown tables print an undefined value as "-". A non-finite score or map is an error naming the
image. Report rows carry the reader's label (``dataset``) and the on-disk ``format``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import warnings

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .checkpoint import atomic_write
from . import distributed
from .loading import batches, make_loader
from .metrics import compute_metrics
from .model import model_device
from .prompts import BRANCHES

METRIC_COLUMNS = ("image_auroc", "image_ap", "pixel_auroc", "au_pro", "pro_compat")
# the paper's metric names (promptmoe.paper.METRICS): its PRO column is "pro", compared with
# this run's pro_compat (the same protocol) and shown beside our official au_pro
PAPER_METRICS = ("image_auroc", "image_ap", "pixel_auroc", "pro")


@dataclass
class Predictions:
    """Model outputs for a set of images (arrays on the CPU).

    Attributes:
        scores (N,), labels (N,), maps (N, H, W) float32, masks (N, H, W) bool, has_mask (N,),
        categories / paths (N,), routing {branch: (N, P, E) dense expert weights}.
    """

    scores: np.ndarray
    labels: np.ndarray
    maps: np.ndarray
    masks: np.ndarray
    has_mask: np.ndarray
    categories: List[str]
    paths: List[str]
    routing: Dict[str, np.ndarray]


@torch.no_grad()
def predict(model, dataset, batch_size: int = 16, device=None, progress: bool = True,
            num_workers: Optional[int] = None, desc: str = "scoring") -> Predictions:
    """Run the model (eval mode: smoothed maps) over a dataset.

    ``device``: where the model's weights are (None: read from the model; another device is an
    error). ``num_workers``: loader processes (None: :func:`~promptmoe.loading.default_workers`)."""
    device = model_device(model, device)
    model.eval()
    d = distributed.info()
    if d is not None:  # under torchrun: score every world-th image here, gather in order
        return _sharded_predict(model, dataset, d, batch_size=batch_size, device=device,
                                progress=progress and d.rank == 0, num_workers=num_workers,
                                desc=desc)
    parts = {k: [] for k in ("scores", "labels", "maps", "masks", "has_mask", "categories", "paths")}
    routing = {b: [] for b in BRANCHES}
    with make_loader(dataset, batch_size, device, num_workers) as loader:  # workers end with it
        for batch in batches(loader, progress, desc=desc, leave=False):
            out = model(batch["image"].to(device, non_blocking=True))
            parts["scores"].append(out["pred_score"].float().cpu().numpy())
            parts["maps"].append(out["anomaly_map"].float().cpu().numpy())
            parts["labels"].append(batch["gt_label"].numpy())
            parts["masks"].append(batch["gt_mask"].numpy() > 0.5)
            parts["has_mask"].append(batch["has_mask"].numpy())
            parts["categories"] += list(batch["category"])
            parts["paths"] += list(batch["image_path"])
            for b, r in out["routing"].items():
                routing[b].append(r.dense_weights().float().cpu().numpy())
    cat = {k: (np.concatenate(v) if k not in ("categories", "paths") else v) for k, v in parts.items()}
    return Predictions(routing={b: np.concatenate(v) for b, v in routing.items() if v}, **cat)


def _sharded_predict(model, dataset, d, **kwargs) -> Predictions:
    """Each process predicts images rank, rank + world, ...; every process gets all of them."""
    from torch.utils.data import Subset

    n = len(dataset)
    with distributed.single_process():
        part = predict(model, Subset(dataset, list(range(d.rank, n, d.world))), **kwargs)
    parts = distributed.gather_objects(part, d)

    def merge(get):
        first = get(parts[0])
        if isinstance(first, list):
            out = [None] * n
        else:
            out = np.empty((n, *first.shape[1:]), dtype=first.dtype)
        for r, p in enumerate(parts):
            out[r::d.world] = get(p)
        return out

    fields = ("scores", "labels", "maps", "masks", "has_mask", "categories", "paths")
    routing = {b: merge(lambda p, b=b: p.routing[b]) for b in parts[0].routing}
    return Predictions(routing=routing, **{f: merge(lambda p, f=f: getattr(p, f)) for f in fields})


def _save_maps(path, pred: Predictions) -> None:
    with open(path, "wb") as fh:
        np.savez_compressed(fh, maps=pred.maps.astype(np.float16), scores=pred.scores,
                            labels=pred.labels, paths=np.array(pred.paths))


def check_finite(pred: Predictions, where: str = "") -> None:
    """ValueError naming the first images whose score or anomaly map holds inf or NaN."""
    bad_map = ~np.isfinite(pred.maps.reshape(len(pred.maps), -1)).all(axis=1)
    bad = np.flatnonzero(bad_map | ~np.isfinite(pred.scores))
    if bad.size:
        names = [pred.paths[i] for i in bad[:3]]
        raise ValueError(f"{where}{bad.size} image(s) got a non-finite (inf/NaN) score or anomaly map, e.g. "
                         f"{names}: check the checkpoint and these inputs; no metric was computed.")


def empty_masks(pred: Predictions) -> List[str]:
    """Anomalous images whose mask file exists but is empty at the evaluation size."""
    flat = pred.masks.reshape(len(pred.masks), -1)
    empty = (pred.labels == 1) & pred.has_mask & ~flat.any(axis=1)
    return [pred.paths[i] for i in np.flatnonzero(empty)]


def category_metrics(pred: Predictions, compat: bool = True) -> Dict[str, float]:
    """Metrics of one category; pixel metrics over the images that have ground truth."""
    # normal images always have ground truth (an empty mask); anomalous ones only with a mask file
    usable = pred.has_mask | (pred.labels == 0)
    has_pixels = bool((pred.has_mask & (pred.labels == 1)).any())
    masks = pred.masks[usable] if has_pixels else None
    maps = pred.maps[usable] if has_pixels else None
    labels = pred.labels[usable] if has_pixels else pred.labels
    out = compute_metrics(pred.labels, pred.scores, None, None)
    if has_pixels:
        pix = compute_metrics(labels, pred.scores[usable], masks, maps, compat=compat)
        out.update({k: pix[k] for k in ("pixel_auroc", "au_pro", "pro_compat")})
    return out


def routing_table(pred: Predictions, dataset: str, layers) -> pd.DataFrame:
    """Expert activation counts: one row per (branch, layer, expert) with the number of images
    that chose it (``count``), their summed weights and the number of images."""
    rows = []
    for branch, w in pred.routing.items():  # (N, P, E)
        n, P, E = w.shape
        blocks = list(layers) if P == len(layers) else [max(layers)]
        for p in range(P):
            for e in range(E):
                rows.append({"dataset": dataset, "branch": branch, "layer": blocks[p], "expert": e,
                             "count": int((w[:, p, e] > 0).sum()), "weight_sum": float(w[:, p, e].sum()),
                             "n_images": n})
    return pd.DataFrame(rows, columns=["dataset", "branch", "layer", "expert", "count",
                                       "weight_sum", "n_images"])


@dataclass
class EvalReport:
    per_category: pd.DataFrame  # dataset, category, n_images, metrics
    summary: pd.DataFrame  # one row per dataset: mean over categories
    routing: pd.DataFrame  # expert activation counts per dataset
    predictions: Dict[str, Predictions]  # kept only when asked (keep_predictions)


def evaluate(model, datasets: Mapping[str, object], out_dir=None, batch_size: int = 16,
             compat: bool = True, save_maps: bool = False, keep_predictions: bool = False,
             progress: bool = True, label: Optional[Mapping[str, str]] = None,
             num_workers: Optional[int] = None) -> EvalReport:
    """Zero-shot evaluation of ``model`` on several datasets.

    Args:
        datasets: {name: AnomalyDataset}; names of the paper's datasets get paper columns.
        out_dir: where to write per_category.csv/.md, summary.csv/.md, routing.csv (and maps/).
        save_maps: also save every category's anomaly maps (float16 .npz) under out_dir/maps.
        label: run description for the reports, e.g. {"preset": "tiny", "data": "synthetic"}.
    """
    rows, routing, kept = [], [], {}
    for name, ds in datasets.items():
        fmt = getattr(ds, "format", name)
        for cat in tqdm(ds.categories, desc=f"evaluating {name}", disable=not progress):
            pred = predict(model, ds.subset(cat), batch_size=batch_size, progress=progress, desc=cat,
                           num_workers=num_workers)
            check_finite(pred, f"{name}/{cat}: ")
            empty = empty_masks(pred)
            if empty:
                warnings.warn(f"{name}/{cat}: {len(empty)} anomalous image(s) have an empty mask at "
                              f"{pred.masks.shape[-1]} px (an all-zero file, or a defect under one pixel "
                              f"after resizing), e.g. {empty[:3]}; their pixels count as normal.",
                              UserWarning, stacklevel=2)
            anomalous = pred.labels == 1
            rows.append({"dataset": name, "format": fmt, "category": cat, "n_images": len(pred.scores),
                         "n_anomalous": int(anomalous.sum()),
                         "n_no_mask": int((anomalous & ~pred.has_mask.astype(bool)).sum()),
                         "n_empty_mask": len(empty), **category_metrics(pred, compat)})
            if pred.routing:
                t = routing_table(pred, name, model.config.layers)
                routing.append(t.assign(category=cat))
            if save_maps and out_dir is not None:
                path = Path(out_dir) / "maps" / name / f"{cat}.npz"
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, lambda tmp, p=pred: _save_maps(tmp, p))
            if keep_predictions:
                kept[f"{name}/{cat}"] = pred
    per_cat = pd.DataFrame(rows)
    summary = summarise(per_cat)
    route = pd.concat(routing, ignore_index=True) if routing else pd.DataFrame()
    if not route.empty:  # per dataset: sum counts over categories
        route = (route.groupby(["dataset", "branch", "layer", "expert"], sort=False)
                 [["count", "weight_sum", "n_images"]].sum().reset_index())
    report = EvalReport(per_cat, summary, route, kept)
    if out_dir is not None:
        write_report(report, out_dir, label or {})
    return report


def summarise(per_cat: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset: the mean of each metric over the categories where it is defined.

    Columns: dataset, format, the metrics, ``n_categories``, ``n_no_mask`` (summed) and ``note``
    naming each metric averaged over fewer categories than the dataset has ("" when none).
    """
    rows = []
    for name, g in per_cat.groupby("dataset", sort=False):
        row = {"dataset": name, "format": g["format"].iloc[0] if "format" in g else name}
        notes = []
        for m in METRIC_COLUMNS:
            defined = int(g[m].notna().sum())
            row[m] = float(g[m].mean()) if defined else float("nan")
            if 0 < defined < len(g):
                notes.append(f"{m}: mean of {defined} of {len(g)} categories")
            elif defined == 0 and len(g):
                notes.append(f"{m}: undefined in all {len(g)} categories")
        row.update(n_categories=len(g), n_no_mask=int(g["n_no_mask"].sum()) if "n_no_mask" in g else 0,
                   note="; ".join(notes))
        rows.append(row)
    return pd.DataFrame(rows, columns=["dataset", "format", *METRIC_COLUMNS, "n_categories", "n_no_mask", "note"])


def paper_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary beside the paper's Table 1 (percent); non-paper datasets get NaN paper cells.

    The paper's PRO sits beside this run's ``pro_compat`` (its protocol), the official AU-PRO
    next to them (``promptmoe.paper.PRO_NOTE``)."""
    from .paper import side_by_side

    keys = [m for m in METRIC_COLUMNS if m in summary]
    ours = {r["dataset"]: {m: r[m] for m in keys} for _, r in summary.iterrows()}
    return side_by_side(ours, metrics=PAPER_METRICS, strict=False)


def _markdown(df: pd.DataFrame, title: str, label: Mapping[str, str]) -> str:
    what = ", ".join(f"{k}: {v}" for k, v in label.items()) or "unlabelled run"
    note = ""
    if label.get("preset") == "tiny":
        note = ("\n> Quick mode: the tiny preset is a random CLIP; these numbers show that the code "
                "runs, not what the method achieves.\n")
    elif label.get("preset") == "micro":
        note = ("\n> Quick mode: the micro preset is a small CLIP pretrained by this project on "
                "synthetic images (book chapter 10), an offline stand-in; these numbers are not "
                "results of the paper's setting.\n")
    shown = df.copy()
    for col in shown.columns:  # undefined metrics print as "-", never as a number
        if pd.api.types.is_float_dtype(shown[col]):
            shown[col] = [("-" if np.isnan(v) else f"{v:.1f}") for v in shown[col]]
    table = shown.to_markdown(disable_numparse=True, stralign="right")
    legend = "\n\n\"-\": undefined (one class only, or no masks); means skip it (see n_categories, note).\n"
    if any(c.startswith("pro_compat") for c in df.columns):
        from .paper import PRO_NOTE

        note += f"\n> {PRO_NOTE}\n"
    return f"# {title}\n\nThis run: {what}.{note}\n\n{table}{legend}"


def write_report(report: EvalReport, out_dir, label: Mapping[str, str]) -> None:
    """CSV and Markdown tables (percent in the Markdown), each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pct = report.per_category.copy()
    pct[list(METRIC_COLUMNS)] = pct[list(METRIC_COLUMNS)] * 100
    side = paper_table(report.summary)
    by_name = report.summary.set_index("dataset")
    for col in ("format", "n_categories", "n_no_mask", "note"):
        if col in by_name:
            side[col] = by_name[col].values
    files = {
        "per_category.csv": lambda p: report.per_category.to_csv(p, index=False),
        "summary.csv": lambda p: side.to_csv(p),
        "routing.csv": lambda p: report.routing.to_csv(p, index=False),
        "per_category.md": lambda p: Path(p).write_text(
            _markdown(pct.set_index(["dataset", "category"]), "Per-category results (%)", label)),
        "summary.md": lambda p: Path(p).write_text(_markdown(
            side, "Zero-shot results (%), beside the paper's Table 1 (Shao et al., AAAI 2026)", label)),
    }
    for name, write in files.items():
        atomic_write(out / name, write)
