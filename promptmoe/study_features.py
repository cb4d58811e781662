"""The features an ablation study shares: one cache per dataset, one frozen CLIP, cached scoring.

Taught in chapter 7 (:mod:`promptmoe.study` runs the study on top of this).

* :class:`SharedFeatures` builds, on first use, one :class:`~promptmoe.cache.FeatureCache` per
  dataset holding every block the models of a feature group use, and hands each model the blocks
  it keeps (:meth:`~promptmoe.cache.FeatureCache.select`). It also holds the group's frozen CLIP,
  so each model is built around the same tower instead of loading its own.
* :func:`evaluate_cached` scores a model from those caches with the ordinary
  :func:`~promptmoe.evaluate.evaluate` (same metrics, reports and routing tables): the dataset it
  is given yields each image's row in the cache, and the model it is given reads the features of
  those rows instead of running the tower.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from .backbone import FrozenCLIP, create_clip
from .cache import COMPLETE, CacheView, FeatureCache, data_digest, feature_key
from .config import PromptMoEConfig
from .evaluate import METRIC_COLUMNS, evaluate
from .model import TINY_CLIP_SEED, PromptMoE


def group_of(config: PromptMoEConfig) -> str:
    """The feature group of a model: models of one group can share caches (JSON of
    :func:`~promptmoe.cache.feature_key`)."""
    return json.dumps(feature_key(config), sort_keys=True)


def cache_dtype(device) -> torch.dtype:
    """float16 halves a cache on a GPU; a CPU keeps float32 (exact features), as train() does."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def cache_folder(root: Path, dataset, group: str) -> Path:
    """``root/<dataset name>-<8 hex digits of the group and data>``: one folder per cache."""
    text = group + json.dumps(data_digest(dataset), sort_keys=True)
    return Path(root) / f"{getattr(dataset, 'name', 'data')}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def is_cache(folder: Path) -> bool:
    """A folder FeatureCache wrote: its marker or its first arrays are there."""
    return folder.is_dir() and ((folder / COMPLETE).exists() or (folder / "layer0.bin").exists())


