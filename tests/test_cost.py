import pytest

from promptmoe.config import PromptMoEConfig
from promptmoe.cost import (EFFICIENCY, GPUS, PROTOCOL, assumptions, count_flops,
                            project_protocol, protocol_flops)


def test_tiny_tower_flops_equal_the_formula():
    """Hand count of the tiny ViT (4 blocks, width 64, 65 tokens, patch 8 at 64 px)."""
    L, W, D = 65, 64, 64
    per_block = 2 * L * W * (3 * W) + 2 * 2 * L * L * W + 2 * L * W * W + 2 * 2 * L * W * (4 * W)
    patch = 2 * 64 * (3 * 8 * 8) * W
    expected = 4 * per_block + patch + 2 * W * D  # + projection of the pooled CLS
    f = count_flops(PromptMoEConfig.tiny(), batch=2)
    assert f["tower"] == expected
    # the V-V path adds its attention (2 x 2 L^2 W) and out_proj (2 L W^2) per V-V block, plus
    # ln_post/proj of all tokens of each taken layer; nothing is projected twice
    vv = 4 * (4 * L * L * W + 2 * L * W * W) + 4 * 2 * L * W * D
    assert f["encode_image"] == expected - 2 * W * D + vv + 2 * W * D
    assert f["tower"] < f["forward"] < f["step_uncached"]
    assert f["step_cached"] < f["step_uncached"] - f["encode_image"] + 1


def test_paper_forward_is_within_1_24_of_the_bare_tower():
    f = count_flops()  # paper preset, 518 px, meta device
    assert f["tower"] == pytest.approx(1013.6e9, rel=1e-3)  # REFERENCE.md section 5
    assert f["forward"] / f["tower"] <= 1.24
    assert f["step_cached"] < 0.1 * f["step_uncached"]


def test_projection_is_flops_over_peak_times_efficiency():
    flops = {"encode_image": 2e12, "step_cached": 1e11, "step_uncached": 3e12, "forward": 2.5e12}
    total = protocol_flops(flops, cache=True)
    n, e = PROTOCOL["train_images"], PROTOCOL["epochs"]
    assert total["train"] == n * (2e12 + e * 1e11)
    assert protocol_flops(flops, cache=False)["train"] == n * e * 3e12
    table = project_protocol(flops, cache=True)
    t4 = table[(table.gpu == "T4") & (table.precision == "fp32")].iloc[0]
    rate = GPUS["T4"]["fp32"] * EFFICIENCY["fp32"] * 1e12
    assert t4["train min"] == pytest.approx(total["train"] / rate / 60)
    assert t4["eval min"] == pytest.approx(PROTOCOL["eval_images"] * 2.5e12 / rate / 60)
    assert "not a measurement" in assumptions()
