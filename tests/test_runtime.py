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


def test_offline_cpu_gives_tiny(monkeypatch):
    monkeypatch.delenv("PROMPTMOE_PRESET", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.default_preset() == "tiny" and runtime.is_quick("tiny")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.default_preset() == "paper"


def test_set_seed_repeats_every_generator():
    runtime.set_seed(3)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    runtime.set_seed(3)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())
