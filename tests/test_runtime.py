import random

import numpy as np
import pytest
import torch

from promptmoe import runtime


def test_preset_from_environment(monkeypatch):
    monkeypatch.setenv("PROMPTMOE_PRESET", "small")
    assert runtime.default_preset() == "small"
    monkeypatch.setenv("PROMPTMOE_PRESET", "bogus")
    with pytest.raises(ValueError, match="PROMPTMOE_PRESET"):
        runtime.default_preset()


def test_offline_cpu_gives_micro(monkeypatch):
    monkeypatch.delenv("PROMPTMOE_PRESET", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.default_preset() == "micro" and runtime.is_quick("micro")
    assert runtime.is_quick("tiny") and not runtime.is_quick("small")
    assert "pretrained by this project" in runtime.preset_note("micro")
    assert runtime.preset_note("paper") == ""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.default_preset() == "paper"


def test_set_seed_repeats_every_generator():
    runtime.set_seed(3)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    runtime.set_seed(3)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())


@pytest.mark.device_rule
def test_get_device_rule(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.get_device() == torch.device("cpu") == runtime.get_device("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.get_device() == torch.device("cuda") == runtime.get_device("auto")
    # an explicit device always wins over the rule
    assert runtime.get_device("cpu") == torch.device("cpu")
    assert runtime.get_device(torch.device("meta")) == torch.device("meta")
    assert runtime.get_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="'gpu0'"):
        runtime.get_device("gpu0")
