"""``promptmoe pretrain-micro``: pretrain (or resume) the micro CLIP and optionally ship it.

Taught in chapter 10. Example, 40 minutes on a CPU, then the weights the ``micro`` preset loads::

    promptmoe pretrain-micro --out runs/micro --minutes 40
    promptmoe pretrain-micro --out runs/micro --resume --export promptmoe/microclip/weights/promptmoe-micro.safetensors
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pretrain-micro", help="pretrain the micro CLIP on synthetic region twins (offline)",
        description="Pretrain the micro CLIP (the offline `micro` preset's backbone) on synthetic "
        "region twins: crops shown clean and with a defect, captions that differ only in the state "
        "word. Writes OUT/checkpoint.pt (every few minutes and at the end), OUT/log.csv and "
        "OUT/config.json; --resume continues exactly. --export writes fp16 weights + manifest with "
        "held-out zero-shot numbers (categories never used in pretraining).")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--minutes", type=float, default=30.0, help="time budget (default 30)")
    p.add_argument("--steps", type=int, default=0, help="exact number of steps (overrides --minutes)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None,
                   help="images per step (default 256 on a CPU, 1024 on a GPU)")
    p.add_argument("--model", default="promptmoe-micro",
                   choices=("promptmoe-micro", "promptmoe-micro-128"),
                   help="architecture: the shipped 64-wide one (default), or the 128-wide variant "
                   "(vision 128 x 6, text 128 x 4; better maps, about 4x the compute: a GPU's job)")
    p.add_argument("--vv-supervision", dest="vv_supervision", type=int, default=0, metavar="BLOCK",
                   help="also train the V-V path's window tokens, started at this block (the "
                   "tokens the maps read; 0 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt")
    p.add_argument("--export", default=None, metavar="FILE",
                   help="after training, write fp16 weights to FILE and FILE's .json manifest")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def _commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(args: argparse.Namespace) -> int:
    import torch

    from ..runtime import get_device
    from .pretrain import PretrainConfig, pretrain

    device = get_device(args.device)
    if not args.resume:
        if args.steps < 0 or (args.steps == 0 and args.minutes <= 0):
            raise ValueError(f"--minutes {args.minutes} / --steps {args.steps}: give a positive budget")
        batch = args.batch_size or (1024 if device.type == "cuda" else 256)
        config = PretrainConfig(model=args.model, batch_size=batch, seed=args.seed, steps=args.steps,
                                minutes=args.minutes, vv_supervision=args.vv_supervision)
    else:
        config = None
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    line = "promptmoe " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = pretrain(args.out, config, device=device, resume=args.resume, progress=args.progress)
    with open(Path(args.out) / "commands.txt", "a") as f:  # the run's history, for the manifest
        f.write(line + "\n")
    print(f"pretrained {result.steps} steps, {result.samples:,} samples in "
          f"{result.seconds / 60:.1f} min; checkpoint {result.out_dir / 'checkpoint.pt'}")
    if args.export:
        info = export_with_numbers(result.out_dir / "checkpoint.pt", args.export, device)
        print(f"exported {args.export}: held-out pixel AUROC {info['held_out']['pixel_auroc']:.3f}, "
              f"image AUROC {info['held_out']['image_auroc']:.3f} "
              f"(random weights: {info['random_weights']['pixel_auroc']:.3f} / "
              f"{info['random_weights']['image_auroc']:.3f})")
    return 0


def export_with_numbers(checkpoint, weights_file, device, command: str = "") -> dict:
    """Export a checkpoint and write, in its manifest, the held-out zero-shot numbers of the
    hand-written prompts with the micro preset's blocks and V-V path, and the same on random weights.

    ``command`` defaults to the commands recorded in the run folder's ``commands.txt``."""
    import torch

    from ..config import PromptMoEConfig
    from .export import export_weights, load_weights, read_manifest
    from .heldout import VALIDATION_CATEGORIES, held_out_set, hand_prompt_metrics
    from .pretrain import PretrainConfig, build_micro_clip

    blob = torch.load(checkpoint, map_location="cpu", weights_only=False)
    pconfig = PretrainConfig(**blob["config"])
    history = Path(checkpoint).parent / "commands.txt"
    if not command and history.exists():
        command = " && ".join(history.read_text().split("\n")).strip(" &")
    config = PromptMoEConfig.micro(clip_model=pconfig.model, pretrained=None)
    data = held_out_set(seed=0)
    numbers = {}
    for name, weights in (("random_weights", None), ("held_out", blob["model"])):
        clip = build_micro_clip(pconfig, "cpu").eval()
        if weights is not None:  # the fp16 weights as shipped, not the fp32 checkpoint
            export_weights(checkpoint, weights_file)
            load_weights(clip, weights_file)
        numbers[name] = hand_prompt_metrics(clip, config, data)
    # the same construction on pretraining (seen) categories: the seen vs held-out gap
    numbers["seen_categories"] = hand_prompt_metrics(
        clip, config, held_out_set(seed=0, categories=VALIDATION_CATEGORIES))
    manifest = {"command": command, "commit": _commit(), "seed": pconfig.seed, "device": str(device),
                "held_out": numbers["held_out"], "random_weights": numbers["random_weights"],
                "seen_categories": numbers["seen_categories"],
                "held_out_set": "promptmoe.microclip.heldout.held_out_set(seed=0): 11 categories "
                                "x 24 images (half defective), 64 px",
                "evaluation": f"hand-written prompts, micro preset blocks {list(config.layers)}, "
                              f"V-V from block {config.first_vv_block}, sigma {config.sigma}",
                "preset_choice": "blocks and V-V start chosen on seen_categories (pretraining "
                                 "pictures with the book's defects), never on the held-out set"}
    export_weights(checkpoint, weights_file, manifest)
    return read_manifest(weights_file)
