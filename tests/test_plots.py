"""Tests for promptmoe/plots.py: every plot draws on small inputs, says which run it shows."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.figure  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from promptmoe import plots  # noqa: E402

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def close_figures(monkeypatch):
    def no_show(*args, **kwargs):
        raise AssertionError("plots must return the Figure, never call plt.show()")

    monkeypatch.setattr(plt, "show", no_show)
    yield
    plt.close("all")


def texts(fig):
    """Every caption, suptitle and Axes title of a figure, line breaks made spaces (wrapping)."""
    raw = [t.get_text() for t in fig.texts] + [ax.get_title() for ax in fig.axes]
    return [" ".join(t.split()) for t in raw]


def assert_labelled(fig, preset="tiny", data="synthetic/unseen"):
    found = [t for t in texts(fig) if plots.run_label(preset, data) in t]
    assert found, f"run label missing; texts: {texts(fig)}"
    assert ("plumbing" in found[0]) == (preset == "tiny")


def loss_log(steps=12, decouple_grows=False):
    step = np.arange(steps)
    df = pd.DataFrame({"step": step, "epoch": step // 4, "lr": np.linspace(1e-4, 1e-3, steps)})
    for term in plots.LOSS_TERMS:
        df[term] = RNG.random(steps)
    if decouple_grows:
        df["decouple"] = np.linspace(0.1, 0.9, steps)
    df.loc[3, "dice"] = np.nan  # a NaN step must not break the plot
    return df


def routing_table():
    rows = []
    for dataset, n_images in (("MVTec AD", 10), ("VisA", 4)):
        for branch in plots.BRANCHES:
            for layer in (1, 2):
                for expert in range(4):
                    if (expert + layer) % 3 == 0:
                        continue  # experts nobody chose have no row: they must count as 0
                    count = (expert * 3 + layer) % (n_images + 1)
                    rows.append(dict(dataset=dataset, branch=branch, layer=layer, expert=expert,
                                     count=count, n_images=n_images))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- label
def test_run_label_marks_tiny_only():
    tiny = plots.run_label("tiny", "synthetic/unseen")
    assert tiny.startswith("this run: preset=tiny (") and "plumbing" in tiny
    assert tiny.endswith("data=synthetic/unseen")
    assert plots.run_label("paper", "MVTec AD") == "this run: preset=paper, data=MVTec AD"


def every_plot():
    """One small call of each plotting function, keyword arguments still to come."""
    image, amap = RNG.random((8, 8, 3)), RNG.random((8, 8))
    table = pd.DataFrame({"image_auroc (paper)": [93.8], "image_auroc (this run)": [50.0]},
                         index=["MVTec AD"])
    return {
        "loss": lambda **kw: plots.plot_loss_curves(loss_log(), **kw),
        "decouple": lambda **kw: plots.plot_decouple_dynamics({"with": loss_log()}, **kw),
        "maps": lambda **kw: plots.show_maps([image], [amap], [None], **kw),
        "similarity": lambda **kw: plots.plot_similarity_maps(image, {"block 1": amap}, **kw),
        "activation": lambda **kw: plots.plot_expert_activation(routing_table(), **kw),
        "tsne": lambda **kw: plots.plot_expert_tsne(RNG.random((4, 3)), RNG.random((4, 3)), **kw),
        "routing": lambda **kw: plots.plot_routing_weights(RNG.random((2, 4)), **kw),
        "pro": lambda **kw: plots.plot_pro_curves({"a": ([0, 0.5, 1], [0, 0.8, 1])}, **kw),
        "side_by_side": lambda **kw: plots.plot_side_by_side(table, **kw),
        "ablation": lambda **kw: plots.plot_ablation(pd.DataFrame({"paper": [1.0]}), **kw),
    }


@pytest.mark.parametrize("name", sorted(every_plot()))
@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_every_plot_says_which_run(name, preset):
    draw = every_plot()[name]
    fig = draw(preset=preset, data="synthetic/unseen")
    assert isinstance(fig, matplotlib.figure.Figure)
    assert_labelled(fig, preset)
    with pytest.raises(TypeError):  # no defaults: a chapter cannot forget to say which run
        draw(data="synthetic/unseen")


# ----------------------------------------------------------------------------- training
def test_loss_curves(tmp_path):
    path = tmp_path / "log.csv"
    loss_log().to_csv(path, index=False)
    fig = plots.plot_loss_curves(path, smooth=3, preset="tiny", data="synthetic/unseen")
    assert len(fig.axes) == len(plots.LOSS_TERMS) + 1  # + learning rate
    assert_labelled(fig)
    fig = plots.plot_loss_curves(loss_log(), terms=("total",), show_lr=False, preset="paper",
                                 data="MVTec AD")
    assert len(fig.axes) == 1
    assert_labelled(fig, "paper", "MVTec AD")
    # smoothing: the drawn curve is the rolling mean, NaN step skipped
    log = loss_log()
    fig = plots.plot_loss_curves(log, terms=("dice",), smooth=2, show_lr=False, preset="tiny",
                                 data="x")
    drawn = fig.axes[0].lines[1].get_ydata()
    np.testing.assert_allclose(drawn, log["dice"].rolling(2, min_periods=1).mean())


def test_loss_curves_names_missing_column():
    with pytest.raises(ValueError, match="focal"):
        plots.plot_loss_curves(loss_log().drop(columns="focal"), preset="tiny", data="x")


def test_decouple_dynamics_dashes_without_run():
    logs = {"with L_decouple": loss_log(), "without L_decouple": loss_log(decouple_grows=True)}
    fig = plots.plot_decouple_dynamics(logs, preset="tiny", data="synthetic/seen")
    assert len(fig.axes) == 2
    styles = {line.get_label(): line.get_linestyle() for line in fig.axes[1].lines}
    assert styles == {"with L_decouple": "-", "without L_decouple": "--"}
    assert_labelled(fig, data="synthetic/seen")
    assert_legend_under_the_panels(fig, ["with L_decouple", "without L_decouple"])


def assert_legend_under_the_panels(fig, names):
    """One figure legend with ``names``, under every panel (it covers no curve or bar) and above
    the caption, within the figure's width."""
    assert all(ax.get_legend() is None for ax in fig.axes)  # no legend inside a panel
    assert len(fig.legends) == 1
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == names
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        assert box.y1 <= ax.get_tightbbox(renderer).y0 + 1e-6
    caption = next(t for t in fig.texts if t.get_text().startswith("this run:"))
    assert box.y0 >= caption.get_window_extent(renderer).y1 - 1e-6
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1
    plt.close(fig)


