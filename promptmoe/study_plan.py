"""What an ablation study needs before it starts: disk, memory, tower passes, FLOPs, GPU time.

Taught in chapter 7. REFERENCE.md section 5.

:class:`StudyPlan` counts, for a study of :mod:`promptmoe.study` (or for the paper's own study,
:func:`paper_study_plan`, without its data):

* **tower passes per image**: with shared features, one per dataset (and feature group). Run
  model by model, each model passes the tower over its training images once (its own cache)
  and over its evaluation images once, so a dataset gets one pass per model of each protocol it
  appears in. Where a model's own cache did not fit on disk, the training images pass once per epoch.
* **FLOPs**, counted with ``FlopCounterMode`` on the ``meta`` device (:mod:`promptmoe.cost`),
  per image: the frozen pass, a cached training step and a cached evaluation forward of each
  model, at its batch size (static prompts are computed once per batch). Models whose prompt side
  has the same shapes share one count (:func:`cost_key`; differences in E, k, sharing and the
  loss weights change a step by < 0.1%, see ``tests/test_study_plan.py``).
* **projected GPU time** = FLOPs / (data-sheet peak x assumed efficiency), ``cost.GPUS`` and
  ``cost.EFFICIENCY``: a projection, never a measurement.
* **disk**: the caches not yet on disk, plus the runs' checkpoints (trainable weights and two Adam
  moments, 12 bytes a parameter); :meth:`StudyPlan.check` refuses when that exceeds 80% of the
  free space (caches that the study would delete count as free).
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd
import torch

from . import cache as cache_mod
from . import cost
from .study_cost import feature_shape, model_flops
from .config import PromptMoEConfig

DISK_SHARE = 0.8  # as choose_cache: leave a fifth of the free space to everything else
RUN_OVERHEAD_BYTES = 1_000_000  # loss log and evaluation reports of one model, about


@dataclass
class StudyPlan:
    """The numbers of a study (see the module docstring); :meth:`describe` says them in words."""

    preset: str
    protocols: Dict[str, Tuple[str, List[str]]]  # name -> (training set, evaluation sets)
    images: Dict[str, int]  # dataset -> images
    models: Dict[str, int]  # protocol -> distinct models (configurations x seeds)
    rows: int  # table rows (configurations x seeds x protocols)
    groups: int  # feature groups: caches made one after another
    cache_gb: Dict[str, float]  # dataset -> size of its cache
    run_gb: float  # checkpoints and reports of the models still to run
    flops: Dict[str, float]  # before / before_no_cache / after: FLOPs of the whole study
    passes: Dict[str, Dict[str, float]]  # before / before_no_cache / after -> {dataset: per image}
    where: str = "disk"  # where the caches go: memory, disk, or none (cannot start)
    reason: str = ""
    folder: Optional[Path] = None
    free_disk_gb: float = math.nan
    disk_need_gb: float = math.nan  # what the study still writes to disk
    reclaim_gb: float = 0.0  # caches in the folder that the study would delete
    notes: List[str] = field(default_factory=list)
    stale: List[Path] = field(default_factory=list)  # cache folders the study deletes
    read_tb: float = 0.0  # TB the models read back from the caches (every epoch, every evaluation)
    reads: int = 0  # images read back from the caches

    def projection(self) -> pd.DataFrame:
        """Projected hours per GPU and precision, before (each model runs the tower on its own
        cache), before without per-model disk caches, and after (shared features)."""
        rows = []
        for gpu, peaks in cost.GPUS.items():
            for mode, peak in peaks.items():
                rate = peak * cost.EFFICIENCY[mode] * 1e12 * 3600  # FLOPs per hour, assumed
                rows.append({"gpu": gpu, "precision": mode,
                             "before h": self.flops["before"] / rate,
                             "before, no disk for per-model caches h": self.flops["before_no_cache"] / rate,
                             "shared features h": self.flops["after"] / rate})
        return pd.DataFrame(rows).set_index(["gpu", "precision"])

    def describe(self, short: bool = False, width: Optional[int] = None) -> str:
        """The plan in words, a line per point (``short``: without the notes on reading back and
        on the projection's assumptions; ``width``: wrap the lines to this many characters)."""
        text = self._describe(short)
        if width:
            text = "\n".join(textwrap.fill(line, width, subsequent_indent="  ")
                             for line in text.splitlines())
        return text

    def _describe(self, short: bool) -> str:
        n_models = sum(self.models.values())
        caches = ", ".join(f"{d} {gb:.2f} GB" for d, gb in self.cache_gb.items())
        lines = [f"ablation study, {self.preset} preset: {self.rows} table rows, {n_models} models "
                 f"({', '.join(f'{p}: {m}' for p, m in self.models.items())})"]
        passes = {k: _passes(v) for k, v in self.passes.items()}
        lines.append(f"tower passes per image: {passes['after']} with shared features "
                     f"(model by model: {passes['before']}, or {passes['before_no_cache']} where "
                     "a model's own cache does not fit on disk)")
        where = {"memory": "in memory", "disk": "on disk"}.get(self.where, "nowhere: cannot start")
        lines.append(f"feature caches: {caches}, {where}" + (f" ({self.reason})" if self.reason else ""))
        need = self.disk_need_gb
        if math.isnan(need):  # a plan without a folder (the paper's study): all of it
            need = self.run_gb + (sum(self.cache_gb.values()) if self.where == "disk" else 0.0)
        line = (f"disk: the study still writes {need:.2f} GB ({need - self.run_gb:.2f} GB of caches, "
                f"{self.run_gb:.2f} GB of checkpoints and reports)")
        if not math.isnan(self.free_disk_gb):
            line += f"; {self.free_disk_gb:.1f} GB free in {self.folder}"
            if self.reclaim_gb:
                line += f", and {self.reclaim_gb:.2f} GB of other caches there will be deleted"
        lines.append(line)
        if math.isnan(self.flops["after"]):
            lines.append("FLOPs: not counted (plan(count=True) counts them)")
            return "\n".join(lines + ([] if short else self.notes[1:]))
        t = self.projection()
        a100 = t.loc[("A100", "autocast")]
        t4 = t.loc[("T4", "fp32")]
        lines.append(f"FLOPs: {flops_text(self.flops['after'])} with shared features, "
                     f"{flops_text(self.flops['before'])} model by model; projected time "
                     f"(see projection()): T4 fp32 {hours_text(t4['shared features h'])} instead of "
                     f"{hours_text(t4['before h'])}, A100 autocast "
                     f"{hours_text(a100['shared features h'])} instead of {hours_text(a100['before h'])}")
        if not short:
            if self.where == "disk" and self.reads:
                fast = t["shared features h"].min() * 3600  # the fastest projected GPU, seconds
                lines.append(
                    f"reading back: the models read {self.read_tb:.2g} TB from the disk caches, one "
                    "cache at a time (a protocol's trainings, then its evaluations). Where free RAM "
                    f"holds the largest cache ({max(self.cache_gb.values()):.1f} GB) the page "
                    "cache serves the repeats; with less, every epoch reads the disk, up to "
                    f"{self.read_tb * 1e3 / fast:.2g} GB/s at the fastest projected pace, and a "
                    "slower disk sets the pace.")
            lines += self.notes
        return "\n".join(lines)

    def check(self) -> None:
        """Raise :class:`~promptmoe.study.StudyError` when the caches and runs cannot fit."""
        from .study import StudyError

        if self.where == "none":
            raise StudyError(f"the ablation study cannot keep its feature caches ({self.reason}); "
                             "free disk space or pass a folder on a larger disk (cache_dir= / "
                             "--cache-dir): without them every model would run the tower again")
        if not math.isnan(self.free_disk_gb):
            room = DISK_SHARE * (self.free_disk_gb + self.reclaim_gb)
            if self.disk_need_gb > room:
                caches = ", ".join(f"{d} {gb:.1f} GB" for d, gb in self.cache_gb.items())
                raise StudyError(
                    f"the ablation study needs {self.disk_need_gb:.1f} GB of disk (feature caches: "
                    f"{caches if self.where == 'disk' else 'in memory'}; runs: {self.run_gb:.1f} GB) "
                    f"but only {self.free_disk_gb:.1f} GB are free in {self.folder} (at most "
                    f"{DISK_SHARE:.0%} of it is used): free space there, or give a folder on a "
                    "larger disk (--cache-dir / cache_dir=, --out)")


def flops_text(flops: float) -> str:
    """``5.28e16`` -> ``"52.8 PFLOP"`` (GFLOP to EFLOP)."""
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops / 1e9:.3g} GFLOP"


