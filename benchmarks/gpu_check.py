"""GPU check: throughputs, the command line, every chapter and the test suite, in one report.

    make gpu-check                                     # a machine with a CUDA GPU, < 8 minutes
    python benchmarks/gpu_check.py --dry-run --out /tmp/gc  # the same steps, tiny, on the CPU

1. Throughput (paper preset, 518 px, batch 16, random weights of the real architecture: time and
   memory do not depend on the values), timed with CUDA events: the bare open_clip image tower,
   PromptMoE's full forward in fp32 and ``auto``, the training step with the tower recomputed
   (fp32, auto) and from cached features; the peak memory of each.
2. The command line on the GPU: make-synthetic, train, eval, predict (tiny preset).
3. Every chapter in a fresh Jupyter kernel with the GPU's default preset (paper; no datasets:
   the chapters fall back to synthetic data), a few at a time: wall time, and any output on
   stderr (a traceback or a warning in the page) fails it. A hidden first cell counts the images
   each chapter sends through the towers; with promptmoe/cost.py's FLOPs and peaks that projects
   its time on a T4 (chapters 7 and 8 must stay under 5 minutes there).
4. The test suite (pytest tests, tiny preset), while the chapters run.

One JSON and one Markdown report go to ``--out``. Without a CUDA device the script says so and
exits with status 1; ``--dry-run`` runs every step on the CPU at the tiny preset
(tests/test_gpu_check.py). It replaces benchmarks/gpu_smoke.py.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without installing

import torch  # noqa: E402

from promptmoe import cost  # noqa: E402
from promptmoe.config import PromptMoEConfig  # noqa: E402

T4_LIMIT_S = 300  # chapters 7 and 8 without datasets, projected to a T4
PROJECTED = ("07_ablations", "08_expert_routing")
COUNTER = """# gpu_check: count the images each tower call sees (not part of the chapter)
import torch as _t
from promptmoe.backbone import FrozenCLIP as _F
from promptmoe.model import PromptMoE as _P
_GC = {"encode": {}, "forward_features": {}, "train_step": {}}
_enc, _ff = _F.encode_image, _P.forward_features
def _gc_add(kind, precision, n):
    _GC[kind][precision] = _GC[kind].get(precision, 0) + int(n)
def _gc_encode(self, images, *a, **k):
    if images.device.type != "meta":  # cost.count_flops runs on meta: no work
        _gc_add("encode", self.config.precision, images.shape[0])
    return _enc(self, images, *a, **k)
def _gc_ff(self, feats, *a, **k):
    if feats.global_feature.device.type != "meta":
        kind = "train_step" if self.training and _t.is_grad_enabled() else "forward_features"
        _gc_add(kind, self.config.precision, feats.global_feature.shape[0])
    return _ff(self, feats, *a, **k)
_F.encode_image, _P.forward_features = _gc_encode, _gc_ff
"""


# ----------------------------------------------------------------- 1. throughput
def _timed(fn, device, reps: int):
    """(seconds per call, peak GiB) after one untimed call; CUDA events on a GPU."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3 / reps, torch.cuda.max_memory_allocated(device) / 2 ** 30
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps, None


