"""The paper's silent choices as switches (REFERENCE.md D9 and D4), checked against hand-written
references on the tiny random CLIP. The positional-embedding resize needs real weights to resize
and is tested in tests/test_pretrained_loading.py."""
import logging
import warnings

import pytest
import torch

from promptmoe.backbone import FrozenCLIP
from promptmoe.config import PromptMoEConfig
from promptmoe.model import PromptMoE, gaussian_blur


def test_defaults_are_our_reading():
    cfg = PromptMoEConfig()
    assert (cfg.global_ln_post, cfg.pos_embed_resize, cfg.layer_map_reduce) == (True, "bicubic", "mean")
    for preset in ("paper", "small", "tiny"):
        assert PromptMoEConfig.from_preset(preset).layer_map_reduce == "mean"


@pytest.mark.parametrize("bad, match", [({"pos_embed_resize": "nearest"}, "pos_embed_resize"),
                                        ({"layer_map_reduce": "max"}, "layer_map_reduce")])
def test_bad_switch_values_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        PromptMoEConfig.tiny(**bad)


def test_global_feature_with_and_without_ln_post(tiny_backbone, images):
    visual = tiny_backbone.clip.visual
    last = {}
    hook = visual.transformer.resblocks[-1].register_forward_hook(
        lambda m, a, out: last.__setitem__("x", out.detach()))
    ours = tiny_backbone.encode_image(images).global_feature  # default: ln_post
    with torch.no_grad():
        visual(images)  # open_clip's own forward: the hook sees the original path's last block
    hook.remove()
    cls = last["x"][:, 0]  # (B, W) CLS after the last block, original path
    torch.testing.assert_close(ours, visual.ln_post(cls) @ visual.proj)
    cfg = tiny_backbone.config.replace(global_ln_post=False)
    raw = FrozenCLIP(cfg, clip=tiny_backbone.clip).encode_image(images)
    torch.testing.assert_close(raw.global_feature, cls @ visual.proj)  # AnomalyCLIP's F_cls
    assert (raw.global_feature - ours).abs().max() > 1e-2
    # the switch touches only F_cls, never the per-layer tokens
    for a, b in zip(raw.layer_tokens, tiny_backbone.encode_image(images).layer_tokens):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _model(tiny_backbone, **kw):
    torch.manual_seed(0)
    cfg = PromptMoEConfig.tiny(**kw)
    return PromptMoE(cfg, backbone=FrozenCLIP(cfg, clip=tiny_backbone.clip))


def test_layer_maps_summed_at_inference(tiny_backbone, images):
    mean, total = _model(tiny_backbone).eval(), _model(tiny_backbone, layer_map_reduce="sum").eval()
    with torch.no_grad():
        a, b = mean(images), total(images)
    L = len(mean.config.layers)
    torch.testing.assert_close(b["layer_maps"], a["layer_maps"])  # same prompts, same per-layer maps
    expected_map = gaussian_blur(a["layer_maps"].sum(dim=1), total.config.sigma)  # Eq. 6 as printed
    torch.testing.assert_close(b["anomaly_map"], expected_map)
    torch.testing.assert_close(b["anomaly_map"], L * a["anomaly_map"], rtol=1e-5, atol=1e-6)
    peak = expected_map.flatten(1).max(dim=1).values  # (B,)
    torch.testing.assert_close(b["pred_score"], 0.5 * (peak + a["image_prob"]))  # Eq. 7
    assert b["anomaly_map"].max() > 1  # the sum leaves [0, 1]
    # training always averages: the BCE of Eq. 8 needs a score in [0, 1]
    mean.train(), total.train()
    torch.testing.assert_close(total(images)["pred_score"], mean(images)["pred_score"])


def test_sum_can_reorder_images():
    """D4's warning with numbers: (max M, global prob) = (0.6, 0.0) vs (0.3, 0.9), 4 layers."""
    peak, glob = torch.tensor([0.6, 0.3]), torch.tensor([0.0, 0.9])
    by_mean = 0.5 * (peak + glob)  # (0.30, 0.60): second image ranked first
    by_sum = 0.5 * (4 * peak + glob)  # (1.20, 1.05): first image ranked first
    assert by_mean.argmax() == 1 and by_sum.argmax() == 0


@pytest.mark.parametrize("preset", ["tiny", "small", "paper"])
def test_building_emits_no_library_warning(preset, caplog):
    cfg = PromptMoEConfig.from_preset(preset, pretrained=None,
                                      **({} if preset == "tiny" else {"image_size": 224}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.INFO):
            FrozenCLIP(cfg)
    library = [r for r in caplog.records if r.levelno >= logging.WARNING
               and not r.name.startswith("promptmoe")]
    assert not library, [f"{r.name}: {r.getMessage()}" for r in library]
    ours = [r.getMessage() for r in caplog.records if r.name == "promptmoe.backbone"]
    assert ours == ([] if preset == "tiny" else [f"{cfg.clip_model} has random weights: its "
                                                 "outputs show plumbing, not the method"])
