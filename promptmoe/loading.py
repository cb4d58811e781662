"""Parallel, pinned data loading for training, evaluation and prediction.

Taught in chapter 5. Decoding a 1024 px PNG and its mask and resizing them to 518 px takes about
80 ms on one core (REFERENCE.md section 5): one process cannot feed a GPU, so on a GPU machine
several worker processes decode ahead, and ``pin_memory`` puts batches in page-locked memory so
that the copy to the GPU runs asynchronously. Results never depend on the worker count: the
datasets have no randomness and the order is given by the sampler (tests/test_loading.py).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Sampler


def default_workers(device=None) -> int:
    """Loader workers for this machine: on a GPU one per CPU core but one (at most 8); on a CPU
    0, since worker processes would compete with the model for the same cores."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, (cores or 1) - 1))


class OrderSampler(Sampler):
    """Yields ``order`` (set it before each epoch); the loader's workers can stay alive."""

    def __init__(self, order: Sequence[int]):
        self.order = list(order)

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class ChunkBatchSampler(Sampler):
    """Yields the non-empty lists of ``batches`` (set before each epoch): one process's chunks
    of the batches under torchrun (promptmoe/distributed.py)."""

    def __init__(self):
        self.batches: List[List[int]] = []

    def __iter__(self):
        return iter([b for b in self.batches if b])

    def __len__(self) -> int:
        return sum(1 for b in self.batches if b)


def make_loader(dataset, batch_size: int, device, num_workers: Optional[int] = None,
                sampler: Optional[Sampler] = None,
                batch_sampler: Optional[Sampler] = None) -> DataLoader:
    """A DataLoader in dataset order (or ``sampler``'s), with workers and pinning for ``device``.

    Args:
        num_workers: worker processes; None = :func:`default_workers`.
    """
    device = torch.device(device)
    workers = default_workers(device) if num_workers is None else int(num_workers)
    if workers < 0:
        raise ValueError(f"num_workers={workers} must be >= 0")
    if batch_sampler is not None:
        kw = {"batch_sampler": batch_sampler}
    else:
        kw = {"batch_size": batch_size, "shuffle": False, "sampler": sampler}
    return DataLoader(dataset, **kw, num_workers=workers, pin_memory=device.type == "cuda",
                      persistent_workers=workers > 0 and (sampler is not None or batch_sampler is not None),
                      prefetch_factor=4 if workers > 0 else None)
