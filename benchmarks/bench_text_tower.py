"""Text-tower cost per image, before and after cutting the prompts at EOT (REFERENCE.md D2, 5).

PromptMoE encodes 2 prompts per feature layer per image (8 sequences at 4 layers). The text
tower's mask is causal, so positions after EOT never influence the EOT feature: cutting the
sequence there gives the same features (tests/test_backbone.py) for less work. This script
measures, in one run, FLOPs (torch's FlopCounterMode) and CPU time of both, for the paper's
ViT-L-14-336 text tower (random weights: cost does not depend on the values, so no download),
and the image tower's FLOPs at 518 px for scale.

    python benchmarks/bench_text_tower.py [--model ViT-L-14-336] [--repeats 5]
"""
import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from promptmoe.backbone import FrozenCLIP  # noqa: E402
from promptmoe.config import PromptMoEConfig  # noqa: E402
from promptmoe.model import sequence_length  # noqa: E402


def flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-L-14-336")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-image", action="store_true", help="skip the image-tower FLOP count")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    # the fused inference path of nn.MultiheadAttention is invisible to FlopCounterMode
    torch.backends.mha.set_fastpath_enabled(False)
    cfg = PromptMoEConfig.paper(clip_model=args.model, pretrained=None)
    bb = FrozenCLIP(cfg)
    n_seq = 2 * len(cfg.layers)  # normal + abnormal per feature layer, for one image
    L = sequence_length(cfg)
    width = bb.token_dim
    embeds = torch.randn(n_seq, L, width) * 0.02
    eot = torch.full((n_seq,), L - 1)
    full = lambda: bb.encode_embeddings(embeds, eot, cut=False)  # noqa: E731
    cut = lambda: bb.encode_embeddings(embeds, eot, cut=True)  # noqa: E731
    f_full, f_cut = flops(full), flops(cut)
    t_full, t_cut = seconds(full, args.repeats), seconds(cut, args.repeats)
    print(f"{args.model}: {n_seq} prompt sequences per image, {L} tokens after the cut vs 77")
    print(f"text tower per image, full 77 tokens: {f_full / 1e9:8.1f} GFLOP, {t_full * 1e3:7.1f} ms CPU")
    print(f"text tower per image, cut at EOT    : {f_cut / 1e9:8.1f} GFLOP, {t_cut * 1e3:7.1f} ms CPU")
    print(f"ratio full/cut: FLOPs x{f_full / f_cut:.2f}, CPU time x{t_full / t_cut:.2f} (same run)")
    if not args.skip_image:
        img = torch.randn(1, 3, cfg.image_size, cfg.image_size)
        f_img = flops(lambda: bb.encode_image(img))
        print(f"image tower at {cfg.image_size} px (with the V-V path): {f_img / 1e9:8.1f} GFLOP; "
              f"text/image: full {f_full / f_img:.1%}, cut {f_cut / f_img:.1%}")


if __name__ == "__main__":
    main()
