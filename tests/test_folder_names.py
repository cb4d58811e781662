"""A reader's own folders by any name (issue 16): ``--normal-dir`` / ``--abnormal-dir``.

Fixtures are shaped like real sets and as unkind: the Magnetic-tile set (``MT_Free/Imgs/x.jpg`` +
``x.png`` mask beside, grayscale JPEGs of odd sizes, the defect-free masks all zero), an ``OK``/``NG``
set with JPEG masks (ringing) and PNG ones, and a BrainMRI-like ``yes``/``no`` set without masks
(``no`` is normal). Image metrics are checked against values computed by hand for a stub model
whose score is the image's brightness. The CLI runs the tiny preset (random CLIP: plumbing only).
"""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from promptmoe.cli import main
from promptmoe.data import DatasetError, load_dataset
from promptmoe.data.folder import parse_dir_names
from promptmoe.evaluate import evaluate

# Gray levels: the stub model's image score is the brightness, so the image metrics are known.
# normal 40, 80, 160; anomalous 120, 200 (blowhole), 220, 60 (crack). Of the 4 x 3 pairs, an
# anomalous image outscores a normal one in 2 + 3 + 3 + 1 = 9: AUROC = 9/12. Ranked high to low,
# 220 A, 200 A, 160 N, 120 A, 80 N, 60 A, 40 N: precision at each anomaly 1, 1, 3/4, 4/6.
MTD_LEVELS = {"MT_Free": (40, 80, 160), "MT_Blowhole": (120, 200), "MT_Crack": (220, 60)}
AUROC = 9 / 12
AP = (1 + 1 + 3 / 4 + 4 / 6) / 4
SIZES = [(217, 191), (333, 517), (190, 250)]  # (W, H): odd, portrait and landscape