def throughput(config: PromptMoEConfig, device, batch: int, reps: int) -> list:
    """Images per second and peak memory of each pass (see the module docstring)."""
    from promptmoe.losses import total_loss
    from promptmoe.model import build_model
    from promptmoe.precision import autocast_dtype, tf32

    model = build_model(config, device=device).eval()
    S = config.image_size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, S, S, generator=g).to(device)
    masks = torch.zeros(batch, S, S, device=device)
    masks[1::2, S // 4:S // 2, S // 4:S // 2] = 1
    labels = (masks.flatten(1).amax(1) > 0).long()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    half = autocast_dtype("auto", device) or torch.bfloat16  # the CPU dry run: bf16

    def tower(precision):
        def run():
            with torch.no_grad(), contextlib.ExitStack() as scope:
                if precision == "auto":  # what frozen_autocast does for the towers
                    scope.enter_context(tf32(device))
                    scope.enter_context(torch.autocast(device.type, dtype=half))
                model.backbone.clip.visual(images)
        return run

    def forward(precision):
        def run():
            model.config.precision = precision
            with torch.no_grad():
                model(images)
        return run

    def step(precision, cached=None):
        def run():
            model.config.precision = precision
            model.train()
            if cached is None:  # the tower recomputed, as training without a cache
                out = model(images)
            else:
                out = model.forward_features(cached, out_size=(S, S))
            terms = total_loss(out, masks, labels, model.expert_pools(), config.alpha, config.beta)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            model.eval()
        return run

    with torch.no_grad():
        feats = model.backbone.encode_image(images)
    passes = [("bare open_clip image tower", p, tower(p)) for p in ("fp32", "auto")]
    passes += [("PromptMoE full forward", p, forward(p)) for p in ("fp32", "auto")]
    passes += [("training step, tower recomputed", p, step(p)) for p in ("fp32", "auto")]
    passes += [("training step, cached features", p, step(p, feats)) for p in ("fp32", "auto")]
    rows = []
    for name, precision, fn in passes:
        seconds, peak = _timed(fn, device, reps)
        rows.append({"pass": name, "precision": precision, "images_per_s": batch / seconds,
                     "peak_gib": peak})
    del model, feats, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------- subprocesses, bounded
def run_bounded(cmd, timeout: float, env=None, cwd=None) -> dict:
    """Run ``cmd`` in its own process group; on timeout the whole group (kernels too) is killed."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=cwd, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=max(timeout, 1))
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        code = "timeout"
    return {"returncode": code, "seconds": time.perf_counter() - t0, "output": out[-6000:]}


def cli_round_trip(out: Path, device, timeout: float) -> dict:
    """make-synthetic, train, eval, predict on ``device`` (tiny preset); each step's exit code."""
    run, data = out / "cli", out / "cli" / "synth"
    cli = [sys.executable, "-m", "promptmoe"]
    env = {**os.environ, "PROMPTMOE_PRESET": "tiny", "PYTHONPATH": str(ROOT)}
    dev = ["--device", str(device)]
    steps = {"make-synthetic": ["make-synthetic", str(data), "--size", "64"],
             "train": ["train", "--data", str(data / "seen"), "--dataset", "synthetic", "--out",
                       str(run / "train"), "--epochs", "1", "--categories", "brick", *dev],
             "eval": ["eval", "--checkpoint", str(run / "train" / "checkpoint.safetensors"),
                      "--data", f"synthetic={data / 'unseen'}", "--out", str(run / "eval"),
                      "--no-compat", "--overwrite", *dev],
             "predict": ["predict", str(data / "unseen" / "pill" / "test"), "--checkpoint",
                         str(run / "train" / "checkpoint.safetensors"), "--out",
                         str(run / "predict"), *dev]}
    results, t0 = {}, time.perf_counter()
    for name, args in steps.items():
        res = run_bounded(cli + args, timeout - (time.perf_counter() - t0), env=env)
        results[name] = {"returncode": res["returncode"], "seconds": round(res["seconds"], 1)}
        if res["returncode"] != 0:
            results[name]["output"] = res["output"][-2000:]
            break
    return results


# ----------------------------------------------------------------- 3. one chapter
def run_chapter(path: Path, result: Path, timeout: float) -> None:
    """Execute one chapter (as its kernel would) and write what happened to ``result``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    counts = result.with_suffix(".counts.json")
    dump = f"import json as _j\n_j.dump(_GC, open({str(counts)!r}, 'w'))"
    nb.cells = [nbformat.v4.new_code_cell(COUNTER), *nb.cells, nbformat.v4.new_code_cell(dump)]
    t0, error = time.perf_counter(), None
    try:
        NotebookClient(nb, timeout=int(timeout), kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except CellExecutionError as err:
        error = str(err).strip().splitlines()[-1][:500] if str(err).strip() else "a cell failed"
    seconds = time.perf_counter() - t0
    stderr = [o.get("text", "")[:500] for c in nb.cells for o in c.get("outputs", [])
              if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    images = json.loads(counts.read_text()) if counts.exists() else None
    result.write_text(json.dumps({"chapter": path.stem, "seconds": seconds, "error": error,
                                  "stderr": stderr, "images": images}))


def chapter_env(out: Path, dry_run: bool, preset) -> dict:
    """The chapters' environment: runs and data under ``out`` (no datasets), the GPU's preset."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMPTMOE_RUNS": str(out / "runs"),
           "PROMPTMOE_DATA": str(out / "data"), "HF_HUB_OFFLINE": "1"}
    env.pop("PROMPTMOE_PRESET", None)  # the machine's default: paper on a GPU
    if dry_run or preset:
        env["PROMPTMOE_PRESET"] = preset or "tiny"
    if not dry_run and (preset or "paper") == "paper":
        env.update(paper_weights(out))
    return env


