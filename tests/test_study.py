"""Tests for promptmoe/study.py and study_features.py: the ablation study from shared features.

The reference is the model-by-model loop of promptmoe/ablation.py (each model runs the tower on
its own): the study must give the same weights and metrics, with one tower pass per image.
"""
import json

import pandas as pd
import pytest
import torch

from promptmoe import ablation, cache
from promptmoe.checkpoint import read_checkpoint
from promptmoe.config import PromptMoEConfig
from promptmoe.data import load_dataset
from promptmoe.data.synthetic import make_synthetic
from promptmoe.study import Protocol, Study, StudyError, slug
from promptmoe.study_features import TowerCounter, cache_folders


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, size=64, n_train=1, n_test_good=2, n_test_bad=3,
                   categories=["brick", "gravel", "coins", "tissue"], progress=False)
    base = PromptMoEConfig.tiny(epochs=1, warmup_epochs=0, batch_size=4)
    seen = load_dataset("synthetic", root / "seen", base.image_size, verbose=False)
    unseen = load_dataset("synthetic", root / "unseen", base.image_size, verbose=False)
    return base, seen, unseen


def _study(data, out, tables=(3,), both=False, **kw):
    base, seen, unseen = data
    protocols = {"seen -> unseen": Protocol(seen, {"unseen": unseen})}
    if both:
        protocols["unseen -> seen"] = Protocol(unseen, {"seen": seen})
    return Study(kw.pop("base", base), protocols, out, tables=tables, progress=False, **kw)


def _weights(run_dir):
    return read_checkpoint(run_dir / "checkpoint.safetensors")[1]


def test_rows_and_models_of_the_paper_tables(data, tmp_path):
    study = _study(data, tmp_path, tables=ablation.ABLATION_TABLES, both=True, seeds=(0, 1))
    rows = study.rows()
    assert len(rows) == 23 * 2 * 2  # rows x protocols x seeds
    assert {p: len(m) for p, m in study.models().items()} == {"seen -> unseen": 38, "unseen -> seen": 38}
    seeded = [r for r in rows if r.seed == 1]
    assert all(r.config.seed == 1 and r.changes["seed"] == 1 for r in seeded)
    # Table 4's rows pin the V-V start where the base model's is, so all 19 share one group
    assert len(study._group_layers(rows)) == 1
    assert slug("mvtec -> visa") == "mvtec-to-visa"


def test_study_gives_the_model_by_model_results(data, tmp_path):
    """Same weights (exactly, one CPU thread) and metrics as ablation.run_ablation, which runs the
    tower for each model. Table 2 spans static, ensemble and VGMoP prompts, Table 4 the blocks."""
    base, seen, unseen = data
    study = _study(data, tmp_path / "shared", tables=(2, 4))
    with TowerCounter() as shared_passes:
        results = study.run()
    with TowerCounter() as own_passes:
        old = {t: ablation.run_ablation(t, base, seen, {"unseen": unseen}, tmp_path / "own",
                                        compat=True) for t in (2, 4)}
    for t in (2, 4):
        new = results["seen -> unseen", t]
        assert list(new["configuration"]) == list(old[t]["configuration"])
        assert list(new["config_hash"]) == list(old[t]["config_hash"])
        # the tower's float32 result for an image may differ in the last bit with the size of
        # its batch (a category's last, partial batch here): maps agree to ~3e-7
        for m in ablation.METRIC_COLUMNS:
            pd.testing.assert_series_equal(new[m], old[t][m], atol=1e-4, rtol=0, check_names=False)
        for name, changes in ablation.changes_for(t, base).items():
            config = base.replace(**changes)
            mine = _weights(study.run_dir("seen -> unseen", config))
            theirs = _weights(tmp_path / "own" / "runs" / ablation.run_name(changes, config))
            assert mine.keys() == theirs.keys()
            for k in theirs:
                assert torch.equal(mine[k], theirs[k]), (name, k)
    n = len(seen) + len(unseen)
    assert shared_passes.images == n  # one pass per image
    assert own_passes.images == 8 * n  # 8 distinct models in Tables 2 and 4, each its own passes


