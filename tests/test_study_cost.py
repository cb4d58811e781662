"""Tests for promptmoe/study_cost.py: the shortcuts of the study's FLOP count are exact."""
import pytest
import torch

from promptmoe import ablation, cost
from promptmoe.backbone import ImageFeatures
from promptmoe.config import PromptMoEConfig
from promptmoe.losses import total_loss
from promptmoe.study_cost import cost_key, feature_shape, model_flops


def _plain(config):
    """A training step and an eval-mode-free forward counted the plain way (no stand-ins)."""
    model = cost.meta_model(config).train()
    grid, dim, _ = feature_shape(config)
    b, S, side = config.batch_size, config.image_size, int(grid ** 0.5)
    feats = ImageFeatures([torch.zeros(b, grid + 1, dim, device="meta")] * len(config.layers),
                          torch.zeros(b, dim, device="meta"), (side, side))
    box = {}
    fwd = cost._count(lambda: box.update(res=model.forward_features(feats, out_size=(S, S))))
    bwd = cost._count(lambda: total_loss(box["res"], torch.zeros(b, S, S, device="meta"),
                                         torch.zeros(b, device="meta"), model.expert_pools(),
                                         config.alpha, config.beta, config.focal_gamma)["total"].backward())
    return {"step": (fwd + bwd) / b, "eval": fwd / b}


TINY = PromptMoEConfig.tiny(batch_size=4)


@pytest.mark.parametrize("changes", [{}, {"prompt_mode": "static", "layerwise_prompts": False},
                                     {"prompt_mode": "ensemble", "layerwise_prompts": False},
                                     {"layerwise_prompts": False}, {"layers": [4], "vv_start": 1},
                                     {"share_pool": True, "share_attention": True}])
def test_text_tower_tally_is_exact(changes):
    config = TINY.replace(**changes)
    counted = model_flops([config])[ablation.config_hash(config)]
    assert {k: counted[k] for k in ("step", "eval")} == _plain(config)


def test_frozen_pass_and_step_agree_with_cost_count_flops():
    counted = model_flops([TINY])[ablation.config_hash(TINY)]
    ref = cost.count_flops(TINY, batch=TINY.batch_size)
    assert counted["enc"] == ref["encode_image"]
    assert counted["step"] == ref["step_cached"]
    # cost's forward holds the tower and the eval-mode Gaussian blur, which model_flops leaves
    # out: two 1-D convolutions of 2r+1 taps, the first over the map padded by r along W
    S, r = TINY.image_size, int(4 * TINY.sigma + 0.5)
    blur = 2 * (2 * r + 1) * S * (S + 2 * r) + 2 * (2 * r + 1) * S * S
    assert ref["forward"] - ref["encode_image"] - counted["eval"] == blur
    S, r = 518, 16  # the paper preset: sigma 4 on 518 px, a 0.13% share of a 27 GFLOP forward
    assert 2 * 33 * S * (S + 2 * r) + 2 * 33 * S * S < 0.002 * 27e9


def test_grouped_models_cost_within_a_tenth_of_a_percent():
    """E, k, sharing and the loss weights do not enter cost_key: on the paper preset they change
    a step by less than 0.1%, so one count serves those models."""
    base = PromptMoEConfig.paper()
    variants = [base.replace(n_experts=16, top_k=8), base.replace(n_experts=4),
                base.replace(share_pool=True, share_attention=True), base.replace(alpha=0.0)]
    assert all(cost_key(v) == cost_key(base) for v in variants)
    exact = model_flops([base, *variants], group=False)
    ref = exact[ablation.config_hash(base)]
    for v in variants:
        for k in ("step", "eval"):
            assert exact[ablation.config_hash(v)][k] == pytest.approx(ref[k], rel=1e-3), (v, k)
