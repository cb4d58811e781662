import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from promptmoe.cli import main


def test_help_works_as_a_program():
    out = subprocess.run([sys.executable, "-m", "promptmoe.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("make-synthetic", "train", "eval", "predict"):
        assert cmd in out.stdout


CPU = ["--device", "cpu"]  # the tests state their device (on a GPU machine the default is CUDA)


def test_offline_round_trip(tmp_path, capsys):
    data = tmp_path / "synth"
    assert main(["make-synthetic", str(data), "--size", "64"]) == 0
    run = tmp_path / "run"
    assert main(["train", "--data", str(data / "seen"), "--dataset", "synthetic", "--out", str(run),
                 "--preset", "tiny", "--epochs", "1", "--categories", "brick", "nut", *CPU]) == 0
    ckpt = run / "checkpoint.safetensors"
    assert ckpt.exists() and len(pd.read_csv(run / "train_log.csv")) == 5  # 36 images / batch 8
    assert main(["eval", "--checkpoint", str(ckpt), "--data", f"synthetic={data / 'unseen'}",
                 "--out", str(tmp_path / "eval"), "--no-compat", *CPU]) == 0
    per_cat = pd.read_csv(tmp_path / "eval" / "per_category.csv")
    assert len(per_cat) == 6 and per_cat.image_auroc.between(0, 1).all()
    folder = data / "unseen" / "pill" / "test"
    assert main(["predict", str(folder), "--checkpoint", str(ckpt), "--out", str(tmp_path / "pred"),
                 *CPU]) == 0
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
    assert main(["predict", str(img), "--preset", "tiny", "--out", str(tmp_path / "p"), *CPU]) == 0
    assert "UNTRAINED" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["eval", "--checkpoint", "nope.safetensors", "--data", "synthetic=x", "--out", "{t}/o"],
     "does not exist"),
    (["train", "--data", "/nonexistent", "--out", "{t}/o", "--preset", "tiny"], "/nonexistent"),
    (["predict", "/nonexistent.png", "--preset", "tiny", "--out", "{t}/p"], "does not exist"),
    (["train", "--data", ".", "--out", "{t}/o", "--preset", "tiny", "--set", "top_k"], "key=value"),
])
def test_errors_exit_non_zero_with_a_message(argv, message, capsys, tmp_path):
    # --out under tmp_path: `train` makes its --out folder before it reads the data ("./o" was
    # left in the working tree)
    assert main([a.replace("{t}", str(tmp_path)) for a in argv]) == 2
    assert message in capsys.readouterr().err


@pytest.fixture()
def fake_cuda(monkeypatch):
    """torch.cuda.is_available() says True; moving a model to CUDA is recorded, then done on
    the CPU, so the device rule is tested without a GPU."""
    import types

    import torch

    from promptmoe.model import PromptMoE

    moves = []
    original = PromptMoE.to

    def to(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, (str, torch.device)):
            moves.append(torch.device(target))
            if torch.device(target).type == "cuda":
                return original(self, "cpu")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(PromptMoE, "to", to)
    return types.SimpleNamespace(moves=moves)


@pytest.fixture()
def tiny_checkpoint(tmp_path):
    from promptmoe.checkpoint import save_checkpoint
    from promptmoe.config import PromptMoEConfig
    from promptmoe.model import build_model

    cfg = PromptMoEConfig.tiny()
    return save_checkpoint(tmp_path / "c.safetensors", build_model(cfg, device="cpu"), cfg,
                           meta={"clip_seed": 0, "train_data": "test"})


@pytest.mark.device_rule
def test_eval_and_predict_pick_cuda_when_available(fake_cuda, tiny_checkpoint, tmp_path, monkeypatch):
    import types

    import promptmoe.data
    import promptmoe.evaluate
    import promptmoe.predict

    used = []
    monkeypatch.setattr(promptmoe.data, "load_dataset", lambda *a, **k: "dataset")
    monkeypatch.setattr(promptmoe.evaluate, "evaluate", lambda model, *a, **k: (
        used.append(next(model.parameters()).device),
        types.SimpleNamespace(summary=pd.DataFrame({"image_auroc": [0.5]})))[1])
    monkeypatch.setattr(promptmoe.predict, "score_images", lambda model, *a, **k: pd.DataFrame())
    photos = tmp_path / "photos"  # predict checks its inputs before building the model
    photos.mkdir()
    Image.new("RGB", (40, 30)).save(photos / "a.png")
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--data", f"synthetic={tmp_path}",
                 "--out", str(tmp_path / "e")]) == 0
    assert fake_cuda.moves[-1].type == "cuda" and used
    pred = ["--out", str(tmp_path / "predictions")]  # the default ./predictions: not in the tree
    assert main(["predict", str(photos), "--checkpoint", str(tiny_checkpoint), *pred]) == 0
    assert fake_cuda.moves[-1].type == "cuda"
    assert main(["predict", str(photos), "--preset", "tiny", *pred]) == 0  # untrained: build_model
    assert fake_cuda.moves[-1].type == "cuda"
    # --device overrides the rule
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--data", f"synthetic={tmp_path}",
                 "--out", str(tmp_path / "e"), "--device", "cpu"]) == 0
    assert fake_cuda.moves[-1].type == "cpu"


