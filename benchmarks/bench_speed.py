"""What a run costs, measured in one run (REFERENCE.md section 5, issue 8).

1. FLOPs per image (torch's FlopCounterMode, paper preset at 518 px, random weights on the
   ``meta`` device: nothing is downloaded or computed): bare image tower, PromptMoE's frozen
   pass, full forward, training step with and without the feature cache, and their ratios.
2. CPU times of the ``small`` preset (ViT-B-16 at 224 px, random weights): full forward vs the
   bare tower, and one training epoch from the feature cache vs one that runs the tower; then
   the disk cache against the memory cache (the trained weights must be identical).
3. The projected time of the paper's protocol on a T4 and an A100, fp32 and autocast, from the
   FLOPs of (1) and the assumptions printed with it (promptmoe/cost.py).

    python benchmarks/bench_speed.py [--images 32] [--repeats 2] [--threads 2]

CPU times are the best of ``--repeats`` runs in this one process; only their ratios mean
anything (the machine is shared). Nothing here is a result of the method.
"""
import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from promptmoe.cache import FeatureCache  # noqa: E402
from promptmoe.config import PromptMoEConfig  # noqa: E402
from promptmoe.cost import assumptions, count_flops, project_protocol  # noqa: E402
from promptmoe.losses import total_loss  # noqa: E402
from promptmoe.model import build_model  # noqa: E402
from promptmoe.train import train  # noqa: E402


class RandomImages(torch.utils.data.Dataset):
    """Random CLIP-sized images with a square defect in every other one (timing only)."""

    def __init__(self, n, size):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.masks = torch.zeros(n, size, size)
        self.masks[1::2, size // 4: size // 2, size // 4: size // 2] = 1

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "gt_mask": self.masks[i],
                "gt_label": torch.tensor(int(self.masks[i].any())), "has_mask": torch.tensor(True)}


def best(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def flop_table():
    f = count_flops()
    print("FLOPs per image, paper preset (ViT-L-14-336 at 518 px, random weights, batch 1):")
    for k, v in f.items():
        print(f"  {k:14s} {v / 1e9:9.1f} GFLOP   {v / f['tower']:6.3f}x the bare tower")
    print(f"  training step, cached vs uncached: {f['step_uncached'] / f['step_cached']:.1f}x fewer "
          "FLOPs (REFERENCE.md section 5 measured before this change: forward 1333.7 GFLOP = "
          "1.316x, step 1390 / 113 GFLOP)")
    return f


def cpu_times(n_images, repeats):
    cfg = PromptMoEConfig.small(pretrained=None, precision="fp32")
    model = build_model(cfg)
    ds = RandomImages(n_images, cfg.image_size)
    x = torch.stack([ds[i]["image"] for i in range(cfg.batch_size)])
    model.eval()
    with torch.no_grad():
        t_tower = best(lambda: model.backbone.clip.visual(x), repeats)
        t_fwd = best(lambda: model(x), repeats)
    print(f"\nsmall preset (ViT-B-16, 224 px, random weights), CPU, {torch.get_num_threads()} threads,"
          f" batch {cfg.batch_size}:")
    print(f"  full forward {t_fwd:.3f} s vs bare tower {t_tower:.3f} s: {t_fwd / t_tower:.2f}x")

    cache = FeatureCache(model, ds, cfg.batch_size, "cpu", progress=False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
    batches = torch.arange(n_images).split(cfg.batch_size)

    def epoch(cached):
        model.train()
        for idx in batches:
            if cached:
                feats, masks, labels = cache.batch(idx, "cpu")
            else:
                b = [ds[i] for i in idx.tolist()]
                feats = model.backbone.encode_image(torch.stack([d["image"] for d in b]))
                masks = torch.stack([d["gt_mask"] for d in b])
                labels = torch.stack([d["gt_label"] for d in b])
            out = model.forward_features(feats, out_size=tuple(masks.shape[-2:]))
            terms = total_loss(out, masks, labels, model.expert_pools(), cfg.alpha, cfg.beta,
                               cfg.focal_gamma)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()

    t_un, t_ca = best(lambda: epoch(False), repeats), best(lambda: epoch(True), repeats)
    print(f"  one epoch of {n_images} images: uncached {t_un:.2f} s, cached {t_ca:.2f} s: "
          f"{t_un / t_ca:.2f}x faster from the cache")

    # with 2+ threads two identical CPU runs already differ by ~2e-6 (thread scheduling of
    # reductions), so the comparison runs on one thread, where runs are bit-reproducible
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        small = RandomImages(16, cfg.image_size)
        run = dict(progress=False, num_workers=0)
        one = cfg.replace(epochs=1, warmup_epochs=0)
        a = train(one, small, f"{tmp}/mem", cache_features="memory", **run)
        b = train(one, small, f"{tmp}/disk", cache_features="disk", **run)
        sa, sb = a.model.trainable_state_dict(), b.model.trainable_state_dict()
        diff = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
        print(f"  disk cache vs memory cache, 1 epoch of 16 images, 1 thread: identical weights = "
              f"{all(torch.equal(sa[k], sb[k]) for k in sa)} (max difference {diff:.1e})")
    torch.set_num_threads(threads)


def projection(f):
    print("\nProjected paper protocol (minutes):")
    for cache in (True, False):
        table = project_protocol(f, cache=cache)
        print(f"  {'with' if cache else 'without'} the feature cache:")
        print(table.round(2).to_string(index=False))
    print(assumptions())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skip-flops", action="store_true", help="only the CPU times")
    p.add_argument("--images", type=int, default=32, help="images per timed epoch")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    f = None if args.skip_flops else flop_table()
    cpu_times(args.images, args.repeats)
    if f is not None:
        projection(f)


if __name__ == "__main__":
    main()