def test_one_pass_per_image_for_both_directions(data, tmp_path):
    base, seen, unseen = data
    study = _study(data, tmp_path, tables=(3, 6), both=True)
    with TowerCounter() as tower:
        results = study.run()
    assert tower.images == len(seen) + len(unseen)  # each set trains one protocol, scores the other
    assert [b[1:] for b in study.features.built] == [(len(seen), False), (len(unseen), False)]
    table = pd.read_csv(tmp_path / "table6.csv", dtype={"config_hash": str})
    assert len(table) == 2 * 7 and set(table["protocol"]) == {"seen -> unseen", "unseen -> seen"}
    assert table["paper visa pro"].tolist() == 2 * paper_column(6, "visa pro")
    assert table["paper image_auroc"].isna().all()  # synthetic data: no paper direction
    assert len(results["unseen -> seen", 3]) == 3
    # another seed in the same folder adds its rows; the first seed's stay in the CSV
    _study(data, tmp_path, tables=(6,), both=True, seeds=(1,)).run()
    seeds = pd.read_csv(tmp_path / "table6.csv")["seed"]
    assert sorted(seeds.value_counts().items()) == [(0, 14), (1, 14)]
    summary = (tmp_path / "summary.md").read_text()
    assert "## Table 6: unseen -> seen" in summary and "random CLIP, quick mode" in summary


def paper_column(table, column):
    from promptmoe import paper

    return paper.ablation(table, wide=True)[column].tolist()


def test_paper_direction_follows_the_evaluation_set(data):
    _, seen, _ = data

    class Named:
        def __init__(self, fmt):
            self.format = fmt

    assert Protocol(seen, {"x": Named("visa")}).paper == "visa"
    assert Protocol(seen, {"x": Named("mvtec")}).paper == "mvtec"
    assert Protocol(seen, {"x": Named("mvtec"), "y": Named("visa")}).paper == ""
    assert Protocol(seen, {"x": Named("mvtec")}, paper="visa").paper == "visa"


