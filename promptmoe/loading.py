"""Parallel, pinned data loading for training, evaluation and prediction.

Taught in chapter 5. Decoding a 1024 px PNG and its mask and resizing them to 518 px takes about
80 ms on one core (REFERENCE.md section 5): one process cannot feed a GPU, so on a GPU machine
several worker processes decode ahead, and ``pin_memory`` puts batches in page-locked memory so
that the copy to the GPU runs asynchronously. Results never depend on the worker count: the
datasets have no randomness and the order is given by the sampler (tests/test_loading.py).

Worker lifetimes are explicit. On a GPU, chapters 4-6 once printed ``Exception in thread
QueueFeederThread ... OSError: [Errno 9] Bad file descriptor ... ValueError: semaphore or lock
released too many times`` into the page. The cause: ``tqdm.auto``'s bar (``tqdm.asyncio``
underneath) calls ``iter()`` on what it wraps, so ``tqdm(loader)`` made a *second* iterator of
the loader, which forked its own workers and prefetched batches nobody read; the notebook bar
refers to itself (a reference cycle), so that iterator was freed only by the cyclic garbage
collector, at some later moment. Worker processes forked for later loaders inherited it
uncollected; when the collector ran in one of them, its ``__del__`` failed there (``can only
test a child process``), its pipes' ``__del__`` closed file descriptors that the child's own
queues had reused, and the child's queue thread died on them (reproduced on a CPU in a kernel
with two workers; without workers nothing of it shows). Hence:

* :func:`batches` puts a progress bar on a loader without a second iterator;
* every loader is used as ``with make_loader(...) as loader:`` and its workers end when the
  block ends, also on an error or an early exit (:class:`Loader`), instead of when a collector
  frees it (an error's traceback, which a notebook keeps, would otherwise hold it).

tests/test_loading.py shows both, in a Jupyter kernel too.
"""
from __future__ import annotations

import os
import threading
import weakref
from typing import List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

# how long to wait for a queue's feeder thread to flush and close its pipe after shutdown
FEEDER_JOIN_S = 5.0


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


def shutdown_iterator(iterator) -> None:
    """End a DataLoader iterator's worker processes and queue threads now, in this thread.

    torch's own shutdown (``_shutdown_workers``: the pin-memory thread, then the workers, then the
    index queues) runs, then the feeder threads of its queues are joined: once this returns no
    thread of the iterator is left writing to or closing a pipe. A second call does nothing;
    an iterator without workers has nothing to end."""
    stop = getattr(iterator, "_shutdown_workers", None)
    if stop is None:
        return
    stop()
    queues = list(getattr(iterator, "_index_queues", []))
    queues.append(getattr(iterator, "_worker_result_queue", None))
    for q in queues:
        feeder = getattr(q, "_thread", None)
        if feeder is not None and feeder is not threading.current_thread():
            feeder.join(FEEDER_JOIN_S)


class Loader(DataLoader):
    """A DataLoader whose worker processes end when its ``with`` block ends (or at :meth:`close`).

    Within the block it is an ordinary DataLoader: iterate it once per epoch; with persistent
    workers the same processes serve every epoch. See the module docstring for why the end is
    explicit.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._live = weakref.WeakSet()  # iterators made by this loader that may hold workers

    def __iter__(self):
        iterator = super().__iter__()
        self._live.add(iterator)
        return iterator

    def close(self) -> None:
        """End every worker process and queue thread of this loader (idempotent)."""
        for iterator in list(self._live):
            shutdown_iterator(iterator)
        self._live = weakref.WeakSet()
        self._iterator = None  # persistent workers: a later iteration starts fresh ones

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def batches(loader, progress: bool = False, **bar):
    """Iterate ``loader`` with a tqdm progress bar (``bar``: desc, leave ...) that wraps the
    iterator, never the loader: wrapping the loader makes tqdm.auto start a second iterator
    (see the module docstring)."""
    from tqdm.auto import tqdm

    return tqdm(iter(loader), total=len(loader), disable=not progress, **bar)


def make_loader(dataset, batch_size: int, device, num_workers: Optional[int] = None,
                sampler: Optional[Sampler] = None,
                batch_sampler: Optional[Sampler] = None) -> Loader:
    """A :class:`Loader` in dataset order (or ``sampler``'s), with workers and pinning for
    ``device``. Use it as ``with make_loader(...) as loader:`` so that its workers end with it.

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
    return Loader(dataset, **kw, num_workers=workers, pin_memory=device.type == "cuda",
                  persistent_workers=workers > 0 and (sampler is not None or batch_sampler is not None),
                  prefetch_factor=4 if workers > 0 else None)
