"""Ablations of the paper (Tables 2-6) as lists of config changes run by one loop. Taught in chapter 7.

Each table of :mod:`promptmoe.paper` stores, per row, the ``PromptMoEConfig`` fields that differ
from the paper's default model (``{"prompt_mode": "static"}``, ``{"alpha": 0.1}``, ...).
:func:`configs_for` applies them to any preset and :func:`run_ablation` trains and evaluates each
configuration with the ordinary :func:`~promptmoe.train.train` and
:func:`~promptmoe.evaluate.evaluate`, one row per configuration, the paper's values beside ours.

* Table 4 names ViT-L blocks (6/12/18/24). They are mapped by *position* onto the preset's own
  blocks (6 -> ``layers[0]`` ... 24 -> ``layers[3]``), so the table runs on ``tiny`` (1/2/3/4) and
  ``small`` (3/6/9/12). The V-V path keeps starting where the base model's does: the ablation
  changes which blocks' tokens are compared with the text, nothing else.
* Every run lives in ``out_dir/runs/<changes>-<hash of the full config>/``. Two tables that hold
  the same model (the default appears in all five) train it once; an interrupted training
  resumes from its checkpoint; ``out_dir/table<N>.csv`` is rewritten atomically after every
  configuration, and a configuration already in it (same config hash) is skipped.

All metric values in the returned tables are percentages, as the paper prints them.

:func:`run_ablation` runs model by model: every model runs the frozen image tower over its
training and its evaluation images itself. :class:`promptmoe.study.Study` runs the same rows
(every table, both protocols, several seeds) from one feature cache per dataset, with the same
weights (``tests/test_study.py`` compares the two), and is what chapter 7 and ``promptmoe
ablate`` use.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Dict, Mapping

import numpy as np
import pandas as pd

from . import paper
from .checkpoint import atomic_write
from .config import PromptMoEConfig
from .evaluate import METRIC_COLUMNS, evaluate
from .train import CHECKPOINT_NAME, train

ABLATION_TABLES = (2, 3, 4, 5, 6)
PAPER_LAYERS = PromptMoEConfig.paper().layers  # (6, 12, 18, 24): the blocks Table 4 names
# the paper's ablation columns; "pro" is its PRO as printed (promptmoe.paper.METRICS)
PAPER_COLUMNS = tuple(f"paper {d} {m}" for d in ("mvtec", "visa") for m in ("image_auroc", "pro"))
METRICS_NAME = "metrics.json"


def map_layers(paper_layers, base: PromptMoEConfig) -> tuple:
    """Paper blocks (a subset of 6/12/18/24) -> the base preset's blocks at the same positions."""
    if len(base.layers) != len(PAPER_LAYERS):
        raise ValueError(f"Table 4 needs a base with {len(PAPER_LAYERS)} feature blocks to map "
                         f"{PAPER_LAYERS} onto; this base has layers={base.layers}")
    unknown = sorted(set(paper_layers) - set(PAPER_LAYERS))
    if unknown:
        raise ValueError(f"blocks {unknown} are not among the paper's {PAPER_LAYERS}")
    position = {block: i for i, block in enumerate(PAPER_LAYERS)}
    return tuple(base.layers[position[block]] for block in sorted(paper_layers))


def changes_for(table: int, base: PromptMoEConfig) -> Dict[str, dict]:
    """``{configuration: changes}`` of one table, with Table 4's blocks mapped onto ``base``."""
    out = {}
    for name, changes in paper.ablation_configs(table).items():
        changes = dict(changes)
        if "layers" in changes:
            changes["layers"] = list(map_layers(changes["layers"], base))
            changes.setdefault("vv_start", base.first_vv_block)  # V-V path unchanged
        out[name] = changes
    return out


def configs_for(table: int, base: PromptMoEConfig) -> Dict[str, PromptMoEConfig]:
    """``{configuration name: config}`` for one of the paper's Tables 2-6, in the paper's order.

    Args:
        table: the paper's table number, one of :data:`ABLATION_TABLES`.
        base: the model every change is applied to (e.g. ``PromptMoEConfig.tiny(epochs=1)``).
    """
    return {name: base.replace(**changes) for name, changes in changes_for(table, base).items()}