def paper_weights(out: Path) -> dict:
    """Environment under which ``pretrained="openai"`` loads offline: the machine's cache when it
    holds the weights, else random weights of the real architecture written to a local cache
    (timings are the same; the report says so)."""
    from huggingface_hub import try_to_load_from_cache

    sys.path.insert(0, str(ROOT / "tests"))
    from _fake_hub import hub_file, random_openai_state_dict, write_weights

    cfg = PromptMoEConfig.paper()
    repo, name = hub_file(cfg.clip_model, cfg.pretrained)
    if isinstance(try_to_load_from_cache(repo, name), str):
        return {}
    cache = out / "hub"
    if not any(cache.rglob(name)):
        write_weights(cache, cfg.clip_model, cfg.pretrained, random_openai_state_dict(cfg.clip_model))
    return {"HF_HUB_CACHE": str(cache), "PROMPTMOE_GPU_CHECK_RANDOM_WEIGHTS": "1"}


# ----------------------------------------------------------------- projection to a T4
def project_t4(row: dict, flops: dict, rates: dict) -> float:
    """Seconds on a T4: the measured wall time plus the extra time the T4 needs for the FLOPs the
    chapter ran (cost.GPUS peaks x cost.EFFICIENCY, against this machine's measured rates)."""
    per = {"encode": flops["encode_image"], "forward_features": flops["forward"] - flops["encode_image"],
           "train_step": flops["step_cached"]}
    extra = 0.0
    for kind, by_precision in (row.get("images") or {}).items():
        for precision, n in by_precision.items():
            mode = "fp32" if precision == "fp32" else "autocast"
            t4 = cost.GPUS["T4"][mode] * cost.EFFICIENCY[mode] * 1e12
            extra += n * per[kind] * (1 / t4 - 1 / rates[mode])
    return row["seconds"] + max(extra, 0.0)


