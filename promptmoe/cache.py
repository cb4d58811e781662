"""The frozen-feature cache of training: in host memory, or memory-mapped files on disk.

Taught in chapter 5. REFERENCE.md section 5.

The CLIP towers are frozen and training uses no augmentation, so the image tower maps an image to
the same features in every epoch: computing them once turns 15 epochs of tower work into one.
Per image the cache holds the tokens of every feature layer, the global feature, the mask and the
label. It never sits on the GPU (a T4 has 16 GB; the paper preset on MVTec AD needs 15.0 GB in
float16). Where it lives:

* ``"memory"``: torch tensors in host RAM;
* ``"disk"``: one ``numpy.memmap`` file per array in a folder (by default ``<run>/feature_cache``);
  the operating system pages in what a batch needs. A finished cache is marked complete with a
  fingerprint of the model and data, so a resumed run reuses it instead of recomputing;
* ``"auto"`` (:func:`choose_cache`): memory when the estimate fits in ``cache_limit_gb`` and in
  half of the free RAM, else disk when it fits in 80% of the free disk space, else no cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from torch.utils.data import Subset

from . import distributed
from .backbone import ImageFeatures
from .config import PromptMoEConfig
from .loading import batches, make_loader
from .model import model_device

log = logging.getLogger(__name__)
CACHE_MODES = ("memory", "disk", "none")
COMPLETE = "cache.json"


def available_memory_bytes() -> int:
    """RAM the system can give without swapping (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_disk_bytes(folder: Path) -> int:
    """Free bytes on the file system that holds ``folder`` (or its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def choose_cache(estimate_gb: float, cache_limit_gb: float, folder: Path,
                 free_ram: Optional[int] = None, free_disk: Optional[int] = None,
                 copies: int = 1) -> Tuple[str, str]:
    """Decide where the cache goes; returns (mode, reason in words).

    ``copies``: processes on this machine that would each hold an in-memory copy (torchrun);
    a disk cache is one set of files that they share."""
    free_ram = available_memory_bytes() if free_ram is None else free_ram
    size = f"the feature cache needs {estimate_gb:.2f} GB"
    if copies > 1:
        size += f" (x{copies} processes in memory)"
    ram_gb = estimate_gb * copies
    if ram_gb <= cache_limit_gb and ram_gb * 1e9 <= 0.5 * free_ram:
        return "memory", (f"{size}: it fits in memory (limit {cache_limit_gb:g} GB, "
                          f"{free_ram / 1e9:.1f} GB RAM free)")
    free_disk = free_disk_bytes(folder) if free_disk is None else free_disk
    why = (f"over the {cache_limit_gb:g} GB memory limit" if ram_gb > cache_limit_gb
           else f"more than half of the {free_ram / 1e9:.1f} GB RAM free")
    if estimate_gb * 1e9 <= 0.8 * free_disk:
        return "disk", (f"{size}, {why}: memory-mapped files in {folder} "
                        f"({free_disk / 1e9:.1f} GB free there)")
    return "none", (f"{size}, {why}, and only {free_disk / 1e9:.1f} GB are free in {folder}: "
                    "no cache, the image tower runs every epoch")


def fingerprint(model, dataset, dtype: torch.dtype) -> dict:
    """What the cached values depend on: backbone, input size, layers, data, dtype."""
    cfg = model.config
    paths = [r.image_path for r in getattr(dataset, "records", [])]
    digest = hashlib.sha256("\n".join(paths).encode()).hexdigest()
    return {"clip_model": cfg.clip_model, "pretrained": cfg.pretrained, "image_size": cfg.image_size,
            "layers": list(cfg.layers), "vv_attention": cfg.vv_attention,
            "first_vv_block": cfg.first_vv_block, "precision": cfg.precision, "n": len(dataset),
            "paths_sha256": digest, "dtype": str(dtype)}


class FeatureCache:
    """Frozen image-tower features (+ masks and labels) of a whole dataset, computed once.

    Args:
        model: the PromptMoE whose backbone computes the features.
        dataset: items with ``image``, ``gt_mask``, ``gt_label``.
        batch_size, num_workers: how the images are run through the tower.
        device: where the model's weights are (None: read from the model; another is an error).
        dtype: storage type (float32 or float16; train() uses float16 on a GPU).
        where: "memory" or "disk"; folder: the disk cache's folder.
    Attributes:
        features: ImageFeatures over the whole dataset (CPU tensors, memory-mapped on disk);
        masks (N, S, S) uint8; labels (N,); where; reused (a complete disk cache was found).
    """

    def __init__(self, model, dataset, batch_size: int, device=None, dtype=torch.float32,
                 num_workers: int = 0, progress: bool = True, where: str = "memory",
                 folder=None):
        if where not in ("memory", "disk"):
            raise ValueError(f"where={where!r}: the cache lives in 'memory' or on 'disk'")
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"cache dtype {dtype}: use torch.float32 or torch.float16")
        if where == "disk" and folder is None:
            raise ValueError("a disk cache needs a folder")
        device = model_device(model, device)
        n, S = len(dataset), model.config.image_size
        h, w = model.backbone.grid_size
        T, D, L = h * w + 1, model.backbone.embed_dim, len(model.config.layers)
        self.where, self.folder, self.reused = where, Path(folder) if folder else None, False
        self._maps = []  # the numpy memmaps behind a disk cache
        shapes = {f"layer{i}": ((n, T, D), dtype) for i in range(L)}
        shapes.update({"global": ((n, D), dtype), "masks": ((n, S, S), torch.uint8),
                       "labels": ((n,), torch.int64)})
        print_ = fingerprint(model, dataset, dtype)
        d = distributed.info()  # under torchrun each process fills every world-th row
        rows = torch.arange(n) if d is None else torch.arange(d.rank, n, d.world)
        main = d is None or d.rank == 0
        if where == "disk" and self._complete(print_):
            distributed.barrier()  # everyone has looked before anything changes
            arrays = {k: self._open(k, *v, mode="r+") for k, v in shapes.items()}
            self.reused = True
        else:
            if where == "disk":
                distributed.barrier()
                if main:  # one process creates the shared files
                    self.folder.mkdir(parents=True, exist_ok=True)
                    (self.folder / COMPLETE).unlink(missing_ok=True)
                    arrays = {k: self._open(k, *v, mode="w+") for k, v in shapes.items()}
                distributed.barrier()
                if not main:
                    arrays = {k: self._open(k, *v, mode="r+") for k, v in shapes.items()}
            else:
                arrays = {k: torch.zeros(s, dtype=t) for k, (s, t) in shapes.items()}
            self._fill(arrays, rows, model, dataset, batch_size, device, num_workers,
                       progress and main, L)
            if where == "disk":
                for mm in self._maps:
                    mm.flush()
                distributed.barrier()
                if main:
                    (self.folder / COMPLETE).write_text(json.dumps(print_, indent=1))
            elif d is not None:  # rows of the other processes are zeros here: sum them in
                for a in arrays.values():
                    distributed.all_reduce_sum_(a)
            distributed.barrier()
        self.features = ImageFeatures([arrays[f"layer{i}"] for i in range(L)], arrays["global"], (h, w))
        self.masks, self.labels = arrays["masks"], arrays["labels"]

    def _open(self, name, shape, dtype, mode):
        np_dtype = {torch.float32: np.float32, torch.float16: np.float16,
                    torch.uint8: np.uint8, torch.int64: np.int64}[dtype]
        mm = np.memmap(self.folder / f"{name}.bin", dtype=np_dtype, mode=mode, shape=shape)
        self._maps.append(mm)
        return torch.from_numpy(mm)

    def _complete(self, print_: dict) -> bool:
        path = self.folder / COMPLETE
        if not path.exists():
            return False
        try:
            return json.loads(path.read_text()) == print_
        except (OSError, ValueError):
            return False

    @staticmethod
    def _fill(arrays, rows, model, dataset, batch_size, device, num_workers, progress, L):
        """Encode the images ``rows`` of ``dataset`` and write them at those rows."""
        subset = dataset if len(rows) == len(dataset) else Subset(dataset, rows.tolist())
        start = 0
        with make_loader(subset, batch_size, device, num_workers) as loader:  # workers end here
            for batch in batches(loader, progress, desc="caching CLIP features"):
                feats = model.backbone.encode_image(batch["image"].to(device, non_blocking=True))
                at = rows[start:start + len(batch["gt_label"])]
                for i in range(L):
                    arrays[f"layer{i}"][at] = feats.layer_tokens[i].to("cpu", arrays["global"].dtype)
                arrays["global"][at] = feats.global_feature.to("cpu", arrays["global"].dtype)
                arrays["masks"][at] = batch["gt_mask"].to(torch.uint8)
                arrays["labels"][at] = batch["gt_label"]
                start += len(at)

    @staticmethod
    def estimate_gb(config: PromptMoEConfig, n_images: int, grid: int, dim: int, bytes_per: int = 4) -> float:
        """Cache size in GB: tokens of every layer + the global feature, and a uint8 mask."""
        tokens = len(config.layers) * (grid + 1) + 1
        return n_images * (tokens * dim * bytes_per + config.image_size ** 2) / 1e9

    def batch(self, idx: torch.Tensor, device):
        """Features (float32), masks (float) and labels of the images ``idx``, on ``device``."""
        idx = torch.as_tensor(idx)
        pin = torch.device(device).type == "cuda"
        feats = self.features[idx]  # a copy in host memory (read from disk when memory-mapped)
        if pin:  # page-locked host memory lets the copy to the GPU run asynchronously
            feats = ImageFeatures([t.pin_memory() for t in feats.layer_tokens],
                                  feats.global_feature.pin_memory(), feats.grid)
        feats = feats.to(device=device, dtype=torch.float32, non_blocking=pin)
        return feats, self.masks[idx].to(device).float(), self.labels[idx].to(device)
