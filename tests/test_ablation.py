"""Tests for promptmoe/ablation.py: config changes per table, the one loop, resuming."""
import json
import math

import pandas as pd
import pytest

from promptmoe import ablation, paper
from promptmoe.checkpoint import config_differences
from promptmoe.config import PromptMoEConfig
from promptmoe.data import load_dataset
from promptmoe.data.synthetic import make_synthetic


# ------------------------------------------------------------------ configs_for
@pytest.mark.parametrize("base, expected", [
    (PromptMoEConfig.tiny(), {"{24}": (4,), "{12, 24}": (2, 4), "{6, 12, 24}": (1, 2, 4),
                              "{6, 18, 24}": (1, 3, 4), "{6, 12, 18, 24}": (1, 2, 3, 4)}),
    (PromptMoEConfig.small(), {"{24}": (12,), "{12, 24}": (6, 12), "{6, 12, 24}": (3, 6, 12),
                               "{6, 18, 24}": (3, 9, 12), "{6, 12, 18, 24}": (3, 6, 9, 12)}),
    (PromptMoEConfig.paper(), {"{24}": (24,), "{12, 24}": (12, 24), "{6, 12, 24}": (6, 12, 24),
                               "{6, 18, 24}": (6, 18, 24), "{6, 12, 18, 24}": (6, 12, 18, 24)}),
])
def test_table4_maps_paper_blocks_by_position(base, expected):
    configs = ablation.configs_for(4, base)
    assert {name: c.layers for name, c in configs.items()} == expected
    # the V-V path still starts where the base model's does: only the compared blocks change
    assert all(c.first_vv_block == base.first_vv_block for c in configs.values())


def test_map_layers_needs_four_blocks():
    with pytest.raises(ValueError, match="4 feature blocks"):
        ablation.map_layers([24], PromptMoEConfig.tiny(layers=(1, 2, 3)))
    with pytest.raises(ValueError, match="not among"):
        ablation.map_layers([7], PromptMoEConfig.tiny())


@pytest.mark.parametrize("table", ablation.ABLATION_TABLES)
@pytest.mark.parametrize("preset", ["tiny", "small", "paper"])
def test_every_configuration_validates_and_changes_only_its_fields(table, preset):
    base = PromptMoEConfig.from_preset(preset)
    configs = ablation.configs_for(table, base)
    assert list(configs) == list(paper.ablation_configs(table))  # paper's order
    for name, cfg in configs.items():
        cfg.validate()
        changed = set(config_differences(base, cfg))
        assert changed <= set(paper.ablation_configs(table)[name]) | {"vv_start"}, name
        assert cfg.preset == preset and cfg.epochs == base.epochs


def test_table_contents_follow_the_paper():
    base = PromptMoEConfig.tiny()
    t2 = ablation.configs_for(2, base)
    assert [c.prompt_mode for c in t2.values()] == ["static", "ensemble", "vgmop", "vgmop"]
    assert not t2["+ VGMoP"].layerwise_prompts and t2["+ VGMoP"].alpha == 0.0
    assert t2["PromptMoE"] == base
    t6 = ablation.configs_for(6, base)
    assert [(c.n_experts, c.top_k) for c in t6.values()] == [
        (4, 4), (8, 1), (8, 2), (8, 4), (16, 2), (16, 4), (16, 8)]
    t5 = ablation.configs_for(5, base)
    assert (t5["w/ Shared Both"].share_pool, t5["w/ Shared Both"].share_attention) == (True, True)


def test_run_names_are_readable_and_distinct():
    base = PromptMoEConfig.tiny()
    names = {ablation.run_name(ch, base.replace(**ch))
             for t in ablation.ABLATION_TABLES for ch in ablation.changes_for(t, base).values()}
    assert any(n.startswith("default-") for n in names)
    assert any("prompt_mode=static-" in n for n in names)
    # 23 rows, the default model in each of the 5 tables: 19 distinct models
    assert len(names) == 19


# ------------------------------------------------------------------ run_ablation
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, size=64, n_train=1, n_test_good=2, n_test_bad=2,
                   categories=["brick", "gravel"], progress=False)
    base = PromptMoEConfig.tiny(epochs=1, warmup_epochs=0, batch_size=8)
    train_ds = load_dataset("synthetic", root / "seen", base.image_size, verbose=False)
    eval_ds = load_dataset("synthetic", root / "unseen", base.image_size, verbose=False)
    return base, train_ds, {"unseen": eval_ds}