# ----------------------------------------------------------------- report
def markdown(report: dict) -> str:
    lines = [f"# GPU check: {'PASSED' if report['passed'] else 'FAILED'}", "",
             f"{report['device']}; torch {report['torch']}; {report['mode']}; "
             f"{report['total_seconds']:.0f} s in all.", ""]
    t = report["throughput"]
    lines += [f"## Throughput ({t['config']}, batch {t['batch']})", "",
              "| pass | precision | images/s | peak GiB |", "|---|---|---|---|"]
    for r in t["rows"]:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        lines.append(f"| {r['pass']} | {r['precision']} | {r['images_per_s']:.1f} | {peak} |")
    lines += ["", "## Command line", ""]
    lines += [f"- {k}: exit {v['returncode']} in {v['seconds']} s" for k, v in report["cli"].items()]
    lines += ["", "## Chapters", "", "| chapter | status | wall s | T4 projected min | stderr |",
              "|---|---|---|---|---|"]
    for c in report["chapters"]:
        t4 = "-" if c.get("t4_s") is None else f"{c['t4_s'] / 60:.1f}"
        lines.append(f"| {c['chapter']} | {c['status']} | {c['seconds']:.0f} | {t4} | "
                     f"{len(c['stderr'])} |")
    for c in report["chapters"]:
        for text in ([c["error"]] if c["error"] else []) + c["stderr"]:
            lines.append(f"\n{c['chapter']}:\n```\n{text}\n```")
    lines += ["", f"T4 projection: {report['projection_note']}", "", "## Tests", "",
              f"`{report['tests']['command']}`: {report['tests']['summary']} "
              f"({report['tests']['seconds']:.0f} s)", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "_build" / "gpu_check"), help="report folder")
    p.add_argument("--dry-run", action="store_true", help="the CPU, tiny preset: a plumbing run")
    p.add_argument("--budget", type=float, default=470, help="seconds for everything (< 8 min)")
    p.add_argument("--jobs", type=int, default=3, help="chapters executed at the same time")
    p.add_argument("--chapters", nargs="*", default=None, help="notebooks (default: book/*.ipynb)")
    p.add_argument("--preset", default=None, help="the chapters' preset (default: the GPU's)")
    p.add_argument("--tests", nargs="*", default=["tests"], help="pytest arguments")
    p.add_argument("--run-chapter", nargs=3, metavar=("NOTEBOOK", "RESULT", "TIMEOUT"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run_chapter:
        nb, result, timeout = args.run_chapter
        run_chapter(Path(nb), Path(result), float(timeout))
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is available, so nothing was checked. Run it on a "
              "machine with an NVIDIA GPU (on Colab: Runtime > Change runtime type > a GPU); "
              "`--dry-run` runs the same steps on the CPU at the tiny preset.", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    left = lambda: args.budget - (time.perf_counter() - t0)  # noqa: E731
    device = torch.device("cpu" if args.dry_run else "cuda")
    config = PromptMoEConfig.tiny() if args.dry_run else PromptMoEConfig.paper(pretrained=None)
    batch, reps = (2, 1) if args.dry_run else (16, 3)
    rows = throughput(config, device, batch, reps)
    print(f"throughput measured ({time.perf_counter() - t0:.0f} s)", flush=True)
    cli = cli_round_trip(out, device, min(120, left()))
    env = chapter_env(out, args.dry_run, args.preset)
    chapters = [Path(c) for c in args.chapters] if args.chapters is not None else sorted(
        (ROOT / "book").glob("*.ipynb"))
    test_cmd = [sys.executable, "-m", "pytest", *args.tests, "-q", "-p", "no:cacheprovider"]
    test_env = {**os.environ, "PROMPTMOE_PRESET": "tiny", "HF_HUB_OFFLINE": "1",
                "PYTHONPATH": str(ROOT)}
    with futures.ThreadPoolExecutor(args.jobs + 1) as pool:
        tests = pool.submit(run_bounded, test_cmd, left(), test_env, ROOT)
        def chapter(c):  # the deadline is counted from when the chapter starts
            cmd = [sys.executable, __file__, "--run-chapter", str(c), str(out / f"{c.stem}.json"),
                   str(max(left(), 1))]
            return run_bounded(cmd, left(), env, ROOT)

        jobs = {c: pool.submit(chapter, c) for c in chapters}
        ran = {c: j.result() for c, j in jobs.items()}
        tests = tests.result()
    flops = cost.count_flops(config)
    forward = {r["precision"]: r["images_per_s"] for r in rows if r["pass"] == "PromptMoE full forward"}
    rates = {"fp32": forward["fp32"] * flops["forward"], "autocast": forward["auto"] * flops["forward"]}
    results = []
    for c, run in ran.items():
        path = out / f"{c.stem}.json"
        row = json.loads(path.read_text()) if path.exists() else {
            "chapter": c.stem, "seconds": run["seconds"], "error": f"no result ({run['returncode']})",
            "stderr": [], "images": None}
        row["status"] = "failed" if row["error"] else ("stderr output" if row["stderr"] else "ok")
        row["t4_s"] = project_t4(row, flops, rates) if row["images"] is not None else None
        results.append(row)
    summary = re.findall(r"\d+ (?:passed|failed|errors?|skipped)", tests["output"])
    tests_ok = tests["returncode"] == 0
    slow = [r["chapter"] for r in results if r["chapter"] in PROJECTED and not args.dry_run
            and (r["t4_s"] is None or r["t4_s"] > T4_LIMIT_S)]
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__, "mode": "CPU dry run, tiny preset" if args.dry_run else
        "GPU" + (", random paper weights" if env.get("PROMPTMOE_GPU_CHECK_RANDOM_WEIGHTS") else ""),
        "throughput": {"config": f"{config.preset} preset, {config.clip_model}, {config.image_size} px",
                       "batch": batch, "rows": rows},
        "cli": cli, "chapters": results, "flops_per_image": flops,
        "projection_note": (
            "measured wall time + FLOPs run x (1 / T4 sustained - 1 / this machine's measured "
            f"sustained rate); T4 peaks {cost.GPUS['T4']}, efficiency {cost.EFFICIENCY} (cost.py); "
            f"chapters {', '.join(PROJECTED)} must stay under {T4_LIMIT_S // 60} min"
            + (f"; over it: {slow}" if slow else "")),
        "tests": {"command": " ".join(test_cmd[1:]), "seconds": tests["seconds"],
                  "summary": ", ".join(summary[-4:]) or str(tests["returncode"]),
                  "returncode": tests["returncode"], "output_tail": tests["output"][-3000:]},
    }
    report["passed"] = bool(all(v["returncode"] == 0 for v in report["cli"].values()) and len(cli) == 4
                            and all(r["status"] == "ok" for r in results) and tests_ok and not slow)
    report["total_seconds"] = time.perf_counter() - t0
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    print(f"report: {out / 'gpu_check.md'} and gpu_check.json")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
