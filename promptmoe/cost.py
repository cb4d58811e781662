"""What a run costs: FLOPs counted on the model itself, and projected GPU times of the protocol.

Taught in chapters 5 and 6. REFERENCE.md section 5.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on a model built on the
``meta`` device (random weights, no memory, no download: cost does not depend on the values).
Times are *projections* from those counts, never measurements:

    time = FLOPs / (peak TFLOPS x efficiency)

with the peak of the data sheet and an efficiency factor that says what share of the peak a
ViT's large matrix multiplications reach in practice. Both are assumptions, printed with every
projection (:data:`GPUS`, :data:`EFFICIENCY`); data loading is assumed to keep up (parallel
workers, see ``--workers``).
"""
from __future__ import annotations

import logging
from typing import Dict, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import PromptMoEConfig

# peak dense TFLOPS from NVIDIA's data sheets: "fp32" plain CUDA cores; "autocast" the tensor
# cores autocast uses (T4: fp16, no bf16; A100: bf16, and TF32 for the fp32 remainder)
GPUS = {
    "T4": {"fp32": 8.1, "autocast": 65.0},
    "A100": {"fp32": 19.5, "autocast": 312.0},
}
# share of the peak reached on ViT-L matmuls (assumed, not measured here): plain fp32 kernels get
# close to their peak; tensor-core peaks are rarely reached (a T4 also clocks down under load)
EFFICIENCY = {"fp32": 0.45, "autocast": 0.30}
# the paper's protocol: train on MVTec AD's test split, evaluate zero-shot on VisA
PROTOCOL = {"train_images": 1725, "epochs": 15, "eval_images": 2162}


def _count(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def meta_model(config: PromptMoEConfig):
    """The model of ``config`` with every tensor on the ``meta`` device (shapes only)."""
    import open_clip

    from .backbone import FrozenCLIP
    from .model import PromptMoE

    logging.disable(logging.WARNING)  # open_clip warns that the weights are random: intended
    try:
        with torch.device("meta"):
            clip = open_clip.create_model(config.clip_model, pretrained=None, device="meta",
                                          force_image_size=config.image_size)
    finally:
        logging.disable(logging.NOTSET)
    torch.manual_seed(config.seed)
    return PromptMoE(config, FrozenCLIP(config, clip=clip)).to("meta")


def count_flops(config: Optional[PromptMoEConfig] = None, batch: int = 1) -> Dict[str, float]:
    """FLOPs per image of the pieces of a run (default: the paper preset at 518 px).

    Returns a dict (FLOPs per image):
        tower: the bare open_clip image tower (``clip.visual``), the floor of any CLIP method;
        encode_image: PromptMoE's frozen pass (tower + the V-V path);
        forward: the full inference forward (image tower, prompts, text tower, maps, score);
        step_uncached: a training step (frozen pass + forward + backward of the prompts);
        step_cached: the same step from cached features (no image tower).
    """
    from .losses import total_loss

    config = config or PromptMoEConfig.paper(pretrained=None)
    model = meta_model(config)
    S = config.image_size
    images = torch.zeros(batch, 3, S, S, device="meta")
    masks = torch.zeros(batch, S, S, device="meta")
    labels = torch.zeros(batch, device="meta")
    model.eval()
    out = {"tower": _count(lambda: model.backbone.clip.visual(images))}
    with torch.no_grad():
        out["encode_image"] = _count(lambda: model.backbone.encode_image(images))
        out["forward"] = _count(lambda: model(images))
    feats = model.backbone.encode_image(images)
    model.train()

    def step(cached: bool):
        f = feats if cached else model.backbone.encode_image(images)
        res = model.forward_features(f, out_size=(S, S))
        terms = total_loss(res, masks, labels, model.expert_pools(), config.alpha, config.beta,
                           config.focal_gamma)
        terms["total"].backward()

    out["step_cached"] = _count(lambda: step(True))
    out["step_uncached"] = _count(lambda: step(False))
    model.eval()
    return {k: v / batch for k, v in out.items()}


def protocol_flops(flops: Dict[str, float], cache: bool = True,
                   protocol: Optional[dict] = None) -> Dict[str, float]:
    """Total FLOPs of training and evaluating once (see :data:`PROTOCOL`)."""
    p = {**PROTOCOL, **(protocol or {})}
    n, e = p["train_images"], p["epochs"]
    if cache:  # the frozen pass once per image, then every epoch from the cache
        train = n * (flops["encode_image"] + e * flops["step_cached"])
    else:
        train = n * e * flops["step_uncached"]
    return {"train": train, "eval": p["eval_images"] * flops["forward"]}


def project_protocol(flops: Optional[Dict[str, float]] = None, cache: bool = True,
                     protocol: Optional[dict] = None):
    """Projected minutes of the paper's protocol per GPU and precision (a pandas DataFrame).

    Args:
        flops: :func:`count_flops` of the paper preset (counted when omitted).
        cache: train from the feature cache (the frozen pass once per image).
    """
    import pandas as pd

    flops = flops or count_flops()
    total = protocol_flops(flops, cache=cache, protocol=protocol)
    rows = []
    for gpu, peaks in GPUS.items():
        for mode, peak in peaks.items():
            rate = peak * EFFICIENCY[mode] * 1e12  # FLOP/s assumed sustained
            rows.append({"gpu": gpu, "precision": mode, "peak TFLOPS": peak,
                         "efficiency": EFFICIENCY[mode],
                         "train min": total["train"] / rate / 60,
                         "eval min": total["eval"] / rate / 60,
                         "total min": (total["train"] + total["eval"]) / rate / 60})
    return pd.DataFrame(rows)


def assumptions(cache: bool = True) -> str:
    """The assumptions behind :func:`project_protocol`, in words (print them beside it)."""
    p = PROTOCOL
    peaks = "; ".join(f"{g}: fp32 {v['fp32']}, autocast {v['autocast']} TFLOPS"
                      for g, v in GPUS.items())
    return (f"PROJECTION from FLOP counts, not a measurement. Protocol: train {p['epochs']} epochs "
            f"on {p['train_images']} MVTec AD images ({'with' if cache else 'without'} the feature "
            f"cache), evaluate {p['eval_images']} VisA images, batch 1 FLOPs. Peaks (data sheets): "
            f"{peaks}. Sustained share of peak assumed: fp32 {EFFICIENCY['fp32']}, autocast "
            f"{EFFICIENCY['autocast']}. Data loading assumed to keep up (parallel workers).")
