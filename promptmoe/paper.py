"""The paper's reported numbers, as data. Taught in chapters 6 and 7.

Every number here is transcribed from Shao et al., "PromptMoE: Generalizable Zero-Shot Anomaly
Detection via Visually-Guided Prompt Mixtures", AAAI 2026 (see :data:`CITATION`):

* ``table1.csv`` / ``table1_averages.csv``: Table 1, 7 methods x 15 datasets, two metrics each.
* ``ablations.csv``: Tables 2-6 (MVTec AD and VisA), each row with the ``PromptMoEConfig``
  changes that reproduce it, so an ablation loop can run ``cfg.replace(**changes)``.
* ``per_category.csv``: Tables 8-12, PromptMoE per category, category keys = folder names.
* ``datasets.csv``: Table 7, the 15 test sets and their sample counts.

Values are percentages exactly as printed. The CSVs are package data (``promptmoe/paper_results``)
so a book chapter can put "paper" beside "this run" with :func:`side_by_side`.

Metric names (:data:`METRICS`): ``image_auroc``, ``image_ap``, ``pixel_auroc`` and ``pro``, the
paper's PRO column *as printed*. It is not called ``au_pro``: in this package ``au_pro`` is the
official MVTec AU-PRO, and PromptMoE's rows follow AnomalyCLIP's protocol (the "compat" PRO,
``pro_compat`` in an evaluation report; REFERENCE.md D8, chapter 9). :func:`side_by_side` therefore
puts the paper's ``pro`` beside this run's ``pro_compat``, with this run's ``au_pro`` next to both.
For the other methods of Table 1 the PRO code is not always known (chapter 9), hence the neutral name.

Known inconsistencies inside the paper (kept as printed, checked in ``tests/test_paper.py``):
Table 12's DTD-Synthetic pixel AUROC average (98.3) is 0.2 above the mean of its rows (98.1);
Table 9's VisA image AP average (88.1) differs from Table 1 (88.2); Table 1's medical pixel
average of APRIL-GAN PRO (58.2) is not the mean of its five rows (58.7).
"""
from __future__ import annotations

import functools
import json
import math
from importlib.resources import files
from typing import Dict, Iterable, Mapping, Optional, Sequence

import pandas as pd

CITATION = (
    'Shao et al., "PromptMoE: Generalizable Zero-Shot Anomaly Detection via Visually-Guided '
    'Prompt Mixtures", Proceedings of the AAAI Conference on Artificial Intelligence (AAAI 2026).'
)
METHODS = ("CLIP", "WinCLIP", "APRIL-GAN", "AnomalyCLIP", "AdaCLIP", "FAPrompt", "PromptMoE")
# the paper's metrics; "pro" = its PRO column as printed (AnomalyCLIP's protocol for PromptMoE)
METRICS = ("image_auroc", "image_ap", "pixel_auroc", "pro")
# what an evaluation report of this package holds (promptmoe.evaluate.METRIC_COLUMNS): the official
# AU-PRO and the compat PRO under their own names
RUN_METRICS = ("image_auroc", "image_ap", "pixel_auroc", "au_pro", "pro_compat")
DATASETS = ("mvtec", "visa", "mpdd", "btad", "sdd", "dagm", "dtd",
            "headct", "brainmri", "br35h", "isic", "colondb", "clinicdb", "kvasir", "endo")
AVERAGES = ("industrial_avg", "medical_image_avg", "medical_pixel_avg")
PER_CATEGORY_DATASETS = ("mvtec", "visa", "mpdd", "btad", "dtd")  # Tables 8-12
ABLATION_TABLES = (2, 3, 4, 5, 6)


@functools.lru_cache(maxsize=None)
def _load(name: str) -> pd.DataFrame:
    # dtype=str on keys: BTAD's categories "01".."03" must not become integers.
    path = files("promptmoe") / "paper_results" / name
    with path.open("r", encoding="utf-8") as fh:
        return pd.read_csv(fh, dtype={"dataset": str, "category": str, "display_name": str})


def _check(kind: str, value, valid: Sequence) -> None:
    if kind == "metric" and value in ("au_pro", "pro_compat") and "pro" in valid:
        raise ValueError(f"the paper's PRO column is named 'pro', not {value!r}: {value} is a "
                         "metric of this package's runs (compare the paper's pro with pro_compat)")
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {tuple(valid)}")


def table1(method: Optional[str] = None, averages: bool = False) -> pd.DataFrame:
    """Table 1 in long format: one row per (dataset, method, metric).

    Args:
        method: keep only this method (one of :data:`METHODS`); None keeps all seven.
        averages: also append the paper's "Average" rows (datasets :data:`AVERAGES`).

    Returns:
        DataFrame with columns ``dataset, domain, level, method, metric, value`` (percent).
    """
    df = _load("table1.csv")
    if averages:
        df = pd.concat([df, _load("table1_averages.csv")], ignore_index=True)
    if method is not None:
        _check("method", method, METHODS)
        df = df[df["method"] == method]
    return df.reset_index(drop=True).copy()


