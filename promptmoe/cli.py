"""The ``promptmoe`` command line: make-synthetic, train, eval, predict, pretrain-micro, ablate.

Taught in chapters 5 and 6. Every command takes ``--preset`` (default: ``PROMPTMOE_PRESET``, else
GPU -> paper, online CPU -> small, offline -> micro, the CLIP this project pretrained) and exits
non-zero on any error, printing what went wrong and what to do: a bad value or file is one error
line naming it and exit code 2, checked before the model is built or any image scored
(``python -m promptmoe`` works the same). Value checks and shared options: ``promptmoe.cli_args``.
``eval --data`` takes ``NAME=ROOT`` or ``LABEL=FORMAT:ROOT`` (``mine=folder:~/photos``);
``predict`` takes any mix of image files, folders and glob patterns.

A full offline round trip (quick mode)::

    promptmoe make-synthetic data/synth
    promptmoe train --data data/synth/seen --dataset synthetic --out runs/quick --preset micro
    promptmoe eval --checkpoint runs/quick/checkpoint.safetensors --data synthetic=data/synth/unseen --out runs/quick/eval
    promptmoe predict data/synth/unseen/pill/test --checkpoint runs/quick/checkpoint.safetensors --out runs/quick/predict
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

from .cli_args import (PRESETS, UsageError, add_label_options, add_mask_options, add_speed_flags,
                       check_fraction, check_out, config_from, config_overrides, mask_options,
                       preset_or_default)
EXAMPLES = __doc__.split("A full offline round trip (quick mode)::")[1]


def cmd_make_synthetic(args) -> int:
    from .data.synthetic import make_synthetic

    root = Path(args.root)
    if root.exists() and not root.is_dir():
        raise UsageError(f"make-synthetic root {args.root}: is a file, not a folder")
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
    from .data import load_dataset
    from . import distributed
    from .train import train

    changes = config_overrides(args.set)
    for field in ("epochs", "batch_size", "lr", "seed", "precision"):
        if getattr(args, field) is not None:
            changes[field] = getattr(args, field)
    if args.deterministic:
        changes["deterministic"] = True
    if changes.get("deterministic"):  # cuBLAS reads it at its first matmul: before any GPU work
        from .precision import CUBLAS_DETERMINISTIC, CUBLAS_ENV

        os.environ.setdefault(CUBLAS_ENV, CUBLAS_DETERMINISTIC)
    config = config_from(preset_or_default(args.preset), changes)
    check_out(args.out)
    ds = load_dataset(args.dataset, args.data, image_size=config.image_size,
                      categories=args.categories, split=args.split, **mask_options(args))
    label = f"{args.dataset}:{Path(args.data).expanduser().resolve()}"
    if args.categories:
        label += f" categories={','.join(sorted(args.categories))}"
    if args.split != "test":
        label += f" split={args.split}"
    # "auto": in memory when the frozen features fit, else memory-mapped files on disk (the
    # paper preset on MVTec AD: 15.0 GB in float16 on a GPU); --no-cache never caches
    cache = "none" if args.no_cache else args.cache
    device = args.device or (distributed.local_device() if distributed.info() else None)
    result = train(config, ds, args.out, resume=args.resume, cache_features=cache, device=device,
                   cache_limit_gb=args.cache_limit_gb, cache_dir=args.cache_dir,
                   num_workers=args.workers, train_data=label)
    if not distributed.is_main():
        return 0
    last = result.log.iloc[-1]
    print(f"trained {config.preset} preset on {label}: {config.epochs} epochs, final loss "
          f"{last['total']:.4f}; checkpoint {result.checkpoint}")
    if config.preset in ("tiny", "micro"):
        from .runtime import preset_note

        print(f"note: the {config.preset} preset is a {preset_note(config.preset)}.")
    return 0


def cmd_eval(args) -> int:
    from .checkpoint import load_model, read_checkpoint
    from .data import FOLDER_ONLY_OPTIONS, load_dataset, require_labels, validate_data_specs
    from . import distributed
    from .evaluate import evaluate

    # every argument is checked before the model is built and before any image is scored
    specs = validate_data_specs(args.data)
    out = Path(args.out).expanduser()
    earlier = [n for n in ("summary.csv", "per_category.csv", "summary.md") if (out / n).exists()]
    if earlier and not args.overwrite:
        raise UsageError(f"{out} holds an earlier report ({', '.join(earlier)}): pass --overwrite "
                         "to replace it, or choose another --out")
    options = mask_options(args)
    folder_only = {k: v for k, v in options.items() if k in FOLDER_ONLY_OPTIONS}
    if folder_only and not any(s.format == "folder" for s in specs):
        flags = [{"normal_dirs": "--normal-dir", "abnormal_dirs": "--abnormal-dir"}.get(k, "--" + k.replace("_", "-"))
                 for k in folder_only]
        raise UsageError(f"{', '.join(flags)} only apply "
                         "to folder-format data (e.g. --data mine=folder:DIR)")
    config, _, _ = read_checkpoint(args.checkpoint)
    check_out(args.out)
    datasets = {}
    for spec in specs:
        kw = options if spec.format == "folder" else {k: v for k, v in options.items() if k not in folder_only}
        datasets[spec.label] = load_dataset(spec.format, spec.root, image_size=config.image_size,
                                            label=spec.label, **kw)
        require_labels(datasets[spec.label], "evaluation")
    device = args.device or (distributed.local_device() if distributed.info() else None)
    model, meta = load_model(args.checkpoint, device=device)
    if args.precision:
        model.config.precision = args.precision
    label = {"preset": model.config.preset, "trained on": str(meta.get("train_data", "?")),
             "evaluated on": ", ".join(f"{s.label} ({s.format}: {s.root})" for s in specs)}
    main = distributed.is_main()  # under torchrun only process 0 writes and prints
    report = evaluate(model, datasets, out_dir=out if main else None,
                      batch_size=args.batch_size, progress=main,
                      compat=not args.no_compat, save_maps=args.save_maps, label=label,
                      num_workers=args.workers)
    if not main:
        return 0
    print(report.summary.to_string(index=False, float_format=lambda v: f"{100 * v:.1f}"))
    print(f"reports in {out} (summary.md has the paper's numbers beside these)")
    return 0


def cmd_predict(args) -> int:
    from .checkpoint import load_model
    from .model import build_model
    from .predict import collect_inputs, score_images

    threshold = check_fraction(args.threshold, "--threshold")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    options = mask_options(args)
    # names the input that does not exist or holds no image (masks by the same rule as scoring)
    collect_inputs(args.input, **{k: v for k, v in options.items() if k in ("mask_dir", "mask_suffix")})
    check_out(args.out)
    if args.checkpoint:
        model, _ = load_model(args.checkpoint, device=args.device)
    else:
        preset = preset_or_default(args.preset)
        print(f"no --checkpoint: running UNTRAINED prompts on the {preset} preset; "
              "scores and maps are not meaningful until you train (promptmoe train).")
        model = build_model(config_from(preset, {}), device=args.device).eval()
    if args.precision:
        model.config.precision = args.precision
    table = score_images(model, args.input, args.out, threshold=threshold,
                         batch_size=args.batch_size, save_maps=args.save_maps,
                         num_workers=args.workers, **options)
    print(table.to_string(index=False))
    print(f"overlays and scores.csv in {args.out}")
    return 0


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
                       description="Train PromptMoE's prompts (the paper: on the MVTec AD test split). "
                       "Every anomalous training image needs a mask: one without is an error that "
                       "names it (the pixel losses cannot be computed, and counting it as all-normal "
                       "would teach the wrong thing). --resume refuses other data than the checkpoint's.")
    t.add_argument("--data", required=True, help="dataset root folder")
    t.add_argument("--dataset", default="mvtec", help="format name (mvtec, visa, synthetic, ...)")
    t.add_argument("--categories", nargs="*", default=None, help="only these categories")
    t.add_argument("--split", default="test", help="split to train on (the paper uses test)")
    t.add_argument("--out", required=True, help="output folder for checkpoint and log")
    t.add_argument("--preset", choices=PRESETS, default=None)
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. --set top_k=2 prompt_mode=static 'layers=[24]'")
    t.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    t.add_argument("--deterministic", action="store_true",
                   help="bit-reproducible training on a GPU (deterministic kernels, slower); a "
                   "CPU is deterministic anyway")
    t.add_argument("--no-cache", action="store_true", help="recompute CLIP features every epoch")
    t.add_argument("--cache-limit-gb", dest="cache_limit_gb", type=float, default=4.0,
                   help="with --cache auto, keep the frozen CLIP features in memory when they need "
                   "at most this much, else on disk (paper preset on MVTec AD: 15.0 GB in fp16)")
    t.add_argument("--cache", choices=("auto", "memory", "disk", "none"), default="auto",
                   help="where the frozen features are cached: auto decides from their size and "
                   "the free memory and disk, and says why")
    t.add_argument("--cache-dir", dest="cache_dir", default=None,
                   help="folder of the disk cache (default OUT/feature_cache)")
    add_speed_flags(t)
    t.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, ... (default: CUDA when present, else CPU)")
    add_mask_options(t)
    add_label_options(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="zero-shot evaluation on one or more datasets",
                       description="Evaluate a checkpoint; writes per-category and summary tables "
                       "(CSV + Markdown, with the paper's numbers) and routing statistics.")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", nargs="+", required=True, metavar="NAME=ROOT|LABEL=FORMAT:ROOT",
                   help="datasets to evaluate, e.g. visa=/data/visa mine=folder:~/photos "
                   "(the label names the report rows; the same format twice keeps both)")
    e.add_argument("--out", required=True)
    e.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    e.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    e.add_argument("--save-maps", action="store_true", help="also save every anomaly map (.npz)")
    e.add_argument("--no-compat", action="store_true", help="skip the slow compat PRO")
    e.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, ... (default: CUDA when present, else CPU)")
    add_mask_options(e)
    add_label_options(e)
    add_speed_flags(e)
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("predict", help="score images, folders or globs and write overlays",
                       description="Score images: anomaly score, label at --threshold, overlay PNG "
                       "at each image's original size.")
    r.add_argument("input", nargs="+", help="image files, folders of images, or glob patterns")
    r.add_argument("--checkpoint", default=None, help="trained checkpoint (else untrained prompts)")
    r.add_argument("--preset", choices=PRESETS, default=None,
                   help="preset when no checkpoint is given")
    r.add_argument("--threshold", type=float, default=0.5,
                   help="label an image anomalous when its score is above this (in [0, 1])")
    r.add_argument("--out", default="predictions")
    r.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, ... (default: CUDA when present, else CPU)")
    r.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    r.add_argument("--save-maps", action="store_true",
                   help="also save each anomaly map (.npy, original size)")
    add_mask_options(r)
    add_speed_flags(r)
    r.set_defaults(func=cmd_predict)
    from .microclip.command import add_parser as add_pretrain_micro

    add_pretrain_micro(sub)

    from .study_cli import add_parser as add_ablate  # the ablation study (chapter 7)

    add_ablate(sub)
    return p


def _print_error(command: str, err: BaseException) -> None:
    lines = str(err).strip().splitlines() or [type(err).__name__]
    print(f"promptmoe {command}: error: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"  {line}", file=sys.stderr)


def _one_line_warnings(command: str):
    """warnings.formatwarning that prints the package's own warnings as one line each
    (``promptmoe eval: warning: ...``) instead of file:line plus a source line; others as before."""
    default, package = warnings.formatwarning, str(Path(__file__).resolve().parent) + os.sep

    def fmt(message, category, filename, lineno, line=None):
        if str(Path(filename).resolve()).startswith(package):
            return f"promptmoe {command}: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    return fmt


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .data.base import DatasetError

    from . import distributed

    saved_format = warnings.formatwarning
    try:
        warnings.formatwarning = _one_line_warnings(args.command)
        # joins the process group under torchrun (--nproc_per_node > 1); --device cpu: gloo
        distributed.setup(getattr(args, "device", None))
        return args.func(args)
    except (DatasetError, CheckpointError, ValueError, OSError) as err:
        # no traceback: one error line naming the value or file at fault (then, for data, the
        # expected layout)
        _print_error(args.command, err)
        return 2
    except RuntimeError as err:
        _print_error(args.command, err)
        return 1
    finally:
        warnings.formatwarning = saved_format
        distributed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
