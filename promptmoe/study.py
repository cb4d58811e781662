"""The paper's whole ablation study (Tables 2-6) from one frozen-feature cache per dataset.

Taught in chapter 7. REFERENCE.md section 5.

No configuration of Tables 2-6 changes the image features. Tables 2, 3, 5 and 6 change only the
prompt side, and Table 4 keeps a subset of the same four blocks, with the V-V path starting where
the base model's does (:func:`promptmoe.ablation.changes_for` pins ``vv_start``). So the frozen
image tower runs once over each dataset, into one :class:`~promptmoe.cache.FeatureCache` holding
every block. Every model of every table, in both protocols, trains and is evaluated from that cache.
Running each model on its own (:func:`promptmoe.ablation.run_ablation`) runs the tower over its
training and its evaluation images again: 19 passes per image and protocol for Tables 2-6.

* The caches live where :func:`~promptmoe.cache.choose_cache` puts them: host memory, or
  memory-mapped files under ``cache_dir`` (float16 on a GPU). Each is keyed by a fingerprint of
  what decides the features (weights, size, blocks, V-V start, precision, data). A resumed study
  reuses a complete cache; any other cache in ``cache_dir`` is deleted. The study never holds
  more than one cache per dataset, and :mod:`promptmoe.study_plan` refuses to start without room.
* Rows whose image features do differ (say ``{"vv_attention": False}`` in ``extra``) form their
  own group. A group's caches are built after the previous group's are deleted.
* Files: ``out_dir/runs/<protocol>/<run name>/`` (checkpoint, ``train_log.csv``, ``metrics.json``,
  ``eval/``); ``out_dir/table<N>.csv``, one row per protocol, configuration and seed, with the
  paper's numbers beside it; ``out_dir/summary.md``. Each CSV is rewritten atomically after
  every row, and a row already in it (same config hash) is skipped.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd
from tqdm.auto import tqdm

from . import ablation, paper
from .checkpoint import atomic_write, read_checkpoint
from .config import PromptMoEConfig
from .runtime import get_device
from .study_features import SharedFeatures, evaluate_cached, group_of
from .train import CHECKPOINT_NAME, train

PAPER_DATASETS = ("mvtec", "visa")  # the two directions the paper's ablations report


class StudyError(ValueError):
    """The study cannot start as asked; the message says why and what to do."""


@dataclass
class Protocol:
    """Train on ``train``, evaluate zero-shot on ``evals`` ({label: dataset}).

    ``paper``: which of the paper's two directions this one repeats ("visa": trained on MVTec AD,
    evaluated on VisA; "mvtec": the reverse); "" for other data. Default: the evaluation set's
    format when it is one of the two."""

    train: object
    evals: Dict[str, object]
    paper: Optional[str] = None

    def __post_init__(self):
        if self.paper is None:
            formats = {getattr(d, "format", k) for k, d in self.evals.items()}
            self.paper = formats.pop() if len(formats) == 1 and formats <= set(PAPER_DATASETS) else ""


@dataclass
class Row:
    """One row of one table for one protocol and seed: the model it needs is ``config``."""

    protocol: str
    table: int
    configuration: str
    seed: int
    changes: dict = field(default_factory=dict)
    config: Optional[PromptMoEConfig] = None


def slug(text: str) -> str:
    """A folder name for a protocol: ``"mvtec -> visa"`` -> ``mvtec-to-visa``."""
    text = re.sub(r"\s*->\s*", "-to-", text.strip())
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_-") or "protocol"


class Study:
    """Tables 2-6 (and ``extra`` rows) for every protocol and seed, from shared features.

    Args:
        base: the model the tables' changes apply to (its preset, epochs, batch size ...).
        protocols: ``{name: Protocol}`` (or ``{name: (train_ds, {label: eval_ds})}``).
        out_dir: holds the tables, runs, summary and (by default) the disk caches.
        tables: which of the paper's tables; seeds: a row per seed (default: ``base.seed``).
        extra: more rows, ``{name: changes}``, shown as "table 0" (exercises).
        cache: "auto" (memory or disk, :func:`~promptmoe.cache.choose_cache`), "memory", "disk".
        cache_dir: folder of the disk caches (default ``out_dir/feature_cache``).
        detail: show the training and evaluation bars of each model under the study's bar.
    """

    def __init__(self, base: PromptMoEConfig, protocols: Mapping, out_dir, tables=ablation.ABLATION_TABLES,
                 seeds: Optional[Sequence[int]] = None, extra: Optional[Mapping[str, dict]] = None,
                 device=None, cache: str = "auto", cache_dir=None, cache_limit_gb: float = 4.0,
                 compat: bool = True, num_workers: Optional[int] = None, progress: bool = True,
                 detail: bool = False, data: str = ""):
        from . import distributed

        if distributed.info() is not None:
            raise StudyError("the ablation study runs in one process: start it without torchrun "
                             "(its models are small once the features are cached)")
        if cache not in ("auto", "memory", "disk"):
            raise StudyError(f"cache={cache!r}: the study shares its features from 'memory' or "
                             "'disk' ('auto' chooses); without a cache every model runs the tower")
        unknown = sorted(set(tables) - set(ablation.ABLATION_TABLES))
        if unknown or not tables and not extra:
            raise StudyError(f"tables {unknown or list(tables)}: choose among {ablation.ABLATION_TABLES}")
        self.base, self.out_dir = base, Path(out_dir)
        self.protocols = {name: p if isinstance(p, Protocol) else Protocol(*p)
                          for name, p in protocols.items()}
        self.tables, self.extra = tuple(tables), dict(extra or {})
        self.seeds = tuple(seeds) if seeds is not None else (base.seed,)
        self.device = get_device(device)
        self.cache, self.cache_limit_gb = cache, cache_limit_gb
        self.cache_dir = Path(cache_dir) if cache_dir else self.out_dir / "feature_cache"
        self.compat, self.num_workers, self.progress, self.detail = compat, num_workers, progress, detail
        self.data = data
        self.features: Optional[SharedFeatures] = None  # made by run(), after the plan's check
        self.flops: Dict[str, dict] = {}  # FLOPs per model, counted once (study_plan.model_flops)

    # ------------------------------------------------------------------ what the study holds
    def rows(self) -> List[Row]:
        """Every row of the study, protocol by protocol, in the paper's order, seed by seed."""
        changes = {t: ablation.changes_for(t, self.base) for t in self.tables}
        if self.extra:
            changes[0] = dict(self.extra)
        out = []
        for name in self.protocols:
            for t, rows in changes.items():
                for conf, ch in rows.items():
                    for s in self.seeds:
                        ch_s = dict(ch) if s == self.base.seed else {**ch, "seed": s}
                        out.append(Row(name, t, conf, s, ch_s, self.base.replace(**ch_s)))
        return out

    def models(self) -> Dict[str, Dict[str, PromptMoEConfig]]:
        """``{protocol: {config hash: config}}``: the distinct models each protocol trains."""
        out = {name: {} for name in self.protocols}
        for r in self.rows():
            out[r.protocol].setdefault(ablation.config_hash(r.config), r.config)
        return out

    def data_label(self, name: str) -> str:
        p = self.protocols[name]
        return self.data or f"train {getattr(p.train, 'name', '?')} -> eval {', '.join(p.evals)}"

    def plan(self, free_disk: Optional[int] = None, free_ram: Optional[int] = None, count: bool = True):
        """Disk, memory, tower passes, FLOPs and projected GPU time (:mod:`promptmoe.study_plan`);
        ``free_disk`` / ``free_ram`` in bytes replace the machine's readings (tests)."""
        from .study_plan import plan_for_study

        return plan_for_study(self, free_disk=free_disk, free_ram=free_ram, count=count)

    # ------------------------------------------------------------------ running it
    def run(self, plan=None, check: bool = True) -> Dict[Tuple[str, int], pd.DataFrame]:
        """Train and evaluate every row not finished yet; ``{(protocol, table): DataFrame}``.

        ``plan``: the study's :meth:`plan` if already made (else one without FLOP counts);
        ``check``: raise :class:`StudyError` when its caches and runs cannot fit (then nothing
        is written)."""
        plan = plan or self.plan(count=False)
        if check:
            plan.check()
        done = self._finished_rows()  # before anything changes: it may refuse a foreign table
        for folder in plan.stale:  # bounded disk: caches of other settings or of older runs go
            shutil.rmtree(folder, ignore_errors=True)
            if self.progress:
                print(f"deleted the cache {folder}: not one of this study's")
        rows = self.rows()
        todo = [r for r in rows if self._key(r) not in done]
        if todo and self.features is None:
            self._shared(plan.where)
        tasks = self._tasks(todo)
        bar = tqdm(tasks, desc="ablation study", disable=not self.progress or not tasks)
        for what, name, config, these in bar:
            bar.set_postfix_str(f"{what} {name}: {self.run_dir(name, config).name}")
            if what == "train":
                if not self._trained(name, config):
                    self.train(name, config)
                continue
            metrics = self.metrics(name, config)
            for r in these:
                done[self._key(r)] = self._table_row(r, metrics)
                self._write_table(r.table, rows, done)
        results = {}
        for name in self.protocols:
            for t in dict.fromkeys(r.table for r in rows):
                results[name, t] = pd.DataFrame([done[self._key(r)] for r in rows if r.protocol == name
                                                 and r.table == t and self._key(r) in done])
        write_summary(self, results)
        return results

    def _tasks(self, todo: Sequence[Row]) -> list:
        """``(what, protocol, config, rows)`` in the order that reads each cache in one stretch:
        per feature group and protocol, first train every model (the training set's cache),
        then evaluate them (the evaluation sets'). Protocols chain as given: with MVTec AD ->
        VisA then VisA -> MVTec AD, VisA's cache serves two stretches in a row."""
        groups = list(dict.fromkeys(group_of(r.config) for r in todo))
        tasks = []
        for g in groups:
            for name in self.protocols:
                models: Dict[str, list] = {}
                for r in todo:
                    if r.protocol == name and group_of(r.config) == g:
                        models.setdefault(ablation.config_hash(r.config), []).append(r)
                tasks += [("train", name, rs[0].config, rs) for rs in models.values()]
                tasks += [("evaluate", name, rs[0].config, rs) for rs in models.values()]
        return tasks

    def train(self, protocol: str, config: PromptMoEConfig):
        """Train one model from the shared features, or load it when its run is finished (a
        complete checkpoint); resumes an interrupted training. Returns the trained model."""
        if self.features is None:  # a model asked for outside run()
            self._shared(self.plan(count=False).where)
        p, run_dir = self.protocols[protocol], self.run_dir(protocol, config)
        return train(config, p.train, run_dir, resume=(run_dir / CHECKPOINT_NAME).exists(),
                     device=self.device, cache_features="none" if self._trained(protocol, config)
                     else self.features.view(p.train, config),
                     model=self.features.model(config), progress=self.detail,
                     train_data=getattr(p.train, "name", ""), num_workers=self.num_workers).model

    def _trained(self, protocol: str, config: PromptMoEConfig) -> bool:
        """Whether the model's checkpoint holds all its epochs (then train() only loads it)."""
        ckpt = self.run_dir(protocol, config) / CHECKPOINT_NAME
        return ckpt.exists() and int(read_checkpoint(ckpt)[2].get("epoch", 0)) >= config.epochs

    def metrics(self, protocol: str, config: PromptMoEConfig) -> Dict[str, Dict[str, float]]:
        """``{eval label: {metric: fraction}}`` of one model, trained (if needed) and evaluated
        from the shared features, unless its run folder already holds them (``metrics.json``)."""
        run_dir = self.run_dir(protocol, config)
        done = run_dir / ablation.METRICS_NAME
        if done.exists():
            return json.loads(done.read_text())
        model = self.train(protocol, config)
        p = self.protocols[protocol]
        views = {label: self.features.view(ds, config) for label, ds in p.evals.items()}
        metrics = evaluate_cached(model, p.evals, views, run_dir / "eval", compat=self.compat,
                                  progress=self.detail,
                                  label={"preset": config.preset, "data": self.data_label(protocol)})
        atomic_write(done, lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=1)))
        return metrics

    def run_dir(self, protocol: str, config: PromptMoEConfig) -> Path:
        """Where one model of one protocol lives (named by its changes and full config hash)."""
        from .checkpoint import config_differences

        changes = {k: new for k, (_, new) in config_differences(self.base, config).items()}
        return self.out_dir / "runs" / slug(protocol) / ablation.run_name(changes, config)

    def drop_caches(self) -> None:
        """Delete the study's caches (in memory and their folders on disk); a later run
        computes them again."""
        from .study_plan import dataset_labels
        from .study_features import cache_folder

        if self.features is not None:
            self.features.drop()
        groups = {group_of(r.config) for r in self.rows()}
        for _, ds in dataset_labels(self).values():
            for g in groups:
                shutil.rmtree(cache_folder(self.cache_dir, ds, g), ignore_errors=True)

    # ------------------------------------------------------------------ bookkeeping
    def _shared(self, where: str) -> None:
        from .study_plan import dataset_labels

        self.features = SharedFeatures(self.cache_dir, where, self.device, self.base.batch_size,
                                       self._group_layers(self.rows()), self.num_workers,
                                       self.progress, [ds for _, ds in dataset_labels(self).values()])

    def _group_layers(self, rows: Sequence[Row]) -> Dict[str, Tuple[int, ...]]:
        """Every block any model of a feature group uses: what that group's caches hold."""
        layers: Dict[str, set] = {}
        for r in rows:
            layers.setdefault(group_of(r.config), set()).update(r.config.layers)
        return {g: tuple(sorted(b)) for g, b in layers.items()}

    @staticmethod
    def _key(r: Row) -> tuple:
        return r.protocol, r.table, r.configuration, int(r.seed), ablation.config_hash(r.config)

    def _finished_rows(self) -> dict:
        """Rows already in ``table<N>.csv`` (same protocol, configuration, seed and config hash)."""
        done = {}
        for t in set(self.tables) | ({0} if self.extra else set()):
            path = self.out_dir / f"table{t}.csv"
            if not path.exists():
                continue
            text = {"protocol": str, "configuration": str, "config_hash": str}  # "1e234567" is text
            table = pd.read_csv(path, dtype=text)
            if not {"protocol", "seed", "config_hash"} <= set(table.columns):
                raise StudyError(f"{path} holds another kind of table (no protocol and seed "
                                 "columns: ablation.run_ablation's?); move it, or choose another folder")
            for row in table.to_dict("records"):
                done[row["protocol"], int(row["table"]), row["configuration"], int(row["seed"]),
                     row["config_hash"]] = row
        return done

    def _table_row(self, r: Row, metrics: Mapping) -> dict:
        wide = paper.ablation(r.table, wide=True) if r.table else None  # extra rows: no paper
        row = {"protocol": r.protocol, "seed": int(r.seed),
               **ablation.table_row(r.table, r.configuration, r.changes, r.config, metrics,
                                    self.data_label(r.protocol), wide)}
        beside = self.protocols[r.protocol].paper
        for m in ("image_auroc", "pro"):  # the paper's number for this protocol's direction
            row[f"paper {m}"] = row.get(f"paper {beside} {m}", float("nan"))
        return row

    def _write_table(self, table: int, rows: Sequence[Row], done: dict) -> None:
        """``table<N>.csv``: this study's rows in order, then any other rows the file held
        (other seeds, protocols or settings: never dropped)."""
        mine = [self._key(r) for r in rows if r.table == table]
        others = [k for k in done if k[1] == table and k not in set(mine)]
        keep = [done[k] for k in mine if k in done] + [done[k] for k in others]
        cols = ["table", "protocol", "configuration", "seed"]
        df = pd.DataFrame(keep)
        df = df[cols + [c for c in df.columns if c not in cols]]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.out_dir / f"table{table}.csv", lambda tmp: df.to_csv(tmp, index=False))