def config_hash(config: PromptMoEConfig) -> str:
    """8 hex digits of the full config: a row or run made with other settings is not reused."""
    text = json.dumps(config.to_dict(), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def run_name(changes: Mapping, config: PromptMoEConfig) -> str:
    """A readable, unique folder name: ``prompt_mode=static-1a2b3c4d``, ``default-...``."""
    parts = []
    for key, value in sorted(changes.items()):
        value = "-".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        parts.append(f"{key}={value}")
    slug = re.sub(r"[^A-Za-z0-9=._,-]", "", ",".join(parts)) or "default"
    return f"{slug}-{config_hash(config)}"


def train_and_evaluate(config: PromptMoEConfig, train_ds, eval_datasets: Mapping, run_dir,
                       progress: bool = False, compat: bool = True, label=None) -> dict:
    """Train one configuration in ``run_dir`` (resuming a partial run) and evaluate it.

    Returns ``{eval dataset: {metric: fraction}}``, also stored as ``run_dir/metrics.json``;
    when that file exists the run is finished and nothing is recomputed.
    """
    run_dir = Path(run_dir)
    done = run_dir / METRICS_NAME
    if done.exists():
        return json.loads(done.read_text())
    result = train(config, train_ds, run_dir, resume=(run_dir / CHECKPOINT_NAME).exists(),
                   progress=progress, train_data=getattr(train_ds, "name", ""))
    report = evaluate(result.model, eval_datasets, out_dir=run_dir / "eval", compat=compat,
                      progress=progress, label=label)
    metrics = {row["dataset"]: {m: float(row[m]) for m in METRIC_COLUMNS}
               for _, row in report.summary.iterrows()}
    atomic_write(done, lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=1)))
    return metrics


def table_row(table, name, changes, config, metrics: Mapping[str, Mapping[str, float]], data,
              wide=None) -> dict:
    """One row of a results table: the changes, this run's metrics (percent, the mean over the
    evaluation sets, and each set's own with several) and, from ``wide``
    (``paper.ablation(table, wide=True)``), the paper's four numbers for this configuration."""
    row = {"table": table, "configuration": name, "changes": json.dumps(changes, sort_keys=True),
           "preset": config.preset, "data": data}
    for m in METRIC_COLUMNS:  # mean over the evaluation datasets, in percent
        values = [v[m] for v in metrics.values() if not math.isnan(v[m])]
        row[m] = 100.0 * sum(values) / len(values) if values else math.nan
    if len(metrics) > 1:
        for d, values in metrics.items():
            row.update({f"{d} {m}": 100.0 * values[m] for m in METRIC_COLUMNS})
    if wide is not None:
        row.update({col: float(wide.loc[name, col[len("paper "):]]) for col in PAPER_COLUMNS})
    row["config_hash"] = config_hash(config)
    return row


