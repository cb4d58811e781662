"""Loading real CLIP weights (REFERENCE.md D1, D9) through open_clip's actual ``pretrained=``
path, offline: random weights sit in a temporary Hugging Face cache under the repo id and file
name that open_clip's pretrained table names for the tag.

Run with ``-W error::UserWarning`` semantics (the filterwarnings mark): open_clip's "QuickGELU
mismatch" warning, or any other library warning on this path, fails the test.
"""
import logging

import open_clip
import pytest
import torch
import torch.nn.functional as F
from _fake_hub import hub_file, random_openai_state_dict, use_cache, write_weights

from promptmoe.backbone import FrozenCLIP, create_clip, uses_quick_gelu
from promptmoe.config import PromptMoEConfig

pytestmark = pytest.mark.filterwarnings("error::UserWarning")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub cache holding random 'openai' weights of ViT-B-16 and ViT-L-14-336."""
    cache = tmp_path_factory.mktemp("hf_hub")
    states = {}
    for name in ("ViT-B-16", "ViT-L-14-336"):
        states[name] = random_openai_state_dict(name, seed=1)
        write_weights(cache, name, "openai", states[name])
    return cache, states


def _activations(clip):
    blocks = list(clip.visual.transformer.resblocks) + list(clip.transformer.resblocks)
    return {type(b.mlp.gelu).__name__ for b in blocks}


def _no_library_logs(caplog):
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name != "promptmoe.backbone"]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


def test_pretrained_table_says_openai_tags_use_quick_gelu():
    assert uses_quick_gelu("ViT-L-14-336", "openai") and uses_quick_gelu("ViT-B-16", "openai")
    assert not uses_quick_gelu("ViT-B-16", "laion2b_s34b_b88k")  # trained with plain GELU
    assert not uses_quick_gelu("promptmoe-tiny", None)
    assert hub_file("ViT-L-14-336", "openai") == ("timm/vit_large_patch14_clip_336.openai",
                                                  "open_clip_model.safetensors")


@pytest.mark.parametrize("preset,name,size", [("small", "ViT-B-16", 224),
                                              ("paper", "ViT-L-14-336", 336)])
def test_openai_weights_load_with_quick_gelu(hub, monkeypatch, caplog, preset, name, size):
    cache, states = hub
    use_cache(monkeypatch, cache)
    config = PromptMoEConfig.from_preset(preset, image_size=size)  # paper at 336: no resize
    with caplog.at_level(logging.INFO):
        backbone = FrozenCLIP(config)
    _no_library_logs(caplog)
    clip = backbone.clip
    assert _activations(clip) == {"QuickGELU"}
    # the weights are the ones in the cache, not a fresh random init
    for key in ("visual.conv1.weight", "visual.positional_embedding", "text_projection",
                "visual.transformer.resblocks.0.mlp.c_fc.weight"):
        torch.testing.assert_close(clip.state_dict()[key], states[name][key], rtol=0, atol=0)
    # QuickGELU is what the blocks compute: x * sigmoid(1.702 x), not erf-GELU
    x = torch.linspace(-3, 3, 7)
    act = clip.visual.transformer.resblocks[0].mlp.gelu
    torch.testing.assert_close(act(x), x * torch.sigmoid(1.702 * x))
    assert (act(x) - F.gelu(x)).abs().max() > 1e-2


def test_missing_weights_say_what_to_do(tmp_path, monkeypatch):
    use_cache(monkeypatch, tmp_path / "empty")
    with pytest.raises(RuntimeError, match="PROMPTMOE_PRESET=micro"):
        create_clip(PromptMoEConfig.small())


def _resample(pos, grid, mode):
    """Independent resize of (1 + g*g, W) positional embeddings to a (grid x grid) token grid."""
    g = int((pos.shape[0] - 1) ** 0.5)
    img = pos[1:].T.reshape(1, -1, g, g)  # (1, W, g, g)
    extra = {"antialias": True} if mode == "bicubic" else {}
    img = F.interpolate(img, size=(grid, grid), mode=mode, align_corners=False, **extra)
    return torch.cat([pos[:1], img.reshape(pos.shape[1], -1).T])  # (1 + grid*grid, W)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_positional_embedding_resampled_once_to_518(hub, monkeypatch, caplog, mode):
    cache, states = hub
    use_cache(monkeypatch, cache)
    config = PromptMoEConfig.paper(pos_embed_resize=mode)  # 518 px: 24x24 -> 37x37 tokens
    with caplog.at_level(logging.INFO):
        clip = create_clip(config)
    _no_library_logs(caplog)
    pos = clip.visual.positional_embedding.detach()
    original = states["ViT-L-14-336"]["visual.positional_embedding"]
    assert tuple(pos.shape) == (37 * 37 + 1, 1024) and tuple(clip.visual.grid_size) == (37, 37)
    torch.testing.assert_close(pos, _resample(original, 37, mode), rtol=1e-5, atol=1e-6)
    other = _resample(original, 37, "bilinear" if mode == "bicubic" else "bicubic")
    assert (pos - other).abs().max() > 1e-3  # the switch changes the numbers
    assert _activations(clip) == {"QuickGELU"}
    # the forward does not resample again: the stored embedding is what every call adds
    visual = clip.visual
    with torch.no_grad():
        img = torch.zeros(1, 3, 518, 518)
        conv = visual.conv1(img).flatten(2).transpose(1, 2)  # (1, 37*37, W)
        tokens = torch.cat([visual.class_embedding.expand(1, 1, -1), conv], dim=1)
        torch.testing.assert_close(visual._embeds(img), visual.ln_pre(tokens + pos))
