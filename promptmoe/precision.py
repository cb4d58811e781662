"""Mixed precision for the frozen towers: autocast where it pays, fp32 for what trains.

Taught in chapter 5. ``config.precision`` picks it (the command line defaults to ``auto``):

* ``"fp32"``: everything in float32 (exact; the config's default and the reference that the
  tests and the book's hand-written checks compare with);
* ``"auto"``: on a GPU autocast the frozen image and text towers to bfloat16 where the GPU has it
  (Ampere and newer) and to float16 otherwise (a Colab T4), and let the remaining float32 matmuls
  use TF32 on Ampere+; on a CPU stay in float32;
* ``"bf16"`` / ``"fp16"``: that autocast dtype on any device (``bf16`` runs on a CPU too).

Only the frozen towers run under autocast; their outputs come back as float32, so the prompt
learner, the maps and the loss stay in float32 (and so do the gradients and Adam's state).
"""
from __future__ import annotations

import functools
import logging
from typing import Optional

import torch

PRECISIONS = ("fp32", "auto", "bf16", "fp16")
log = logging.getLogger(__name__)


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


def enable_tf32(device) -> bool:
    """Allow TF32 matmuls/convolutions on an Ampere+ GPU; True when it did."""
    device = torch.device(device)
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        return False
    if not torch.backends.cuda.matmul.allow_tf32:
        log.info("TF32 matmuls enabled on %s", torch.cuda.get_device_name(device))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


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
        if precision == "auto":
            enable_tf32(x.device)
        with torch.autocast(x.device.type, dtype=dtype):
            out = method(self, x, *args, **kwargs)
        return _to_float32(out)

    return wrapper
