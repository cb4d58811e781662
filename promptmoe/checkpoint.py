"""Checkpoints: only the trainable tensors (and Adam's state) plus the config, in safetensors,
written atomically so an interruption never leaves a half-written file.

Taught in chapter 5.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import PromptMoEConfig

FORMAT = "promptmoe-checkpoint-v1"
# fields that may differ when resuming (more epochs, another precision or determinism; another
# seed for a new run is not resuming)
RESUMABLE_CHANGES = ("epochs", "precision", "deterministic")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for what was asked; the message says why."""


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` with the process umask applied: what ``open()`` would give a new file (0644 usually)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` (same folder, so the rename is atomic).

    The file gets the permissions a plain ``open()`` would give it (umask applied, usually 0644),
    not ``mkstemp``'s private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(path, model, config: PromptMoEConfig, optimizer=None,
                    meta: Optional[Dict[str, object]] = None) -> Path:
    """Write trainable parameters (+ optimizer state) and the config to ``path`` atomically."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
        for group in optimizer.param_groups:
            for p in group["params"]:
                for key, value in optimizer.state.get(p, {}).items():
                    t = value if torch.is_tensor(value) else torch.tensor(value)
                    tensors[f"optim.{names[id(p)]}.{key}"] = t.detach().cpu().contiguous()
    metadata = {"format": FORMAT, "config": json.dumps(config.to_dict())}
    metadata.update({k: json.dumps(v) for k, v in (meta or {}).items()})
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return Path(path)


def read_checkpoint(path) -> Tuple[PromptMoEConfig, Dict[str, torch.Tensor], Dict[str, object]]:
    """Return (config, tensors, meta) of a checkpoint; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # truncated or not a safetensors file
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {err}") from err
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a PromptMoE checkpoint (format={metadata.get('format')!r})")
    if "config" not in metadata:
        raise CheckpointError(f"{path}: its metadata has no 'config' entry (written by another tool?)")
    try:
        config = PromptMoEConfig.from_dict(json.loads(metadata["config"]))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: broken 'config' metadata: {err}") from err
    meta = {}
    for key, value in metadata.items():
        if key in ("format", "config"):
            continue
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: broken metadata entry {key!r}: {err}") from err
    return config, tensors, meta


def config_differences(a: PromptMoEConfig, b: PromptMoEConfig, ignore=()) -> Dict[str, tuple]:
    """{field: (a_value, b_value)} for every field that differs."""
    da, db = a.to_dict(), b.to_dict()
    return {k: (da[k], db[k]) for k in da if k not in ignore and da[k] != db[k]}


def load_into(model, tensors: Dict[str, torch.Tensor], path="checkpoint") -> None:
    """Copy ``model.*`` tensors into the model, refusing a checkpoint of another architecture."""
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    own = model.trainable_state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or wrong:
        raise CheckpointError(
            f"{path} was saved from another configuration: missing {missing[:5]}, unexpected "
            f"{extra[:5]}, shape mismatch {wrong[:5]}")
    model.load_state_dict(state, strict=False)


def load_optimizer(optimizer, model, tensors: Dict[str, torch.Tensor]) -> None:
    """Restore Adam's per-parameter state saved by :func:`save_checkpoint`."""
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        prefix = f"optim.{name}."
        state = {k[len(prefix):]: v.to(p.device) for k, v in tensors.items() if k.startswith(prefix)}
        if state:
            if "step" in state:
                state["step"] = state["step"].float().cpu()
            optimizer.state[p] = state


def load_model(path, device=None, backbone=None):
    """Build a :class:`~promptmoe.model.PromptMoE` from a checkpoint and return (model, meta).

    The tiny preset's CLIP is random: :func:`~promptmoe.model.build_model` rebuilds it from the
    seed stored in the checkpoint, so a tiny checkpoint scores images exactly as when trained.
    ``device=None`` follows :func:`promptmoe.runtime.get_device` (CUDA when present).
    """
    from .model import PromptMoE, build_model  # local import: model imports nothing from here
    from .runtime import get_device

    config, tensors, meta = read_checkpoint(path)
    if backbone is None:
        model = build_model(config, device="cpu", clip_seed=int(meta.get("clip_seed", 0)))
    else:
        model = PromptMoE(config, backbone=backbone)
    load_into(model, tensors, path)
    return model.to(get_device(device)).eval(), meta
