import json

import pandas as pd
import pytest
import torch

from promptmoe.backbone import ImageFeatures
from promptmoe.cache import (FeatureCache, check_fits, choose_cache, feature_key, fingerprint,
                             weights_digest)
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


# ------------------------------------------------------------------ one cache for many models
def test_a_cache_of_every_block_serves_a_model_of_fewer():
    """Table 4's {12, 24} on tiny is blocks (2, 4) with the V-V path pinned at block 1: the
    blocks of a cache of (1, 2, 3, 4) are exactly that model's own features. Without the pin,
    vv_start=None means min(layers) = 2 and block 2's tokens would differ."""
    ds = FixedDataset(6)
    full = FeatureCache(build_model(PromptMoEConfig.tiny()).eval(), ds, 4, "cpu", progress=False)
    row = PromptMoEConfig.tiny(layers=(2, 4), vv_start=1)
    view = full.select(row.layers)
    assert view.layers == (2, 4) and len(view) == 6 and check_fits(view, row, ds) is view
    images = torch.stack([ds[i]["image"] for i in range(6)])
    # in the cache's batches of 4: a CPU's float32 result may change in the last bit with the
    # number of images in a batch
    own = ImageFeatures.cat([build_model(row).backbone.encode_image(b) for b in images.split(4)])
    got = view.features_at(torch.arange(6), "cpu")
    for a, b in zip(got.layer_tokens + [got.global_feature], own.layer_tokens + [own.global_feature]):
        assert torch.equal(a, b)
    unpinned = PromptMoEConfig.tiny(layers=(2, 4))
    moved = build_model(unpinned).backbone.encode_image(images)
    for moved_block, own_block in zip(moved.layer_tokens, own.layer_tokens):  # blocks 2 and 4
        assert (moved_block - own_block).abs().max() > 1e-3
    with pytest.raises(ValueError, match="first_vv_block: cache 1 vs model 2"):
        check_fits(view, unpinned, ds)
    with pytest.raises(ValueError, match=r"cache.select\(config.layers\)"):
        check_fits(full, row, ds)
    with pytest.raises(ValueError, match="other images"):
        check_fits(view, row, FixedDataset(5))
    same = build_model(row)
    assert check_fits(view, row, ds, same) is view  # the same seed's tower: the same weights
    with torch.no_grad():
        same.backbone.clip.visual.proj[0, 0] += 1e-3  # one weight of the tower changed
    with pytest.raises(ValueError, match="image tower with other weights"):
        check_fits(view, row, ds, same)
    with pytest.raises(ValueError, match=r"blocks \[5\] are not in this feature cache"):
        full.select((4, 5))


def test_feature_key_follows_what_changes_the_features():
    base = PromptMoEConfig.tiny()
    prompt_side = [base.replace(n_experts=4), base.replace(alpha=0.1), base.replace(seed=3),
                   base.replace(prompt_mode="static", layerwise_prompts=False),
                   base.replace(layers=(4,), vv_start=1), base.replace(share_pool=True)]
    assert all(feature_key(c) == feature_key(base) for c in prompt_side)
    image_side = [base.replace(image_size=32), base.replace(vv_attention=False),
                  base.replace(vv_start=2), base.replace(layers=(3, 4)),  # V-V start moves to 3
                  base.replace(global_ln_post=False), base.replace(pos_embed_resize="bilinear"),
                  base.replace(precision="bf16"), base.replace(clip_model="ViT-B-16")]
    keys = [json.dumps(feature_key(c), sort_keys=True) for c in image_side]
    assert len(set(keys)) == len(keys) and json.dumps(feature_key(base), sort_keys=True) not in keys


def test_fingerprint_holds_weights_and_data():
    ds = FixedDataset(6)
    a, b = build_model(PromptMoEConfig.tiny()), build_model(PromptMoEConfig.tiny())
    other = build_model(PromptMoEConfig.tiny(), clip_seed=1)  # another random tower
    fa = fingerprint(a, ds, torch.float32)
    assert fa == fingerprint(b, ds, torch.float32)
    assert fa["weights"] != fingerprint(other, ds, torch.float32)["weights"]
    assert fa != fingerprint(a, FixedDataset(5), torch.float32)
    assert fa != fingerprint(a, ds, torch.float16)
    assert weights_digest(a.backbone.clip.visual) == fa["weights"]


def test_train_from_a_shared_cache_equals_its_own_cache(tmp_path):
    row = _cfg(layers=(2, 4), vv_start=1)
    shared = FeatureCache(build_model(row.replace(layers=(1, 2, 3, 4))).eval(), FixedDataset(), 4, "cpu",
                          progress=False)
    own = train(row, FixedDataset(), tmp_path / "own", cache_features="memory", progress=False)
    got = train(row, FixedDataset(), tmp_path / "shared", cache_features=shared.select(row.layers),
                progress=False)
    for k, v in own.model.trainable_state_dict().items():
        assert torch.equal(v, got.model.trainable_state_dict()[k]), k
    pd.testing.assert_frame_equal(own.log, got.log)
    with pytest.raises(ValueError, match=r"gives blocks \(1, 2, 3, 4\), the model uses \(2, 4\)"):
        train(row, FixedDataset(), tmp_path / "bad", cache_features=shared, progress=False)
