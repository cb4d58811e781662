"""Training on an auxiliary dataset (the paper: the MVTec AD *test* split), REFERENCE.md D7.

Taught in chapter 5. Adam with betas (0.6, 0.999), a linear warm-up of the learning rate over the
first ``warmup_epochs``, then ``lr``; batch 16; no augmentation; seeded.

* The CLIP tower is frozen, so its features of an image never change between epochs. With
  ``cache_features`` they are computed once (15 epochs of image-tower work become one), in host
  memory or in memory-mapped files (``promptmoe/cache.py``); "auto" chooses from the size and the
  free memory and disk, and says what it chose and why.
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

import contextlib
import csv
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
from tqdm.auto import tqdm

from .backbone import ImageFeatures
from .cache import (CACHE_MODES, FeatureCache, check_fits,  # noqa: F401 (FeatureCache: book)
                    choose_cache)
from .checkpoint import (RESUMABLE_CHANGES, CheckpointError, atomic_write, config_differences,
                         load_into, load_optimizer, read_checkpoint, save_checkpoint)
from .config import PromptMoEConfig
from .data import require_labels
from . import distributed
from .loading import ChunkBatchSampler, OrderSampler, make_loader
from .losses import total_loss
from .model import TINY_CLIP_SEED, PromptMoE, build_model
from .precision import autocast_dtype, deterministic
from .runtime import get_device

LOG_COLUMNS = ("step", "epoch", "lr", "total", "focal", "dice", "bce", "balance", "decouple")
CHECKPOINT_NAME = "checkpoint.safetensors"
LOG_NAME = "train_log.csv"
CACHE_DIR_NAME = "feature_cache"
log = logging.getLogger(__name__)


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


def _build_cache(model, dataset, config, device, mode, limit_gb, folder, num_workers, progress):
    """The feature cache ``mode`` asks for (None without one); "auto" logs its choice."""
    if hasattr(mode, "batch"):  # a cache built beforehand and shared by several models (ablation)
        return check_fits(mode, config, dataset, model)
    mode = {True: "memory", False: "none"}.get(mode, mode)
    if mode not in CACHE_MODES + ("auto",):
        raise ValueError(f"cache_features={mode!r}; choose auto, memory, disk or none")
    # a tower run in half precision (precision auto/bf16/fp16 on a GPU) gets a float16 cache: half
    # the memory, and the tower's own rounding is coarser; a float32 tower keeps exact features
    dtype = torch.float16 if autocast_dtype(config.precision, device) is not None else torch.float32
    if mode == "auto":
        h, w = model.backbone.grid_size
        gb = FeatureCache.estimate_gb(config, len(dataset), h * w, model.backbone.embed_dim,
                                      bytes_per=torch.finfo(dtype).bits // 8)
        d = distributed.info()
        mode, reason = choose_cache(gb, limit_gb, folder, copies=d.world if d else 1)
        if d is not None:  # every process follows process 0's choice
            mode, reason = distributed.gather_objects((mode, reason), d)[0]
        log.info("feature cache: %s (%s)", mode, reason)
        if progress:
            print(f"feature cache: {mode} ({reason})")
    if mode == "none":
        return None
    cache = FeatureCache(model, dataset, config.batch_size, device, dtype=dtype,
                         num_workers=num_workers, progress=progress, where=mode, folder=folder)
    if cache.reused and progress:
        print(f"feature cache: reusing the complete cache in {folder}")
    return cache


def _sharded_batch(model, loader_iter, batch_idx, d, device):
    """Features, masks and labels of a whole batch, the tower run on this process's chunk."""
    sizes = [len(c) for c in torch.tensor_split(batch_idx, d.world)]
    S = model.config.image_size
    h, w = model.backbone.grid_size
    T, D, L = h * w + 1, model.backbone.embed_dim, len(model.config.layers)
    template = ImageFeatures([torch.zeros(0, T, D, device=device)] * L,
                             torch.zeros(0, D, device=device), (h, w))
    feats, masks = None, torch.zeros(0, S, S, device=device)
    labels = torch.zeros(0, dtype=torch.int64, device=device)
    if sizes[d.rank]:
        b = next(loader_iter)
        feats = model.backbone.encode_image(b["image"].to(device, non_blocking=True))
        masks = b["gt_mask"].to(device, non_blocking=True).float()
        labels = b["gt_label"].to(device)
    feats, masks, labels = distributed.gather_batch(feats, masks, labels, sizes, template, d)
    return feats, masks, labels.long()