def _counting_train(monkeypatch):
    calls = []
    real = ablation.train

    def counted(config, dataset, out_dir, resume=False, **kw):
        calls.append((config, resume))
        # the test states its device: on a GPU machine the default would be CUDA
        return real(config, dataset, out_dir, resume=resume, **{"device": "cpu", **kw})

    monkeypatch.setattr(ablation, "train", counted)
    return calls


def test_run_ablation_rows_resume_and_reuse(tiny_data, tmp_path, monkeypatch):
    base, train_ds, evals = tiny_data
    calls = _counting_train(monkeypatch)
    df = ablation.run_ablation(3, base, train_ds, evals, tmp_path, compat=False)
    assert list(df["configuration"]) == list(paper.ablation_configs(3))
    assert len(calls) == 3
    for m in ("image_auroc", "image_ap", "pixel_auroc", "au_pro"):
        assert df[m].map(math.isfinite).all() and df[m].between(0, 100).all(), m
    assert (df["preset"] == "tiny").all() and (df["data"] == "train synthetic -> eval unseen").all()
    wide = paper.ablation(3, wide=True)
    assert df["paper mvtec image_auroc"].tolist() == wide["mvtec image_auroc"].tolist()
    assert df["paper visa pro"].tolist() == wide["visa pro"].tolist()  # the paper's PRO
    assert json.loads(df.loc[0, "changes"]) == {"alpha": 0.0}

    # the CSV holds every row: a second call trains nothing and returns the same numbers
    saved = pd.read_csv(tmp_path / "table3.csv")
    assert len(saved) == 3
    again = ablation.run_ablation(3, base, train_ds, evals, tmp_path, compat=False)
    assert len(calls) == 3
    pd.testing.assert_frame_equal(again[df.columns].reset_index(drop=True), df, check_dtype=False)

    # another table in the same folder reuses the finished default model (alpha = 0.01)
    ablation.run_ablation(2, base, train_ds, evals, tmp_path, compat=False)
    assert len(calls) == 6  # static, ensemble, + VGMoP; "PromptMoE" came from table 3's run

    # a run whose evaluation was lost resumes from its finished checkpoint, no new epoch
    run = tmp_path / "runs" / ablation.run_name({"alpha": 0.1}, base.replace(alpha=0.1))
    (run / ablation.METRICS_NAME).unlink()
    (tmp_path / "table3.csv").unlink()
    steps = len(pd.read_csv(run / "train_log.csv"))
    third = ablation.run_ablation(3, base, train_ds, evals, tmp_path, compat=False)
    assert calls[-1] == (base.replace(alpha=0.1), True) and len(calls) == 7
    assert len(pd.read_csv(run / "train_log.csv")) == steps
    assert third.loc[2, "au_pro"] == pytest.approx(df.loc[2, "au_pro"])

    # other settings (more epochs) are another run, never a stale row
    ablation.run_ablation(3, base.replace(epochs=2), train_ds, evals, tmp_path, compat=False)
    assert len(calls) == 10


def test_plot_table(tiny_data, tmp_path):
    df = pd.DataFrame({"configuration": ["a", "b"], "image_auroc": [50.0, 60.0],
                       "paper mvtec image_auroc": [91.0, 93.0], "au_pro": [1.0, 2.0],
                       "paper visa pro": [88.0, 89.0]})
    t = ablation.plot_table(df, "image_auroc")
    assert t.to_dict() == {"paper": {"a": 91.0, "b": 93.0}, "this run": {"a": 50.0, "b": 60.0}}
    # the paper's PRO is AnomalyCLIP's protocol: our compat PRO beside it, official AU-PRO third
    df["pro_compat"] = [3.0, 4.0]
    t = ablation.plot_table(df, "pro", "visa")
    assert t.to_dict() == {"paper": {"a": 88.0, "b": 89.0}, "this run": {"a": 3.0, "b": 4.0},
                           "this run, official AU-PRO": {"a": 1.0, "b": 2.0}}
    no_compat = ablation.plot_table(df.drop(columns="pro_compat"), "pro", "visa")
    assert no_compat["this run"].isna().all()  # never the official AU-PRO in its place
    with pytest.raises(ValueError, match="image_auroc and pro"):
        ablation.plot_table(df, "pixel_auroc")
    with pytest.raises(ValueError, match="image_auroc and pro"):
        ablation.plot_table(df, "au_pro")  # this run's metric, not a column of the paper


