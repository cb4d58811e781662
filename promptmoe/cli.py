"""The ``promptmoe`` command line: make-synthetic, train, eval, predict.

Taught in chapters 5 and 6. Every command takes ``--preset`` (default: ``PROMPTMOE_PRESET``, else
GPU -> paper, online CPU -> small, offline -> tiny) and exits non-zero on any error, printing what
went wrong and what to do.

A full offline round trip (quick mode)::

    promptmoe make-synthetic data/synth
    promptmoe train --data data/synth/seen --dataset synthetic --out runs/quick --preset tiny
    promptmoe eval --checkpoint runs/quick/checkpoint.safetensors --data synthetic=data/synth/unseen --out runs/quick/eval
    promptmoe predict data/synth/unseen/ring/test --checkpoint runs/quick/checkpoint.safetensors --out runs/quick/predict
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

EXAMPLES = __doc__.split("A full offline round trip (quick mode)::")[1]


def _preset(name: Optional[str]) -> str:
    from .runtime import default_preset

    return name or default_preset()


def _overrides(pairs: List[str]) -> dict:
    """--set key=value pairs; values parsed as JSON when they can be (numbers, lists, booleans)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set {pair!r}: write it as key=value, e.g. --set top_k=2")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_make_synthetic(args) -> int:
    from .data.synthetic import make_synthetic

    info = make_synthetic(args.root, seed=args.seed, size=args.size, overwrite=args.overwrite)
    print(f"synthetic data in {args.root}: seen set {Path(args.root) / 'seen'}, "
          f"unseen set {Path(args.root) / 'unseen'}")
    counts = info.get("counts", {}) if isinstance(info, dict) else {}
    for cat, parts in counts.items():
        good = sum(v for k, v in parts.items() if k == "test/good")
        bad = sum(v for k, v in parts.items() if k.startswith("test/") and k != "test/good")
        print(f"  {cat:10s} test: {good} good, {bad} defective")
    return 0


def cmd_train(args) -> int:
    from .config import PromptMoEConfig
    from .data import load_dataset
    from . import distributed
    from .train import train

    changes = _overrides(args.set)
    for field in ("epochs", "batch_size", "lr", "seed", "precision"):
        if getattr(args, field) is not None:
            changes[field] = getattr(args, field)
    config = PromptMoEConfig.from_preset(_preset(args.preset), **changes)
    ds = load_dataset(args.dataset, args.data, image_size=config.image_size,
                      categories=args.categories, split=args.split)
    label = f"{args.dataset}:{args.data}"
    # "auto": in memory when the frozen features fit, else memory-mapped files on disk (the
    # paper preset on MVTec AD: 14.5 GB in float16 on a GPU); --no-cache never caches
    cache = "none" if args.no_cache else args.cache
    device = distributed.local_device() if distributed.info() else None
    result = train(config, ds, args.out, resume=args.resume, cache_features=cache, device=device,
                   cache_limit_gb=args.cache_limit_gb, cache_dir=args.cache_dir,
                   num_workers=args.workers, train_data=label)
    if not distributed.is_main():
        return 0
    last = result.log.iloc[-1]
    print(f"trained {config.preset} preset on {label}: {config.epochs} epochs, final loss "
          f"{last['total']:.4f}; checkpoint {result.checkpoint}")
    if config.preset == "tiny":
        print("note: the tiny preset is a random CLIP; its numbers are plumbing, not results.")
    return 0


def cmd_eval(args) -> int:
    from .checkpoint import load_model
    from .data import load_dataset
    from . import distributed
    from .evaluate import evaluate

    device = args.device or (distributed.local_device() if distributed.info() else None)
    model, meta = load_model(args.checkpoint, device=device)
    if args.precision:
        model.config.precision = args.precision
    datasets = {}
    for spec in args.data:
        if "=" not in spec:
            raise ValueError(f"--data {spec!r}: write NAME=ROOT, e.g. --data visa=/data/visa")
        name, root = spec.split("=", 1)
        datasets[name] = load_dataset(name, root, image_size=model.config.image_size)
    label = {"preset": model.config.preset, "trained on": str(meta.get("train_data", "?")),
             "evaluated on": ", ".join(datasets)}
    main = distributed.is_main()  # under torchrun only process 0 writes and prints
    report = evaluate(model, datasets, out_dir=args.out if main else None,
                      batch_size=args.batch_size, progress=main,
                      compat=not args.no_compat, save_maps=args.save_maps, label=label,
                      num_workers=args.workers)
    if not main:
        return 0
    print(report.summary.to_string(index=False, float_format=lambda v: f"{100 * v:.1f}"))
    print(f"reports in {args.out} (summary.md has the paper's numbers beside these)")
    return 0