def _gray(path, size, level, seed, mode="L", quality=90):
    """A JPEG (or PNG) of one gray level plus noise, in ``mode`` (L: as MTD's own images)."""
    w, h = size
    rng = np.random.default_rng(seed)
    arr = np.clip(level + rng.integers(-8, 9, (h, w)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr).convert(mode)
    img.save(path, **({"quality": quality} if path.suffix == ".jpg" else {}))
    return path


def _mask(path, size, box=True, quality=None):
    """A 0/255 mask (a block in the middle, or empty); JPEG when ``quality`` is given (ringing)."""
    w, h = size
    arr = np.zeros((h, w), np.uint8)
    if box:
        arr[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **({"quality": quality} if quality else {}))
    return path


def make_mtd(root: Path) -> Path:
    """MTD-shaped: {MT_Free, MT_Blowhole, MT_Crack}/Imgs/exp1_num_N.jpg + exp1_num_N.png beside."""
    k = 0
    for cls, levels in MTD_LEVELS.items():
        for level in levels:
            size = SIZES[k % len(SIZES)]
            mode = "RGB" if cls == "MT_Crack" and level == 60 else "L"  # one colour JPEG among gray ones
            _gray(root / cls / "Imgs" / f"exp1_num_{k}.jpg", size, level, k, mode)
            _mask(root / cls / "Imgs" / f"exp1_num_{k}.png", size, box=cls != "MT_Free")  # MT_Free: all zero
            k += 1
    return root


def make_ok_ng(root: Path) -> Path:
    """OK/ (3) and NG/ (3) with masks beside: two JPEG masks (ringing) and one PNG."""
    for i in range(3):
        _gray(root / "OK" / f"ok_{i}.jpg", SIZES[i], 60 + 20 * i, i)
        _gray(root / "NG" / f"ng_{i}.jpg", SIZES[i], 150 + 20 * i, 10 + i, mode="RGB")
        _mask(root / "NG" / f"ng_{i}_mask.{'png' if i == 0 else 'jpg'}", SIZES[i], quality=None if i == 0 else 75)
    return root


def make_yes_no(root: Path) -> Path:
    """BrainMRI-style: no/ (normal) and yes/ (tumour) JPEGs, grayscale, no masks."""
    for i in range(3):
        _gray(root / "no" / f"N{i + 1}.jpg", SIZES[i], 50 + 10 * i, i)
        _gray(root / "yes" / f"Y{i + 1}.jpg", SIZES[2 - i], 150 + 10 * i, 20 + i)
    return root


def counts(ds):
    return {cat: (c["normal"], c["anomalous"], c["with_mask"]) for cat, c in ds.counts().items()}


def labels_by_folder(ds):
    return {Path(r.image_path).parent.parent.name if Path(r.image_path).parent.name == "Imgs"
            else Path(r.image_path).parent.name: r.gt_label for r in ds.records}


@pytest.fixture(scope="module")
def mtd(tmp_path_factory):
    return make_mtd(tmp_path_factory.mktemp("data") / "MTD")


# ---------------------------------------------------------------- names
def test_names_are_folder_names_or_paths_inside_the_data():
    assert parse_dir_names(None, "x") is None
    assert parse_dir_names("MT_Free", "x") == (("mt_free",),)  # one name, not its letters
    assert parse_dir_names(["MT_Free/", "./ok", "MT_Free", "MT_Free/Imgs"], "x") == (
        ("mt_free",), ("ok",), ("mt_free", "imgs"))
    for bad in ("/data/MTD/MT_Free", "~/MTD/MT_Free", "../MT_Free", "", "/"):
        with pytest.raises(DatasetError, match=r"--normal-dir .*give a folder's name as it appears under"):
            parse_dir_names(bad, "--normal-dir")


# ---------------------------------------------------------------- the Magnetic-tile layout
def test_mtd_without_normal_dir_says_so_and_names_the_likely_folder(mtd):
    with pytest.warns(UserWarning) as rec:
        ds = load_dataset("folder", mtd, 16, verbose=False, mask_suffix=".png", label="mtd")
    assert counts(ds) == {"MTD": (0, 7, 7)}
    hints = [str(w.message) for w in rec if "0 normal images" in str(w.message)]
    assert hints == ["mtd: 0 normal images, so image AUROC and AP are undefined: only folders named good, normal, ok count as normal (found: "
                     "MT_Blowhole/ 2, MT_Crack/ 2, MT_Free/ 3); name the defect-free folder with "
                     "--normal-dir NAME (Python: normal_dirs=[NAME]); probably --normal-dir MT_Free "
                     "(all 3 masks in MT_Free/ are empty)"]


@pytest.mark.parametrize("names", ["MT_Free", ["mt_free/"], ["MT_Free/Imgs"], ("MT_FREE", "good")])
def test_mtd_with_normal_dir_counts_right_and_warns_nothing(mtd, names):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every defect has its mask, the normal folder is named
        ds = load_dataset("folder", mtd, 16, verbose=False, mask_suffix=".png", normal_dirs=names)
    assert counts(ds) == {"MTD": (3, 4, 4)}  # the Imgs level is neither a category nor a label
    assert labels_by_folder(ds) == {"MT_Free": 0, "MT_Blowhole": 1, "MT_Crack": 1}
    assert all(r.mask_path is None for r in ds.records if r.gt_label == 0)  # normal: no mask read
    assert ds.check() == 7  # every mask matches its odd-sized image


def test_mtd_normal_dir_that_matches_everything_says_so(mtd):
    with pytest.warns(UserWarning, match=r"0 anomalous images: all 7 labelled images lie under a normal "
                      r"folder \(imgs; .*check --normal-dir \(a name matches at any depth\)"):
        ds = load_dataset("folder", mtd, 16, verbose=False, mask_suffix=".png", normal_dirs="Imgs")
    # each MT_* folder now holds a "normal" folder, so each is a category (the category rule)
    assert counts(ds) == {"MT_Blowhole": (2, 0, 0), "MT_Crack": (2, 0, 0), "MT_Free": (3, 0, 0)}


def test_mtd_abnormal_dir_leaves_out_folders_named_by_neither(mtd):
    with pytest.warns(UserWarning, match=r"left out 2 images in folders named by neither --normal-dir "
                      r"\(mt_free\) nor --abnormal-dir \(mt_blowhole\): MT_Crack/Imgs/ \(2\)"):
        ds = load_dataset("folder", mtd, 16, verbose=False, mask_suffix=".png", normal_dirs="MT_Free",
                          abnormal_dirs=["MT_Blowhole"])
    assert counts(ds) == {"MTD": (3, 2, 2)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both named: nothing left out
        ds = load_dataset("folder", mtd, 16, verbose=False, mask_suffix=".png", normal_dirs="MT_Free",
                          abnormal_dirs=["MT_Blowhole", "mt_crack"])
    assert counts(ds) == {"MTD": (3, 4, 4)}
    with pytest.raises(DatasetError, match=r"exp1_num_\d.jpg lies under a normal folder \(mt_free\) and an "
                       r"abnormal one \(imgs\)"):
        load_dataset("folder", mtd, 16, verbose=False, mask_suffix=".png", normal_dirs="MT_Free",
                     abnormal_dirs="Imgs")


def test_a_defect_folder_whose_masks_are_all_empty_is_named_with_the_whole_fix(tmp_path):
    root = make_mtd(tmp_path / "MTD")
    _gray(root / "good" / "g.jpg", (64, 48), 90, 99)
    with pytest.warns(UserWarning) as rec:
        load_dataset("folder", root, 16, verbose=False, mask_suffix=".png", label="mtd")
    hints = [str(w.message) for w in rec if "are empty" in str(w.message)]
    assert hints == ["mtd: all 3 masks in MT_Free/ are empty, so its anomalous images have no defect pixels: "
                     "it is probably a defect-free folder; pass --normal-dir good --normal-dir MT_Free"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # following the hint: no warning left
        ds = load_dataset("folder", root, 16, verbose=False, mask_suffix=".png", normal_dirs=["good", "MT_Free"])
    assert counts(ds) == {"MTD": (4, 4, 4)}


# ---------------------------------------------------------------- OK / NG and yes / no
def test_ok_ng_is_read_by_default_and_by_name(tmp_path):
    root = make_ok_ng(tmp_path / "parts")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_default = load_dataset("folder", root, 16, verbose=False)  # OK = ok: case is ignored
        by_name = load_dataset("folder", root, 16, verbose=False, normal_dirs="OK", abnormal_dirs="NG")
    assert counts(by_default) == counts(by_name) == {"parts": (3, 3, 3)}
    assert by_default.records == by_name.records
    assert by_default.check() == 6
    # the JPEG masks keep their drawn block: > 127, not the ringing around it (> 0)
    for r in by_default.records:
        if r.mask_path:
            w, h = Image.open(r.image_path).size
            from promptmoe.data import load_mask
            assert load_mask(r.mask_path).sum() == (2 * h // 3 - h // 3) * (2 * w // 3 - w // 3)


def test_abnormal_dir_alone_keeps_the_default_normal_names(tmp_path):
    root = make_ok_ng(tmp_path / "parts")
    _gray(root / "Unsure" / "u.jpg", (40, 30), 120, 7)
    with pytest.warns(UserWarning, match=r"1 of 4 anomalous images have no mask \(.*u.jpg\)"):
        assert counts(load_dataset("folder", root, 16, verbose=False)) == {"parts": (3, 4, 3)}  # any other folder
    with pytest.warns(UserWarning, match=r"left out 1 images in folders named by neither --normal-dir \(good, "
                      r"normal, ok\) nor --abnormal-dir \(ng\): Unsure/ \(1\)"):
        ds = load_dataset("folder", root, 16, verbose=False, abnormal_dirs="NG")
    assert counts(ds) == {"parts": (3, 3, 3)}


def test_yes_no_needs_the_normal_dir_named(tmp_path):
    root = make_yes_no(tmp_path / "brain")
    with pytest.warns(UserWarning) as rec:
        ds = load_dataset("folder", root, 16, verbose=False, label="brain")
    assert counts(ds) == {"brain": (0, 6, 0)}
    assert ("brain: 0 normal images, so image AUROC and AP are undefined: only folders named good, normal, ok count as normal (found: no/ 3, "
            "yes/ 3); name the defect-free folder with --normal-dir NAME (Python: normal_dirs=[NAME])"
            ) in [str(w.message) for w in rec]
    with pytest.warns(UserWarning, match=r"brain: 3 of 3 anomalous images have no mask") as rec:
        ds = load_dataset("folder", root, 16, verbose=False, label="brain", normal_dirs="no")
    assert counts(ds) == {"brain": (3, 3, 0)} and len(rec) == 1  # the only warning: image-level data


def test_named_normal_folders_also_find_categories(tmp_path):
    for cat in ("tile_a", "tile_b"):
        make_yes_no(tmp_path / "r" / cat)
    with pytest.warns(UserWarning, match="have no mask"):
        ds = load_dataset("folder", tmp_path / "r", 16, verbose=False, normal_dirs="no")
    assert counts(ds) == {"tile_a": (3, 3, 0), "tile_b": (3, 3, 0)}


def test_other_formats_refuse_the_names(tmp_path):
    make_yes_no(tmp_path / "brain")
    with pytest.raises(DatasetError, match="mvtec: normal_dirs only apply to the folder format"):
        load_dataset("mvtec", tmp_path / "brain", 16, normal_dirs="no")


# ---------------------------------------------------------------- metrics, by hand
class Brightness(torch.nn.Module):
    """A stub detector: score = mean brightness of the (normalised) image, map = brightness per pixel."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):  # (B, 3, S, S)
        amap = x.mean(1) * self.w  # (B, S, S)
        return {"pred_score": amap.mean((1, 2)), "anomaly_map": amap, "routing": {}}


def test_image_metrics_of_the_mtd_set_equal_the_hand_computed_ones(mtd):
    ds = load_dataset("folder", mtd, 32, verbose=False, mask_suffix=".png", normal_dirs="MT_Free", label="mtd")
    rep = evaluate(Brightness(), {"mtd": ds}, progress=False, compat=False, keep_predictions=True)
    row = rep.per_category.iloc[0]
    assert (row.n_images, row.n_anomalous, row.n_no_mask, row.n_empty_mask) == (7, 4, 0, 0)
    assert row.image_auroc == pytest.approx(AUROC) and row.image_ap == pytest.approx(AP)
    pred = rep.predictions["mtd/MTD"]
    assert roc_auc_score(pred.labels, pred.scores) == pytest.approx(AUROC)  # the reference agrees
    assert average_precision_score(pred.labels, pred.scores) == pytest.approx(AP)
    assert np.isfinite(row.pixel_auroc)
    with pytest.warns(UserWarning, match="0 normal images"):
        wrong = load_dataset("folder", mtd, 32, verbose=False, mask_suffix=".png")
    with pytest.warns(UserWarning, match="empty mask"):
        rep = evaluate(Brightness(), {"mtd": wrong}, progress=False, compat=False)
    assert np.isnan(rep.per_category.iloc[0].image_auroc)  # what the issue saw: one class only


# ---------------------------------------------------------------- the command line (tiny preset)
def run_cli(argv, capsys):
    capsys.readouterr()
    argv = [str(a) for a in argv]
    if argv[0] in ("train", "eval", "predict") and "--device" not in argv:
        argv += ["--device", "cpu"]  # the tests state their device (the default is CUDA on a GPU)
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("promptmoe ") and ": error: " in line]
    return code, (errors or [""])[0], err


@pytest.fixture(scope="module")
def ckpt(mtd, tmp_path_factory):
    """A 1-epoch tiny checkpoint trained on the MTD-shaped set (train takes the flags too)."""
    out = tmp_path_factory.mktemp("run")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # named right: no hint
        assert main(["train", "--data", str(mtd), "--dataset", "folder", "--mask-suffix", ".png",
                     "--normal-dir", "MT_Free", "--out", str(out), "--preset", "tiny", "--epochs", "1",
                     "--device", "cpu"]) == 0
    return out / "checkpoint.safetensors"


def test_cli_eval_with_normal_dir_counts_right_and_matches_sklearn(mtd, ckpt, tmp_path, capsys):
    out = tmp_path / "e"
    code, first, err = run_cli(["eval", "--checkpoint", ckpt, "--data", f"mtd=folder:{mtd}", "--mask-suffix",
                                ".png", "--normal-dir", "MT_Free", "--out", out, "--save-maps",
                                "--no-compat"], capsys)
    assert code == 0, err
    row = pd.read_csv(out / "per_category.csv").iloc[0]
    assert (row.n_images, row.n_anomalous, row.n_no_mask) == (7, 4, 0)
    saved = np.load(out / "maps" / "mtd" / "MTD.npz")
    truth = [0 if "MT_Free" in p else 1 for p in saved["paths"]]
    assert saved["labels"].tolist() == truth
    assert row.image_auroc == pytest.approx(roc_auc_score(truth, saved["scores"]), abs=1e-6)
    assert row.image_ap == pytest.approx(average_precision_score(truth, saved["scores"]), abs=1e-6)


def test_cli_eval_without_normal_dir_says_so_before_any_model_work(mtd, ckpt, tmp_path, capsys, monkeypatch):
    import promptmoe.checkpoint as checkpoint

    seen = []

    def load_model(*a, **k):  # the hint must already be out when the model is built
        seen.extend(str(w.message) for w in rec)
        raise RuntimeError("model built")

    monkeypatch.setattr(checkpoint, "load_model", load_model)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        code, first, err = run_cli(["eval", "--checkpoint", ckpt, "--data", f"mtd=folder:{mtd}", "--mask-suffix",
                                    ".png", "--out", tmp_path / "e"], capsys)
    assert code == 1 and "model built" in first
    assert any(m.startswith("mtd: 0 normal images") and "--normal-dir MT_Free" in m for m in seen), seen


def test_cli_warnings_are_one_line_each(mtd, ckpt, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-m", "promptmoe", "eval", "--checkpoint", str(ckpt), "--data",
                          f"mtd=folder:{mtd}", "--mask-suffix", ".png", "--out", str(tmp_path / "e"),
                          "--no-compat"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    hint = [i for i, line in enumerate(lines) if line.startswith("promptmoe eval: warning: mtd: 0 normal images")]
    assert len(hint) == 1 and "UserWarning" not in run.stderr
    assert "probably --normal-dir MT_Free" in lines[hint[0]]


@pytest.mark.parametrize("argv, message", [
    (["--normal-dir", "{mtd}/MT_Free"], "--normal-dir '{mtd}/MT_Free': give a folder's name"),
    (["--abnormal-dir", "../x"], "--abnormal-dir '../x'"),
])
def test_cli_names_that_are_paths_on_disk_are_refused(mtd, ckpt, tmp_path, capsys, argv, message):
    argv = [a.format(mtd=mtd) for a in argv]
    code, first, err = run_cli(["eval", "--checkpoint", ckpt, "--data", f"mtd=folder:{mtd}", "--out",
                                tmp_path / "e", *argv], capsys)
    assert code == 2 and message.format(mtd=mtd) in first, err


def test_cli_names_only_apply_to_the_folder_format(ckpt, tmp_path, capsys):
    make_yes_no(tmp_path / "brain")
    code, first, _ = run_cli(["eval", "--checkpoint", ckpt, "--data", f"brainmri={tmp_path / 'brain'}",
                              "--normal-dir", "no", "--out", tmp_path / "e"], capsys)
    assert code == 2 and "--normal-dir only apply to folder-format data" in first


def test_unlabelled_images_are_one_line_errors_for_train_and_eval(ckpt, tmp_path, capsys, monkeypatch):
    for i in range(3):
        _gray(tmp_path / "loose" / f"a{i}.jpg", SIZES[i], 100, i)
    code, first, err = run_cli(["train", "--data", tmp_path / "loose", "--dataset", "folder", "--out",
                                tmp_path / "o", "--preset", "tiny", "--epochs", "1"], capsys)
    assert code == 2 and not (tmp_path / "o" / "checkpoint.safetensors").exists()
    assert first.startswith("promptmoe train: error: folder: 3 of 3 images have no label (")
    assert "training needs each image in a folder that says its label" in first and "with a mask each" in first
    import promptmoe.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: pytest.fail("model built"))
    code, first, _ = run_cli(["eval", "--checkpoint", ckpt, "--data", f"mine=folder:{tmp_path / 'loose'}",
                              "--out", tmp_path / "e"], capsys)
    assert code == 2 and "mine: 3 of 3 images have no label" in first and "evaluation needs" in first


def test_predict_scores_an_mtd_folder(mtd, ckpt, tmp_path, capsys):
    code, first, _ = run_cli(["predict", mtd, "--checkpoint", ckpt, "--out", tmp_path / "p"], capsys)
    assert code == 2 and "share a stem" in first and "--mask-suffix .png" in first
    assert main(["predict", str(mtd), "--checkpoint", str(ckpt), "--mask-suffix", ".png",
                 "--out", str(tmp_path / "p"), "--device", "cpu"]) == 0
    scores = pd.read_csv(tmp_path / "p" / "scores.csv")
    assert len(scores) == 7 and all(p.endswith(".jpg") for p in scores.image_path)  # masks are not inputs
    sizes = {f"exp1_num_{k}.jpg": list(SIZES[k % len(SIZES)]) for k in range(7)}
    assert {Path(p).name: [w, h] for p, w, h in zip(scores.image_path, scores.width, scores.height)} == sizes
