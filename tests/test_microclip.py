"""The micro CLIP: held-out pictures, the windowed forward, the losses, defects, captions,
pretraining with resume, export, and the shipped weights against random weights."""
import math
import re

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from promptmoe.config import PromptMoEConfig
from promptmoe.data import _procedural as proc
from promptmoe.data import synthetic
from promptmoe.microclip import banks, captions, defects, pretrain
from promptmoe.microclip.objective import contrastive_loss, encode_tokens, encode_windows, twin_loss
from promptmoe.microclip.pretrain import PretrainConfig, build_micro_clip, window_corner

DEV = torch.device("cpu")  # every test here states its device: the results must not depend on it


@pytest.fixture(scope="module")
def clip():
    return build_micro_clip(PretrainConfig(), DEV).eval()


# ---------------------------------------------------------------- held out means held out
def test_pretraining_categories_exclude_every_held_out_picture_by_name():
    assert not set(banks.PRETRAIN_CATEGORIES) & set(synthetic.UNSEEN_CATEGORIES)
    names = set(banks.PRETRAIN_CATEGORIES)
    for held in ("chelsea", "cat", "clock", "coffee", "moon", "rocket", "gravel", "coins",
                 "immunohistochemistry", "mesh", "pill", "bottle"):
        assert held not in names


def _small(a):
    """A 32x32 grey thumbnail of a picture, to compare pictures of any size."""
    from PIL import Image

    img = Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)).convert("L")
    return np.asarray(img.resize((32, 32), Image.BILINEAR), np.float32) / 255


def test_no_pretraining_picture_is_a_held_out_picture_by_pixels():
    # names can hide the same picture (skimage.data.cat is chelsea): compare the pixels
    held = [banks._skimage(n) for n in banks.HELD_OUT_PICTURES]
    held += [np.asarray(f(), np.float32) for f in (proc.mesh, proc.pill, proc.bottle)]
    held_small = [_small(h) for h in held]
    for name in banks.PRETRAIN_CATEGORIES:
        mine = _small(banks.base_picture(name))
        for h in held_small:
            assert np.abs(mine - h).mean() > 0.03, name


def test_banks_are_reproducible_and_vary(tmp_path):
    a = banks.build_banks(("brick", "stripes"), bank_size=3, seed=1)
    b = banks.build_banks(("brick", "stripes"), bank_size=3, seed=1)
    assert a.shape == (2, 3, 3, 64, 64) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a[0, 0], a[0, 1])  # crops differ
    assert not torch.equal(a, banks.build_banks(("brick", "stripes"), bank_size=3, seed=2))


# ---------------------------------------------------------------- the two towers
def test_full_window_is_open_clips_image_embedding(clip):
    x = torch.randn(3, 3, 64, 64)
    zero = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(encode_windows(clip.visual, x, zero, zero, 8), clip.encode_image(x),
                                   atol=1e-5, rtol=1e-5)


def test_window_equals_selecting_tokens_of_the_full_sequence(clip):
    # independent route: embed the whole image (positions of the full grid), keep CLS + window
    visual = clip.visual
    x = torch.randn(2, 3, 64, 64)
    top, left = torch.tensor([1, 5]), torch.tensor([4, 0])
    with torch.no_grad():
        full = visual._embeds(x)  # (B, 65, W), ln_pre is per token so selecting after it is exact
        rows = []
        for b in range(2):
            keep = [0] + [1 + (top[b] + r) * 8 + left[b] + c for r in range(3) for c in range(3)]
            tokens = visual.transformer(full[b:b + 1, keep])
            rows.append(visual.ln_post(tokens[:, 1:]).mean(1) @ visual.proj)
        ref = torch.cat(rows)
        torch.testing.assert_close(encode_windows(visual, x, top, left, 3), ref, atol=1e-5, rtol=1e-5)


