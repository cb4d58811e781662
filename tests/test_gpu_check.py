"""Tests for benchmarks/gpu_check.py: its CPU dry run does every step, and without a GPU (and
without --dry-run) it checks nothing and says so."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


def test_without_a_gpu_it_exits_1_and_says_why(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no CUDA device is available, so nothing was checked" in err and "--dry-run" in err
    assert list(tmp_path.iterdir()) == []  # no report pretends a check happened


def test_t4_projection_adds_the_extra_time_of_the_flops_run():
    flops = {"encode_image": 10e9, "forward": 12e9, "step_cached": 3e9}
    rates = {"fp32": 1e13, "autocast": 1e14}  # this machine's measured FLOP/s: faster than a T4
    row = {"seconds": 20.0, "images": {"encode": {"auto": 100}, "forward_features": {"auto": 50},
                                       "train_step": {"fp32": 10}}}
    t4_auto = 65.0 * 0.30 * 1e12  # promptmoe/cost.py: peak x efficiency
    t4_fp32 = 8.1 * 0.45 * 1e12
    by_hand = (20.0 + (100 * 10e9 + 50 * 2e9) * (1 / t4_auto - 1 / 1e14)
               + 10 * 3e9 * (1 / t4_fp32 - 1 / 1e13))
    assert gpu_check.project_t4(row, flops, rates) == pytest.approx(by_hand)
    assert by_hand > 20.0


def test_the_dry_run_measures_runs_the_cli_chapters_and_tests_and_reports(tmp_path):
    ok = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import torch\nfrom promptmoe.config import PromptMoEConfig\n"
        "from promptmoe.model import build_model\n"
        "m = build_model(PromptMoEConfig.tiny(), device='cpu').eval()\n"
        "with torch.no_grad():\n    m(torch.zeros(3, 3, 64, 64))")])
    noisy = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import warnings\nwarnings.warn('a warning in the page')")])
    nbformat.write(ok, tmp_path / "ok.ipynb")
    nbformat.write(noisy, tmp_path / "noisy.ipynb")
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run",
                           "--out", str(out), "--chapters", str(tmp_path / "ok.ipynb"),
                           str(tmp_path / "noisy.ipynb"), "--tests", "tests/test_config.py"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # the warning fails it
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "CPU dry run, tiny preset" and report["passed"] is False
    rows = report["throughput"]["rows"]
    assert len(rows) == 8 and all(r["images_per_s"] > 0 for r in rows)
    assert {k: v["returncode"] for k, v in report["cli"].items()} == {
        "make-synthetic": 0, "train": 0, "eval": 0, "predict": 0}
    chapters = {c["chapter"]: c for c in report["chapters"]}
    assert chapters["ok"]["status"] == "ok" and chapters["ok"]["seconds"] > 0
    # the hidden first cell counted the three images the chapter sent through the towers
    assert chapters["ok"]["images"] == {"encode": {"fp32": 3}, "forward_features": {"fp32": 3},
                                        "train_step": {}}
    assert chapters["ok"]["t4_s"] >= chapters["ok"]["seconds"]  # never faster than measured here
    assert chapters["noisy"]["status"] == "stderr output"
    assert "a warning in the page" in chapters["noisy"]["stderr"][0]
    assert report["tests"]["returncode"] == 0 and "passed" in report["tests"]["summary"]
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# GPU check: FAILED") and "| noisy | stderr output |" in md