# ----------------------------------------------------------------------------- maps
def test_overlay_numbers():
    image = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    amap = RNG.random((5, 6))
    np.testing.assert_array_equal(plots.overlay(image, amap, alpha=0.0), image)
    colours = (matplotlib.colormaps["jet"](amap)[..., :3] * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(plots.overlay(image, amap, alpha=1.0), colours)
    half = plots.overlay(image, amap, alpha=0.5)
    expected = (0.5 * image + 0.5 * matplotlib.colormaps["jet"](amap)[..., :3] * 255).round()
    np.testing.assert_array_equal(half, expected.astype(np.uint8))
    assert half.dtype == np.uint8 and half.shape == (5, 6, 3)


def test_overlay_nan_keeps_image_and_checks_shape():
    image = np.full((4, 4, 3), 100, np.uint8)
    amap = np.full((4, 4), np.nan)
    np.testing.assert_array_equal(plots.overlay(image, amap, alpha=1.0), image)
    with pytest.raises(ValueError, match="differ"):
        plots.overlay(image, np.zeros((3, 4)))


def test_show_maps_grid():
    images = [RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(4)]
    maps = [RNG.random((8, 8)) for _ in range(4)]
    maps[1][0, 0] = np.nan
    masks = [np.zeros((8, 8)), None, np.ones((8, 8)), None]
    fig = plots.show_maps(images, maps, masks, titles=list("abcd"), scores=[0.1, np.nan, 0.9, 0.5],
                          preset="tiny", data="synthetic/unseen")
    assert len(fig.axes) == 3 * 4
    assert_labelled(fig)
    fig = plots.show_maps(images, maps, preset="small", data="VisA", ncols=3)
    assert len(fig.axes) == 2 * 2 * 3  # (image, overlay) x 2 row blocks x 3 columns
    assert_labelled(fig, "small", "VisA")
    # 4 samples in rows of 3: the last block's two unused columns draw no frames
    hidden = [ax for ax in fig.axes if not ax.axison]
    assert len(hidden) == 2 * 2 and all(not ax.images for ax in hidden)
    six = plots.show_maps(images + images[:2], maps + maps[:2], preset="tiny", data="x")
    assert len(six.axes) == 2 * 2 * 4  # default: 4 samples per row block (fits the column)
    assert six.get_figwidth() <= plots.COLUMN_INCHES + 1e-9


def test_similarity_maps():
    image = RNG.random((8, 8, 3))
    maps = {f"block {i}": RNG.random((8, 8)) for i in (1, 2, 3)}
    fig = plots.plot_similarity_maps(image, maps, preset="tiny", data="synthetic/unseen")
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes] == ["image", "block 1", "block 2", "block 3"]
    assert_labelled(fig)
    seven = plots.plot_similarity_maps(image, {f"m{i}": RNG.random((8, 8)) for i in range(6)},
                                       preset="micro", data="synthetic/unseen")
    rows = sorted({round(ax.get_position().y0, 3) for ax in seven.axes})
    assert len(seven.axes) == 7 and len(rows) == 2  # 4 + 3 panels: no row of 7 tiny panels
    assert seven.get_figwidth() <= plots.COLUMN_INCHES + 1e-9