def test_window_vv_path_equals_the_maps_tokens(clip):
    # the V-V path of a full window is the mean of the tokens FrozenCLIP gives the anomaly maps
    from promptmoe.backbone import FrozenCLIP

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    zero = torch.zeros(2, dtype=torch.long)
    cfg = PromptMoEConfig.micro(pretrained=None, layers=(4,), vv_start=2)
    with torch.no_grad():
        orig, vv = encode_windows(clip.visual, x, zero, zero, 8, vv_start=2)
        tokens = FrozenCLIP(cfg, clip=clip).encode_image(x).layer_tokens[0]  # (B, 65, D)
    torch.testing.assert_close(vv, tokens[:, 1:].mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(orig, clip.encode_image(x), atol=1e-5, rtol=1e-5)
    assert (vv - orig).abs().max() > 1e-3  # the two paths differ


def test_cut_text_tower_equals_open_clips_encode_text(clip):
    tok = open_clip.get_tokenizer("promptmoe-micro")(["a photo of a flawless object.", "a cracked nut"])
    with torch.no_grad():
        torch.testing.assert_close(encode_tokens(clip, tok), clip.encode_text(tok), atol=1e-5, rtol=1e-5)


def test_window_corner_centres_and_clamps():
    centres = torch.tensor([[33.0, 33.0], [2.0, 60.0], [12.0, 20.0]])
    # side 4: corner = round(c / 8 - 2), clamped to [0, 4]; side 3: round(c / 8 - 1.5)
    assert window_corner(centres, 4).tolist() == [[2, 2], [0, 4], [0, 0]]
    assert window_corner(centres, 8).tolist() == [[0, 0]] * 3
    assert window_corner(centres, 3).tolist() == [[3, 3], [0, 5], [0, 1]]


# ---------------------------------------------------------------- losses
def test_contrastive_loss_with_distinct_captions_is_clips_loss():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    scale = torch.tensor(math.log(10.0))
    logits = 10 * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    ref = 0.5 * (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5)))
    torch.testing.assert_close(contrastive_loss(img, txt, torch.arange(5), scale), ref)


def test_contrastive_loss_shares_the_target_between_identical_captions():
    # two images with the same caption: each has target 1/2 on both texts; hand-computed
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # captions 0, 0, 1
    ids = torch.tensor([7, 7, 3])
    s = 1.0
    c = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T  # cosines
    lsm_r, lsm_c = (s * c).log_softmax(1), (s * c).T.log_softmax(1)
    target = torch.tensor([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1.0]])
    expected = 0.5 * (-(target * lsm_r).sum(1).mean() - (target * lsm_c).sum(1).mean())
    torch.testing.assert_close(contrastive_loss(img, txt, ids, torch.tensor(0.0)), expected)
    # by hand for row 0 of the image direction: cosines (1, 1, 0) -> -log(e/(2e+1)) on both texts
    row0 = -math.log(math.e / (2 * math.e + 1))
    assert abs(-(target[0] * lsm_r[0]).sum().item() - row0) < 1e-6


def test_twin_loss_by_hand():
    # one pair: clean image matches its caption (cos 1 vs 0), defective one matches neither better
    img = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scale = torch.tensor(math.log(2.0))
    c_clean = [1.0, 0.0]  # clean image: own caption, twin caption
    c_bad = [1 / math.sqrt(2), 1 / math.sqrt(2)]
    expected = 0.5 * (math.log(1 + math.exp(2 * (c_clean[1] - c_clean[0]))) + math.log(2))
    assert abs(twin_loss(img, txt, scale).item() - expected) < 1e-6
    assert c_bad[0] == c_bad[1]


# ---------------------------------------------------------------- defects and captions
def test_defects_are_reproducible_and_local():
    imgs = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    kinds = torch.arange(12) % len(defects.KINDS)
    centres = torch.full((12, 2), 32.0)
    a = defects.draw_defects(imgs, kinds, centres, torch.Generator().manual_seed(3))
    b = defects.draw_defects(imgs, kinds, centres, torch.Generator().manual_seed(3))
    out, alpha, colour = a
    assert torch.equal(out, b[0]) and torch.equal(alpha, b[1])
    untouched = (alpha == 0)[:, None].expand_as(imgs)
    assert torch.equal(out[untouched], imgs[untouched])  # only painted pixels change
    changed = (out - imgs).abs().amax(1) > 0.05  # (B, S, S)
    for i in range(12):
        assert 3 <= changed[i].sum() <= 64 * 64 * 0.25, (defects.KINDS[kinds[i]], changed[i].sum())
        ys, xs = torch.nonzero(changed[i], as_tuple=True)
        assert abs(ys.float().mean() - 32) < 12 and abs(xs.float().mean() - 32) < 12  # near the centre
    blotch = kinds == defects.KINDS.index("blotch")
    assert (colour[blotch] >= 0).all() and (colour[~blotch] == -1).all()


