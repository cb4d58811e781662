"""Training on an auxiliary dataset (the paper: the MVTec AD *test* split), REFERENCE.md D7.

Taught in chapter 5. Adam with betas (0.6, 0.999), a linear warm-up of the learning rate over the
first ``warmup_epochs``, then ``lr``; batch 16; no augmentation; seeded.

* The CLIP tower is frozen, so its features of an image never change between epochs. With
  ``cache_features`` they are computed once (15 epochs of image-tower work become one); "auto"
  caches when the cache fits in ``cache_limit_gb``.
* A checkpoint (trainable tensors + Adam state + config) is written atomically after every epoch;
  ``resume=True`` continues an interrupted run and reaches the same weights as an uninterrupted
  one (the shuffling of epoch e depends only on (seed, e)).
* Every loss term of every step goes to ``train_log.csv``; on resume, rows the checkpoint does not
  cover and a torn last row (a kill mid-write) are dropped.
* ``resume`` refuses other data than the checkpoint was trained on (its label and image count).
* Every anomalous training image needs a mask: one without is an error naming it (its pixel
  losses cannot be computed, and an all-normal target would teach the wrong thing).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .backbone import ImageFeatures
from .checkpoint import (RESUMABLE_CHANGES, CheckpointError, atomic_write, config_differences,
                         load_into, load_optimizer, read_checkpoint, save_checkpoint)
from .config import PromptMoEConfig
from .losses import total_loss
from .model import TINY_CLIP_SEED, PromptMoE, build_model
from .runtime import get_device

LOG_COLUMNS = ("step", "epoch", "lr", "total", "focal", "dice", "bce", "balance", "decouple")
CHECKPOINT_NAME = "checkpoint.safetensors"
LOG_NAME = "train_log.csv"


def learning_rate(step: int, steps_per_epoch: int, config: PromptMoEConfig) -> float:
    """Linear warm-up from lr/warmup_steps to lr over the first warm-up epochs, then constant."""
    warmup = config.warmup_epochs * steps_per_epoch
    if warmup == 0 or step >= warmup:
        return config.lr
    return config.lr * (step + 1) / warmup


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: a function of (seed, epoch) alone, for resuming."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


class FeatureCache:
    """Frozen image-tower features (+ masks and labels) of a whole dataset, computed once."""

    def __init__(self, model: PromptMoE, dataset, batch_size: int, device, dtype=torch.float32,
                 num_workers: int = 0, progress: bool = True):
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        parts, masks, labels = [], [], []
        for batch in tqdm(loader, desc="caching CLIP features", disable=not progress):
            feats = model.backbone.encode_image(batch["image"].to(device))
            parts.append(feats.to(dtype=dtype))
            masks.append(batch["gt_mask"].to(torch.uint8))
            labels.append(batch["gt_label"])
        self.features = ImageFeatures.cat(parts)
        self.masks = torch.cat(masks)
        self.labels = torch.cat(labels)

    @staticmethod
    def estimate_gb(config: PromptMoEConfig, n_images: int, grid: int, dim: int, bytes_per: int = 4) -> float:
        tokens = len(config.layers) * (grid + 1) + 1
        return n_images * (tokens * dim * bytes_per + config.image_size ** 2) / 1e9

    def batch(self, idx: torch.Tensor, device):
        feats = self.features[idx].to(device=device, dtype=torch.float32)
        return feats, self.masks[idx].to(device).float(), self.labels[idx].to(device)


@dataclass
class TrainResult:
    model: PromptMoE
    log: pd.DataFrame
    checkpoint: Path


def _check_resume(path: Path, config: PromptMoEConfig, train_data: str = "", n_images=None):
    saved, tensors, meta = read_checkpoint(path)
    diff = config_differences(saved, config, ignore=RESUMABLE_CHANGES)
    if diff:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"cannot resume from {path}: it was trained with another config ({lines})")
    before = str(meta.get("train_data") or "")
    if before and train_data and before != train_data:
        raise CheckpointError(f"cannot resume from {path}: it was trained on {before!r}, now the data "
                              f"is {train_data!r}; resume with the same data or choose another --out")
    if n_images is not None and meta.get("n_images") not in (None, n_images):
        raise CheckpointError(f"cannot resume from {path}: it was trained on {meta['n_images']} images "
                              f"of {before or 'its data'!r}, now there are {n_images}"
                              f"{' of ' + repr(train_data) if train_data else ''}")
    return tensors, meta


def _check_masks(dataset) -> None:
    """Refuse anomalous training images without a mask (named), see the module docstring."""
    missing = dataset.missing_masks() if hasattr(dataset, "missing_masks") else []
    if missing:
        shown = ", ".join(str(m) for m in missing[:5]) + (f" and {len(missing) - 5} more"
                                                         if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} anomalous training images have no mask ({shown}): training "
                         "needs a mask for every anomalous image; add the masks (--mask-dir / "
                         "--mask-suffix for the folder format) or leave those images out")


def _complete_rows(path: Path) -> list:
    """The log's lines without a torn row: a last line lacking its newline (a kill mid-write) or
    any row with missing or non-numeric fields. Lines are kept byte for byte."""
    text = Path(path).read_bytes().decode()  # bytes: keep the csv module's \r\n line ends
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    lines = text.splitlines(keepends=True)
    if not lines:
        return [",".join(LOG_COLUMNS) + "\n"]
    good = [lines[0]]
    for line in lines[1:]:
        fields = line.rstrip("\r\n").split(",")
        try:
            ok = len(fields) == len(LOG_COLUMNS) and int(fields[0]) >= 0 and all(
                isinstance(float(f), float) for f in fields)
        except ValueError:
            ok = False
        if ok:
            good.append(line)
    return good


def read_log(path: Path) -> pd.DataFrame:
    """``train_log.csv`` as a table, without a torn last row."""
    import io

    return pd.read_csv(io.StringIO("".join(_complete_rows(path))))


def _trim_log(path: Path, steps: int) -> None:
    """Keep the first ``steps`` logged steps (those covered by the checkpoint), byte for byte."""
    if path.exists():
        lines = _complete_rows(path)
        keep = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) < steps]
        atomic_write(path, lambda tmp: Path(tmp).write_bytes("".join(keep).encode()))


def train(config: PromptMoEConfig, dataset, out_dir, resume: bool = False, device=None,
          cache_features="auto", cache_limit_gb: float = 4.0, num_workers: int = 0,
          progress: bool = True, train_data: str = "", model: Optional[PromptMoE] = None) -> TrainResult:
    """Train the prompts of PromptMoE on ``dataset`` and write checkpoints and the loss log.

    Args:
        config: hyper-parameters (lr, epochs, batch size, loss weights ...).
        dataset: an :class:`~promptmoe.data.base.AnomalyDataset` (images, masks, labels).
        out_dir: folder for ``checkpoint.safetensors`` and ``train_log.csv``.
        resume: continue from ``out_dir/checkpoint.safetensors``; without it an existing
            checkpoint is an error (work is never overwritten).
        cache_features: True, False or "auto" (cache when it fits in ``cache_limit_gb``).
        train_data: a label for the data (stored in the checkpoint, shown in reports).
        model: an already built model (tests); by default :func:`~promptmoe.model.build_model`.
    """
    out_dir = Path(out_dir)
    ckpt_path, log_path = out_dir / CHECKPOINT_NAME, out_dir / LOG_NAME
    device = get_device(device)
    if ckpt_path.exists() and not resume:
        raise CheckpointError(f"{ckpt_path} exists: pass resume=True (--resume) to continue it, "
                              "or choose another output folder")
    if resume and not ckpt_path.exists():
        raise CheckpointError(f"nothing to resume: {ckpt_path} does not exist")
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    _check_masks(dataset)
    model = (model or build_model(config, device=device)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=config.betas)
    start_epoch = 0
    if resume:
        tensors, meta = _check_resume(ckpt_path, config, train_data, len(dataset))
        load_into(model, tensors, ckpt_path)
        load_optimizer(optimizer, model, tensors)
        start_epoch = int(meta["epoch"])
    n = len(dataset)
    steps_per_epoch = math.ceil(n / config.batch_size)
    _trim_log(log_path, start_epoch * steps_per_epoch)
    if cache_features == "auto":
        grid = model.backbone.grid_size[0] * model.backbone.grid_size[1]
        cache_features = FeatureCache.estimate_gb(config, n, grid, model.backbone.embed_dim) <= cache_limit_gb
    cache = None
    if cache_features and start_epoch < config.epochs:
        cache = FeatureCache(model, dataset, config.batch_size, device, num_workers=num_workers,
                             progress=progress)
    model.train()
    new_log = not log_path.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new_log:
            writer.writerow(LOG_COLUMNS)
        for epoch in range(start_epoch, config.epochs):
            order = epoch_order(n, config.seed, epoch)
            batches = order.split(config.batch_size)
            if cache is None:
                loader = DataLoader(Subset(dataset, order.tolist()), batch_size=config.batch_size,
                                    shuffle=False, num_workers=num_workers)
            bar = tqdm(range(len(batches)), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress)
            loader_iter = iter(loader) if cache is None else None
            for i in bar:
                step = epoch * steps_per_epoch + i
                if cache is not None:
                    feats, masks, labels = cache.batch(batches[i], device)
                else:
                    b = next(loader_iter)
                    feats = model.backbone.encode_image(b["image"].to(device))
                    masks, labels = b["gt_mask"].to(device).float(), b["gt_label"].to(device)
                lr = learning_rate(step, steps_per_epoch, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                out = model.forward_features(feats, out_size=tuple(masks.shape[-2:]))
                terms = total_loss(out, masks, labels, model.expert_pools(), config.alpha,
                                   config.beta, config.focal_gamma)
                optimizer.zero_grad(set_to_none=True)
                terms["total"].backward()
                optimizer.step()
                values = {k: float(v.detach()) for k, v in terms.items()}
                writer.writerow([step, epoch + 1, lr] + [values[k] for k in LOG_COLUMNS[3:]])
                bar.set_postfix(loss=f"{values['total']:.4f}")
            fh.flush()
            save_checkpoint(ckpt_path, model, config, optimizer,
                            meta={"epoch": epoch + 1, "global_step": (epoch + 1) * steps_per_epoch,
                                  "clip_seed": TINY_CLIP_SEED, "train_data": train_data,
                                  "n_images": n,
                                  "preset": config.preset})
    model.eval()
    return TrainResult(model, pd.read_csv(log_path), ckpt_path)
