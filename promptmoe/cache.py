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

One cache can serve several models (chapter 7, :mod:`promptmoe.study`): which blocks a model
compares with the text does not change a block's features, so a cache of every block serves a
model that keeps some (:meth:`FeatureCache.select`, a :class:`CacheView`), as long as both agree
on :func:`feature_key` and the weights. :func:`check_fits` says when they do not.
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
    """What the cached values depend on: the feature fields of the config (:func:`feature_key`),
    the blocks kept, the backbone's weights, the data (images, masks, labels) and the dtype."""
    cfg = model.config
    return {**feature_key(cfg), "layers": list(cfg.layers),
            "weights": weights_digest(model.backbone.clip.visual), **data_digest(dataset),
            "dtype": str(dtype)}


# Config fields that change a block's image features (D1, D9); which blocks are *kept* is not
# among them: a cache of blocks (1, 2, 3, 4) serves a model that compares (2, 4) with the text.
FEATURE_FIELDS = ("clip_model", "pretrained", "image_size", "vv_attention", "global_ln_post",
                  "pos_embed_resize", "precision")


def feature_key(config: PromptMoEConfig) -> dict:
    """The fields two configs must share for one cache to serve both (besides the weights).

    The V-V path's start is one of them, as the block it starts at (``first_vv_block``), not as
    ``vv_start``: ``vv_start=None`` means ``min(layers)``, so a model keeping only block 4 would
    otherwise start the path at block 4 and see other features from blocks 1-4 (chapter 7)."""
    key = {f: getattr(config, f) for f in FEATURE_FIELDS}
    key["first_vv_block"] = config.first_vv_block if config.vv_attention else None
    return key


def weights_digest(module: torch.nn.Module) -> str:
    """16 hex digits that change with the weights of ``module`` (name, shape, dtype, the first and
    last 64 values and the sum of every tensor): cheap even for ViT-L, and enough to tell a
    fine-tuned or re-seeded tower from the one a cache was made with."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        flat = t.detach().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if flat.numel() and flat.device.type != "meta":
            ends = torch.cat([flat[:64], flat[-64:]]).float().cpu().numpy()
            h.update(ends.tobytes())
            h.update(f"{float(flat.float().sum(dtype=torch.float64)):.6e}".encode())
    return h.hexdigest()[:16]


def data_digest(dataset) -> dict:
    """The data a cache holds: image and mask paths, labels, image size and mask rule."""
    records = getattr(dataset, "records", [])
    text = "\n".join(f"{r.image_path}|{r.mask_path or ''}|{r.gt_label}" for r in records)
    return {"n": len(dataset), "paths_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "data_image_size": getattr(dataset, "image_size", None),
            "mask_threshold": getattr(dataset, "mask_threshold", None)}


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
        masks (N, S, S) uint8; labels (N,); where; reused (a complete disk cache was found);
        layers: the blocks held; key: :func:`feature_key` of the model; data: :func:`data_digest`.
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
        self.layers, self.key = tuple(model.config.layers), feature_key(model.config)
        self.data = {k: print_[k] for k in data_digest(dataset)}  # which images it holds
        self.weights = print_["weights"]  # weights_digest of the image tower it ran

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
        masks, labels = self.masks[idx].to(device).float(), self.labels[idx].to(device)
        return self.features_at(idx, device), masks, labels

    def features_at(self, idx: torch.Tensor, device) -> ImageFeatures:
        """Features of the images ``idx`` as float32 on ``device`` (each tensor (B, ...))."""
        idx = torch.as_tensor(idx)
        pin = torch.device(device).type == "cuda"
        feats = self.features[idx]  # a copy in host memory (read from disk when memory-mapped)
        if pin:  # page-locked host memory lets the copy to the GPU run asynchronously
            feats = ImageFeatures([t.pin_memory() for t in feats.layer_tokens],
                                  feats.global_feature.pin_memory(), feats.grid)
        return feats.to(device=device, dtype=torch.float32, non_blocking=pin)

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, layers) -> "CacheView":
        """The same cache seen by a model that keeps only ``layers`` (a subset of :attr:`layers`)."""
        return CacheView(self, layers)


class CacheView:
    """Some blocks of a :class:`FeatureCache`, read without a copy: what a model that compares
    fewer blocks with the text (Table 4) trains and is evaluated on. Same interface as the cache
    (``features``, ``masks``, ``labels``, ``batch``, ``features_at``, ``layers``, ``key``).
    """

    def __init__(self, cache: FeatureCache, layers):
        layers = tuple(int(b) for b in layers)
        missing = [b for b in layers if b not in cache.layers]
        if missing:
            raise ValueError(f"blocks {missing} are not in this feature cache (it holds blocks "
                             f"{cache.layers}); build the cache with every block the models use")
        pos = [cache.layers.index(b) for b in layers]
        f = cache.features
        self.features = ImageFeatures([f.layer_tokens[i] for i in pos], f.global_feature, f.grid)
        self.masks, self.labels, self.layers, self.key = cache.masks, cache.labels, layers, cache.key
        self.data, self.weights = cache.data, cache.weights
        self.where, self.folder, self.reused = cache.where, cache.folder, cache.reused

    batch = FeatureCache.batch  # they read only features, masks and labels
    features_at = FeatureCache.features_at

    def __len__(self) -> int:
        return len(self.labels)


def check_fits(cache, config: PromptMoEConfig, dataset, model=None):
    """``cache`` itself, if it holds ``dataset``'s images with the features ``config`` uses
    (same :func:`feature_key`, the same blocks in order, and, given ``model``, the same image
    tower weights); else a ValueError saying what differs."""
    if model is not None and cache.weights != weights_digest(model.backbone.clip.visual):
        raise ValueError("the feature cache was made by an image tower with other weights "
                         f"(digest {cache.weights} vs the model's "
                         f"{weights_digest(model.backbone.clip.visual)})")
    if cache.data != data_digest(dataset):
        raise ValueError(f"the feature cache holds other images ({cache.data['n']}) than the "
                         f"dataset {getattr(dataset, 'name', '')!r} ({len(dataset)})")
    if tuple(cache.layers) != tuple(config.layers):
        raise ValueError(f"the feature cache gives blocks {tuple(cache.layers)}, the model uses "
                         f"{tuple(config.layers)}: pass cache.select(config.layers)")
    key = feature_key(config)
    diff = {k: (v, key[k]) for k, v in cache.key.items() if v != key[k]}
    if diff:
        shown = ", ".join(f"{k}: cache {a!r} vs model {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"the feature cache was made with other image features ({shown})")
    return cache
