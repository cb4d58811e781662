"""The command line's shared pieces: value checks that fail before any model work, and options.

Every check raises :class:`UsageError` with one line naming the value at fault; ``promptmoe.cli``
prints it and exits with code 2. The ``add_*`` functions add the options that several commands
share (``train``, ``eval``, ``predict``, ``ablate``), so their help reads the same everywhere.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import List, Optional

PRESETS = ("paper", "small", "micro", "tiny")  # as promptmoe.config.PRESETS (not imported: --help stays fast)


def preset_or_default(name: Optional[str]) -> str:
    from .runtime import default_preset

    return name or default_preset()


class UsageError(ValueError):
    """A bad command-line value; main() prints it on one line and exits with code 2."""


def config_overrides(pairs: List[str]) -> dict:
    """--set key=value pairs; values parsed as JSON when they can be (numbers, lists, booleans).

    An unknown key, or a value of the wrong type for its field, is an error naming the pair.
    """
    from .config import PromptMoEConfig

    fields = {f.name: f for f in dataclasses.fields(PromptMoEConfig)}
    defaults = PromptMoEConfig.tiny().to_dict()
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UsageError(f"--set {pair!r}: write it as key=value, e.g. --set top_k=2")
        key, value = pair.split("=", 1)
        if key not in fields:
            raise UsageError(f"--set {pair!r}: unknown config key {key!r}; known keys: "
                             f"{', '.join(sorted(fields))}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        default = defaults.get(key)
        if not same_kind(parsed, default):
            kind = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
                    list: "a list", tuple: "a list"}.get(type(default), type(default).__name__)
            raise UsageError(f"--set {pair!r}: {key} takes {kind} "
                             f"(like {json.dumps(default)}), not {value!r}")
        out[key] = parsed
    return out


def same_kind(value, default) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple)) and all(same_kind(v, default[0]) for v in value
                                                        if default)
    return isinstance(value, type(default))


def config_from(preset: str, changes: dict):
    """The preset with ``changes``; an invalid combination is a UsageError naming the values."""
    from .config import PromptMoEConfig

    try:
        return PromptMoEConfig.from_preset(preset, **changes)
    except (TypeError, ValueError) as err:
        shown = " ".join(f"{k}={json.dumps(v)}" for k, v in changes.items())
        raise UsageError(f"config {shown or '(preset ' + preset + ')'}: {err}") from err


def check_out(out, what: str = "--out") -> Path:
    """Create ``out`` (a folder) and prove it writable BEFORE any long work; else a UsageError."""
    try:
        path = Path(out).expanduser()
        if path.exists() and not path.is_dir():
            raise UsageError(f"{what} {out}: is a file, not a folder")
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".promptmoe-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except UsageError:
        raise
    except (OSError, ValueError) as err:  # read-only, no permission, a file as parent, NUL byte
        raise UsageError(f"{what} {out!r} cannot be written: {err}") from err
    return path


def check_fraction(value: float, what: str) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise UsageError(f"{what} {value!r}: must be a number in [0, 1]")
    return value


def mask_options(args) -> dict:
    """--mask-threshold / --mask-dir / --mask-suffix (and, train and eval, --normal-dir /
    --abnormal-dir) as load_dataset / score_images keywords."""
    out = {}
    if getattr(args, "mask_threshold", None) is not None:
        t = args.mask_threshold
        if not (math.isfinite(t) and 0 <= t < 65535):
            raise UsageError(f"--mask-threshold {t!r}: must be a raw mask value in [0, 65535)")
        out["mask_threshold"] = t
    if getattr(args, "mask_dir", None) is not None:
        if not Path(args.mask_dir).expanduser().is_dir():
            raise UsageError(f"--mask-dir {args.mask_dir}: no such folder")
        out["mask_dir"] = Path(args.mask_dir).expanduser()
    if getattr(args, "mask_suffix", None) is not None:
        out["mask_suffix"] = args.mask_suffix
    for key in ("normal_dirs", "abnormal_dirs"):  # train and eval only
        if getattr(args, key, None):
            from .data.folder import parse_dir_names

            parse_dir_names(getattr(args, key), f"--{key[:-1].replace('_', '-')}")  # a path on disk: exit 2
            out[key] = getattr(args, key)
    return out


def add_mask_options(p, folder: bool = True) -> None:
    p.add_argument("--mask-threshold", dest="mask_threshold", type=float, default=None,
                   help="mask foreground = raw value > this (default: the documented rule: class-id "
                   "masks > 0, else > 127 for 8-bit, so JPEG ringing does not grow the defect)")
    if folder:
        p.add_argument("--mask-dir", dest="mask_dir", default=None,
                       help="folder format: a separate folder of masks (matched by file stem)")
        p.add_argument("--mask-suffix", dest="mask_suffix", default=None,
                       help="folder format: suffix of masks beside their images (default _mask, "
                       "i.e. <stem>_mask.png)")


def add_label_options(p) -> None:
    """--normal-dir / --abnormal-dir (train, eval): which folders of the folder format are which."""
    p.add_argument("--normal-dir", dest="normal_dirs", action="append", default=None, metavar="NAME",
                   help="folder format: a folder of normal images, by name at any depth, case ignored "
                   "(repeatable; replaces the default good, normal, ok); every other folder is "
                   "anomalous, e.g. --normal-dir MT_Free (eval: for every folder-format --data set)")
    p.add_argument("--abnormal-dir", dest="abnormal_dirs", action="append", default=None,
                   metavar="NAME", help="folder format: a folder of defective images (repeatable); "
                   "once given, folders named by neither flag are left out, with a warning")


def add_speed_flags(p: argparse.ArgumentParser) -> None:
    """--workers and --precision, shared by train, eval and predict."""
    p.add_argument("--workers", type=int, default=None,
                   help="data loader processes (default: cores - 1, at most 8, on a GPU; 0 on CPU)")
    p.add_argument("--precision", choices=("fp32", "auto", "bf16", "fp16"), default="auto",
                   help="frozen towers: auto = bf16/fp16 autocast (+TF32) on a GPU, fp32 on a "
                   "CPU; the trained parts always run in fp32 (default: auto)")