def paper_value(dataset: str, metric: str, method: str = "PromptMoE") -> float:
    """One number of Table 1 in percent, or NaN where the paper reports none.

    Industrial datasets report all four metrics; HeadCT, BrainMRI and Br35H only the image-level
    pair; ISIC and the colon sets only the pixel-level pair. The Average rows are reachable
    through the keys in :data:`AVERAGES`.
    """
    _check("dataset", dataset, DATASETS + AVERAGES)
    _check("metric", metric, METRICS)
    _check("method", method, METHODS)
    df = table1(averages=True)
    hit = df[(df["dataset"] == dataset) & (df["metric"] == metric) & (df["method"] == method)]
    return float(hit["value"].iloc[0]) if len(hit) else math.nan


def per_category(dataset: str, average: bool = True) -> pd.DataFrame:
    """PromptMoE per category (Tables 8-12), indexed by the category's folder name.

    Args:
        dataset: one of :data:`PER_CATEGORY_DATASETS`.
        average: keep the paper's printed "Average" row (index ``"average"``), last.

    Returns:
        DataFrame with ``display_name`` (the paper's spelling) and the four metrics of
        :data:`METRICS` (percent; ``pro`` is the paper's PRO as printed).
    """
    _check("dataset", dataset, PER_CATEGORY_DATASETS)
    df = _load("per_category.csv")
    df = df[df["dataset"] == dataset].drop(columns="dataset").set_index("category")
    if not average:
        df = df.drop(index="average")
    return df.copy()


def ablation(table: int, wide: bool = False) -> pd.DataFrame:
    """One ablation table (2-6) with the config changes that reproduce each row.

    Args:
        table: the paper's table number, one of :data:`ABLATION_TABLES`.
        wide: one row per configuration (paper order) with columns ``"mvtec image_auroc"``,
            ``"mvtec pro"``, ``"visa image_auroc"``, ``"visa pro"`` and ``config_changes``.

    Returns:
        Long format by default: ``table, configuration, dataset, metric, value,
        config_changes``; ``config_changes`` holds dicts of ``PromptMoEConfig`` fields relative
        to the paper default (``{}`` is the default model itself).
    """
    _check("table", table, ABLATION_TABLES)
    df = _load("ablations.csv")
    df = df[df["table"] == table].reset_index(drop=True).copy()
    df["config_changes"] = df["config_changes"].map(json.loads)
    if not wide:
        return df
    order = list(dict.fromkeys(df["configuration"]))
    df["column"] = df["dataset"] + " " + df["metric"]
    out = df.pivot(index="configuration", columns="column", values="value").loc[order]
    out = out[["mvtec image_auroc", "mvtec pro", "visa image_auroc", "visa pro"]]
    out.columns.name = None
    changes = df.drop_duplicates("configuration").set_index("configuration")["config_changes"]
    out["config_changes"] = changes.loc[order]
    return out


def ablation_configs(table: int) -> Dict[str, dict]:
    """``{configuration: config_changes}`` for one ablation table, in the paper's row order."""
    df = ablation(table)
    return {row.configuration: row.config_changes
            for row in df.drop_duplicates("configuration").itertuples()}


def datasets_table() -> pd.DataFrame:
    """Table 7: the 15 datasets (index = dataset key) with domain, modality and sample counts."""
    return _load("datasets.csv").set_index("dataset").copy()


# The paper follows AnomalyCLIP's protocol, so its PRO column is the "compat" PRO (REFERENCE.md D8):
# tables and plots put our pro_compat beside it and the official AU-PRO next to both.
PRO_PAPER = "pro (paper)"  # the paper's PRO (AnomalyCLIP's cal_pro_score protocol)
PRO_COMPAT = "pro_compat (this run)"  # ours, same protocol: the number to compare
PRO_OFFICIAL = "au_pro (this run)"  # ours, official MVTec AU-PRO: the better metric
PRO_NOTE = ("PRO: the paper follows AnomalyCLIP's protocol (200 score thresholds, FPR rescaled, "
            "no interpolation), so its PRO is compared with this run's pro_compat; au_pro is the "
            "official MVTec AU-PRO (integrated to FPR 0.3), the better metric (chapter 9).")


def _columns(metric: str, paper_number: float, values: Mapping[str, float], where: str) -> dict:
    """The columns one metric adds to a paper-beside-ours row (this run's values as fractions)."""
    def pct(key):
        v = values.get(key, math.nan)
        v = math.nan if v is None else float(v)
        if not math.isnan(v) and not 0.0 <= v <= 1.0:
            raise ValueError(f"{where}/{key}={v}: pass this run's values as fractions in "
                             "[0, 1]; side_by_side converts them to percent")
        return 100.0 * v

    if metric == "pro":
        return {PRO_PAPER: paper_number, PRO_COMPAT: pct("pro_compat"), PRO_OFFICIAL: pct("au_pro")}
    return {f"{metric} (paper)": paper_number, f"{metric} (this run)": pct(metric)}


