"""GPU smoke test of the paper preset: one training step at batch 16 and one eval batch on CUDA.

Builds ``PromptMoEConfig.paper()`` (ViT-L-14-336 at 518 px) with the OpenAI weights when they are
cached or reachable, otherwise with random weights (said in the output: the timings and memory
are the same, the scores mean nothing). Then, on random images and masks:

* a training step: forward, Eq. 8 loss, backward, Adam step (the first step also pays for CUDA
  start-up, so ``--warmup`` steps run untimed before it);
* one eval batch: forward in eval mode (Gaussian smoothing included).

Prints the device, the step and eval times and the peak GPU memory (``max_memory_allocated``).

On a Colab GPU:                    python benchmarks/gpu_smoke.py
A CPU dry run of the plumbing:     python benchmarks/gpu_smoke.py --device cpu --preset tiny
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

# Runs from a checkout without installing: the repository root holds the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from promptmoe.config import PromptMoEConfig  # noqa: E402
from promptmoe.losses import total_loss  # noqa: E402
from promptmoe.model import build_model  # noqa: E402


def build(preset: str, device: torch.device):
    """The preset's model, with its pretrained weights if they load, else random weights."""
    config = PromptMoEConfig.from_preset(preset)
    if config.pretrained is None:
        return build_model(config, device=device), "random weights (this preset has none)"
    try:
        return build_model(config, device=device), f"pretrained={config.pretrained!r}"
    except RuntimeError as err:
        if config.pretrained is None:
            raise
        print(f"pretrained weights unavailable ({str(err).splitlines()[0][:120]}...)")
        print("-> random weights: timings and memory are representative, scores are not")
        return build_model(config.replace(pretrained=None), device=device), "random weights"


def batch(config: PromptMoEConfig, size: int, device: torch.device, seed: int = 0):
    """Random CLIP-normalised images, masks with one square defect on odd images, labels."""
    g = torch.Generator().manual_seed(seed)
    S = config.image_size
    images = torch.randn(size, 3, S, S, generator=g)  # (B, 3, S, S)
    masks = torch.zeros(size, S, S)  # (B, S, S)
    masks[1::2, S // 4:S // 2, S // 4:S // 2] = 1.0
    labels = (masks.flatten(1).amax(1) > 0).long()  # (B,)
    return images.to(device), masks.to(device), labels.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, optimizer, images, masks, labels) -> float:
    cfg = model.config
    model.train()
    out = model(images)
    terms = total_loss(out, masks, labels, model.expert_pools(), cfg.alpha, cfg.beta,
                       cfg.focal_gamma)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    return float(terms["total"].detach())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="paper", choices=("paper", "small", "tiny"))
    p.add_argument("--batch-size", type=int, default=16, help="training batch (the paper: 16)")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu for a dry run")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device is available, so nothing was measured. On Colab choose "
              "Runtime > Change runtime type > a GPU and rerun; `--device cpu --preset tiny` runs "
              "the same steps on the CPU as a dry run.", file=sys.stderr)
        return 1
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    t0 = time.perf_counter()
    model, weights = build(args.preset, device)
    cfg = model.config
    print(f"device: {device} ({name}); preset {cfg.preset}: {cfg.clip_model} at "
          f"{cfg.image_size} px, {weights}; built in {time.perf_counter() - t0:.1f} s")
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
    images, masks, labels = batch(cfg, args.batch_size, device)
    for _ in range(args.warmup):
        train_step(model, optimizer, images, masks, labels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    loss = train_step(model, optimizer, images, masks, labels)
    sync(device)
    step_s = time.perf_counter() - t0
    train_peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    eval_images = batch(cfg, args.eval_batch_size, device, seed=1)[0]
    model.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(eval_images)
    sync(device)
    eval_s = time.perf_counter() - t0
    eval_peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    ok = torch.isfinite(out["pred_score"]).all().item() and torch.isfinite(torch.tensor(loss)).item()
    print(f"training step, batch {args.batch_size}: {step_s:.3f} s (loss {loss:.4f}; "
          f"{args.warmup} warm-up step(s) before)")
    print(f"eval batch {args.eval_batch_size}: {eval_s:.3f} s "
          f"({args.eval_batch_size / eval_s:.1f} images/s)")
    if train_peak is not None:
        print(f"peak GPU memory: training step {train_peak:.2f} GiB, eval batch {eval_peak:.2f} GiB")
    print("finite outputs:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
