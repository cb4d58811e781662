"""Tests for promptmoe/precision.py: autocast of the frozen towers, scoped TF32, determinism."""
import contextlib
import os
import types

import pytest
import torch

from promptmoe import precision
from promptmoe.config import PromptMoEConfig
from promptmoe.losses import total_loss
from promptmoe.model import build_model
from promptmoe.precision import autocast_dtype, deterministic, frozen_autocast, tf32

# bf16 keeps 8 bits of mantissa (relative error ~4e-3 per op); through 4 blocks, a cosine / 0.07
# and a softmax the maps stay within this of fp32 (measured on tiny: maps 0.006, scores 0.004)
MAP_TOL = 0.05
# fp16 keeps 11 bits (~5e-4 per op): measured on tiny, maps 0.0008 and scores 0.001 from fp32
MAP_TOL_FP16 = 0.01


def test_autocast_dtype_choices():
    assert autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("auto", "cpu") is None  # a CPU stays in fp32 unless asked
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert autocast_dtype("fp16", "cpu") is torch.float16
    assert autocast_dtype("auto", "meta") is None
    with pytest.raises(ValueError, match="precision='half'"):
        autocast_dtype("half", "cpu")
    with pytest.raises(ValueError, match="precision"):
        PromptMoEConfig.tiny(precision="half")


