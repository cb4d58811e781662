"""Ship a pretrained micro CLIP: fp16 weights the package loads offline, and their manifest.

Taught in chapter 10. The token table is 49,408 x 128 but captions use about a hundred tokens;
every other row is set to zero before saving, so git stores a few MB instead of 13. Any text a
reader writes with other words still tokenizes, but those words embed as zero vectors: the micro
CLIP only knows the vocabulary of its captions (``tests/test_microclip.py`` checks that every token
of the book's prompts is kept).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Optional

import open_clip
import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import atomic_write
from .banks import category_noun
from .captions import CaptionTable
from .pretrain import PretrainConfig

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "promptmoe-micro.safetensors"
MANIFEST_FILE = WEIGHTS_DIR / "promptmoe-micro.json"
LOG_FILE = WEIGHTS_DIR / "promptmoe-micro-log.csv"  # the run's log.csv, shipped for chapter 10
FORMAT = "promptmoe-micro-v1"


def used_token_ids(config: PretrainConfig) -> torch.Tensor:
    """Sorted ids of the tokens any pretraining caption contains."""
    tokenizer = open_clip.get_tokenizer(config.model)
    return CaptionTable([category_noun(c) for c in config.categories], tokenizer).used_token_ids()


def export_weights(checkpoint, weights_file=WEIGHTS_FILE, manifest: Optional[Dict] = None) -> Path:
    """Write the CLIP of a pretraining checkpoint as fp16 safetensors (unused token rows zeroed)
    and, beside it, ``<name>.json`` = ``manifest`` + the run's config, steps, samples, sha256,
    and ``<name>-log.csv``, the run's log (when the checkpoint's folder has one)."""
    blob = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = PretrainConfig(**blob["config"])
    state = {k: v.detach().clone() for k, v in blob["model"].items()}
    table = state["token_embedding.weight"]  # (V, W)
    keep = torch.zeros(len(table), dtype=torch.bool)
    keep[used_token_ids(config)] = True
    table[~keep] = 0
    tensors = {k: v.to(torch.float16).contiguous() for k, v in state.items()}
    weights_file = Path(weights_file)
    atomic_write(weights_file, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    info = {**(manifest or {}), "format": FORMAT, "pretrain_config": blob["config"],
            "steps": blob["step"], "samples_seen": blob["samples"],
            "minutes": round(blob["seconds"] / 60, 1), "kept_token_rows": int(keep.sum()),
            "sha256": hashlib.sha256(weights_file.read_bytes()).hexdigest()}
    text = json.dumps(info, indent=1, sort_keys=True)
    atomic_write(weights_file.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))
    log = Path(checkpoint).parent / "log.csv"
    if log.exists():  # the loss curve of the shipped run, beside its weights
        rows = log.read_text()
        atomic_write(weights_file.with_name(weights_file.stem + "-log.csv"),
                     lambda tmp: Path(tmp).write_text(rows))
    return weights_file


def load_weights(clip: torch.nn.Module, weights_file=WEIGHTS_FILE) -> torch.nn.Module:
    """Load shipped fp16 weights into an open_clip model built from the same config (fp32)."""
    weights_file = Path(weights_file)
    if not weights_file.exists():
        raise FileNotFoundError(f"micro CLIP weights not found at {weights_file}: reinstall the "
                                "package, or pretrain them with `promptmoe pretrain-micro`")
    state = load_file(str(weights_file))
    clip.load_state_dict({k: v.float() for k, v in state.items()})
    return clip


def read_manifest(weights_file=WEIGHTS_FILE) -> Dict:
    """The manifest beside the shipped weights (command, commit, seed, device, numbers)."""
    return json.loads(Path(weights_file).with_suffix(".json").read_text())
