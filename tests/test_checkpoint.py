import pytest
import torch

from promptmoe.checkpoint import (CheckpointError, atomic_write, config_differences, load_into,
                                  read_checkpoint, save_checkpoint)
from promptmoe.config import PromptMoEConfig
from promptmoe.model import build_model


def test_round_trip_keeps_only_trainable_tensors(tmp_path, device):
    model = build_model(PromptMoEConfig.tiny(), device=device)
    path = save_checkpoint(tmp_path / "c.safetensors", model, model.config, meta={"epoch": 3})
    cfg, tensors, meta = read_checkpoint(path)
    assert cfg == model.config and meta == {"epoch": 3}
    assert {k[6:] for k in tensors} == set(model.trainable_state_dict())
    other = build_model(PromptMoEConfig.tiny(seed=5), device=device)
    load_into(other, tensors)
    for k, v in model.trainable_state_dict().items():
        assert torch.equal(other.trainable_state_dict()[k], v)


def test_another_architecture_is_refused(tmp_path, device):
    model = build_model(PromptMoEConfig.tiny(), device=device)
    path = save_checkpoint(tmp_path / "c.safetensors", model, model.config)
    _, tensors, _ = read_checkpoint(path)
    with pytest.raises(CheckpointError, match="another configuration"):
        load_into(build_model(PromptMoEConfig.tiny(n_experts=4, top_k=2), device=device), tensors,
                  path)
    assert config_differences(PromptMoEConfig.tiny(), PromptMoEConfig.tiny(top_k=2)) == {"top_k": (4, 2)}


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.safetensors is not a readable"):
        read_checkpoint(junk)


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "report.csv"
    target.write_text("old")

    def broken(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.csv"]