# ----------------------------------------------------------------------------- experts
def expected_frequency(routing, dataset, branch, layer=None):
    """By hand: per layer count / n_images (missing experts 0), then the mean over layers."""
    rows = routing[(routing.dataset == dataset) & (routing.branch == branch)]
    layers = [layer] if layer else sorted(rows.layer.unique())
    freq = np.zeros((len(layers), 4))
    for i, lay in enumerate(layers):
        for _, r in rows[rows.layer == lay].iterrows():
            freq[i, r.expert] = r["count"] / r.n_images
    return freq.mean(axis=0)


@pytest.mark.parametrize("layer", [None, 2])
def test_expert_activation_bar_heights(layer):
    routing = routing_table()
    fig = plots.plot_expert_activation(routing, layer=layer, preset="tiny", data="synthetic/unseen")
    assert len(fig.axes) == 2
    for ax, branch in zip(fig.axes, plots.BRANCHES):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["E1", "E2", "E3", "E4"]
        for container in ax.containers:
            heights = [p.get_height() for p in container.patches]
            want = expected_frequency(routing, container.get_label(), branch, layer)
            np.testing.assert_allclose(heights, want)
        assert {c.get_label() for c in ax.containers} == {"MVTec AD", "VisA"}
    assert_labelled(fig)
    assert_legend_under_the_panels(fig, ["MVTec AD", "VisA"])


def test_expert_activation_one_branch_and_sum():
    routing = routing_table()
    fig = plots.plot_expert_activation(routing, branch="abnormal", datasets=["VisA"], reduce="sum",
                                       preset="paper", data="VisA")
    assert len(fig.axes) == 1 and len(fig.axes[0].containers) == 1
    heights = [p.get_height() for p in fig.axes[0].containers[0].patches]
    np.testing.assert_allclose(heights, 2 * expected_frequency(routing, "VisA", "abnormal"))
    assert_labelled(fig, "paper", "VisA")


@pytest.mark.parametrize("n", [3, 32])
def test_expert_tsne_small_n(n):
    normal, abnormal = RNG.normal(size=(n, 6)), RNG.normal(3, size=(n, 6))
    abnormal[0] = np.nan  # dropped, not fatal
    labels = [f"N{i}" for i in range(n)] + [f"A{i}" for i in range(n)]
    fig = plots.plot_expert_tsne(normal, abnormal, labels=labels, preset="tiny",
                                 data="synthetic/seen")
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 2 * n - 1
    assert len(ax.texts) == 2 * n - 1
    assert f"perplexity={min(5, 2 * n - 2):g}" in ax.get_title()
    assert_labelled(fig, data="synthetic/seen")


