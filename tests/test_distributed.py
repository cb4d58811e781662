"""torchrun with 2 CPU processes (gloo) against one process with the same seed.

Every run states its device (``--device cpu``) and the backend (``PROMPTMOE_DIST_BACKEND=gloo``):
on a machine with one GPU the default would be NCCL, which needs a GPU per process.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from promptmoe import distributed
from promptmoe.checkpoint import read_checkpoint
from promptmoe.cli import main

ROOT = Path(__file__).resolve().parents[1]
CPU = ["--device", "cpu", "--workers", "0"]
TRAIN = ["--dataset", "synthetic", "--preset", "tiny", "--epochs", "2", "--batch-size", "6",
         "--categories", "brick", "nut", *CPU]


def _torchrun(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PROMPTMOE_PRESET": "tiny", distributed.BACKEND_ENV: "gloo"}
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


@pytest.mark.parametrize("cache", ["none", "disk", "memory"])
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


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """5 test images per category: 2 processes score 3 and 2 of each (an uneven split)."""
    from promptmoe.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("odd")
    make_synthetic(root, size=64, n_train=1, n_test_good=2, n_test_bad=3,
                   categories=["brick", "nut", "pill", "coins", "gravel"], progress=False)
    return root


def test_sharded_evaluation_gives_the_single_process_metrics_and_maps(synth, odd, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth / "seen"), *TRAIN, "--out", str(run)]) == 0
    ckpt = str(run / "checkpoint.safetensors")
    ev = ["eval", "--checkpoint", ckpt, "--data", f"synthetic={synth / 'unseen'}",
          f"odd=synthetic:{odd / 'unseen'}", "--no-compat", "--save-maps", *CPU]
    assert main([*ev, "--out", str(tmp_path / "e1")]) == 0
    _torchrun([*ev, "--out", str(tmp_path / "e2")], tmp_path)
    a = pd.read_csv(tmp_path / "e1" / "per_category.csv")
    b = pd.read_csv(tmp_path / "e2" / "per_category.csv")
    assert len(a) == 6 + 3 and (a[a.dataset == "odd"].n_images == 5).all()
    pd.testing.assert_frame_equal(a, b, atol=1e-6, rtol=1e-6)
    for name in ("synthetic/pill", "odd/pill", "odd/gravel"):  # gathered back in dataset order
        one = np.load(tmp_path / "e1" / "maps" / f"{name}.npz")
        two = np.load(tmp_path / "e2" / "maps" / f"{name}.npz")
        assert list(one["paths"]) == list(two["paths"])
        np.testing.assert_allclose(one["maps"].astype(np.float32), two["maps"].astype(np.float32),
                                   atol=1e-3)  # float16 files
        np.testing.assert_array_equal(one["labels"], two["labels"])


def test_the_backend_is_gloo_for_cpu_processes_on_a_gpu_machine(monkeypatch):
    monkeypatch.delenv(distributed.BACKEND_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine
    assert distributed.backend() == "cuda:nccl,cpu:gloo"
    assert distributed.backend("cpu") == "gloo"  # --device cpu
    monkeypatch.setenv(distributed.BACKEND_ENV, "gloo")  # the environment says so
    assert distributed.backend() == "gloo" and distributed.local_device() == torch.device("cpu")
    monkeypatch.setenv(distributed.BACKEND_ENV, "mpi")
    with pytest.raises(ValueError, match="PROMPTMOE_DIST_BACKEND='mpi'"):
        distributed.backend()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(distributed.BACKEND_ENV)
    assert distributed.backend() == "gloo"


def test_setup_on_a_one_gpu_machine_never_picks_nccl_for_cpu_processes(monkeypatch):
    calls = []
    monkeypatch.delenv(distributed.BACKEND_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")  # there is no cuda:1 on this machine
    assert distributed.setup("cpu") == distributed.DistInfo(1, 2, 1)
    assert calls == [("init", "gloo")]
    calls.clear()
    distributed.setup()  # a GPU per process: NCCL, each process on its own GPU
    assert calls == [("set_device", 1), ("init", "cuda:nccl,cpu:gloo")]
