import pytest
import torch

from promptmoe import book


def test_chapter_setup_says_which_preset_and_data(monkeypatch, capsys):
    monkeypatch.setenv("PROMPTMOE_PRESET", "tiny")
    ch = book.chapter_setup(seed=3)
    out = capsys.readouterr().out
    assert ch.preset == "tiny" and ch.quick and ch.config.seed == 3
    assert "preset: tiny" in out and "NOT results of the method" in out
    assert ch.label() == {"preset": "tiny", "data": ch.data}
    monkeypatch.setenv("PROMPTMOE_PRESET", "small")
    assert not book.chapter_setup().quick


def test_check_prints_and_fails_loudly(capsys):
    book.check("shape", torch.zeros(2, 3).shape, (2, 3))
    assert "shape: (2, 3)  ok" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="expected"):
        book.check("shape", (2, 3), (3, 2))
    book.check_close("same", torch.ones(3), torch.ones(3) + 1e-7)
    with pytest.raises(AssertionError):
        book.check_close("different", torch.ones(3), torch.zeros(3))


def test_data_locations_and_missing_datasets(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PROMPTMOE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("PROMPTMOE_RUNS", str(tmp_path / "runs"))
    assert book.find_dataset("visa") is None
    assert "[visa] not found" in capsys.readouterr().out
    (tmp_path / "data" / "visa" / "candle").mkdir(parents=True)
    assert book.find_dataset("visa") == tmp_path / "data" / "visa"
    d = book.fresh_dir("x")
    (d / "old.txt").write_text("1")
    assert list(book.fresh_dir("x").iterdir()) == []


@pytest.mark.device_rule
def test_chapter_setup_follows_the_device_rule(monkeypatch, capsys):
    monkeypatch.setenv("PROMPTMOE_PRESET", "tiny")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert book.chapter_setup().device == torch.device("cuda")
    assert book.chapter_setup(device="cpu").device == torch.device("cpu")  # explicit wins
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert book.chapter_setup().device == torch.device("cpu")
    assert "device: cpu" in capsys.readouterr().out


@pytest.mark.device_rule
def test_chapters_run_the_towers_in_autocast_on_a_gpu_and_fp32_on_a_cpu(monkeypatch, capsys):
    monkeypatch.setenv("PROMPTMOE_PRESET", "tiny")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ch = book.chapter_setup()
    assert ch.config.precision == "auto"  # the CLI's default: bf16 (fp16 on a T4) autocast
    assert "precision of the frozen CLIP towers: auto" in capsys.readouterr().out
    # a chapter that checks hand-written float32 code against the package asks for fp32
    assert book.chapter_setup(precision="fp32").config.precision == "fp32"
    assert book.chapter_setup(device="cpu").config.precision == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    capsys.readouterr()
    ch = book.chapter_setup()
    assert ch.config.precision == "fp32" and ch.config == book.PromptMoEConfig.tiny()  # unchanged
    assert "precision" not in capsys.readouterr().out  # CPU output as before


def test_chapters_that_compare_float32_code_ask_for_fp32():
    """Chapters 2 and 3 check hand-written float32 code against the package to 1e-5, chapter 10
    its held-out numbers against the shipped manifest's (computed in fp32): on a GPU their towers
    must not run in autocast."""
    import json
    from pathlib import Path

    book_dir = Path(__file__).resolve().parents[1] / "book"
    for name in ("02_clip_features.ipynb", "03_prompts.ipynb", "10_micro_clip.ipynb"):
        cells = json.loads((book_dir / name).read_text())["cells"]
        setup = next("".join(c["source"]) for c in cells if "chapter_setup(" in "".join(c["source"])
                     and c["cell_type"] == "code" and "ch = " in "".join(c["source"]))
        assert 'precision="fp32"' in setup, name


def test_colab_data_root_env_override_and_drive_runs(monkeypatch, tmp_path):
    for var in ("PROMPTMOE_DATA", "PROMPTMOE_RUNS", "PROMPTMOE_DRIVE", "COLAB_RELEASE_TAG", "COLAB_GPU"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert book.data_home() == tmp_path / "promptmoe_data" and book.runs_home().as_posix() == "runs"
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-x")
    assert book.on_colab() and book.data_home().as_posix() == "/content/data"
    monkeypatch.setenv("PROMPTMOE_DATA", str(tmp_path / "mine"))
    assert book.data_home() == tmp_path / "mine"  # the override wins on Colab too
    monkeypatch.setenv("PROMPTMOE_DRIVE", "1")
    assert book.runs_home().as_posix() == "/content/drive/MyDrive/promptmoe_runs"
    monkeypatch.setenv("PROMPTMOE_RUNS", str(tmp_path / "r"))
    assert book.runs_home() == tmp_path / "r"


def test_chapter_setup_data_label_for_synthetic_chapters(monkeypatch, capsys):
    monkeypatch.setenv("PROMPTMOE_PRESET", "small")
    ch = book.chapter_setup(data="synthetic images on every device")
    assert ch.data == "synthetic images on every device" and not ch.quick
    assert "data: synthetic images on every device" in capsys.readouterr().out


def test_show_table_keeps_title_with_table_and_nan_as_dash():
    import numpy as np
    import pandas as pd

    df = pd.DataFrame({"image_auroc": [91.25, np.nan]}, index=["bottle", "cable"])
    out = book.table_html(df, "Table 8 <MVTec>", precision=1)
    assert out.startswith('<div class="pm-table-block"><p class="pm-table-title">Table 8 &lt;MVTec&gt;</p>')
    assert "<td>91.2</td>" in out or "<td>91.3</td>" in out
    assert "<td>-</td>" in out and "NaN" not in out and "nan" not in out


def test_dataframes_in_a_notebook_show_nan_as_dash():
    import numpy as np
    import pandas as pd

    out = book._dataframe_html(pd.DataFrame({"au_pro": [0.5, np.nan]}))
    assert "<td>0.5</td>" in out and "<td>-</td>" in out and "NaN" not in out
    assert 'class="dataframe"' in out  # the same table pandas shows, only the missing cells differ