def test_auto_is_bf16_on_ampere_and_fp16_on_a_t4(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("auto", "cuda") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a T4
    assert autocast_dtype("auto", "cuda") is torch.float16


def _towers(each_device, images, low):
    ref = build_model(PromptMoEConfig.tiny(precision="fp32"), device=each_device).eval()
    model = build_model(PromptMoEConfig.tiny(precision=low), device=each_device).eval()
    model.load_state_dict(ref.state_dict())
    images = images.to(each_device)
    with torch.no_grad():
        return ref(images), model(images), model.backbone.encode_image(images)


def test_bf16_towers_stay_close_to_fp32_and_return_fp32(images, each_device):
    a, b, feats = _towers(each_device, images, "bf16")
    assert feats.layer_tokens[0].dtype == torch.float32  # the trainable side sees fp32
    assert b["anomaly_map"].dtype == torch.float32
    diff = (a["anomaly_map"] - b["anomaly_map"]).abs().max()
    assert 0 < diff < MAP_TOL  # bf16 really ran (not bit-identical) and stayed close
    torch.testing.assert_close(b["pred_score"], a["pred_score"], atol=MAP_TOL, rtol=0)


def test_fp16_towers_are_closer_to_fp32_than_bf16(images, each_device):
    ref, half, feats = _towers(each_device, images, "fp16")
    _, brain, _ = _towers(each_device, images, "bf16")
    assert feats.layer_tokens[0].dtype == torch.float32 and half["anomaly_map"].dtype == torch.float32
    d16 = (ref["anomaly_map"] - half["anomaly_map"]).abs().max()
    dbf = (ref["anomaly_map"] - brain["anomaly_map"]).abs().max()
    assert 0 < d16 < MAP_TOL_FP16  # fp16 really ran, and stayed close
    assert d16 < dbf  # 3 more mantissa bits than bf16: fp16 ran, not bf16
    torch.testing.assert_close(half["pred_score"], ref["pred_score"], atol=MAP_TOL_FP16, rtol=0)


@pytest.mark.parametrize("low", ["bf16", "fp16"])
def test_training_with_half_precision_towers_lowers_the_loss(images, low, device):
    torch.manual_seed(0)
    model = build_model(PromptMoEConfig.tiny(precision=low), device=device)
    images = images.to(device)
    masks = torch.zeros(4, 64, 64, device=device)
    masks[1::2, 16:40, 16:40] = 1
    labels = torch.tensor([0, 1, 0, 1], device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    with torch.no_grad():
        feats = model.backbone.encode_image(images)
    model.train()
    losses = []
    for _ in range(15):
        out = model.forward_features(feats, out_size=(64, 64))
        terms = total_loss(out, masks, labels, model.expert_pools(), 0.01, 0.005, 2.0)
        opt.zero_grad()
        terms["total"].backward()
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in params)
        opt.step()
        losses.append(float(terms["total"].detach()))
    assert losses[-1] < 0.9 * losses[0]


# ----------------------------------------------------------------- TF32, scoped
@pytest.fixture()
def ampere(monkeypatch):
    """A CUDA device of compute capability 8.0 as far as precision.py can tell (no GPU here)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def test_tf32_is_on_inside_the_block_and_restored_after(ampere):
    with tf32("cuda") as on:
        assert on and torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    with pytest.raises(RuntimeError, match="boom"):
        with tf32("cuda"):
            raise RuntimeError("boom")
    assert not torch.backends.cuda.matmul.allow_tf32  # restored on an error too
    torch.backends.cuda.matmul.allow_tf32 = True  # a process that had it on keeps it on
    with tf32("cuda"):
        pass
    assert torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_tf32_never_touches_a_cpu_or_a_pre_ampere_gpu(ampere, monkeypatch):
    with tf32("cpu") as on:
        assert not on and not torch.backends.cuda.matmul.allow_tf32
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))  # a T4
    with tf32("cuda") as on:
        assert not on and not torch.backends.cuda.matmul.allow_tf32


def test_auto_precision_turns_tf32_on_for_the_tower_call_only(ampere, monkeypatch):
    seen, autocasts = [], []
    # no GPU here: record the autocast that would run instead of entering it
    monkeypatch.setattr(torch, "autocast", lambda device_type, dtype: (
        autocasts.append((device_type, dtype)), contextlib.nullcontext())[1])

    class Tower:
        config = types.SimpleNamespace(precision="auto")

        @frozen_autocast
        def encode(self, x):
            seen.append(torch.backends.cuda.matmul.allow_tf32)
            return torch.ones(2, dtype=torch.bfloat16)

    x = types.SimpleNamespace(device=torch.device("cuda"))  # only .device is read
    out = Tower().encode(x)
    assert seen == [True] and autocasts == [("cuda", torch.bfloat16)]
    assert out.dtype == torch.float32  # the trainable side gets float32
    assert not torch.backends.cuda.matmul.allow_tf32  # the process's setting, after the call
    Tower.config = types.SimpleNamespace(precision="fp32")
    Tower().encode(x)
    assert seen[-1] is False and len(autocasts) == 1  # fp32 is float32: no autocast, no TF32


# ----------------------------------------------------------------- deterministic
def test_deterministic_is_scoped_and_restored(monkeypatch):
    monkeypatch.delenv(precision.CUBLAS_ENV, raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    assert before[0] is False
    with deterministic(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()  # raise, never just warn
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ[precision.CUBLAS_ENV] == ":4096:8"
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark) == before
    assert precision.CUBLAS_ENV not in os.environ
    with pytest.raises(RuntimeError, match="boom"):
        with deterministic(True):
            raise RuntimeError("boom")
    assert not torch.are_deterministic_algorithms_enabled()  # restored on an error too
    monkeypatch.setenv(precision.CUBLAS_ENV, ":16:8")  # the user's own choice is kept
    with deterministic(True):
        assert os.environ[precision.CUBLAS_ENV] == ":16:8"
    assert os.environ[precision.CUBLAS_ENV] == ":16:8"
    with deterministic(False):
        assert not torch.are_deterministic_algorithms_enabled()


def test_training_runs_in_deterministic_mode_when_asked(tmp_path, monkeypatch, device):
    from promptmoe import model as model_module
    from promptmoe.train import train
    from test_train import FixedDataset

    seen = []
    real = model_module.upsample_bilinear

    def spy(x, size):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real(x, size)

    monkeypatch.setattr(model_module, "upsample_bilinear", spy)
    cfg = PromptMoEConfig.tiny(epochs=1, warmup_epochs=0, batch_size=4, deterministic=True)
    train(cfg, FixedDataset(4), tmp_path / "d", progress=False, device=device)
    assert seen and all(seen)
    assert not torch.are_deterministic_algorithms_enabled()  # the process's setting afterwards
    seen.clear()
    train(cfg.replace(deterministic=False), FixedDataset(4), tmp_path / "n", progress=False,
          device=device)
    assert seen and not any(seen)
