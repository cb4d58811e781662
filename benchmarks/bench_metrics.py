"""Time and peak memory of the pixel metrics against the straightforward implementations.

Measures, each in a fresh subprocess (so one method's memory never hides another's):
(a) ``promptmoe.metrics.pixel_auroc`` vs ``sklearn.metrics.roc_auc_score`` on flattened arrays;
(b) ``promptmoe.metrics.au_pro`` and ``pro_compat`` vs a per-threshold compat PRO that re-labels
the ground-truth regions at each of 200 thresholds (AnomalyCLIP's ``cal_pro_score`` structure);
(c) ``compute_metrics``' pixel part: all three pixel metrics from one sort.

Peak memory is the rise of the child's peak RSS (``ru_maxrss``) above its RSS once the data
exist, so it counts everything the metric allocates (numpy, scipy, sklearn, Python objects).

Quick run (about a minute):       python benchmarks/bench_metrics.py
The issue's scale (MVTec-sized):  python benchmarks/bench_metrics.py --n 200 --size 518
Skip the slow baselines:          python benchmarks/bench_metrics.py --skip naive_pro sklearn_auroc
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

# Runs from a checkout without installing: the repository root holds the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

METHODS = ("ours_auroc", "sklearn_auroc", "ours_au_pro", "ours_pro_compat", "naive_pro",
           "ours_all_pixel")


def make_data(n: int, size: int, seed: int = 0):
    """Smooth random maps (N, H, W) float32 and masks (N, H, W) uint8 with blob regions.

    Every second image is anomalous with 1-3 elliptic blobs; maps are smoothed noise plus a bump
    on the blobs, so the metrics land in a realistic 0.7-0.95 range.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    maps = np.empty((n, size, size), np.float32)  # (N, H, W)
    masks = np.zeros((n, size, size), np.uint8)  # (N, H, W)
    for i in range(n):
        if i % 2:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.integers(0, size, 2)
                ry, rx = rng.integers(size // 40 + 1, size // 8 + 2, 2)
                masks[i] |= (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
        noise = ndimage.gaussian_filter(rng.random((size, size)).astype(np.float32), 4)
        maps[i] = ndimage.gaussian_filter(noise * 4 + 0.15 * masks[i], 2)
    return masks, maps


def naive_pro(masks, maps, max_steps=200, expect_fpr=0.3):
    """Per-threshold compat PRO: binarise, re-label regions, measure overlaps, 200 times."""
    from skimage import measure
    from sklearn.metrics import auc

    lo, hi = maps.min(), maps.max()
    fprs, pros = [], []
    inverse = 1 - masks
    for th in np.arange(lo, hi, (hi - lo) / np.float32(max_steps)):
        binary = maps > th
        overlaps = []
        for b, m in zip(binary, masks):
            for reg in measure.regionprops(measure.label(m)):
                overlaps.append(b[reg.coords[:, 0], reg.coords[:, 1]].sum() / reg.area)
        pros.append(np.mean(overlaps))
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < expect_fpr
    f = fprs[keep]
    return float(auc((f - f.min()) / (f.max() - f.min()), pros[keep]))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(method: str, n: int, size: int) -> dict:
    """Run one method on fresh data; return its value, seconds and peak extra memory."""
    from sklearn.metrics import roc_auc_score

    from promptmoe import metrics as M

    masks, maps = make_data(n, size)
    fns = {
        "ours_auroc": lambda: M.pixel_auroc(masks, maps),
        "sklearn_auroc": lambda: roc_auc_score(masks.ravel(), maps.ravel()),
        "ours_au_pro": lambda: M.au_pro(masks, maps),
        "ours_pro_compat": lambda: M.pro_compat(masks, maps),
        "naive_pro": lambda: naive_pro(masks, maps),
        "ours_all_pixel": lambda: M.compute_metrics([0] * n, [0.0] * n, masks, maps),
    }
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    value = fns[method]()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k in ("pixel_auroc", "au_pro", "pro_compat")}
    return {"method": method, "value": value, "seconds": seconds, "extra_bytes": max(peak - rss0, 0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50, help="number of images")
    p.add_argument("--size", type=int, default=256, help="map side in pixels")
    p.add_argument("--skip", nargs="*", default=[], choices=METHODS, help="methods not to run")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.size)))
        return
    pixels = args.n * args.size * args.size
    print(f"{args.n} maps of {args.size}x{args.size} = {pixels / 1e6:.1f} M pixels "
          f"(data itself: {pixels * 5 / 2**20:.0f} MiB)")
    res = {}
    for m in METHODS:
        if m in args.skip:
            continue
        cmd = [sys.executable, __file__, "--worker", m, "--n", str(args.n), "--size", str(args.size)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{m:16s} failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = res[m] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{m:16s} {r['seconds']:8.2f} s  peak +{r['extra_bytes'] / 2**20:8.0f} MiB "
              f"({r['extra_bytes'] / pixels:5.1f} B/pixel)  value {r['value']}")

    def ratio(slow, fast):
        if slow in res and fast in res:
            a, b = res[slow], res[fast]
            print(f"{slow} / {fast}: time x{a['seconds'] / b['seconds']:.1f}, "
                  f"memory x{a['extra_bytes'] / max(b['extra_bytes'], 1):.1f}")

    ratio("sklearn_auroc", "ours_auroc")
    ratio("naive_pro", "ours_pro_compat")
    ratio("naive_pro", "ours_au_pro")
    ratio("naive_pro", "ours_all_pixel")


if __name__ == "__main__":
    main()
