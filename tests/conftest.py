"""Shared fixtures: offline, tiny random CLIP, fixed seeds, the device each test runs on.

Tests state their device. The package's own default is CUDA when present, so a test that built a
model on the default device and fed it CPU tensors passed on a CPU machine and failed on a GPU
one. ``device`` is the CPU (the claim of most tests does not depend on the device);
``each_device`` runs a test on the CPU and, where present, on CUDA: the tests whose claim is
about the device's numerics (bit-exact training with ``deterministic``, autocast tolerances).
``pytest --device-audit tests`` (tests/device_audit.py) makes the package's default device
``meta``: a test that still relies on the default fails there.
"""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an open_clip download attempt would stall
os.environ.setdefault("PROMPTMOE_PRESET", "tiny")

import pytest  # noqa: E402
import torch  # noqa: E402

from promptmoe.backbone import FrozenCLIP  # noqa: E402
from promptmoe.config import PromptMoEConfig  # noqa: E402

# The tiny model's ops are far too small to gain from threads, and on a busy 2-core machine two
# OpenMP threads made the training tests 20x slower (measured: 107 s vs 4.6 s for two files).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=CUDA)]


def pytest_addoption(parser):
    parser.addoption("--device-audit", action="store_true",
                     help="make the package's default device 'meta' (tests/device_audit.py): a "
                     "test that does not state its device fails")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "device_rule: tests of the default-device rule itself (device_audit leaves "
        "the package's default device alone for them)")
    if config.getoption("--device-audit"):
        import device_audit

        config.pluginmanager.register(device_audit, "device_audit")


@pytest.fixture()
def device():
    """The CPU, stated: the device of a test whose claim does not depend on it."""
    return torch.device("cpu")


@pytest.fixture(params=DEVICES)
def each_device(request):
    """The CPU, and CUDA where present (skipped, with the reason, where not)."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def tiny_config():
    return PromptMoEConfig.tiny()


@pytest.fixture(scope="session")
def tiny_backbone(tiny_config):
    torch.manual_seed(0)
    return FrozenCLIP(tiny_config)


@pytest.fixture()
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 64, 64, generator=g)


def _entries(folder: Path) -> set:
    return {p.name for p in folder.iterdir()} - {".pytest_cache", "__pycache__"}


@pytest.fixture(autouse=True)
def _no_files_left_in_the_working_tree():
    """Tests write under tmp_path: a file or folder one leaves in the repository root or the
    current folder (``./o`` and ``./predictions`` once appeared after ``make test``) fails it."""
    folders = {ROOT, Path.cwd()}
    before = {f: _entries(f) for f in folders}
    yield
    left = sorted(str(f / name) for f in folders for name in _entries(f) - before[f])
    assert not left, f"this test left {left} in the working tree: write under tmp_path"
