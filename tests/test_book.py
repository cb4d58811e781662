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


def test_chapter_setup_follows_the_device_rule(monkeypatch, capsys):
    monkeypatch.setenv("PROMPTMOE_PRESET", "tiny")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert book.chapter_setup().device == torch.device("cuda")
    assert book.chapter_setup(device="cpu").device == torch.device("cpu")  # explicit wins
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert book.chapter_setup().device == torch.device("cpu")
    assert "device: cpu" in capsys.readouterr().out
