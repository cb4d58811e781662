"""``promptmoe ablate``: the paper's ablation tables from the command line (chapter 7).

The paper's study, both directions, from one feature cache per dataset::

    promptmoe ablate --table 2 3 4 5 6 --train mvtec=$PROMPTMOE_DATA/mvtec \\
        --eval visa=$PROMPTMOE_DATA/visa --both-directions --out runs/ablations

It first prints the plan (disk, tower passes, FLOPs, projected GPU time) and refuses to start,
with exit code 2, when the disk cannot hold the caches and runs. Rerun the same command to
resume an interrupted study. Results: ``OUT/table<N>.csv`` (the paper's numbers beside each
row) and ``OUT/summary.md``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .ablation import ABLATION_TABLES

HELP = "run the paper's ablation tables (2-6) from one feature cache per dataset"


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``ablate`` subcommand on ``sub``."""
    from .cli_args import PRESETS, add_speed_flags

    a = sub.add_parser("ablate", help=HELP, description=__doc__.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--table", nargs="+", type=int, default=list(ABLATION_TABLES),
                   choices=ABLATION_TABLES, help="which of the paper's tables (default: all)")
    a.add_argument("--train", required=True, metavar="NAME=ROOT|LABEL=FORMAT:ROOT",
                   help="the training set, e.g. mvtec=~/data/mvtec")
    a.add_argument("--eval", nargs="+", required=True, metavar="NAME=ROOT|LABEL=FORMAT:ROOT",
                   help="evaluation sets (metrics are averaged over them), e.g. visa=~/data/visa")
    a.add_argument("--both-directions", action="store_true",
                   help="also train on the --eval set and evaluate on the --train set, as the paper "
                   "does (one --eval); each dataset's features are computed once for both")
    a.add_argument("--out", required=True, help="folder of the tables, runs and summary")
    a.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="one row per seed and configuration (default: the preset's seed)")
    a.add_argument("--preset", choices=PRESETS, default=None)
    a.add_argument("--epochs", type=int, default=None)
    a.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    a.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="change the base model of every row, e.g. --set sigma=2")
    a.add_argument("--cache", choices=("auto", "memory", "disk"), default="auto",
                   help="where the shared features live: auto decides from their size and the "
                   "free memory and disk (paper preset: float16 files on disk)")
    a.add_argument("--cache-dir", dest="cache_dir", default=None,
                   help="folder of the disk caches (default OUT/feature_cache)")
    a.add_argument("--cache-limit-gb", dest="cache_limit_gb", type=float, default=4.0,
                   help="with --cache auto, the most host memory the caches may take")
    a.add_argument("--dry-run", action="store_true",
                   help="print the plan (disk, tower passes, FLOPs, projected time) and stop")
    a.add_argument("--drop-cache", action="store_true",
                   help="delete the feature caches when the study is done (a rerun recomputes them)")
    a.add_argument("--detail", action="store_true", help="also show each model's training bars")
    a.add_argument("--no-compat", action="store_true", help="skip the slow compat PRO")
    a.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA when present)")
    add_speed_flags(a)
    a.set_defaults(func=cmd_ablate)
    return a


def cmd_ablate(args) -> int:
    from .cli_args import UsageError, check_out, config_from, config_overrides, preset_or_default
    from .data import load_dataset, validate_data_specs
    from .runtime import preset_note
    from .study import Protocol, Study

    # every argument is checked before a dataset is read or a model built
    train_spec, *eval_specs = validate_data_specs([args.train, *args.eval])
    if args.both_directions and len(eval_specs) != 1:
        raise UsageError(f"--both-directions needs exactly one --eval set, not {len(eval_specs)}")
    changes = config_overrides(args.set)
    for name in ("epochs", "batch_size", "precision"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    base = config_from(preset_or_default(args.preset), changes)
    out = check_out(args.out)
    if args.cache_dir:
        check_out(args.cache_dir, "--cache-dir")
    loaded = {}
    for spec in (train_spec, *eval_specs):
        loaded[spec.label] = load_dataset(spec.format, spec.root, image_size=base.image_size,
                                          label=spec.label)
    evals = {s.label: loaded[s.label] for s in eval_specs}
    protocols = {f"{train_spec.label} -> {'+'.join(evals)}": Protocol(loaded[train_spec.label], evals)}
    if args.both_directions:
        back = eval_specs[0].label
        protocols[f"{back} -> {train_spec.label}"] = Protocol(loaded[back], {train_spec.label:
                                                                             loaded[train_spec.label]})
    study = Study(base, protocols, out, tables=args.table, seeds=args.seeds, device=args.device,
                  cache=args.cache, cache_dir=args.cache_dir, cache_limit_gb=args.cache_limit_gb,
                  compat=not args.no_compat, num_workers=args.workers, detail=args.detail)
    plan = study.plan()
    print(plan.describe())
    plan.check()  # a StudyError: one line, exit code 2, nothing written
    if args.dry_run:
        return 0
    study.run(plan=plan, check=False)
    if args.drop_cache:
        study.drop_caches()
    tables = " ".join(str(out / f"table{t}.csv") for t in args.table)
    print(f"tables: {tables}\nsummary (the paper's numbers beside this run's): {Path(out) / 'summary.md'}")
    if preset_note(base.preset):
        print(f"note: the {base.preset} preset is a {preset_note(base.preset)}.")
    return 0