def test_twin_captions_differ_only_in_the_state():
    tok = open_clip.get_tokenizer("promptmoe-micro")
    table = captions.CaptionTable(["brick wall", "nut"], tok)
    g = torch.Generator().manual_seed(0)
    kinds = torch.arange(60) % len(defects.KINDS)
    colours = torch.where(kinds == 5, torch.arange(60) % 8, -1)
    clean, bad = table.sample_twins(["nut", "brick wall"] * 30, kinds, colours, g)
    normal = "|".join(captions.NORMAL_WORDS)
    for c, b in zip(clean.tolist(), bad.tolist()):
        tc, tb = table.texts[c], table.texts[b]
        if " with " in tb:  # "a photo of a nut with a crack." / "... without any defect."
            assert tc.replace("without any defect", "#") == re.sub(r"with a [a-z ]+(\.?)$", r"#\1", tb)
            continue
        # the clean caption's state word is a normal word; put the defective word(s) in its place
        state = re.search(rf"\b({normal})\b", tc).group(1)
        head, tail = tc.split(f" {state} ", 1)
        assert tb.startswith(head + " ") and tb.endswith(" " + tail), (tc, tb)
        word = tb[len(head) + 1:len(tb) - len(tail) - 1]
        assert word not in captions.NORMAL_WORDS, (tc, tb)
    used = set(table.used_token_ids().tolist())
    for prompt in captions.HAND_PROMPTS + ("object",):
        ids = tok([prompt])[0]
        assert set(ids[ids > 0].tolist()) <= used, prompt


# ---------------------------------------------------------------- the loop
def _quick_config(**kw):
    return PretrainConfig(**{"batch_size": 8, "bank_size": 2, "steps": 4, "warmup_steps": 2,
                             "log_every": 2, "categories": ("brick", "stripes", "nut"), **kw})


def test_pretraining_logs_and_resumes_bit_for_bit(tmp_path):
    straight = pretrain.pretrain(tmp_path / "a", _quick_config(), device=DEV, progress=False)
    assert straight.steps == 4 and straight.samples == 32
    assert [r["step"] for r in straight.log] == [2, 4]
    pretrain.pretrain(tmp_path / "b", _quick_config(), device=DEV, progress=False, stop_after=2)
    with pytest.raises(FileExistsError, match="resume"):
        pretrain.pretrain(tmp_path / "b", _quick_config(), device=DEV, progress=False)
    resumed = pretrain.pretrain(tmp_path / "b", None, device=DEV, resume=True, progress=False)
    assert resumed.steps == 4
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = pretrain.read_log(tmp_path / "b")
    assert log["step"].tolist() == [2, 4] and log["hand_cosine"].between(-1, 1).all()


def test_vv_supervision_trains_and_changes_the_run(tmp_path):
    a = pretrain.pretrain(tmp_path / "a", _quick_config(steps=2), device=DEV, progress=False)
    b = pretrain.pretrain(tmp_path / "b", _quick_config(steps=2, vv_supervision=2), device=DEV,
                          progress=False)
    assert b.log[-1]["loss"] > 0 and b.log[-1]["loss"] != a.log[-1]["loss"]  # two more terms


