"""More than one GPU with torchrun: the frozen tower sharded over processes, the rest replicated.

Taught in chapter 5 (README "More than one GPU"). Run any command under torchrun::

    torchrun --standalone --nproc_per_node=4 -m promptmoe train --data /data/mvtec --out runs/paper
    torchrun --standalone --nproc_per_node=4 -m promptmoe eval --checkpoint runs/paper/checkpoint.safetensors \
        --data visa=/data/visa --out runs/paper/eval

The frozen image tower is about 95% of a training step (REFERENCE.md section 5), so that is what
is split: each process encodes its contiguous chunk of every batch (or its share of the images
when filling the feature cache), and the chunks are all-gathered. Every process then holds the
*whole* batch's features and runs the small trainable part (about 5%) on all of it, so each
process computes exactly the single-process loss and gradient: the weights stay identical on
every process without a gradient all-reduce, and equal a one-process run with the same seed
(tests/test_distributed.py; the one source of a difference is the tower seeing chunks of a
batch instead of the whole batch, which can change float rounding, not the math). This keeps the
losses that couple the images of a batch (Dice, the load-balancing loss) exact, which a
DistributedDataParallel split of the loss over processes would not.

Evaluation is sharded: each process scores every world-th image of a category and the
predictions are gathered in dataset order; only process 0 writes files and prints.
Backends: NCCL for CUDA tensors plus gloo for CPU tensors on GPUs, gloo alone on CPUs, on a GPU
machine run with ``--device cpu``, or when ``PROMPTMOE_DIST_BACKEND=gloo`` says so (processes on
the CPU, e.g. two processes on a one-GPU machine: NCCL needs a GPU per process).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist

from .backbone import ImageFeatures


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int


BACKEND_ENV = "PROMPTMOE_DIST_BACKEND"
BACKENDS = ("gloo", "cuda:nccl,cpu:gloo")


def backend(device=None) -> str:
    """The process-group backend: ``$PROMPTMOE_DIST_BACKEND`` when set, else gloo for a CPU
    ``device`` or a machine without a GPU, else NCCL for CUDA tensors and gloo for CPU ones."""
    chosen = os.environ.get(BACKEND_ENV, "").strip()
    if chosen:
        if chosen not in BACKENDS:
            raise ValueError(f"{BACKEND_ENV}={chosen!r}: choose one of {BACKENDS}")
        return chosen
    if not torch.cuda.is_available() or (device is not None and torch.device(device).type == "cpu"):
        return "gloo"
    return "cuda:nccl,cpu:gloo"


def setup(device=None) -> Optional[DistInfo]:
    """Join the torchrun process group when launched by torchrun with >1 process, else None.

    ``device``: the command's ``--device`` (a CPU device chooses gloo, see :func:`backend`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        chosen = backend(device)
        if "nccl" in chosen:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(chosen)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def info() -> Optional[DistInfo]:
    """The current process group (None when not distributed)."""
    if _SUSPENDED or not (dist.is_available() and dist.is_initialized()):
        return None
    if dist.get_world_size() == 1:
        return None
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def is_main() -> bool:
    """True in the one process that writes files and prints (rank 0, or no process group)."""
    d = info()
    return d is None or d.rank == 0


def barrier() -> None:
    if info() is not None:
        dist.barrier()


def local_device() -> torch.device:
    """This process's GPU (cuda:LOCAL_RANK) under NCCL, else the CPU."""
    if "nccl" in backend():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def chunk(idx: torch.Tensor, d: DistInfo) -> torch.Tensor:
    """This process's contiguous chunk of a batch's indices (may be empty)."""
    return torch.tensor_split(idx, d.world)[d.rank]


def _gather_rows(t: torch.Tensor, sizes: List[int], d: DistInfo) -> torch.Tensor:
    """All-gather (n_r, ...) chunks of different lengths into (sum n_r, ...) in rank order."""
    pad = max(sizes)
    buf = torch.zeros((pad, *t.shape[1:]), dtype=t.dtype, device=t.device)
    buf[: t.shape[0]] = t
    parts = [torch.empty_like(buf) for _ in range(d.world)]
    dist.all_gather(parts, buf)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def gather_batch(feats: Optional[ImageFeatures], masks: torch.Tensor, labels: torch.Tensor,
                 sizes: List[int], template: ImageFeatures, d: DistInfo):
    """Every process's chunk of a batch -> the whole batch on every process.

    Args:
        feats: this process's features (None for an empty chunk; ``template`` gives shapes).
        sizes: chunk lengths of all processes, in rank order.
    """
    if feats is None:
        feats = template[:0]
    tokens = [_gather_rows(t, sizes, d) for t in feats.layer_tokens]
    glob = _gather_rows(feats.global_feature, sizes, d)
    return (ImageFeatures(tokens, glob, feats.grid), _gather_rows(masks, sizes, d),
            _gather_rows(labels, sizes, d))


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (CPU tensors go through gloo)."""
    dist.all_reduce(t)
    return t


def gather_objects(obj, d: DistInfo) -> list:
    """Every process's python object, in rank order, on every process."""
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


_SUSPENDED = []


class single_process:
    """Within this block :func:`info` reports no process group (for per-process work)."""

    def __enter__(self):
        _SUSPENDED.append(True)

    def __exit__(self, *exc):
        _SUSPENDED.pop()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
