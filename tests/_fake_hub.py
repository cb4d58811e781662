"""Offline stand-in for the Hugging Face hub: random CLIP weights under the repo id and file name
open_clip's pretrained table gives for a tag, so ``pretrained="openai"`` runs its real code path.

Used by tests/test_pretrained_loading.py and tests/test_parity.py (not a test module itself).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict

import open_clip
import torch
from safetensors.torch import save_file

SNAPSHOT = "0" * 40  # any commit hash: the cache only has to name one in refs/main


def hub_file(clip_model: str, tag: str):
    """(repo_id, file name) that open_clip downloads for ``clip_model`` / ``tag``."""
    hub = open_clip.get_pretrained_cfg(clip_model, tag)["hf_hub"]
    repo_id, filename = os.path.split(hub)  # the table joins both, as open_clip splits them
    if not filename or filename == open_clip.constants.HF_WEIGHTS_NAME:
        filename = open_clip.constants.HF_SAFE_WEIGHTS_NAME  # the name open_clip tries first
    return repo_id, filename


def random_openai_state_dict(clip_model: str, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random weights of the architecture at its native size, in open_clip's (= OpenAI's) layout,
    drawn from a QuickGELU model as the OpenAI checkpoints were."""
    from promptmoe.backbone import _DropRandomInitNotice

    torch.manual_seed(seed)
    quiet = _DropRandomInitNotice()
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model(clip_model, pretrained=None, force_quick_gelu=True)
    finally:
        logging.getLogger().removeFilter(quiet)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def write_weights(cache: Path, clip_model: str, tag: str, state: Dict[str, torch.Tensor]) -> Path:
    """Place ``state`` where huggingface_hub looks for the tag's weights inside ``cache``."""
    repo_id, filename = hub_file(clip_model, tag)
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    path = repo / "snapshots" / SNAPSHOT / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def use_cache(monkeypatch, cache: Path) -> None:
    """Point huggingface_hub at ``cache`` and keep it offline (its constants are read at import)."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