def test_learning_rate_schedule():
    cfg = PretrainConfig(lr=1.0, warmup_steps=4, steps=14)
    lrs = [pretrain.learning_rate(s, 14, cfg) for s in range(14)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert abs(lrs[9] - 0.5) < 1e-9 and lrs[-1] < 0.03


def test_bad_configs_name_the_value():
    with pytest.raises(ValueError, match="batch_size=7"):
        PretrainConfig(batch_size=7)
    with pytest.raises(ValueError, match="windows"):
        PretrainConfig(windows=(9,))


# ---------------------------------------------------------------- export and the shipped weights
def test_export_zeroes_unused_token_rows_and_round_trips(tmp_path):
    from promptmoe.microclip import export

    pretrain.pretrain(tmp_path / "run", _quick_config(steps=2), device=DEV, progress=False)
    out = export.export_weights(tmp_path / "run" / "checkpoint.pt", tmp_path / "w.safetensors",
                                {"command": "test"})
    info = export.read_manifest(out)
    assert info["command"] == "test" and info["steps"] == 2 and info["samples_seen"] == 16
    assert (tmp_path / "w-log.csv").read_text().startswith("step,")
    clip = export.load_weights(build_micro_clip(PretrainConfig(seed=5), DEV), out)
    table = clip.token_embedding.weight
    cfg = _quick_config()
    used = export.used_token_ids(cfg)
    kept = (table.abs().sum(1) > 0).nonzero().flatten()
    assert set(kept.tolist()) <= set(used.tolist()) and len(kept) >= len(used) - 1  # row 0 may be 0
    assert info["kept_token_rows"] == len(used)
    ref = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    for k, v in clip.state_dict().items():  # fp16 round trip of everything else
        if k != "token_embedding.weight":
            torch.testing.assert_close(v, ref[k].half().float(), atol=0, rtol=0)


def test_shipped_weights_load_offline_and_beat_random_weights():
    from promptmoe.baselines import HandPrompts
    from promptmoe.microclip import export, heldout
    from promptmoe.model import build_model

    info = export.read_manifest()
    assert info["format"] == export.FORMAT and info["kept_token_rows"] < 1000
    for key in ("command", "commit", "seed", "device", "minutes", "samples_seen", "held_out"):
        assert key in info, key
    cfg = PromptMoEConfig.micro()
    data = heldout.held_out_set(seed=1, n_per_category=6)  # not the manifest's seed-0 set
    got = {}
    for name, c in (("micro", cfg), ("random", cfg.replace(pretrained=None))):
        out = heldout.zero_shot_scores(HandPrompts(build_model(c, device=DEV).backbone), data)
        got[name] = heldout.held_out_metrics(data, out["maps"], out["scores"])
    assert got["random"]["pixel_auroc"] < 0.65
    assert got["micro"]["pixel_auroc"] > got["random"]["pixel_auroc"] + 0.05, got
    assert got["micro"]["image_auroc"] > got["random"]["image_auroc"] + 0.05, got


def test_micro_preset_is_the_offline_default_and_loads_the_shipped_file(monkeypatch):
    from promptmoe import runtime
    from promptmoe.backbone import create_clip
    from promptmoe.microclip import export

    monkeypatch.delenv("PROMPTMOE_PRESET", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.default_preset() == "micro"
    cfg = PromptMoEConfig.from_preset("micro")
    clip = create_clip(cfg)
    from safetensors.torch import load_file

    shipped = load_file(str(export.WEIGHTS_FILE))
    torch.testing.assert_close(clip.visual.proj, shipped["visual.proj"].float(), atol=0, rtol=0)
    with pytest.raises(ValueError, match="promptmoe-micro"):
        create_clip(PromptMoEConfig.tiny(pretrained=PromptMoEConfig.micro().pretrained))


# ---------------------------------------------------------------- figures of chapter 10
def test_method_comparison_draws_means_and_seed_spread():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from promptmoe.microclip import figures

    summary = pd.DataFrame({"pixel_auroc mean": [74.0, 56.0], "pixel_auroc std": [1.0, 2.5],
                            "image_auroc mean": [65.0, 60.0], "image_auroc std": [5.0, 0.5]},
                           index=["colour distance", "PromptMoE"])
    fig = figures.plot_method_comparison(summary, preset="micro", data="synthetic")
    left = fig.axes[0]
    assert [t.get_text() for t in left.get_yticklabels()] == ["colour distance", "PromptMoE"]
    bars = [p.get_width() for p in left.patches]
    assert bars == [74.0, 56.0]
    err = [c for c in left.containers if getattr(c, "errorbar", None) is not None][0]
    half = sorted(round((s[1][0] - s[0][0]) / 2, 6) for s in err.errorbar.lines[2][0].get_segments())
    assert half == [1.0, 2.5]
    assert any("preset=micro" in t.get_text() for t in fig.texts)


def test_show_twins_draws_each_window_on_both_images():
    import matplotlib

    matplotlib.use("Agg")
    from promptmoe.microclip import figures

    clean = torch.rand(3, 3, 64, 64)
    corners = torch.tensor([[0, 0], [2, 3], [5, 5]])
    fig = figures.show_twins(clean, clean, corners, 3, ["a", "b", "c"], ["x", "y", "z"],
                             preset="micro", data="synthetic")
    boxes = [(p.get_x(), p.get_y(), p.get_width()) for ax in fig.axes for p in ax.patches]
    assert len(boxes) == 6 and (23.5, 15.5, 24) in boxes  # column 3, row 2 in patches; 3 x 8 px
    assert fig.axes[3].get_xlabel() == "x"
