"""torchrun with 2 CPU processes (gloo) against one process with the same seed."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from promptmoe.checkpoint import read_checkpoint
from promptmoe.cli import main

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--dataset", "synthetic", "--preset", "tiny", "--epochs", "2", "--batch-size", "6",
         "--categories", "brick", "nut", "--workers", "0"]


def _torchrun(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PROMPTMOE_PRESET": "tiny"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--standalone", "-m", "promptmoe", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _weights(path):
    _, tensors, meta = read_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith("model.")}, meta


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    data = tmp_path_factory.mktemp("dist") / "synth"
    assert main(["make-synthetic", str(data), "--size", "64"]) == 0
    return data


@pytest.mark.parametrize("cache", ["none", "disk"])
def test_two_gloo_processes_train_the_single_process_weights(synth, tmp_path, cache):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["train", "--data", str(synth / "seen"), *TRAIN, "--cache", cache]
    assert main([*args, "--out", str(one)]) == 0
    out = _torchrun([*args, "--out", str(two)], tmp_path)
    assert out.stdout.count("trained tiny preset") == 1  # only process 0 reports
    a, meta_a = _weights(one / "checkpoint.safetensors")
    b, meta_b = _weights(two / "checkpoint.safetensors")
    assert meta_a["global_step"] == meta_b["global_step"] == 12  # 36 images / 6, 2 epochs
    for k in a:
        # the tower sees half a batch per process: float rounding may differ, the math does not
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
    log_a, log_b = pd.read_csv(one / "train_log.csv"), pd.read_csv(two / "train_log.csv")
    assert len(log_a) == len(log_b) == 12
    pd.testing.assert_series_equal(log_a["total"], log_b["total"], atol=1e-6, rtol=1e-5)


def test_sharded_evaluation_gives_the_single_process_metrics(synth, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth / "seen"), *TRAIN, "--out", str(run)]) == 0
    ckpt = str(run / "checkpoint.safetensors")
    ev = ["eval", "--checkpoint", ckpt, "--data", f"synthetic={synth / 'unseen'}", "--no-compat",
          "--workers", "0"]
    assert main([*ev, "--out", str(tmp_path / "e1")]) == 0
    _torchrun([*ev, "--out", str(tmp_path / "e2")], tmp_path)
    a = pd.read_csv(tmp_path / "e1" / "per_category.csv")
    b = pd.read_csv(tmp_path / "e2" / "per_category.csv")
    assert len(a) == 6
    pd.testing.assert_frame_equal(a, b, atol=1e-6, rtol=1e-6)