def hours_text(hours: float) -> str:
    """``0.16`` -> ``"9.6 min"``; seconds under a minute, hours from 1 h on."""
    if hours >= 1:
        return f"{hours:.3g} h"
    return f"{hours * 60:.2g} min" if hours * 60 >= 1 else f"{hours * 3600:.2g} s"


def _passes(per_dataset: Mapping[str, float]) -> str:
    return ", ".join(f"{d} {v:g}" for d, v in per_dataset.items())


def make_plan(preset: str, protocols: Mapping[str, Tuple[str, List[str]]], images: Mapping[str, int],
              configs: Mapping[str, Sequence[PromptMoEConfig]], groups: int = 1,
              flops: Optional[Dict[str, Dict[str, float]]] = None,
              todo: Optional[Sequence[PromptMoEConfig]] = None, bytes_per: int = 2) -> StudyPlan:
    """The plan of a study from numbers: ``protocols`` {name: (train set, [eval sets])}, ``images``
    {set: count}, ``configs`` {protocol: distinct model configs}; ``todo``: the models not run yet
    (default: all); ``bytes_per``: cache precision (2: float16 on a GPU, 4 on a CPU); ``groups``:
    feature groups, whose caches are made one after another (the disk holds one group's at a
    time). FLOPs are counted unless given (:func:`model_flops`)."""
    from .ablation import config_hash
    from .model import count_trainable_parameters

    every = [c for cs in configs.values() for c in cs]
    flops = flops or model_flops(every)
    before = before_nc = after = 0.0
    passes = {k: {d: 0.0 for d in images} for k in ("before", "before_no_cache", "after")}
    for name, (train_set, eval_sets) in protocols.items():
        for c in configs[name]:
            f, n = flops[config_hash(c)], images[train_set]
            n_eval = sum(images[e] for e in eval_sets)
            before += n * (f["enc"] + c.epochs * f["step"]) + n_eval * (f["enc"] + f["eval"])
            before_nc += n * c.epochs * (f["enc"] + f["step"]) + n_eval * (f["enc"] + f["eval"])
            after += n * c.epochs * f["step"] + n_eval * f["eval"]
            passes["before"][train_set] += 1
            passes["before_no_cache"][train_set] += c.epochs
            for e in eval_sets:
                passes["before"][e] += 1
                passes["before_no_cache"][e] += 1
    enc = next(iter(flops.values()))["enc"]
    used = {d for t, es in protocols.values() for d in (t, *es)}
    after += groups * enc * sum(images[d] for d in used)
    passes["after"] = {d: float(groups if d in used else 0) for d in images}
    grid, dim, width = feature_shape(every[0])
    base = every[0].replace(layers=tuple(sorted({b for c in every for b in c.layers})))
    cache_gb = {d: cache_mod.FeatureCache.estimate_gb(base, images[d], grid, dim, bytes_per)
                for d in images if d in used}
    read = sum(images[t] * c.epochs + sum(images[e] for e in es)
               for name, (t, es) in protocols.items() for c in configs[name])  # images read back
    per_image = {d: gb / max(images[d], 1) for d, gb in cache_gb.items()}
    read_tb = sum(per_image[t] * images[t] * c.epochs + sum(per_image[e] * images[e] for e in es)
                  for name, (t, es) in protocols.items() for c in configs[name]) / 1e3
    runs = todo if todo is not None else every
    run_gb = sum(12 * count_trainable_parameters(c, width, dim) + RUN_OVERHEAD_BYTES for c in runs) / 1e9
    peaks = "; ".join(f"{g}: fp32 {v['fp32']}, autocast {v['autocast']} TFLOPS" for g, v in cost.GPUS.items())
    note = (f"PROJECTION from FLOP counts, not a measurement: FLOPs / (data-sheet peak x assumed "
            f"share). Peaks: {peaks}. Shares: fp32 {cost.EFFICIENCY['fp32']}, autocast "
            f"{cost.EFFICIENCY['autocast']}. Data loading and disk reads assumed to keep up.")
    return StudyPlan(preset=preset, protocols=dict(protocols), images=dict(images), notes=[note],
                     models={p: len(cs) for p, cs in configs.items()},
                     rows=0, groups=groups, cache_gb=cache_gb, run_gb=run_gb,
                     flops={"before": before, "before_no_cache": before_nc, "after": after},
                     passes=passes, read_tb=read_tb, reads=read)