def test_routing_weights_heatmap():
    w = np.zeros((3, 8))
    w[np.arange(3)[:, None], [[0, 2, 4, 6], [1, 2, 3, 4], [5, 6, 7, 0]]] = 0.25
    fig = plots.plot_routing_weights(w, image_titles=["a", "b", "c"], preset="tiny", data="x")
    assert len(fig.axes) == 2  # heatmap + colorbar
    assert_labelled(fig, data="x")
    heatmap = fig.axes[0].collections[0].get_array()
    assert np.ma.count(heatmap) == 12  # only the chosen experts are coloured
    np.testing.assert_allclose(heatmap.compressed(), 0.25)
    fig, ax = plt.subplots()
    assert plots.plot_routing_weights(w, preset="paper", data="x", ax=ax) is fig
    assert plots.run_label("paper", "x") in ax.get_title()  # caller's Axes: label in the title
    assert not fig.texts


# ----------------------------------------------------------------------------- results
def test_pro_curves_shade_limit():
    curves = {"this run": ([0, 0.1, np.nan, 0.5, 1], [0, 0.6, 0.7, 0.9, 1])}
    fig = plots.plot_pro_curves(curves, fpr_limit=0.3, preset="tiny", data="synthetic/unseen")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [0, 0.1, 0.5, 1])  # NaN point dropped
    x0, x1 = ax.patches[0].get_extents().x0, ax.patches[0].get_extents().x1
    span = ax.transData.inverted().transform([[x0, 0], [x1, 0]])[:, 0]
    np.testing.assert_allclose(span, [0, 0.3], atol=1e-6)
    assert_labelled(fig)
    assert fig.axes[0].get_legend() is not None
    _, ax = plt.subplots()
    plots.plot_pro_curves(curves, preset="tiny", data="x", ax=ax, legend=False)
    assert ax.get_legend() is None and len(ax.lines) == 1  # a grid shares one figure legend
    plt.close("all")


def test_side_by_side_omits_nan():
    table = pd.DataFrame({"image_auroc (paper)": [93.8, 85.0, np.nan],
                          "image_auroc (this run)": [50.1, np.nan, 61.0],
                          "pro (paper)": [83.2, 89.2, np.nan],
                          "pro_compat (this run)": [np.nan, np.nan, np.nan]},
                         index=["MVTec AD", "VisA", "synthetic"])
    fig = plots.plot_side_by_side(table, preset="tiny", data="synthetic/unseen")
    assert len(fig.axes) == 2
    auroc, pro = fig.axes
    heights = {c.get_label(): [p.get_height() for p in c.patches] for c in auroc.containers}
    assert heights == {"paper": [93.8, 85.0], "this run": [50.1, 61.0]}
    assert len(pro.patches) == 2  # the all-NaN "this run" column draws nothing
    assert all(np.isfinite(p.get_height()) for ax in fig.axes for p in ax.patches)
    assert_labelled(fig)
    fig = plots.plot_side_by_side(table, metrics=["pro"], preset="paper", data="MVTec AD")
    assert len(fig.axes) == 1
    with pytest.raises(ValueError, match="pixel_auroc"):
        plots.plot_side_by_side(table, metrics=["pixel_auroc"], preset="tiny", data="x")


def test_ablation_horizontal_bars():
    table = pd.DataFrame({"paper": [91.7, 92.2, 93.1, 93.8],
                          "this run": [50.0, np.nan, 52.0, 53.0]},
                         index=["Static Prompt", "+ Static Ensemble", "+ VGMoP", "PromptMoE"])
    fig = plots.plot_ablation(table, "I-AUC (MVTec AD)", preset="tiny", data="synthetic/unseen")
    ax = fig.axes[0]
    widths = {c.get_label(): [p.get_width() for p in c.patches] for c in ax.containers}
    assert widths == {"paper": [91.7, 92.2, 93.1, 93.8], "this run": [50.0, 52.0, 53.0]}
    assert [t.get_text() for t in ax.get_yticklabels()] == list(table.index)
    assert_labelled(fig)
    table["this run, official AU-PRO"] = [40.0, 41.0, np.nan, 43.0]
    fig = plots.plot_ablation(table, "PRO (MVTec AD)", preset="tiny", data="synthetic/unseen")
    widths = {c.get_label(): [p.get_width() for p in c.patches] for c in fig.axes[0].containers}
    assert widths["this run, official AU-PRO"] == [40.0, 41.0, 43.0]