@pytest.mark.device_rule
def test_library_entry_points_pick_cuda_when_available(fake_cuda, tiny_checkpoint):
    from promptmoe.checkpoint import load_model
    from promptmoe.config import PromptMoEConfig
    from promptmoe.model import build_model

    build_model(PromptMoEConfig.tiny())
    assert fake_cuda.moves[-1].type == "cuda"
    load_model(tiny_checkpoint)
    assert fake_cuda.moves[-1].type == "cuda"
    load_model(tiny_checkpoint, device="cpu")
    assert fake_cuda.moves[-1].type == "cpu"


def test_speed_flags_parse_for_train_eval_and_predict():
    from promptmoe.cli import build_parser

    p = build_parser()
    t = p.parse_args(["train", "--data", "d", "--out", "o", "--cache", "disk", "--cache-dir", "c",
                      "--workers", "3", "--precision", "bf16"])
    assert (t.cache, t.cache_dir, t.workers, t.precision) == ("disk", "c", 3, "bf16")
    t = p.parse_args(["train", "--data", "d", "--out", "o"])
    assert (t.cache, t.workers, t.precision, t.deterministic) == ("auto", None, "auto", False)
    assert p.parse_args(["train", "--data", "d", "--out", "o", "--deterministic"]).deterministic
    e = p.parse_args(["eval", "--checkpoint", "c", "--data", "x=y", "--out", "o", "--workers", "2"])
    assert e.workers == 2 and e.precision == "auto"
    r = p.parse_args(["predict", "img.png", "--precision", "fp32"])
    assert r.precision == "fp32" and r.workers is None


def test_precision_flag_reaches_the_towers_in_train_eval_predict_and_resume(tmp_path, monkeypatch):
    """--precision is not only parsed: the frozen towers run under it (what they ask
    precision.autocast_dtype for), in every command, and a resumed run may change it."""
    import promptmoe.precision as precision
    from promptmoe.checkpoint import read_checkpoint

    asked = []
    real = precision.autocast_dtype
    monkeypatch.setattr(precision, "autocast_dtype", lambda p, d: (asked.append(p), real(p, d))[1])

    def towers_ran_in(argv):
        asked.clear()
        assert main([*argv, *CPU]) == 0
        return set(asked)

    data = tmp_path / "synth"
    assert main(["make-synthetic", str(data), "--size", "64"]) == 0
    run = tmp_path / "run"
    train = ["train", "--data", str(data / "seen"), "--dataset", "synthetic", "--out", str(run),
             "--preset", "tiny", "--categories", "brick", "--cache", "none"]
    assert towers_ran_in([*train, "--epochs", "1", "--precision", "fp16"]) == {"fp16"}
    ckpt = run / "checkpoint.safetensors"
    assert read_checkpoint(ckpt)[0].precision == "fp16"
    # resuming with another precision is allowed (the weights do not depend on it) and used
    assert towers_ran_in([*train, "--epochs", "2", "--resume", "--precision", "bf16"]) == {"bf16"}
    assert read_checkpoint(ckpt)[0].precision == "bf16"
    assert len(pd.read_csv(run / "train_log.csv")) == 2 * 3  # 18 images / batch 8, 2 epochs
    ev = ["eval", "--checkpoint", str(ckpt), "--data", f"synthetic={data / 'unseen'}",
          "--no-compat", "--overwrite", "--out", str(tmp_path / "e")]
    assert towers_ran_in([*ev, "--precision", "fp32"]) == {"fp32"}
    assert towers_ran_in(ev) == {"auto"}  # the command line's default (fp32 on a CPU)
    pred = ["predict", str(data / "unseen" / "pill" / "test" / "good"), "--checkpoint", str(ckpt),
            "--out", str(tmp_path / "p")]
    assert towers_ran_in([*pred, "--precision", "fp16"]) == {"fp16"}
