"""One place that decides where and how the code runs: preset, device, seed.

Taught in chapter 1. Chapters call :func:`default_preset` and never hard-code a preset:
``PROMPTMOE_PRESET`` wins; otherwise a GPU gives ``paper``, a CPU that can reach (or has cached)
the OpenAI weights gives ``small``, and an offline CPU gives ``micro`` (quick mode: the micro CLIP
this project pretrained on synthetic images, shipped in the package; ``tiny``, a random CLIP, is
for fast unit tests).
"""
from __future__ import annotations

import os
import random
import socket

import numpy as np
import torch

from .config import PRESETS

PRESET_ENV = "PROMPTMOE_PRESET"


def _weights_reachable(host: str = "huggingface.co", timeout: float = 1.5) -> bool:
    """True when the hub answers quickly; never tried when HF_HUB_OFFLINE is set."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def default_preset() -> str:
    """Preset for this machine: environment first, then GPU -> paper, online CPU -> small, else micro."""
    env = os.environ.get(PRESET_ENV, "").strip().lower()
    if env:
        if env not in PRESETS:
            raise ValueError(f"{PRESET_ENV}={env!r}: choose one of {PRESETS}")
        return env
    if torch.cuda.is_available():
        return "paper"
    return "small" if _weights_reachable() else "micro"


# What the numbers of an offline preset are, said wherever they are shown (plots, reports, CLI).
PRESET_NOTES = {
    "micro": "micro CLIP pretrained by this project on synthetic images: an offline stand-in, "
             "not the paper's setting",
    "tiny": "random CLIP, quick mode — plumbing, not a result",
}


def preset_note(preset: str) -> str:
    """One line on what a preset's numbers are ("" for the paper's backbones)."""
    return PRESET_NOTES.get(preset, "")


def is_quick(preset: str) -> bool:
    """Quick mode = an offline CLIP (micro, or the random tiny) on synthetic data, in minutes on a
    CPU: the method at work on a stand-in backbone (micro) or plumbing (tiny), never the paper's
    numbers."""
    return preset in ("micro", "tiny")


def get_device(device=None, verbose: bool = False) -> torch.device:
    """The one device rule of the package and CLI: an explicit ``device`` wins, else CUDA when
    present, else CPU (on Colab without a GPU, ``verbose`` says how to get one).

    Args:
        device: ``None``/``"auto"`` for the rule, or anything ``torch.device`` accepts
            (``"cpu"``, ``"cuda:1"``, ``"meta"``, a ``torch.device``).
    """
    if device is not None and str(device) != "auto":
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device={device!r} is not a device torch knows (try 'cpu', "
                             "'cuda' or 'auto')") from err
    if torch.cuda.is_available():
        return torch.device("cuda")
    if verbose:
        msg = "No GPU found: running on the CPU."
        if "COLAB_RELEASE_TAG" in os.environ or "COLAB_GPU" in os.environ:
            msg += " On Colab choose Runtime > Change runtime type > T4 GPU, then rerun."
        print(msg)
    return torch.device("cpu")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