def paper_study_plan(tables=None, seeds: Sequence[int] = (0,), epochs: Optional[int] = None,
                     flops: Optional[Dict[str, Dict[str, float]]] = None) -> StudyPlan:
    """The paper's study: Tables 2-6 on the paper preset, trained on MVTec AD and evaluated on
    VisA, and the reverse (image counts from ``paper.datasets_table()``); caches in float16 on
    a GPU. ``flops``: per-model FLOPs if already counted (:func:`model_flops`)."""
    from . import ablation, paper

    tables = tuple(tables or ablation.ABLATION_TABLES)
    base = PromptMoEConfig.paper(**({"epochs": epochs} if epochs else {}))
    counts = paper.datasets_table()
    images = {d: int(counts.loc[d, "n_normal"] + counts.loc[d, "n_anomalous"]) for d in ("mvtec", "visa")}
    protocols = {"mvtec -> visa": ("mvtec", ["visa"]), "visa -> mvtec": ("visa", ["mvtec"])}
    distinct = {}
    for t in tables:
        for ch in ablation.changes_for(t, base).values():
            for s in seeds:
                c = base.replace(**ch, **({"seed": s} if s != base.seed else {}))
                distinct.setdefault(ablation.config_hash(c), c)
    configs = {p: list(distinct.values()) for p in protocols}
    plan = make_plan("paper", protocols, images, configs, flops=flops)
    plan.rows = 2 * len(seeds) * sum(len(ablation.changes_for(t, base)) for t in tables)
    plan.reason = "float16 memory-mapped files: too large for host memory"
    return plan


