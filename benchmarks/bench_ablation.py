"""Tower passes, FLOPs and projected GPU time of the paper's ablation study: model by model
(each model runs the frozen image tower itself) against shared features (promptmoe.study).

Two parts, measured in one run:

1. **Counted passes.** The whole study (Tables 2-6, both directions) runs twice on the tiny
   preset with small synthetic data: model by model (``ablation.run_ablation``, each model its
   own cache) and from shared features (``study.Study``). ``TowerCounter`` counts every image
   that goes through ``FrozenCLIP.encode_image``. The wall time of both (a CPU and a tiny model:
   plumbing, not a GPU's speed) and the largest difference between their metrics are reported.
2. **The paper's study**, from FLOPs counted with FlopCounterMode on the meta device (no GPU, no
   data): passes per image, FLOPs before and after, and the projected time on a T4 and an A100,
   fp32 and autocast (``promptmoe.cost``: peak x assumed efficiency, a projection).

    python benchmarks/bench_ablation.py [--keep DIR] [--skip-run] [--json FILE]
"""
import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from promptmoe import ablation  # noqa: E402
from promptmoe.config import PromptMoEConfig  # noqa: E402
from promptmoe.data import load_dataset  # noqa: E402
from promptmoe.data.synthetic import make_synthetic  # noqa: E402
from promptmoe.study import Protocol, Study  # noqa: E402
from promptmoe.study_features import TowerCounter  # noqa: E402
from promptmoe.study_plan import flops_text, hours_text, paper_study_plan  # noqa: E402


def counted_passes(work: Path) -> dict:
    """Run the tiny study both ways; passes per image, seconds and the largest metric gap."""
    make_synthetic(work / "data", size=64, n_train=1, n_test_good=2, n_test_bad=2,
                   categories=["brick", "gravel", "coins", "tissue"], progress=False)
    base = PromptMoEConfig.tiny(epochs=1, warmup_epochs=0, batch_size=4)
    seen = load_dataset("synthetic", work / "data" / "seen", base.image_size, verbose=False)
    unseen = load_dataset("synthetic", work / "data" / "unseen", base.image_size, verbose=False)
    directions = {"seen -> unseen": (seen, {"unseen": unseen}), "unseen -> seen": (unseen, {"seen": seen})}
    n = len(seen) + len(unseen)
    start = time.perf_counter()
    with TowerCounter() as own:
        old = {(p, t): ablation.run_ablation(t, base, tr, ev, work / "own" / str(i), compat=False)
               for i, (p, (tr, ev)) in enumerate(directions.items()) for t in ablation.ABLATION_TABLES}
    own_s = time.perf_counter() - start
    study = Study(base, {p: Protocol(tr, ev) for p, (tr, ev) in directions.items()}, work / "shared",
                  compat=False, progress=False)
    start = time.perf_counter()
    with TowerCounter() as shared:
        new = study.run(plan=study.plan(count=False))
    shared_s = time.perf_counter() - start
    gap = max(float((new[k][m] - old[k][m]).abs().max()) for k in old
              for m in ("image_auroc", "pixel_auroc", "au_pro"))
    return {"images": n, "models per direction": len(study.models()["seen -> unseen"]),
            "passes per image, model by model": own.images / n,
            "passes per image, shared features": shared.images / n,
            "seconds, model by model": own_s, "seconds, shared features": shared_s,
            "largest metric difference (points)": gap}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", default=None, help="keep the tiny runs in this folder")
    ap.add_argument("--skip-run", action="store_true", help="only the paper study's FLOPs")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the tiny model gains nothing from threads on a shared CPU
    logging.getLogger().setLevel(logging.ERROR)  # the tiny CLIP's random-weights notice
    report = {}
    if not args.skip_run:
        work = Path(args.keep or tempfile.mkdtemp(prefix="bench_ablation_"))
        try:
            report["tiny"] = r = counted_passes(work)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        print(f"## Counted tower passes: Tables 2-6, both directions, tiny preset, {r['images']} "
              f"synthetic images, {r['models per direction']} models per direction\n")
        print("| | passes per image | wall time (1 CPU thread) |\n|---|---:|---:|")
        for way in ("model by model", "shared features"):
            print(f"| {way} | {r['passes per image, ' + way]:g} | {r['seconds, ' + way]:.1f} s |")
        ratio = r["seconds, model by model"] / r["seconds, shared features"]
        print(f"\nspeed-up of the tiny study: {ratio:.2f}x; largest metric difference: "
              f"{r['largest metric difference (points)']:.1e} points\n")
    start = time.perf_counter()
    plan = paper_study_plan()
    counted_s = time.perf_counter() - start
    proj = plan.projection()
    report["paper"] = {"passes": plan.passes, "flops": plan.flops, "cache_gb": plan.cache_gb,
                       "run_gb": plan.run_gb, "read_tb": plan.read_tb,
                       "projected_hours": {f"{g} {p}": row.to_dict() for (g, p), row in proj.iterrows()}}
    print(f"## The paper's study (counted on the meta device in {counted_s:.1f} s)\n")
    print(plan.describe() + "\n")
    print("| GPU | precision | model by model | ... no disk for per-model caches | shared features |")
    print("|---|---|---:|---:|---:|")
    for (g, p), row in proj.iterrows():
        print(f"| {g} | {p} | {hours_text(row['before h'])} | "
              f"{hours_text(row['before, no disk for per-model caches h'])} | "
              f"{hours_text(row['shared features h'])} |")
    print(f"\nFLOPs: {flops_text(plan.flops['before'])} model by model, "
          f"{flops_text(plan.flops['after'])} shared ({plan.flops['before'] / plan.flops['after']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