def test_side_by_side_reads_paper_module_table():
    from promptmoe import paper

    ours = {"mvtec": {"image_auroc": 0.5}, "synthetic": {"image_auroc": 0.7}}
    table = paper.side_by_side(ours, strict=False)  # no paper number for "synthetic"
    fig = plots.plot_side_by_side(table, preset="tiny", data="synthetic/unseen")
    heights = {c.get_label(): [p.get_height() for p in c.patches] for c in fig.axes[0].containers}
    assert heights == {"paper": [93.8], "this run": [50.0, 70.0]}


def test_side_by_side_plot_puts_compat_pro_beside_the_papers():
    from promptmoe import paper

    table = paper.side_by_side({"mvtec": {"image_auroc": 0.5, "au_pro": 0.4, "pro_compat": 0.45}})
    fig = plots.plot_side_by_side(table, preset="paper", data="MVTec AD")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["image_auroc", "PRO (paper's protocol = pro_compat)"]
    pro = next(ax for ax in fig.axes if ax.get_title().startswith("PRO"))
    bars = {c.get_label(): [round(p.get_height(), 3) for p in c.patches] for c in pro.containers}
    assert bars == {"paper": [paper.paper_value("mvtec", "pro")], "this run": [45.0],
                    "this run, official AU-PRO": [40.0]}
    for name in ("pro", "pro_compat", "au_pro"):  # the paper's name or either of this run's
        only = plots.plot_side_by_side(table, metrics=[name], preset="paper", data="MVTec AD")
        assert [ax.get_title() for ax in only.axes if ax.get_title()] == [titles[1]]
    with pytest.raises(ValueError, match="pixel_auroc"):
        plots.plot_side_by_side(table, metrics=["pixel_auroc"], preset="paper", data="MVTec AD")
    plt.close("all")


def test_fit_scales_wide_figures_to_the_column():
    assert plots.fit(14, 4) == (7.0, 2.0)  # halved, aspect kept
    assert plots.fit(5, 3) == (5, 3)  # already fits: unchanged
    assert plots.fit(10, 5, column=5) == (5.0, 2.5)


def test_side_by_side_legend_sits_under_the_panels_not_on_the_bars():
    from promptmoe import paper

    table = paper.side_by_side({"mvtec": {"image_auroc": 0.5, "au_pro": 0.4, "pro_compat": 0.45},
                                "visa": {"image_auroc": 0.6, "au_pro": 0.3, "pro_compat": 0.35}})
    fig = plots.plot_side_by_side(table, preset="paper", data="MVTec AD")
    assert all(ax.get_legend() is None for ax in fig.axes)  # no legend inside a panel
    assert len(fig.legends) == 1
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["paper", "this run",
                                                          "this run, official AU-PRO"]
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:  # under every panel, tick labels included, and above the caption
        assert box.y1 <= ax.get_tightbbox(renderer).y0 + 1e-6
    caption = next(t for t in fig.texts if t.get_text().startswith("this run:"))
    assert box.y0 >= caption.get_window_extent(renderer).y1 - 1e-6
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1  # one row that fits the figure's width
    plt.close("all")


def test_side_by_side_bar_labels_never_overlap():
    """Three bars per dataset (paper, compat PRO, official AU-PRO) are narrower than a label
    such as "22.9": the labels turn upright rather than run into each other, and stay inside
    the panel."""
    from promptmoe import paper

    ours = paper.side_by_side({"synthetic": {"image_auroc": 0.565, "au_pro": 0.229, "pro_compat": 0.227},
                               "mvtec": {"image_auroc": 0.5, "au_pro": 0.971, "pro_compat": 0.969},
                               "visa": {}, "industrial_avg": {}}, strict=False)  # as chapter 6 draws it
    fig = plots.plot_side_by_side(ours, preset="tiny", data="synthetic/unseen")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.texts]  # bar_label annotations
        assert len(boxes) >= 2
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), (ax.get_title(), a, b)
            assert a.y1 <= ax.get_window_extent(renderer).y1 + 1e-6  # inside the panel
    pro = next(ax for ax in fig.axes if ax.get_title().startswith("PRO"))
    assert {t.get_rotation() for t in pro.texts} == {90.0}
    plt.close(fig)