def test_resume_reads_hashes_as_text(tmp_path, monkeypatch):
    """A hash that looks like a number ("123e4") must still match when the CSV is read back."""
    base = PromptMoEConfig.tiny()
    real_hash = ablation.config_hash
    monkeypatch.setattr(ablation, "config_hash", lambda c: str(int(real_hash(c), 16) % 997) + "e4")
    calls = []

    def fake(config, train_ds, evals, run_dir, *args):
        calls.append(run_dir)
        return {"unseen": {m: 0.5 for m in ablation.METRIC_COLUMNS}}

    monkeypatch.setattr(ablation, "train_and_evaluate", fake)
    first = ablation.run_ablation(6, base, None, {"unseen": None}, tmp_path)
    assert len(calls) == 7 and (first["image_auroc"] == 50.0).all()
    again = ablation.run_ablation(6, base, None, {"unseen": None}, tmp_path)
    assert len(calls) == 7 and list(again["config_hash"]) == list(first["config_hash"])


def test_table4_rows_pin_the_vv_start_explicitly():
    """The paper's rows say only which blocks are compared ({"layers": [24]}); applied as they
    stand, vv_start=None would move the V-V path's start to min(layers). changes_for writes the
    base model's start into every Table 4 row, so that all rows see the same features."""
    base = PromptMoEConfig.tiny()
    changes = ablation.changes_for(4, base)
    assert changes["{24}"] == {"layers": [4], "vv_start": 1}
    assert changes["{12, 24}"] == {"layers": [2, 4], "vv_start": 1}
    assert changes["{6, 12, 18, 24}"] == {}  # the base model itself
    raw = paper.ablation_configs(4)["{24}"]
    assert base.replace(layers=ablation.map_layers(raw["layers"], base)).first_vv_block == 4


def test_plot_table_over_seeds_gives_mean_and_std_by_hand():
    rows = pd.DataFrame({"configuration": ["A", "A", "A", "B", "B", "B"], "seed": [0, 1, 2] * 2,
                         "image_auroc": [60.0, 70.0, 80.0, 50.0, 50.0, 56.0],
                         "pro_compat": [10.0, 20.0, 30.0, 1.0, 2.0, 3.0],
                         "au_pro": [11.0, 21.0, 31.0, 2.0, 3.0, 4.0],
                         "paper mvtec image_auroc": [93.8] * 3 + [91.7] * 3,
                         "paper mvtec pro": [83.2] * 3 + [82.0] * 3})
    t = ablation.plot_table(rows, "image_auroc", "mvtec")
    assert list(t.index) == ["A", "B"] and t["paper"].tolist() == [93.8, 91.7]
    assert t["this run"].tolist() == [70.0, 52.0]
    assert t["this run std"].tolist() == pytest.approx([10.0, (12.0) ** 0.5])  # s^2 = (4+4+16)/2
    p = ablation.plot_table(rows, "pro", "mvtec")
    assert p["this run"].tolist() == [20.0, 2.0] and p["this run, official AU-PRO"].tolist() == [21.0, 3.0]
    assert p["this run std"].tolist() == pytest.approx([10.0, 1.0])


def test_plot_ablation_draws_the_seed_spread_as_error_bars():
    import matplotlib

    matplotlib.use("Agg")
    from promptmoe import plots

    table = pd.DataFrame({"paper": [93.8, 91.7], "this run": [70.0, 52.0],
                          "this run std": [10.0, 3.0]}, index=pd.Index(["A", "B"], name="configuration"))
    fig = plots.plot_ablation(table, "image_auroc", preset="micro", data="synthetic")
    ax = fig.axes[0]
    caps = [c for c in ax.containers if getattr(c, "errorbar", None) is not None]
    assert len(caps) == 1  # only "this run" has error bars
    segs = caps[0].errorbar.lines[2][0].get_segments()
    widths = sorted(round(abs(s[1][0] - s[0][0]) / 2, 6) for s in segs)
    assert widths == [3.0, 10.0]