def write_summary(study: Study, results: Mapping[Tuple[str, int], pd.DataFrame]) -> Path:
    """``out_dir/summary.md``: per table and protocol, the paper's I-AUROC and PRO beside this
    run's (percent; the paper's PRO beside ``pro_compat``, its protocol, and ``au_pro``)."""
    from .paper import PRO_NOTE

    from .runtime import preset_note

    note = preset_note(study.base.preset)
    label = study.base.preset + (f" ({note})" if note else "")
    parts = [f"# Ablation study: the paper's Tables {', '.join(map(str, study.tables))}, beside this run",
             "", f"Preset: {label}. Shao et al., AAAI 2026, Tables 2-6. {PRO_NOTE}", ""]
    for (name, t), df in results.items():
        if df.empty:
            continue
        p = study.protocols[name].paper
        parts += [f"## Table {t}: {name} ({study.data_label(name)})", "",
                  f"Paper column: {'the paper evaluated on ' + p if p else 'none (other data)'}.", ""]
        cols = {"configuration": "configuration", "seed": "seed", "paper image_auroc": "I-AUROC paper",
                "image_auroc": "I-AUROC", "paper pro": "PRO paper", "pro_compat": "pro_compat",
                "au_pro": "au_pro"}
        shown = df[[c for c in cols if c in df]].rename(columns=cols)
        parts += [shown.to_markdown(index=False, floatfmt=".1f"), ""]
    path = study.out_dir / "summary.md"
    study.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(parts)))
    return path