def run_ablation(table: int, base: PromptMoEConfig, train_ds, eval_datasets: Mapping, out_dir,
                 progress: bool = False, data: str = "", compat: bool = True) -> pd.DataFrame:
    """Train and evaluate every configuration of one table; the paper's values beside ours.

    Args:
        table: the paper's table number (2-6).
        base: the model the table's changes apply to (its epochs, batch size, preset ...).
        train_ds: the auxiliary training set (the paper: the MVTec AD or VisA test split).
        eval_datasets: ``{name: dataset}`` evaluated zero-shot; metrics are averaged over them.
        out_dir: holds ``table<N>.csv`` and the runs (shared by tables: see the module doc).
        data: words for the ``data`` column (default: "train <name> -> eval <names>").
        compat: also compute the slow "compat" PRO (``pro_compat``).

    Returns:
        One row per configuration, in the paper's order: ``table, configuration, changes,
        preset, data``, this run's metrics in percent (``image_auroc`` ... ``pro_compat``; with
        several eval datasets also ``"<dataset> <metric>"``), the paper's ``paper mvtec
        image_auroc`` ... ``paper visa pro`` and ``config_hash``.
    """
    out_dir = Path(out_dir)
    csv_path = out_dir / f"table{table}.csv"
    data = data or f"train {getattr(train_ds, 'name', '?')} -> eval {', '.join(eval_datasets)}"
    wide = paper.ablation(table, wide=True)
    # str: a hash such as "1e234567" must not be read back as a number
    old = (pd.read_csv(csv_path, dtype={"configuration": str, "config_hash": str})
           if csv_path.exists() else pd.DataFrame(columns=["configuration", "config_hash"]))
    rows = {}
    for name, changes in changes_for(table, base).items():
        config = base.replace(**changes)
        hit = old[(old["configuration"] == name) & (old["config_hash"] == config_hash(config))]
        if len(hit):  # finished in an earlier call: keep it
            rows[name] = hit.iloc[0].to_dict()
        else:
            run_dir = out_dir / "runs" / run_name(changes, config)
            metrics = train_and_evaluate(config, train_ds, eval_datasets, run_dir, progress,
                                         compat, {"preset": config.preset, "data": data})
            rows[name] = table_row(table, name, changes, config, metrics, data, wide)
        done = pd.DataFrame(list(rows.values()))
        atomic_write(csv_path, lambda tmp, df=done: df.to_csv(tmp, index=False))
    return pd.DataFrame(list(rows.values()))


def plot_table(results: pd.DataFrame, metric: str = "image_auroc",
               paper_dataset: str = "mvtec") -> pd.DataFrame:
    """What :func:`promptmoe.plots.plot_ablation` draws: index = configuration, columns
    ``paper`` (the paper's ``paper_dataset`` value) and ``this run`` (our ``metric``), percent.

    ``metric`` is the paper's: ``"image_auroc"`` or ``"pro"``. The paper's PRO follows
    AnomalyCLIP's protocol, so for ``"pro"`` ``this run`` is our ``pro_compat`` (NaN when it was
    not computed) and a third column ``this run, official AU-PRO`` holds our ``au_pro``
    (``promptmoe.paper.PRO_NOTE``). With several seeds per configuration (a ``seed`` column),
    each of our columns is the mean over seeds and ``<column> std`` its standard deviation."""
    if metric not in ("image_auroc", "pro"):
        raise ValueError(f"the paper's ablations report image_auroc and pro (its PRO as printed), "
                         f"not {metric!r}")
    if "seed" in results and results.groupby("configuration")["seed"].nunique().max() > 1:
        return _over_seeds(results, metric, paper_dataset)
    index = pd.Index(results["configuration"], name="configuration")
    paper = results[f"paper {paper_dataset} {metric}"].to_numpy()
    if metric == "image_auroc":
        return pd.DataFrame({"paper": paper, "this run": results[metric].to_numpy()}, index=index)
    compat = results["pro_compat"].to_numpy() if "pro_compat" in results else np.nan
    return pd.DataFrame({"paper": paper, "this run": compat,
                         "this run, official AU-PRO": results["au_pro"].to_numpy()}, index=index)


def _over_seeds(results: pd.DataFrame, metric: str, paper_dataset: str) -> pd.DataFrame:
    """:func:`plot_table` of rows with several seeds: the mean over seeds of each of our columns,
    and its standard deviation as ``<column> std`` (drawn as error bars)."""
    ours = {"this run": metric if metric == "image_auroc" else "pro_compat"}
    if metric == "pro":
        ours["this run, official AU-PRO"] = "au_pro"
    g = results.groupby("configuration", sort=False)
    out = pd.DataFrame({"paper": g[f"paper {paper_dataset} {metric}"].first()})
    for name, col in ours.items():
        out[name] = g[col].mean() if col in results else np.nan
        out[f"{name} std"] = g[col].std(ddof=1) if col in results else np.nan
    out.index.name = "configuration"
    return out
