import subprocess
import sys

import pandas as pd
import pytest

from promptmoe.cli import main


def test_help_works_as_a_program():
    out = subprocess.run([sys.executable, "-m", "promptmoe.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("make-synthetic", "train", "eval", "predict"):
        assert cmd in out.stdout


def test_offline_round_trip(tmp_path, capsys):
    data = tmp_path / "synth"
    assert main(["make-synthetic", str(data), "--size", "64"]) == 0
    run = tmp_path / "run"
    assert main(["train", "--data", str(data / "seen"), "--dataset", "synthetic", "--out", str(run),
                 "--preset", "tiny", "--epochs", "1", "--categories", "brick", "nut"]) == 0
    ckpt = run / "checkpoint.safetensors"
    assert ckpt.exists() and len(pd.read_csv(run / "train_log.csv")) == 5  # 36 images / batch 8
    assert main(["eval", "--checkpoint", str(ckpt), "--data", f"synthetic={data / 'unseen'}",
                 "--out", str(tmp_path / "eval"), "--no-compat"]) == 0
    per_cat = pd.read_csv(tmp_path / "eval" / "per_category.csv")
    assert len(per_cat) == 6 and per_cat.image_auroc.between(0, 1).all()
    folder = data / "unseen" / "pill" / "test"
    assert main(["predict", str(folder), "--checkpoint", str(ckpt), "--out", str(tmp_path / "pred")]) == 0
    scores = pd.read_csv(tmp_path / "pred" / "scores.csv")
    assert len(scores) == 18 and scores.pred_score.between(0, 1).all()
    assert all((tmp_path / "pred" / name).exists() for name in scores.overlay)
    assert scores.overlay.is_unique
    # resuming a finished run is allowed; training over it without --resume is an error
    assert main(["train", "--data", str(data / "seen"), "--dataset", "synthetic", "--out", str(run),
                 "--preset", "tiny", "--epochs", "1", "--categories", "brick", "nut"]) == 2
    assert "pass resume=True" in capsys.readouterr().err


def test_predict_without_checkpoint_says_untrained(tmp_path, capsys):
    from PIL import Image
    import numpy as np
    img = tmp_path / "one.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8")).save(img)
    assert main(["predict", str(img), "--preset", "tiny", "--out", str(tmp_path / "p")]) == 0
    assert "UNTRAINED" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["eval", "--checkpoint", "nope.safetensors", "--data", "synthetic=x", "--out", "o"], "does not exist"),
    (["train", "--data", "/nonexistent", "--out", "o", "--preset", "tiny"], "/nonexistent"),
    (["predict", "/nonexistent.png", "--preset", "tiny"], "does not exist"),
    (["train", "--data", ".", "--out", "o", "--preset", "tiny", "--set", "top_k"], "key=value"),
])
def test_errors_exit_non_zero_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_speed_flags_parse_for_train_eval_and_predict():
    from promptmoe.cli import build_parser

    p = build_parser()
    t = p.parse_args(["train", "--data", "d", "--out", "o", "--cache", "disk", "--cache-dir", "c",
                      "--workers", "3", "--precision", "bf16"])
    assert (t.cache, t.cache_dir, t.workers, t.precision) == ("disk", "c", 3, "bf16")
    t = p.parse_args(["train", "--data", "d", "--out", "o"])
    assert (t.cache, t.workers, t.precision) == ("auto", None, "auto")
    e = p.parse_args(["eval", "--checkpoint", "c", "--data", "x=y", "--out", "o", "--workers", "2"])
    assert e.workers == 2 and e.precision == "auto"
    r = p.parse_args(["predict", "img.png", "--precision", "fp32"])
    assert r.precision == "fp32" and r.workers is None