def cache_folders(root: Path) -> list:
    """The study caches directly under ``root``: named ``<name>-<8 hex digits>``
    (:func:`cache_folder`) and written by FeatureCache. Nothing else there is ever touched."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if re.fullmatch(r".+-[0-9a-f]{8}", p.name) and is_cache(p))


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


class SharedFeatures:
    """One cache per dataset (and feature group), built on first use, shared by every model.

    Args:
        folder: where disk caches live (one subfolder per cache, :func:`cache_folder`).
        where: "memory" or "disk".
        device: runs the tower (and the models).
        batch_size: images per tower call while filling a cache.
        group_layers: ``{group: blocks}`` every model of the group uses (default: a model's own).
        datasets: every dataset the study uses: their caches of the current group are the only
            ones kept in ``folder`` (a complete one is reused), any other is deleted.
    Attributes:
        built: ``(dataset name, images, reused)`` per cache made: the tower passes of the study.
    """

    def __init__(self, folder, where: str, device, batch_size: int,
                 group_layers: Optional[Mapping[str, Tuple[int, ...]]] = None,
                 num_workers: Optional[int] = None, progress: bool = True, datasets=()):
        if where not in ("memory", "disk"):
            raise ValueError(f"where={where!r}: shared features live in 'memory' or on 'disk'")
        self.folder, self.where, self.device = Path(folder), where, torch.device(device)
        self.batch_size, self.num_workers, self.progress = batch_size, num_workers, progress
        self.group_layers = dict(group_layers or {})
        self.datasets = list(datasets)
        self.group: Optional[str] = None
        self._caches: Dict[str, FeatureCache] = {}
        self._clip = self._backbone = None
        self.built = []

    def _switch(self, config: PromptMoEConfig) -> None:
        """Make ``config``'s group the current one: drop the other group's caches and CLIP."""
        self.drop()
        self.group = group_of(config)
        if config.pretrained is None:  # the random tiny CLIP of build_model, from the same seed
            torch.manual_seed(TINY_CLIP_SEED)
        self._clip = create_clip(config).to(self.device)
        # checks every block of the group against the tower; its tokenizer serves every model
        self._backbone = FrozenCLIP(self._holder(config), clip=self._clip)

    def _holder(self, config: PromptMoEConfig) -> PromptMoEConfig:
        """``config`` with every block its group's models use, the V-V start pinned: the
        model whose pass fills a cache."""
        layers = self.group_layers.get(group_of(config)) or tuple(config.layers)
        return config.replace(layers=tuple(layers), vv_start=config.first_vv_block)

    def model(self, config: PromptMoEConfig) -> PromptMoE:
        """A fresh model of ``config`` around the group's frozen CLIP; its prompts come from
        ``config.seed`` exactly as :func:`~promptmoe.model.build_model` makes them."""
        if self.group != group_of(config):
            self._switch(config)
        missing = sorted(set(config.layers) - set(self._backbone.config.layers))
        if missing:  # a model outside the study's rows: its blocks are not in the caches
            raise ValueError(f"blocks {missing} are not among the study's {self._backbone.config.layers}")
        # a shallow copy shares the frozen CLIP and the tokenizer (building one takes ~0.1 s);
        # encode_image, never called on cached features, would read this model's blocks
        backbone = copy.copy(self._backbone)
        backbone.config = config
        torch.manual_seed(config.seed)
        return PromptMoE(config, backbone=backbone).to(self.device)

    def view(self, dataset, config: PromptMoEConfig) -> CacheView:
        """The blocks ``config`` uses, of ``dataset``'s cache (built now if needed)."""
        if self.group != group_of(config):
            self._switch(config)
        key = json.dumps(data_digest(dataset), sort_keys=True)
        if key not in self._caches:
            self._caches[key] = self._build(dataset, config)
        return self._caches[key].select(config.layers)

    def _build(self, dataset, config: PromptMoEConfig) -> FeatureCache:
        holder = self._holder(config)
        folder = cache_folder(self.folder, dataset, self.group) if self.where == "disk" else None
        if folder is not None:  # bounded disk: no other cache of this folder survives
            keep = {cache_folder(self.folder, d, self.group) for d in self.datasets} | {folder}
            for old in cache_folders(self.folder):
                if old not in keep:
                    shutil.rmtree(old)
        cache = FeatureCache(self.model(holder), dataset, self.batch_size, self.device,
                             dtype=cache_dtype(self.device), num_workers=self.num_workers,
                             progress=self.progress, where=self.where, folder=folder)
        self.built.append((getattr(dataset, "name", ""), len(dataset), cache.reused))
        return cache

    def drop(self) -> None:
        """Release the current caches (and delete their folders on disk)."""
        for cache in self._caches.values():
            folder = cache.folder
            del cache
            if folder is not None and folder.exists():
                shutil.rmtree(folder)
        self._caches, self._clip, self._backbone, self.group = {}, None, None, None


# ---------------------------------------------------------------------- evaluation from caches
class CachedItems(torch.utils.data.Dataset):
    """A dataset's items for :func:`~promptmoe.evaluate.evaluate` without opening an image: the
    ``image`` field is ``(slot, row)``, where to find the image's features; masks and labels come
    from the cache, everything else from the records."""

    def __init__(self, dataset, slot: int, view, rows=None):
        self.dataset, self.slot, self.view = dataset, slot, view
        self._records = dataset.records
        self.rows = list(range(len(self._records))) if rows is None else list(rows)
        self.name = getattr(dataset, "name", "")
        self.format = getattr(dataset, "format", self.name)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def categories(self):
        return sorted({self._records[r].category for r in self.rows})

    def subset(self, categories) -> "CachedItems":
        keep = {categories} if isinstance(categories, str) else set(categories)
        return CachedItems(self.dataset, self.slot, self.view,
                           [r for r in self.rows if self._records[r].category in keep])

    def __getitem__(self, i: int) -> dict:
        r = self.rows[i]
        rec = self._records[r]
        return {"image": torch.tensor([self.slot, r]), "gt_label": self.view.labels[r].clone(),
                "gt_mask": self.view.masks[r].float(), "has_mask": torch.tensor(bool(rec.mask_path)),
                "image_path": rec.image_path, "category": rec.category}


class FromCache(nn.Module):
    """``model`` with the frozen tower replaced by cache reads: ``forward((B, 2) slot/row)``
    returns what ``model(images)`` returns for those images."""

    def __init__(self, model: PromptMoE, views):
        super().__init__()
        self.model, self.views, self.config = model, list(views), model.config

    def forward(self, where: torch.Tensor) -> dict:
        slot = int(where[0, 0])  # evaluate() scores one category of one dataset per batch
        device = next(self.model.parameters()).device
        feats = self.views[slot].features_at(where[:, 1].cpu(), device)
        S = self.config.image_size
        return self.model.forward_features(feats, out_size=(S, S))


def evaluate_cached(model: PromptMoE, datasets: Mapping[str, object], views: Mapping[str, object],
                    out_dir=None, **kwargs) -> Dict[str, Dict[str, float]]:
    """:func:`~promptmoe.evaluate.evaluate` of ``model`` on ``datasets`` from their cache
    ``views``; returns ``{dataset: {metric: fraction}}`` (the reports go to ``out_dir``)."""
    names = list(datasets)
    items = {n: CachedItems(datasets[n], i, views[n]) for i, n in enumerate(names)}
    report = evaluate(FromCache(model, [views[n] for n in names]), items, out_dir=out_dir,
                      num_workers=0, **kwargs)  # items are cheap: no loader processes
    return {row["dataset"]: {m: float(row[m]) for m in METRIC_COLUMNS}
            for _, row in report.summary.iterrows()}


class TowerCounter:
    """Counts the images that go through the frozen image tower while active::

        with TowerCounter() as tower:
            study.run()
        tower.images  # every image of every FrozenCLIP.encode_image call

    It wraps ``FrozenCLIP.encode_image`` (the only way this package runs the tower) for the
    duration of the ``with`` block; calls on the ``meta`` device (FLOP counting) do not count."""

    def __enter__(self) -> "TowerCounter":
        self.images = self.calls = 0
        self._real = FrozenCLIP.encode_image

        def counted(backbone, images):
            if images.device.type != "meta":  # FLOP counts (study_cost) run on shapes only
                self.images += int(images.shape[0])
                self.calls += 1
            return self._real(backbone, images)

        FrozenCLIP.encode_image = counted
        return self

    def __exit__(self, *exc) -> None:
        FrozenCLIP.encode_image = self._real