def train(config: PromptMoEConfig, dataset, out_dir, resume: bool = False, device=None,
          cache_features="auto", cache_limit_gb: float = 4.0, num_workers: Optional[int] = None,
          progress: bool = True, train_data: str = "", model: Optional[PromptMoE] = None,
          cache_dir=None) -> TrainResult:
    """Train the prompts of PromptMoE on ``dataset`` and write checkpoints and the loss log.

    Args:
        config: hyper-parameters (lr, epochs, batch size, loss weights ...).
        dataset: an :class:`~promptmoe.data.base.AnomalyDataset` (images, masks, labels).
        out_dir: folder for ``checkpoint.safetensors`` and ``train_log.csv``.
        resume: continue from ``out_dir/checkpoint.safetensors``; without it an existing
            checkpoint is an error (work is never overwritten).
        cache_features: "auto" (:func:`~promptmoe.cache.choose_cache`), "memory" (or True),
            "disk", or "none" (or False); or a ready ``FeatureCache`` (or ``CacheView``) of
            ``dataset`` made with this model's features (the ablation study shares one).
        cache_limit_gb: the most host memory an in-memory cache may take.
        num_workers: data-loader processes (None: :func:`~promptmoe.loading.default_workers`).
        train_data: a label for the data (stored in the checkpoint, shown in reports).
        model: an already built model (tests); by default :func:`~promptmoe.model.build_model`.
        cache_dir: folder of a disk cache (default ``out_dir/feature_cache``); a complete cache
            of the same model and data found there is reused (e.g. when resuming).

    With ``config.deterministic`` the whole run uses deterministic GPU kernels
    (:func:`promptmoe.precision.deterministic`); the process's settings come back afterwards.
    Data-loader workers end when this returns, also on an error (promptmoe/loading.py).
    """
    with deterministic(config.deterministic):
        return _train(config, dataset, out_dir, resume, device, cache_features, cache_limit_gb,
                      num_workers, progress, train_data, model, cache_dir)


def _train(config, dataset, out_dir, resume, device, cache_features, cache_limit_gb,
           num_workers, progress, train_data, model, cache_dir) -> TrainResult:
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
    require_labels(dataset, "training")  # an image directly in a folder root has no label (-1)
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
    dist_info = distributed.info()  # set under torchrun: see promptmoe/distributed.py
    main = dist_info is None or dist_info.rank == 0
    progress = progress and main
    if main:
        _trim_log(log_path, start_epoch * steps_per_epoch)
    distributed.barrier()
    cache = None
    if start_epoch < config.epochs:
        cache = _build_cache(model, dataset, config, device, cache_features, cache_limit_gb,
                             Path(cache_dir) if cache_dir else out_dir / CACHE_DIR_NAME,
                             num_workers, progress)
    sampler = OrderSampler(range(n)) if dist_info is None else ChunkBatchSampler()
    model.train()
    new_log = not log_path.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as scope:
        loader = None
        if cache is None:  # persistent workers serve every epoch and end with this block
            kw = {"sampler": sampler} if dist_info is None else {"batch_sampler": sampler}
            loader = scope.enter_context(make_loader(dataset, config.batch_size, device,
                                                     num_workers, **kw))
        fh = scope.enter_context(open(log_path, "a", newline="") if main else open(os.devnull, "w"))
        writer = csv.writer(fh)
        if new_log:
            writer.writerow(LOG_COLUMNS)
        for epoch in range(start_epoch, config.epochs):
            order = epoch_order(n, config.seed, epoch)
            batches = order.split(config.batch_size)
            if dist_info is None:
                sampler.order = order.tolist()
            else:  # this process loads its chunk of every batch
                sampler.batches = [distributed.chunk(b, dist_info).tolist() for b in batches]
            bar = tqdm(range(len(batches)), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress)
            loader_iter = iter(loader) if cache is None else None
            for i in bar:
                step = epoch * steps_per_epoch + i
                if cache is not None:
                    feats, masks, labels = cache.batch(batches[i], device)
                elif dist_info is None:
                    b = next(loader_iter)
                    feats = model.backbone.encode_image(b["image"].to(device, non_blocking=True))
                    masks = b["gt_mask"].to(device, non_blocking=True).float()
                    labels = b["gt_label"].to(device)
                else:  # encode this process's chunk, then gather the whole batch everywhere
                    feats, masks, labels = _sharded_batch(model, loader_iter, batches[i],
                                                          dist_info, device)
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
            if main:
                save_checkpoint(ckpt_path, model, config, optimizer,
                                meta={"epoch": epoch + 1,
                                      "global_step": (epoch + 1) * steps_per_epoch,
                                      "clip_seed": TINY_CLIP_SEED, "train_data": train_data,
                                      "n_images": n,
                                      "preset": config.preset})
    model.eval()
    distributed.barrier()  # the other processes read the log process 0 wrote
    return TrainResult(model, pd.read_csv(log_path), ckpt_path)
