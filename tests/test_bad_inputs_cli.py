"""Bad-input matrix, command-line side (issue 9): every bad value or file gives exit code 2 and
one error line naming it, checked before long work; good but unkind input gives the right numbers.

The data side (layouts, masks, images, metrics) is tests/test_bad_inputs_data.py; downloads and
archives are tests/test_download.py. Everything runs on the tiny preset (random CLIP): numbers
here are plumbing, never results of the method.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from promptmoe.cli import main

# the tests state their device: on a GPU machine the CLI's default is CUDA (not bit-exact there)
TRAIN = ["--device", "cpu", "--dataset", "synthetic", "--preset", "tiny", "--epochs", "1",
         "--categories", "brick", "nut"]
ON_CPU = ("train", "eval", "predict")


def _on_cpu(argv):
    """``argv`` with ``--device cpu`` for the commands that take one (unless it names one)."""
    argv = [str(a) for a in argv]
    return argv + ["--device", "cpu"] if argv[0] in ON_CPU and "--device" not in argv else argv


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """64 px synthetic data and a 1-epoch tiny checkpoint trained on two of its categories."""
    root = tmp_path_factory.mktemp("synth")
    assert main(["make-synthetic", str(root / "data"), "--size", "64"]) == 0
    run = root / "run"
    assert main(["train", "--data", str(root / "data" / "seen"), "--out", str(run), *TRAIN]) == 0
    return root / "data", run / "checkpoint.safetensors"


def run_cli(argv, capsys):
    """(exit code, the error line, whole stderr) of ``promptmoe argv``."""
    capsys.readouterr()
    code = main(_on_cpu(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("promptmoe ") and ": error: " in line]
    assert len(errors) <= 1, err
    return code, (errors or [""])[0], err


def _image(path, size=(517, 333), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    img = Image.fromarray(arr).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _bad_checkpoint(path, kind, good):
    """Checkpoints broken in one way each; ``good`` is a real one to copy tensors from."""
    tensors = {"model.x": torch.zeros(2)}
    if kind == "no metadata":
        save_file(tensors, str(path))
    elif kind == "no config":
        save_file(tensors, str(path), metadata={"format": "promptmoe-checkpoint-v1"})
    elif kind == "config not JSON":
        save_file(tensors, str(path), metadata={"format": "promptmoe-checkpoint-v1", "config": "{top_k: 2"})
    elif kind == "config a list":
        save_file(tensors, str(path), metadata={"format": "promptmoe-checkpoint-v1", "config": "[1, 2]"})
    elif kind == "unknown config key":
        save_file(tensors, str(path), metadata={"format": "promptmoe-checkpoint-v1",
                                                "config": json.dumps({"nonsense": 1})})
    elif kind == "meta not JSON":
        from safetensors import safe_open
        with safe_open(str(good), framework="pt") as f:
            meta = dict(f.metadata())
        save_file(tensors, str(path), metadata={**meta, "epoch": "one"})
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:200])
    return path


# ----------------------------------------------------------------- the error matrix
def _train_set(value):
    """argv builder: train on the seen set with one ``--set`` value."""
    return lambda t, d, c: ["train", "--data", d / "seen", "--out", t / "o", *TRAIN, "--set", value]


# (case id, argv builder(tmp, data, ckpt), text the first error line must contain)
CASES = [
    ("set unknown key", _train_set("topk=2"), "unknown config key 'topk'"),
    ("set int given text", _train_set("top_k=two"), "top_k takes an integer (like 4), not 'two'"),
    ("set int given float", _train_set("top_k=2.5"), "--set 'top_k=2.5'"),
    ("set out of range", _train_set("top_k=99"), "top_k=99 must lie in [1, n_experts"),
    ("set lr nan", _train_set("lr=NaN"), "lr takes a finite number"),
    ("set layers unordered", _train_set("layers=[6,3]"), "must be strictly increasing"),
    ("set without =", _train_set("top_k"), "write it as key=value"),
    ("epochs 0", lambda t, d, c: ["train", "--data", d / "seen", "--out", t / "o", "--preset", "tiny",
                                  "--epochs", "0"], "epochs=0 must be >= 1"),
    ("train out is a file", lambda t, d, c: ["train", "--data", d / "seen", "--out", t / "f.txt", *TRAIN],
     "f.txt: is a file, not a folder"),
    ("predict out under a file", lambda t, d, c: ["predict", d / "unseen", "--preset", "tiny",
                                                  "--out", t / "f.txt" / "sub"], "cannot be written"),
    ("eval out in /proc", lambda t, d, c: ["eval", "--checkpoint", c, "--data", f"synthetic={d / 'unseen'}",
                                           "--out", "/proc/promptmoe-out", "--no-compat"],
     "'/proc/promptmoe-out' cannot be written"),
    ("checkpoint missing", lambda t, d, c: ["eval", "--checkpoint", t / "nope.safetensors", "--data",
                                            f"synthetic={d / 'unseen'}", "--out", t / "e"], "does not exist"),
    ("threshold nan", lambda t, d, c: ["predict", d / "unseen", "--checkpoint", c, "--threshold", "nan",
                                       "--out", t / "p"], "--threshold nan: must be a number in [0, 1]"),
    ("threshold inf", lambda t, d, c: ["predict", d / "unseen", "--checkpoint", c, "--threshold", "inf",
                                       "--out", t / "p"], "--threshold inf"),
    ("threshold above 1", lambda t, d, c: ["predict", d / "unseen", "--checkpoint", c, "--threshold",
                                           "1.5", "--out", t / "p"], "--threshold 1.5"),
    ("mask threshold nan", lambda t, d, c: ["eval", "--checkpoint", c, "--data", f"synthetic={d / 'unseen'}",
                                            "--out", t / "e", "--mask-threshold", "nan"],
     "--mask-threshold nan"),
    ("mask dir missing", lambda t, d, c: ["eval", "--checkpoint", c, "--data", f"mine=folder:{d / 'unseen'}",
                                          "--out", t / "e", "--mask-dir", t / "nomasks"], "nomasks: no such folder"),
    ("mask dir for mvtec-style data", lambda t, d, c: ["eval", "--checkpoint", c, "--data",
                                                       f"synthetic={d / 'unseen'}", "--out", t / "e",
                                                       "--mask-dir", t], "only apply to folder-format data"),
    ("unknown format", lambda t, d, c: ["eval", "--checkpoint", c, "--data", f"mine={d}", "--out", t / "e"],
     "'mine' is not a dataset format"),
    ("duplicate labels", lambda t, d, c: ["eval", "--checkpoint", c, "--data", f"a=synthetic:{d / 'unseen'}",
                                          f"a=synthetic:{d / 'seen'}", "--out", t / "e"], "both use the label 'a'"),
    ("data root missing", lambda t, d, c: ["eval", "--checkpoint", c, "--data", f"mine=folder:{t / 'gone'}",
                                           "--out", t / "e"], f"root {'{t}'}"),
    ("predict one input missing", lambda t, d, c: ["predict", d / "unseen" / "pill" / "test", t / "nope.png",
                                                   "--checkpoint", c, "--out", t / "p"], "nope.png"),
    ("synthetic size 0", lambda t, d, c: ["make-synthetic", t / "s", "--size", "0"], "size=0 must be an integer >= 32"),
    ("synthetic size 10", lambda t, d, c: ["make-synthetic", t / "s", "--size", "10"], "size=10"),
    ("synthetic size huge", lambda t, d, c: ["make-synthetic", t / "s", "--size", "100000"], "size=100000 is above"),
    ("synthetic seed negative", lambda t, d, c: ["make-synthetic", t / "s", "--seed", "-1"], "seed=-1"),
    ("synthetic root is a file", lambda t, d, c: ["make-synthetic", t / "f.txt"], "f.txt: is a file, not a folder"),
    ("meta.json a list", lambda t, d, c: ["eval", "--checkpoint", c, "--data", f"m=meta_json:{t / 'meta.json'}",
                                          "--out", t / "e"], "the top level must be an object"),
]


@pytest.mark.parametrize("case, build, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_exit_2(case, build, message, synth, tmp_path, capsys):
    data, ckpt = synth
    (tmp_path / "f.txt").write_text("not a folder")
    (tmp_path / "meta.json").write_text(json.dumps([{"img_path": "a.png", "anomaly": 0}]))
    code, first, err = run_cli(build(tmp_path, data, ckpt), capsys)
    assert code == 2, err
    assert message.replace("{t}", str(tmp_path)) in first, err
    # nothing was computed or written before the error
    assert not (tmp_path / "o" / "checkpoint.safetensors").exists() and not (tmp_path / "e" / "summary.csv").exists()
    assert not (tmp_path / "p" / "scores.csv").exists() and not (tmp_path / "s" / "manifest.json").exists()


@pytest.mark.parametrize("kind, message", [
    ("no metadata", "is not a PromptMoE checkpoint (format=None)"),
    ("no config", "its metadata has no 'config' entry"),
    ("config not JSON", "broken 'config' metadata"),
    ("config a list", "broken 'config' metadata"),
    ("unknown config key", "unknown config keys ['nonsense']"),
    ("meta not JSON", "broken metadata entry 'epoch'"),
    ("truncated", "is not a readable safetensors checkpoint"),
])
def test_broken_checkpoint_is_named(kind, message, synth, tmp_path, capsys):
    data, ckpt = synth
    bad = _bad_checkpoint(tmp_path / "bad.safetensors", kind, ckpt)
    code, first, err = run_cli(["predict", data / "unseen" / "pill" / "test", "--checkpoint", bad,
                                "--out", tmp_path / "p"], capsys)
    assert code == 2 and str(bad) in first and message in first, err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_refused_before_training(synth, tmp_path, capsys):
    data, _ = synth
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, first, _ = run_cli(["train", "--data", data / "seen", "--out", ro, *TRAIN], capsys)
    finally:
        ro.chmod(0o755)
    assert code == 2 and f"--out '{ro}' cannot be written" in first and list(ro.iterdir()) == []


def test_eval_validates_data_before_building_the_model(synth, tmp_path, capsys, monkeypatch):
    data, ckpt = synth
    import promptmoe.checkpoint as checkpoint

    def boom(*a, **k):
        raise AssertionError("the model was built before the data were checked")

    monkeypatch.setattr(checkpoint, "load_model", boom)
    code, first, _ = run_cli(["eval", "--checkpoint", ckpt, "--data", f"synthetic={data / 'unseen'}",
                              f"mine=folder:{tmp_path / 'missing'}", "--out", tmp_path / "e"], capsys)
    assert code == 2 and "missing" in first


def test_eval_over_an_earlier_report_asks_for_overwrite(synth, tmp_path, capsys):
    data, ckpt = synth
    argv = ["eval", "--checkpoint", ckpt, "--data", f"a=synthetic:{data / 'unseen'}", "--out", tmp_path / "e",
            "--no-compat"]
    assert run_cli(argv, capsys)[0] == 0
    first = pd.read_csv(tmp_path / "e" / "per_category.csv")
    code, line, _ = run_cli(argv, capsys)
    assert code == 2 and "holds an earlier report (summary.csv, per_category.csv" in line and "--overwrite" in line
    assert run_cli(argv + ["--overwrite"], capsys)[0] == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "e" / "per_category.csv"), first)


def test_eval_same_format_twice_keeps_both_labels(synth, tmp_path, capsys):
    data, ckpt = synth
    assert run_cli(["eval", "--checkpoint", ckpt, "--data", f"one=synthetic:{data / 'unseen'}",
                    f"two=synthetic:{data / 'unseen'}", "--out", tmp_path / "e", "--no-compat"], capsys)[0] == 0
    per_cat = pd.read_csv(tmp_path / "e" / "per_category.csv")
    assert sorted(set(per_cat.dataset)) == ["one", "two"] and set(per_cat.format) == {"synthetic"}
    one = per_cat[per_cat.dataset == "one"].image_auroc.to_numpy()
    two = per_cat[per_cat.dataset == "two"].image_auroc.to_numpy()
    np.testing.assert_allclose(one, two)  # the same images under two labels: the same numbers


def test_predict_several_files_folders_and_globs_of_mixed_modes(synth, tmp_path, capsys):
    _, ckpt = synth
    a = _image(tmp_path / "in" / "a.png", (517, 333))
    b = _image(tmp_path / "in" / "b.jpg", (200, 300), seed=1)
    _image(tmp_path / "dir" / "c.png", (64, 48), "L", seed=2)
    _image(tmp_path / "dir" / "nested" / "d.png", (90, 70), "RGBA", seed=3)
    _image(tmp_path / "glob" / "e.png", (40, 41), "P", seed=4)
    out = tmp_path / "o"
    code = main(_on_cpu(["predict", str(a), str(b), str(tmp_path / "dir"), str(tmp_path / "glob" / "*.png"),
                         "--checkpoint", str(ckpt), "--out", str(out), "--threshold", "0.25"]))
    assert code == 0
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 5 and scores.pred_score.between(0, 1).all()
    assert (scores.pred_label == (scores.pred_score >= 0.25).astype(int)).all()
    assert list(scores.input.unique()) == [str(a), str(b), str(tmp_path / "dir"), str(tmp_path / "glob" / "*.png")]
    assert scores[["width", "height"]].values.tolist()[:2] == [[517, 333], [200, 300]]
    with Image.open(out / scores.overlay[0]) as overlay:
        assert overlay.size == (517, 333)  # the original size, not the model's square input


def test_python_dash_m_promptmoe_runs_the_cli(tmp_path):
    from pathlib import Path
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    ok = subprocess.run([sys.executable, "-m", "promptmoe", "predict", "--help"], capture_output=True,
                        text=True, env=env)
    assert ok.returncode == 0 and "glob" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "promptmoe", "make-synthetic", str(tmp_path), "--size", "5"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == ("promptmoe make-synthetic: error: make_synthetic: size=5 must be an "
                                  "integer >= 32")


# ----------------------------------------------------------------- training and resuming
def test_resume_with_other_data_names_both(synth, tmp_path, capsys):
    data, _ = synth
    out = tmp_path / "r"
    assert main(["train", "--data", str(data / "seen"), "--out", str(out), *TRAIN]) == 0
    code, first, _ = run_cli(["train", "--data", data / "seen", "--out", out, "--resume", *TRAIN[:-1]], capsys)
    assert code == 2 and "cannot resume" in first
    assert "categories=brick,nut'" in first and "categories=brick'" in first
    code, first, _ = run_cli(["train", "--data", data / "unseen", "--dataset", "synthetic", "--out", out,
                              "--resume", "--preset", "tiny", "--epochs", "2", "--categories", "pill"], capsys)
    assert code == 2 and str(data / "seen") in first and str(data / "unseen") in first


def test_torn_log_row_is_dropped_and_resume_stays_bit_identical(synth, tmp_path, capsys):
    data, _ = synth
    two = [a if a != "1" else "2" for a in TRAIN]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", "--data", str(data / "seen"), "--out", str(straight), *two]) == 0
    assert main(["train", "--data", str(data / "seen"), "--out", str(split), *TRAIN]) == 0
    log = split / "train_log.csv"
    log.write_bytes(log.read_bytes() + b"5,2,0.00")  # killed while writing a row of epoch 2
    assert main(["train", "--data", str(data / "seen"), "--out", str(split), "--resume", *two]) == 0
    assert log.read_bytes() == (straight / "train_log.csv").read_bytes()
    from safetensors.torch import load_file
    a, b = load_file(str(straight / "checkpoint.safetensors")), load_file(str(split / "checkpoint.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_torn_row_inside_the_checkpointed_steps_is_not_kept(tmp_path):
    from promptmoe.train import _trim_log
    log = tmp_path / "train_log.csv"
    header = "step,epoch,lr,total,focal,dice,bce,balance,decouple\n"
    rows = "".join(f"{i},1,0.001,{i}.5,1,1,1,0,0\n" for i in range(3))
    log.write_bytes((header + rows + "1").encode())  # the torn row's step "1" is inside the kept 3
    _trim_log(log, 3)
    assert log.read_bytes() == (header + rows).encode()
    log.write_bytes((header + rows + "3,2,0.001,x,1,1,1,0,0\n").encode())  # a garbled row: dropped
    _trim_log(log, 9)
    assert log.read_bytes() == (header + rows).encode()


def test_training_on_anomalous_images_without_masks_is_an_error(tmp_path, capsys):
    for i in range(2):
        _image(tmp_path / "d" / "good" / f"g{i}.png", (64, 64), seed=i)
        _image(tmp_path / "d" / "bad" / f"b{i}.png", (64, 64), seed=10 + i)
    with pytest.warns(UserWarning, match="2 of 2 anomalous images have no mask"):
        code, first, err = run_cli(["train", "--data", tmp_path / "d", "--dataset", "folder", "--out",
                                    tmp_path / "o", "--preset", "tiny", "--epochs", "1"], capsys)
    assert code == 2 and "2 anomalous training images have no mask" in first and "b0.png" in first, err
    assert not (tmp_path / "o" / "checkpoint.safetensors").exists()


def test_written_files_get_normal_permissions(synth, tmp_path):
    from promptmoe.checkpoint import atomic_write, umask_mode
    path = tmp_path / "x.txt"
    atomic_write(path, lambda tmp: open(tmp, "w").write("x"))
    old = os.umask(0o022)
    try:
        assert umask_mode() == 0o644
        atomic_write(tmp_path / "y.txt", lambda tmp: open(tmp, "w").write("y"))
        assert (tmp_path / "y.txt").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write(tmp_path / "z.txt", lambda tmp: open(tmp, "w").write("z"))
        assert (tmp_path / "z.txt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    _, ckpt = synth
    assert ckpt.stat().st_mode & 0o777 == umask_mode()
