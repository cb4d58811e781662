import json

import pytest
import torch

from promptmoe.cache import FeatureCache, choose_cache
from promptmoe.config import PromptMoEConfig
from promptmoe.model import build_model
from promptmoe.train import CACHE_DIR_NAME, train
from test_train import FixedDataset, _cfg


def test_choose_cache_memory_disk_or_none(tmp_path):
    GB = 10 ** 9
    mode, why = choose_cache(2.0, 4.0, tmp_path, free_ram=16 * GB, free_disk=100 * GB)
    assert mode == "memory" and "2.00 GB" in why and "16.0 GB RAM free" in why
    mode, why = choose_cache(14.5, 4.0, tmp_path, free_ram=12 * GB, free_disk=60 * GB)
    assert mode == "disk" and "over the 4 GB memory limit" in why and str(tmp_path) in why
    mode, why = choose_cache(3.0, 4.0, tmp_path, free_ram=5 * GB, free_disk=60 * GB)
    assert mode == "disk" and "more than half of the 5.0 GB RAM" in why  # 3 > 2.5
    mode, why = choose_cache(14.5, 4.0, tmp_path, free_ram=12 * GB, free_disk=15 * GB)
    assert mode == "none" and "15.0 GB are free" in why  # 14.5 > 0.8 x 15


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_disk_cache_holds_the_memory_cache_values(tmp_path, dtype, device):
    model = build_model(PromptMoEConfig.tiny(), device=device).eval()
    ds = FixedDataset(6)
    mem = FeatureCache(model, ds, 4, dtype=dtype, progress=False)  # on the model's device
    disk = FeatureCache(model, ds, 4, dtype=dtype, progress=False, where="disk",
                        folder=tmp_path / "c")
    assert disk.features.layer_tokens[0].dtype == dtype
    idx = torch.tensor([5, 0, 3])
    (fm, mm, lm), (fd, md, ld) = mem.batch(idx, device), disk.batch(idx, device)
    for a, b in zip(fm.layer_tokens + [fm.global_feature], fd.layer_tokens + [fd.global_feature]):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    assert torch.equal(mm, md) and torch.equal(lm, ld)
    direct = model.backbone.encode_image(torch.stack([ds[i]["image"] for i in idx.tolist()]))
    tol = 0 if dtype == torch.float32 else 1e-2  # float16 keeps ~3 significant digits
    torch.testing.assert_close(fd.layer_tokens[2], direct.layer_tokens[2], atol=tol, rtol=tol)
    assert torch.equal(md, torch.stack([ds[i]["gt_mask"] for i in idx.tolist()]))
    assert json.loads((tmp_path / "c" / "cache.json").read_text())["n"] == 6


def test_cache_takes_its_device_from_the_model(device):
    model = build_model(PromptMoEConfig.tiny(), device=device).eval()
    with pytest.raises(ValueError, match="device='meta' but the model's weights are on cpu"):
        FeatureCache(model, FixedDataset(2), 2, "meta", progress=False)
    assert FeatureCache(model, FixedDataset(2), 2, "cpu", progress=False).labels.tolist() == [0, 1]


def test_disk_cache_trains_the_same_weights_as_the_memory_cache(tmp_path, each_device):
    # the two caches hold the same values; deterministic kernels make CUDA bit-exact too
    kw = dict(progress=False, device=each_device)
    a = train(_cfg(deterministic=True), FixedDataset(), tmp_path / "a", cache_features="memory", **kw)
    b = train(_cfg(deterministic=True), FixedDataset(), tmp_path / "b", cache_features="disk", **kw)
    assert (tmp_path / "b" / CACHE_DIR_NAME / "layer0.bin").exists()
    for k, v in a.model.trainable_state_dict().items():
        assert torch.equal(v, b.model.trainable_state_dict()[k]), k


def test_resume_reuses_a_complete_disk_cache(tmp_path, monkeypatch, device):
    full = train(_cfg(epochs=2), FixedDataset(), tmp_path / "full", cache_features="disk",
                 progress=False, device=device)
    train(_cfg(epochs=1), FixedDataset(), tmp_path / "r", cache_features="disk", progress=False,
          device=device)

    def no_recompute(*args, **kwargs):
        raise AssertionError("the complete cache should have been reused")

    monkeypatch.setattr(FeatureCache, "_fill", staticmethod(no_recompute))
    res = train(_cfg(epochs=2), FixedDataset(), tmp_path / "r", resume=True,
                cache_features="disk", progress=False, device=device)
    for k, v in full.model.trainable_state_dict().items():
        assert torch.equal(v, res.model.trainable_state_dict()[k]), k
    # another dataset in the same folder does not match the fingerprint: it is recomputed
    with pytest.raises(AssertionError, match="reused"):
        train(_cfg(epochs=1), FixedDataset(6), tmp_path / "other", cache_features="disk",
              cache_dir=tmp_path / "r" / CACHE_DIR_NAME, progress=False, device=device)


def test_bad_cache_mode_is_named(tmp_path, device):
    with pytest.raises(ValueError, match="cache_features='ram'"):
        train(_cfg(), FixedDataset(), tmp_path, cache_features="ram", progress=False, device=device)


def test_auto_says_what_it_chose_and_why(tmp_path, capsys, device):
    train(_cfg(epochs=1), FixedDataset(), tmp_path / "a", cache_features="auto", progress=True,
          device=device)
    out = capsys.readouterr().out
    assert "feature cache: memory (the feature cache needs 0.00 GB: it fits in memory" in out


def test_paper_preset_mvtec_cache_size_is_the_one_the_help_and_book_quote():
    from promptmoe.cli import build_parser

    # 1725 images x (4 layers x (37^2 + 1) + 1 tokens x 768 x 2 bytes + a 518^2 uint8 mask)
    gb = FeatureCache.estimate_gb(PromptMoEConfig.paper(), 1725, grid=37 * 37, dim=768,
                                  bytes_per=2)
    assert gb == pytest.approx(1725 * (5481 * 768 * 2 + 518 ** 2) / 1e9)
    assert round(gb, 1) == 15.0
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    assert f"{gb:.1f} GB in fp16" in " ".join(train_parser.format_help().split())
