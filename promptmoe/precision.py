"""Numerics of the frozen towers and of training: mixed precision, TF32, deterministic kernels.

Taught in chapter 5. ``config.precision`` picks the precision (the command line and, on a GPU,
the book's chapters use ``auto``):

* ``"fp32"``: everything in float32 (exact; the config's default, the CPU's choice, and the
  reference that the tests and the book's hand-written checks compare with);
* ``"auto"``: on a GPU autocast the frozen image and text towers to bfloat16 where the GPU has it
  (Ampere and newer) and to float16 otherwise (a Colab T4), and let the float32 matmuls inside
  those calls use TF32 on Ampere+; on a CPU stay in float32;
* ``"bf16"`` / ``"fp16"``: that autocast dtype on any device (both run on a CPU too).

Only the frozen towers run under autocast; their outputs come back as float32, so the prompt
learner, the maps and the loss stay in float32 (and so do the gradients and Adam's state). TF32 is
switched on for the duration of a tower call and the previous setting restored after it
(:func:`tf32`): a process-wide switch would silently change every later float32 matmul, e.g. a
test or a book cell that compares float32 code with the package.

``config.deterministic`` (``promptmoe train --deterministic``) makes training on a GPU
bit-reproducible (:func:`deterministic`); a CPU is deterministic already.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator, Optional

import torch

PRECISIONS = ("fp32", "auto", "bf16", "fp16")
CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC = ":4096:8"  # a fixed cuBLAS workspace per stream: reductions in one order


def autocast_dtype(precision: str, device) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` on ``device``, or None for plain float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; choose one of {PRECISIONS}")
    device = torch.device(device)
    if precision == "fp32" or device.type not in ("cuda", "cpu"):
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def tf32_capable(device) -> bool:
    """True on an Ampere or newer GPU (compute capability 8+), where TF32 exists."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


@contextlib.contextmanager
def tf32(device) -> Iterator[bool]:
    """Allow TF32 matmuls and convolutions within the block on an Ampere+ GPU; yields whether it
    did. The flags the process had before come back when the block ends, also on an error."""
    if not tf32_capable(device):
        yield False
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Bit-reproducible GPU kernels within the block (``config.deterministic``); a no-op when
    ``enabled`` is False. The previous settings come back when the block ends.

    * ``torch.use_deterministic_algorithms(True)``: ops pick their deterministic kernel (or raise
      naming an op that has none; the model's one such op, the bilinear upsampling's backward,
      has a deterministic path in promptmoe/model.py);
    * cuDNN without its autotuner (``benchmark``), in its deterministic mode;
    * ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless already set. cuBLAS sizes its workspaces at the
      first matmul of the process: the command line (``--deterministic``) sets the variable
      before any GPU work; in Python set ``os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"``
      first thing when a GPU matmul runs before training starts.

    Deterministic kernels are slower; a CPU is deterministic without any of this.
    """
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             os.environ.get(CUBLAS_ENV))
    if saved[-1] is None:
        os.environ[CUBLAS_ENV] = CUBLAS_DETERMINISTIC
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:4]
        if saved[-1] is None:
            os.environ.pop(CUBLAS_ENV, None)


def _to_float32(out):
    if torch.is_tensor(out):
        return out.float()
    return out.to(dtype=torch.float32)  # ImageFeatures


def frozen_autocast(method):
    """Decorator for a FrozenCLIP method whose first argument is a tensor on the target device:
    run it under the autocast of ``self.config.precision`` and return float32 results."""

    @functools.wraps(method)
    def wrapper(self, x, *args, **kwargs):
        precision = getattr(self.config, "precision", "fp32")
        dtype = autocast_dtype(precision, x.device)
        if dtype is None:
            return method(self, x, *args, **kwargs)
        with contextlib.ExitStack() as scope:
            if precision == "auto":  # the float32 remainder of the call may use TF32
                scope.enter_context(tf32(x.device))
            scope.enter_context(torch.autocast(x.device.type, dtype=dtype))
            out = method(self, x, *args, **kwargs)
        return _to_float32(out)

    return wrapper
