"""Opt-in pytest plugin (``--device-audit``) that finds tests relying on the default device.

    HF_HUB_OFFLINE=1 PROMPTMOE_PRESET=tiny python -m pytest --device-audit tests

makes :func:`promptmoe.runtime.get_device` answer ``meta`` when no device is given (as it answers
``cuda`` on a GPU machine). A test that builds a model, trains or scores without stating its
device then mixes meta weights with CPU tensors and fails here, as it would mix CUDA weights with
CPU tensors on a GPU machine. Tests of the device rule itself carry ``@pytest.mark.device_rule``
and keep the real rule. Subprocesses (the CLI run as a program, torchrun) are not affected.
"""
import pytest
import torch


@pytest.fixture(autouse=True)
def _default_device_is_meta(request, monkeypatch):
    if request.node.get_closest_marker("device_rule"):
        return
    import promptmoe
    import promptmoe.book
    import promptmoe.model
    import promptmoe.runtime as runtime
    import promptmoe.train

    real = runtime.get_device

    def meta_by_default(device=None, verbose=False):
        if device is None or str(device) == "auto":
            return torch.device("meta")
        return real(device, verbose)

    for module in (runtime, promptmoe, promptmoe.book, promptmoe.model, promptmoe.train):
        monkeypatch.setattr(module, "get_device", meta_by_default)
