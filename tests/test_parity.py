"""Parity with OpenAI's own CLIP code (``clip-anytorch``, imported as ``clip``), REFERENCE.md D1.

Both models get the *same* random state dict: ours through open_clip's real ``pretrained="openai"``
path (a temporary Hugging Face cache, see ``_fake_hub.py``), OpenAI's through
``clip.model.build_model``. Our global feature, our per-layer tokens with the V-V path off and our
text features of plain sentences must equal OpenAI's ``encode_image``, its transformer
intermediates and ``encode_text``. Built with plain GELU (open_clip's default for these names)
every comparison fails: this is the test that catches a silent activation mismatch.
"""
import sys
import types
import warnings

import packaging.version
import pytest
import torch
import torch.nn.functional as F
from _fake_hub import random_openai_state_dict, use_cache, write_weights

from promptmoe.backbone import FrozenCLIP
from promptmoe.config import PromptMoEConfig

pytestmark = pytest.mark.filterwarnings("error::UserWarning")

SENTENCES = ["a photo of a damaged object.", "a flawless metal screw"]


def _import_pkg_resources() -> None:
    """``import pkg_resources`` without its deprecation notice: setuptools < 81 warns on that
    import with a UserWarning, which this file's ``error::UserWarning`` would turn into a failure
    (it did on a GPU machine). Only that message, only around that import, is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated",
                                category=UserWarning)
        import pkg_resources  # noqa: F401


def _openai_clip():
    """``import clip``; clip-anytorch imports ``packaging`` via pkg_resources, which setuptools
    >= 81 no longer ships: give it the one attribute it reads."""
    if "pkg_resources" not in sys.modules:
        try:
            _import_pkg_resources()
        except ImportError:
            sys.modules["pkg_resources"] = types.SimpleNamespace(packaging=packaging)
    return pytest.importorskip("clip", reason="test dependency clip-anytorch is not installed")


def _openai_model(state):
    """OpenAI's CLIP in float32 with exactly ``state`` (build_model casts to fp16 on the way)."""
    clip = _openai_clip()
    model = clip.model.build_model({k: v.clone() for k, v in state.items()})
    model.float().load_state_dict(state)
    return model.eval(), clip


@pytest.mark.parametrize("preset,name,size,layers", [
    ("small", "ViT-B-16", 224, (3, 6, 9, 12)),
    ("paper", "ViT-L-14-336", 336, (6, 12, 18, 24)),
])
def test_matches_openai_clip(tmp_path, monkeypatch, preset, name, size, layers):
    state = random_openai_state_dict(name, seed=2)
    write_weights(tmp_path, name, "openai", state)
    use_cache(monkeypatch, tmp_path)
    ours = FrozenCLIP(PromptMoEConfig.from_preset(preset, image_size=size, vv_attention=False))
    theirs, clip = _openai_model(state)
    del state

    torch.manual_seed(0)
    image = torch.randn(1, 3, size, size)  # batch 1: ViT-L on a CPU is slow
    blocks = theirs.visual.transformer.resblocks
    seen = {}
    hooks = [blocks[i - 1].register_forward_hook(
        lambda m, args, out, i=i: seen.__setitem__(i, out.detach())) for i in layers]
    with torch.no_grad():
        expected_global = theirs.encode_image(image)  # (1, D)
        feats = ours.encode_image(image)
        expected_text = F.normalize(theirs.encode_text(clip.tokenize(SENTENCES)), dim=-1)
        text = ours.encode_text(SENTENCES)
    for h in hooks:
        h.remove()
    tol = dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(feats.global_feature, expected_global, **tol)
    visual = theirs.visual
    for i, tokens in zip(layers, feats.layer_tokens):
        x = seen[i].permute(1, 0, 2)  # OpenAI's blocks run sequence-first: (L, B, W) -> (B, L, W)
        expected = visual.ln_post(x) @ visual.proj  # (B, HW+1, D)
        torch.testing.assert_close(tokens, expected, **tol, msg=lambda m, i=i: f"block {i}: {m}")
    torch.testing.assert_close(text, expected_text, **tol)
    # the comparison is not vacuous: the tokens differ from layer to layer
    assert (feats.layer_tokens[0] - feats.layer_tokens[-1]).abs().max() > 1e-2


def test_the_pkg_resources_notice_is_filtered_at_its_import_only(tmp_path, monkeypatch):
    (tmp_path / "pkg_resources.py").write_text(
        "import warnings\nwarnings.warn('pkg_resources is deprecated as an API. See "
        "https://setuptools.pypa.io/en/latest/pkg_resources.html', UserWarning)\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # undone after the test
    del sys.modules["pkg_resources"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _import_pkg_resources()  # an older setuptools' notice: not an error
        assert sys.modules["pkg_resources"].__file__ == str(tmp_path / "pkg_resources.py")
        with pytest.raises(UserWarning, match="another"):  # the filter ended with the import
            warnings.warn("another UserWarning", UserWarning)
