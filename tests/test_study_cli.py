"""Tests for promptmoe/study_cli.py: ``promptmoe ablate`` end to end on the tiny preset."""
import pandas as pd
import pytest

from promptmoe import cache, cli, paper
from promptmoe.data.synthetic import make_synthetic
from promptmoe.study_features import TowerCounter


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, size=64, n_train=1, n_test_good=2, n_test_bad=2,
                   categories=["brick", "gravel", "coins", "tissue"], progress=False)
    return root / "seen", root / "unseen"


def _argv(roots, out, *more):
    seen, unseen = roots
    return ["ablate", "--table", "3", "5", "--train", f"seen=synthetic:{seen}",
            "--eval", f"unseen=synthetic:{unseen}", "--both-directions", "--out", str(out),
            "--preset", "tiny", "--epochs", "1", "--no-compat", *more]


def test_ablate_end_to_end_and_resume(roots, tmp_path, capsys, monkeypatch):
    import promptmoe.study as study_mod

    out = tmp_path / "study"
    real, calls = study_mod.evaluate_cached, []

    def cut_after_three(*args, **kwargs):  # an interruption (Ctrl-C) in the middle of the study
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(study_mod, "evaluate_cached", cut_after_three)
    with TowerCounter() as first, pytest.raises(KeyboardInterrupt):
        cli.main(_argv(roots, out))
    printed = capsys.readouterr().out
    assert "ablation study, tiny preset: 14 table rows, 12 models" in printed
    assert "tower passes per image: seen 1, unseen 1 with shared features" in printed
    assert "model by model: seen 12, unseen 12" in printed  # 6 models per direction
    assert len(pd.read_csv(out / "table3.csv")) == 3  # the first direction's Table 3
    monkeypatch.setattr(study_mod, "evaluate_cached", real)
    with TowerCounter() as tower:
        assert cli.main(_argv(roots, out)) == 0
    # in-memory caches (tiny): made once more in the new process, one pass per image again
    assert tower.images == first.images > 0
    t3 = pd.read_csv(out / "table3.csv")
    t5 = pd.read_csv(out / "table5.csv")
    assert len(t3) == 2 * 3 and len(t5) == 2 * 4
    assert list(t3["protocol"].unique()) == ["seen -> unseen", "unseen -> seen"]
    wide = paper.ablation(5, wide=True)
    assert t5["paper visa image_auroc"].tolist() == 2 * wide["visa image_auroc"].tolist()
    assert t5["image_auroc"].between(0, 100).all() and t5["au_pro"].notna().all()
    summary = (out / "summary.md").read_text()
    assert "## Table 5: unseen -> seen" in summary and "I-AUROC paper" in summary
    printed = capsys.readouterr().out
    assert f"tables: {out / 'table3.csv'} {out / 'table5.csv'}" in printed
    # a finished study: a third call trains and evaluates nothing
    before = t5.copy()
    with TowerCounter() as tower:
        assert cli.main(_argv(roots, out)) == 0
    assert tower.images == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "table5.csv"), before)


def test_ablate_refuses_without_disk(roots, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cache, "free_disk_bytes", lambda folder: 10 ** 6)  # 1 MB free
    out = tmp_path / "study"
    assert cli.main(_argv(roots, out, "--cache", "disk")) == 2
    err = capsys.readouterr().err
    assert err.startswith("promptmoe ablate: error: the ablation study needs ")
    assert "GB of disk" in err and "only 0.0 GB are free" in err and "--cache-dir" in err
    assert not (out / "table3.csv").exists() and not (out / "runs").exists()


def test_ablate_dry_run_and_bad_input(roots, tmp_path, capsys):
    out = tmp_path / "plan"
    assert cli.main(_argv(roots, out, "--dry-run")) == 0
    printed = capsys.readouterr().out
    assert "ablation study, tiny preset: 14 table rows, 12 models" in printed
    assert "FLOPs:" in printed and "PROJECTION" in printed
    assert not (out / "runs").exists() and not list(out.glob("table*.csv"))
    seen, unseen = roots
    bad = ["ablate", "--train", f"seen=synthetic:{seen}", "--eval", f"unseen=synthetic:{unseen}",
           f"again=synthetic:{unseen}", "--both-directions", "--out", str(out), "--preset", "tiny"]
    assert cli.main(bad) == 2
    assert "--both-directions needs exactly one --eval set, not 2" in capsys.readouterr().err
    missing = ["ablate", "--train", f"seen=synthetic:{tmp_path / 'nowhere'}", "--eval",
               f"unseen=synthetic:{unseen}", "--out", str(out), "--preset", "tiny"]
    assert cli.main(missing) == 2
    assert "nowhere" in capsys.readouterr().err