def _metrics_of(ours: Iterable[Mapping[str, float]], metrics: Optional[Iterable[str]]) -> list:
    if metrics is None:
        present = {m for row in ours for m in row}
        if present & {"pro_compat", "au_pro"}:  # either PRO of this run -> the paper's PRO group
            present.add("pro")
        metrics = [m for m in METRICS if m in present]
    metrics = list(metrics)
    for m in metrics:
        _check("metric", m, METRICS)
    return metrics


def side_by_side(ours: Mapping[str, Mapping[str, float]],
                 metrics: Optional[Iterable[str]] = None,
                 method: str = "PromptMoE",
                 decimals: Optional[int] = 1,
                 strict: bool = True) -> pd.DataFrame:
    """The paper's numbers beside this run's, in percent, for a book table.

    Args:
        ours: ``{dataset: {metric: value in [0, 1]}}`` as returned by the evaluation code, with
            this run's names (:data:`RUN_METRICS`: ``au_pro`` and ``pro_compat``, never ``pro``).
        metrics: which of the paper's :data:`METRICS` to show (``"pro"`` gives the PRO group);
            default: every metric present in ``ours``, in :data:`METRICS` order.
        method: the Table 1 method whose numbers fill the "(paper)" columns.
        decimals: round both columns to this many decimals (None keeps full precision).
        strict: raise on dataset keys the paper does not have; with False they get NaN
            "(paper)" cells (useful for a synthetic toy set).

    Returns:
        DataFrame indexed by dataset (order of ``ours``) with columns ``"<metric> (paper)"`` and
        ``"<metric> (this run)"`` per metric, except PRO (metric ``"pro"``, see :data:`PRO_NOTE`):
        the paper's PRO ``"pro (paper)"``, then ``"pro_compat (this run)"`` (same protocol) and
        ``"au_pro (this run)"`` (official AU-PRO).
    """
    _check("method", method, METHODS)
    metrics = _metrics_of(ours.values(), metrics)
    rows = {}
    for dataset, values in ours.items():
        known = dataset in DATASETS + AVERAGES
        if strict and not known:
            _check("dataset", dataset, DATASETS + AVERAGES)
        unknown = sorted(set(values) - set(RUN_METRICS))
        if unknown:
            raise ValueError(f"{dataset}: unknown metrics {unknown} of this run; choose from "
                             f"{RUN_METRICS} (the paper's 'pro' is compared with 'pro_compat')")
        row = {}
        for m in metrics:
            number = paper_value(dataset, m, method) if known else math.nan
            row.update(_columns(m, number, values, dataset))
        rows[dataset] = row
    columns = [c for m in metrics for c in _columns(m, math.nan, {}, "")]
    out = pd.DataFrame.from_dict(rows, orient="index", columns=columns, dtype=float)
    out.index.name = "dataset"
    return out.round(decimals) if decimals is not None else out


def per_category_side_by_side(dataset: str, ours: pd.DataFrame,
                              metrics: Sequence[str] = METRICS,
                              decimals: Optional[int] = 1) -> pd.DataFrame:
    """One of Tables 8-12 beside this run, per category, with this run's mean as "average".

    Args:
        dataset: one of :data:`PER_CATEGORY_DATASETS`.
        ours: this run's per-category metrics as fractions, indexed by category folder name,
            with this run's names (``pro_compat`` and ``au_pro`` fill the PRO group beside the
            paper's ``pro``, see :data:`PRO_NOTE`).
        metrics: the paper's metrics to show (:data:`METRICS`).
    Returns:
        The paper's rows (``display_name`` first, "average" last) with the columns of
        :func:`side_by_side`; categories this run did not score get NaN "(this run)" cells.
    """
    for m in metrics:
        _check("metric", m, METRICS)
    theirs = per_category(dataset)
    unknown = sorted(set(ours.index) - set(theirs.index) - {"average"})
    if unknown:
        raise ValueError(f"{dataset}: categories {unknown} are not in the paper's table; "
                         f"known: {sorted(theirs.index.drop('average'))}")
    mine = ours.drop(index="average", errors="ignore")
    mine = pd.concat([mine, mine.mean(numeric_only=True).to_frame("average").T])
    rows = {}
    for cat, paper_row in theirs.iterrows():
        values = mine.loc[cat].dropna().to_dict() if cat in mine.index else {}
        row = {"display_name": paper_row["display_name"]}
        for m in metrics:
            row.update(_columns(m, float(paper_row[m]), values, f"{dataset}/{cat}"))
        rows[cat] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "category"
    return out.round(decimals) if decimals is not None else out
