import pytest

from promptmoe.config import PromptMoEConfig


def test_defaults_are_the_papers_values():
    c = PromptMoEConfig()
    assert (c.image_size, c.layers, c.n_queries, c.n_experts, c.top_k) == (518, (6, 12, 18, 24), 8, 8, 4)
    assert (c.n_heads, c.router_hidden, c.len_normal, c.len_abnormal, c.len_context) == (8, 256, 5, 6, 8)
    assert (c.alpha, c.beta, c.tau, c.tau_image, c.sigma) == (0.01, 0.005, 0.07, 0.01, 4.0)
    assert (c.betas, c.lr, c.epochs, c.warmup_epochs, c.batch_size) == ((0.6, 0.999), 1e-3, 15, 3, 16)
    assert c.clip_model == "ViT-L-14-336" and c.pretrained == "openai" and c.vv_attention


def test_presets():
    assert PromptMoEConfig.paper() == PromptMoEConfig(preset="paper")
    s = PromptMoEConfig.small()
    assert (s.clip_model, s.image_size, s.layers) == ("ViT-B-16", 224, (3, 6, 9, 12))
    t = PromptMoEConfig.tiny(top_k=2)
    assert t.pretrained is None and t.top_k == 2 and t.preset == "tiny"
    assert PromptMoEConfig.from_preset("small") == s
    with pytest.raises(ValueError, match="unknown preset"):
        PromptMoEConfig.from_preset("huge")


@pytest.mark.parametrize("bad, match", [
    (dict(top_k=9), "top_k"), (dict(prompt_mode="dense"), "prompt_mode"),
    (dict(layers=(12, 6)), "increasing"), (dict(layers=(0, 6)), "1-based"),
    (dict(n_queries=0), "n_queries"), (dict(tau=0), "temperatures")])
def test_invalid_values_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        PromptMoEConfig(**bad)


def test_dict_round_trip_and_unknown_keys():
    c = PromptMoEConfig.tiny(share_pool=True)
    assert PromptMoEConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown config keys.*'n_expert'"):
        PromptMoEConfig.from_dict({**c.to_dict(), "n_expert": 3})
    assert c.first_vv_block == 1 and PromptMoEConfig().first_vv_block == 6
    assert PromptMoEConfig(layerwise_prompts=False).n_prompt_layers == 1