def test_interrupted_study_resumes_without_recomputing(data, tmp_path, monkeypatch):
    """A disk cache found complete is reused, finished models are not trained again, and the
    tables equal those of an uninterrupted study."""
    import promptmoe.study as study_mod

    whole = _study(data, tmp_path / "whole", tables=(3,), cache="disk").run()
    real, calls = study_mod.evaluate_cached, []

    def dies_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(study_mod, "evaluate_cached", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        _study(data, tmp_path / "cut", tables=(3,), cache="disk").run()
    assert len(pd.read_csv(tmp_path / "cut" / "table3.csv")) == 1
    monkeypatch.setattr(study_mod, "evaluate_cached", real)
    trained = []
    real_train = study_mod.train
    monkeypatch.setattr(study_mod, "train", lambda c, *a, **k: trained.append(
        k["cache_features"] != "none") or real_train(c, *a, **k))
    with TowerCounter() as tower:
        again = _study(data, tmp_path / "cut", tables=(3,), cache="disk").run()
    assert tower.images == 0  # both caches complete on disk: reused
    assert trained == [False, False]  # the two unevaluated models, trained before the cut: loaded
    cols = ["configuration", *ablation.METRIC_COLUMNS, "config_hash"]
    pd.testing.assert_frame_equal(again["seen -> unseen", 3][cols], whole["seen -> unseen", 3][cols])


def test_disk_holds_one_cache_per_dataset(data, tmp_path):
    folder = tmp_path / "feature_cache"
    stale = folder / "synthetic-0123abcd"
    stale.mkdir(parents=True)
    (stale / "layer0.bin").write_bytes(b"\0" * 1000)  # a cache of other settings
    old_run = tmp_path / "protocol0" / "runs" / "default-1234" / "feature_cache"
    old_run.mkdir(parents=True)  # a per-model cache of the model-by-model loop
    (old_run / "layer0.bin").write_bytes(b"\0" * 10)
    foreign = [folder / "photos", folder / "notes-0123abcd", tmp_path / "mvtec" / "feature_cache"]
    for f in foreign:  # not the study's: a reader's files, a `promptmoe train` run's cache
        f.mkdir(parents=True)
        (f / ("layer0.bin" if f.name == "feature_cache" else "x.bin")).write_bytes(b"\0")
    study = _study(data, tmp_path, cache="disk")
    assert set(study.plan(count=False).stale) == {stale, old_run}
    study.run()
    assert not stale.exists() and not old_run.exists()
    assert all(f.exists() for f in foreign)
    first = set(cache_folders(folder))
    assert len(first) == 2  # seen and unseen
    # another precision is another feature group: its caches replace these, never join them
    other = _study(data, tmp_path, cache="disk", base=data[0].replace(precision="bf16"))
    other.run()
    assert len(cache_folders(folder)) == 2 and first.isdisjoint(cache_folders(folder))
    _study(data, tmp_path, cache="disk", base=data[0].replace(precision="bf16")).drop_caches()
    assert cache_folders(folder) == []  # --drop-cache: a finished study deletes them


def test_rows_with_other_features_get_their_own_caches(data, tmp_path):
    """An extra row without the V-V path sees other features: a second group, built after the
    first group's caches are dropped (never two caches of one dataset at a time)."""
    base, seen, unseen = data
    study = _study(data, tmp_path, tables=(3,), extra={"no V-V path": {"vv_attention": False}},
                   cache="disk")
    seen_at_build = []
    real = cache.FeatureCache.__init__

    def spy(self, *args, **kwargs):
        seen_at_build.append(len(cache_folders(tmp_path / "feature_cache")))
        real(self, *args, **kwargs)

    cache.FeatureCache.__init__ = spy
    try:
        with TowerCounter() as tower:
            results = study.run()
    finally:
        cache.FeatureCache.__init__ = real
    assert tower.images == 2 * (len(seen) + len(unseen))
    assert max(seen_at_build) <= 1  # a dataset's second cache never sits beside its first
    row = results["seen -> unseen", 0].iloc[0]
    assert json.loads(row["changes"]) == {"vv_attention": False} and row["configuration"] == "no V-V path"


def test_refuses_to_start_without_disk(data, tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "free_disk_bytes", lambda folder: 1000)
    study = _study(data, tmp_path / "out", cache="disk")
    with pytest.raises(StudyError, match=r"needs 0\.\d+ GB of disk .* only 0\.0 GB are free"):
        study.run()
    assert not (tmp_path / "out").exists()  # nothing written
    with pytest.raises(StudyError, match="cache=.none."):
        _study(data, tmp_path / "out", cache="none")
    import promptmoe.distributed as distributed

    monkeypatch.setattr(distributed, "info", lambda: object())  # as under torchrun
    with pytest.raises(StudyError, match="runs in one process"):
        _study(data, tmp_path / "out")


def test_a_single_model_from_the_shared_features(data, tmp_path):
    base, seen, unseen = data
    study = _study(data, tmp_path)
    study.run()
    n = len(seen) + len(unseen)
    with TowerCounter() as tower:
        m = study.metrics("seen -> unseen", base.replace(seed=1))  # a seed outside the tables
    assert tower.images == 0 and set(m) == {"unseen"}  # the study's caches served it
    assert (study.run_dir("seen -> unseen", base.replace(seed=1)) / "metrics.json").exists()
    fresh = _study(data, tmp_path)  # a new session: the model is finished, nothing runs
    with TowerCounter() as tower:
        assert fresh.metrics("seen -> unseen", base.replace(seed=1)) == m
    assert tower.images == 0 and n > 0


def test_a_table_of_another_kind_is_never_overwritten(data, tmp_path):
    base, seen, unseen = data
    ablation.run_ablation(3, base, seen, {"unseen": unseen}, tmp_path, compat=False)
    before = (tmp_path / "table3.csv").read_text()
    with pytest.raises(StudyError, match="table3.csv holds another kind of table"):
        _study(data, tmp_path).run()
    assert (tmp_path / "table3.csv").read_text() == before