def dataset_labels(study) -> Dict[str, Tuple[str, object]]:
    """``{data key: (label, dataset)}`` of every dataset of a study, each once (an evaluation set
    is named by its label, a training set by its name; a repeated name gets ``#2``)."""
    import json

    from .cache import data_digest

    out, taken = {}, set()
    for p in study.protocols.values():
        for label, ds in [(getattr(p.train, "name", "train"), p.train), *p.evals.items()]:
            key = json.dumps(data_digest(ds), sort_keys=True)
            if key not in out:
                name, i = label, 2
                while name in taken:
                    name, i = f"{label}#{i}", i + 1
                taken.add(name)
                out[key] = (name, ds)
    return out


def plan_for_study(study, free_disk: Optional[int] = None, free_ram: Optional[int] = None,
                   count: bool = True) -> StudyPlan:
    """The plan of a :class:`~promptmoe.study.Study` on its own data, folders and device
    (``count=False``: no FLOPs, NaN, for a quick look at the disk)."""
    import json

    from .ablation import METRICS_NAME, config_hash
    from .cache import data_digest
    from .study_features import (cache_dtype, cache_folder, cache_folders, folder_bytes, group_of,
                                  is_cache)

    labels = dataset_labels(study)
    name_of = {id(ds): name for name, ds in labels.values()}

    def label(ds):
        return name_of.get(id(ds)) or labels[json.dumps(data_digest(ds), sort_keys=True)][0]

    protocols = {n: (label(p.train), [label(d) for d in p.evals.values()])
                 for n, p in study.protocols.items()}
    images = {name: len(ds) for name, ds in labels.values()}
    models = study.models()
    configs = {p: list(cs.values()) for p, cs in models.items()}
    todo = [c for p, cs in configs.items() for c in cs
            if not (study.run_dir(p, c) / METRICS_NAME).exists()]
    groups = {group_of(c) for cs in configs.values() for c in cs}
    every = [c for cs in configs.values() for c in cs]
    if count and not all(config_hash(c) in study.flops for c in every):
        study.flops.update(model_flops(every))  # counted once per study: a few seconds a model
    flops = study.flops if count else {config_hash(c): {k: math.nan for k in ("enc", "step", "eval")}
                                       for c in every}
    plan = make_plan(study.base.preset, protocols, images, configs, groups=len(groups), todo=todo,
                     bytes_per=torch.finfo(cache_dtype(study.device)).bits // 8, flops=flops)
    plan.rows = len(study.rows())
    first = next(iter(groups)) if len(groups) == 1 else None
    have = sum(folder_bytes(cache_folder(study.cache_dir, ds, first)) for _, ds in labels.values()
               if first and cache_folder(study.cache_dir, ds, first).exists())
    keep = {cache_folder(study.cache_dir, ds, g) for _, ds in labels.values() for g in groups}
    stale = [f for f in cache_folders(study.cache_dir) if f not in keep]
    # per-model caches that the model-by-model loop (and chapter 7 before the study) left in
    # its run folders: out/runs/<run>/feature_cache, out/protocol<N>/runs/<run>/feature_cache
    for pattern in ("runs/*/feature_cache", "protocol*/runs/*/feature_cache"):
        stale += [f for f in sorted(Path(study.out_dir).glob(pattern)) if is_cache(f)
                  and f.resolve() != Path(study.cache_dir).resolve()]
    plan.reclaim_gb = sum(folder_bytes(f) for f in stale) / 1e9
    if stale:
        plan.notes.append(f"{len(stale)} other cache folder(s) will be deleted: "
                          + ", ".join(str(f) for f in stale))
    plan.folder = Path(study.cache_dir)
    free = cache_mod.free_disk_bytes(plan.folder) if free_disk is None else free_disk
    plan.free_disk_gb = free / 1e9
    total_gb = sum(plan.cache_gb.values())
    if study.cache == "auto":
        plan.where, plan.reason = cache_mod.choose_cache(
            total_gb, study.cache_limit_gb, plan.folder, free_ram=free_ram,
            free_disk=free + plan.reclaim_gb * 1e9)
    else:
        plan.where, plan.reason = study.cache, f"asked for: cache={study.cache!r}"
    cache_need = max(0.0, total_gb - have / 1e9) if plan.where == "disk" else 0.0
    plan.disk_need_gb = cache_need + plan.run_gb
    plan.stale = stale
    return plan