def cmd_predict(args) -> int:
    from .checkpoint import load_model
    from .config import PromptMoEConfig
    from .model import build_model
    from .predict import score_images

    if args.checkpoint:
        model, _ = load_model(args.checkpoint, device=args.device)
    else:
        preset = _preset(args.preset)
        print(f"no --checkpoint: running UNTRAINED prompts on the {preset} preset; "
              "scores and maps are not meaningful until you train (promptmoe train).")
        model = build_model(PromptMoEConfig.from_preset(preset), device=args.device).eval()
    if args.precision:
        model.config.precision = args.precision
    table = score_images(model, args.input, args.out, threshold=args.threshold,
                         num_workers=args.workers)
    print(table.to_string(index=False))
    print(f"overlays and scores.csv in {args.out}")
    return 0


def _speed_flags(p: argparse.ArgumentParser) -> None:
    """--workers and --precision, shared by train, eval and predict."""
    p.add_argument("--workers", type=int, default=None,
                   help="data loader processes (default: cores - 1, at most 8, on a GPU; 0 on CPU)")
    p.add_argument("--precision", choices=("fp32", "auto", "bf16", "fp16"), default="auto",
                   help="frozen towers: auto = bf16/fp16 autocast (+TF32) on a GPU, fp32 on a "
                   "CPU; the trained parts always run in fp32 (default: auto)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="promptmoe", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="PromptMoE zero-shot anomaly detection: data, training, evaluation, scoring.",
        epilog="example, offline in a minute:" + EXAMPLES)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("make-synthetic", help="write the offline synthetic anomaly dataset",
                       description="Write two disjoint synthetic category sets (seen/ and unseen/) "
                       "in the MVTec AD layout, from images that ship with scikit-image.")
    s.add_argument("root", help="output folder")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=128, help="image side in pixels")
    s.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    s.set_defaults(func=cmd_make_synthetic)

    t = sub.add_parser("train", help="train the prompts on an auxiliary dataset",
                       description="Train PromptMoE's prompts (the paper: on the MVTec AD test split).")
    t.add_argument("--data", required=True, help="dataset root folder")
    t.add_argument("--dataset", default="mvtec", help="format name (mvtec, visa, synthetic, ...)")
    t.add_argument("--categories", nargs="*", default=None, help="only these categories")
    t.add_argument("--split", default="test", help="split to train on (the paper uses test)")
    t.add_argument("--out", required=True, help="output folder for checkpoint and log")
    t.add_argument("--preset", choices=("paper", "small", "tiny"), default=None)
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. --set top_k=2 prompt_mode=static 'layers=[24]'")
    t.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    t.add_argument("--no-cache", action="store_true", help="recompute CLIP features every epoch")
    t.add_argument("--cache-limit-gb", dest="cache_limit_gb", type=float, default=4.0,
                   help="with --cache auto, keep the frozen CLIP features in memory when they need "
                   "at most this much, else on disk (paper preset on MVTec AD: 14.5 GB in fp16)")
    t.add_argument("--cache", choices=("auto", "memory", "disk", "none"), default="auto",
                   help="where the frozen features are cached: auto decides from their size and "
                   "the free memory and disk, and says why")
    t.add_argument("--cache-dir", dest="cache_dir", default=None,
                   help="folder of the disk cache (default OUT/feature_cache)")
    _speed_flags(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="zero-shot evaluation on one or more datasets",
                       description="Evaluate a checkpoint; writes per-category and summary tables "
                       "(CSV + Markdown, with the paper's numbers) and routing statistics.")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", nargs="+", required=True, metavar="NAME=ROOT",
                   help="datasets to evaluate, e.g. visa=/data/visa mpdd=/data/mpdd")
    e.add_argument("--out", required=True)
    e.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    e.add_argument("--save-maps", action="store_true", help="also save every anomaly map (.npz)")
    e.add_argument("--no-compat", action="store_true", help="skip the slow compat PRO")
    e.add_argument("--device", default=None)
    _speed_flags(e)
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("predict", help="score an image or a folder and write overlays",
                       description="Score images: anomaly score, label at --threshold, overlay PNG.")
    r.add_argument("input", help="an image file or a folder of images")
    r.add_argument("--checkpoint", default=None, help="trained checkpoint (else untrained prompts)")
    r.add_argument("--preset", choices=("paper", "small", "tiny"), default=None,
                   help="preset when no checkpoint is given")
    r.add_argument("--threshold", type=float, default=0.5)
    r.add_argument("--out", default="predictions")
    r.add_argument("--device", default=None)
    _speed_flags(r)
    r.set_defaults(func=cmd_predict)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .data.base import DatasetError

    from . import distributed

    try:
        distributed.setup()  # joins the process group under torchrun (--nproc_per_node > 1)
        return args.func(args)
    except (DatasetError, CheckpointError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"promptmoe {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"promptmoe {args.command}: error: {err}", file=sys.stderr)
        return 1
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
