"""promptmoe/architecture.py: figures drawn from the config's own shapes."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from promptmoe.architecture import architecture_shapes, draw_promptmoe, draw_vgmop_layer  # noqa: E402
from promptmoe.config import PromptMoEConfig  # noqa: E402


def texts(fig):
    return " | ".join(t.get_text() for ax in fig.axes for t in ax.texts)


def test_paper_shapes_hand_computed():
    s = architecture_shapes(PromptMoEConfig.from_preset("paper"))
    # ViT-L/14 at 518 px: 518 // 14 = 37 patches a side, 1369 tokens; width 1024, embedding 768
    assert (s["grid"], s["HW"], s["W"], s["D"], s["blocks"]) == (37, 1369, 1024, 768, 24)
    assert (s["P"], s["N_q"], s["E"], s["k"], s["M_n"], s["M_a"]) == (4, 8, 8, 4, 5, 6)


def test_tiny_shapes_and_unknown_model():
    s = architecture_shapes(PromptMoEConfig.from_preset("tiny"))
    assert (s["S"], s["patch"], s["HW"], s["D"]) == (64, 8, 64, 64)
    with pytest.raises(ValueError, match="no-such-vit"):
        architecture_shapes(PromptMoEConfig.from_preset("tiny").replace(clip_model="no-such-vit"))


def test_figures_print_the_config_shapes_and_equation_numbers():
    cfg = PromptMoEConfig.from_preset("paper").replace(n_experts=6, top_k=2)
    whole, layer = draw_promptmoe(cfg), draw_vgmop_layer(cfg, branch="normal")
    t = texts(whole)
    assert "(B, 1369+1, 768)" in t and "top-2 of 6 experts" in t and "(B, 4, 2, 768)" in t
    for eq in range(1, 9):
        assert f"Eq. {eq}" in t or f"Eq. {eq - 1}-{eq}" in t, eq
    t = texts(layer)
    assert "(6, 5, 768)" in t and "768-256-6" in t and "top-2" in t
    assert whole.get_figwidth() <= 7.0 and min(tx.get_fontsize() for tx in whole.axes[0].texts) >= 9
    plt.close("all")


def test_monolithic_vs_compositional_prints_the_routing_it_is_given():
    import numpy as np

    from promptmoe.architecture import draw_monolithic_vs_compositional

    cfg = PromptMoEConfig.from_preset("paper").replace(n_experts=6, top_k=2)
    w = np.array([[0.7, 0.3, 0, 0, 0, 0], [0, 0, 0, 0.45, 0, 0.55]])
    fig = draw_monolithic_vs_compositional(cfg, w, source="a test")
    t = texts(fig)
    assert "(a) monolithic prompt" in t and "(b) compositional prompt" in t
    assert [f"E{j}" in t for j in range(1, 8)] == [True] * 6 + [False]  # E = 6 boxes
    assert "top-2" in t and "(a test)" in t.replace("\n", " ")
    cells = [tx.get_text() for tx in fig.axes[0].texts if tx.get_text() in (".70", ".30", ".45", ".55", "-")]
    assert cells == [".70", ".30", "-", "-", "-", "-", "-", "-", "-", ".45", "-", ".55"]  # row by row
    assert fig.get_figwidth() <= 7.0 and min(tx.get_fontsize() for tx in fig.axes[0].texts) >= 9
    default = texts(draw_monolithic_vs_compositional(PromptMoEConfig.from_preset("paper")))
    assert "illustrative" in default and default.count("top-4") == 2
    with pytest.raises(ValueError, match="sum to 1"):
        draw_monolithic_vs_compositional(cfg, w * 2)
    with pytest.raises(ValueError, match="E=6"):
        draw_monolithic_vs_compositional(cfg, np.ones((2, 8)) / 8)
    plt.close("all")
