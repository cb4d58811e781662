"""Helpers shared by the book's chapters: one setup call, data locations, run folders.

Every chapter starts with :func:`chapter_setup`, which picks the preset in one place
(:func:`promptmoe.runtime.default_preset`), seeds everything, and prints which preset and data
the chapter's numbers come from. In quick mode (the ``micro`` preset offline; ``tiny`` in unit
tests) the data is the synthetic set generated offline; with the ``paper`` preset the real
datasets are looked up under ``PROMPTMOE_DATA`` (one folder per dataset key:
``$PROMPTMOE_DATA/mvtec``, ``.../visa`` ...).
"""
from __future__ import annotations

import html
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .config import PromptMoEConfig
from .runtime import default_preset, get_device, is_quick, set_seed

DATA_ENV = "PROMPTMOE_DATA"
RUNS_ENV = "PROMPTMOE_RUNS"
QUICK_NOTES = {
    "micro": ("quick mode: the micro CLIP, a 64-px CLIP pretrained by this project on synthetic "
              "images (chapter 10), on synthetic data. It finds defects on categories it never saw, "
              "but its numbers are NOT results of the paper's setting (ViT-L/14 on MVTec AD and "
              "VisA); the paper's numbers are shown beside them."),
    "tiny": ("quick mode: a random-init tiny CLIP on synthetic data. Numbers below show that "
             "the code runs end to end; they are NOT results of the method. The paper's numbers "
             "are shown beside them."),
}
QUICK_NOTE = QUICK_NOTES["micro"]


DRIVE_ENV = "PROMPTMOE_DRIVE"  # "1": keep runs on Google Drive (Colab), they survive a disconnect
COLAB_DATA = Path("/content/data")
DRIVE_RUNS = Path("/content/drive/MyDrive/promptmoe_runs")


def on_colab() -> bool:
    """True inside Google Colab (its runtime sets ``COLAB_RELEASE_TAG``)."""
    return "COLAB_RELEASE_TAG" in os.environ or "COLAB_GPU" in os.environ


def data_home() -> Path:
    """Root of the datasets: ``$PROMPTMOE_DATA``; else ``/content/data`` on Colab, ``~/promptmoe_data``."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return COLAB_DATA if on_colab() else Path.home() / "promptmoe_data"


def runs_home() -> Path:
    """Where chapters write checkpoints and reports.

    ``$PROMPTMOE_RUNS`` if set; else, with ``PROMPTMOE_DRIVE=1`` (or after :func:`use_drive`),
    ``/content/drive/MyDrive/promptmoe_runs`` so that runs survive a Colab disconnect; else ``./runs``.
    """
    if os.environ.get(RUNS_ENV):
        return Path(os.environ[RUNS_ENV]).expanduser()
    if os.environ.get(DRIVE_ENV, "") not in ("", "0"):
        return DRIVE_RUNS
    return Path("runs")


def use_drive(mount: bool = True) -> Path:
    """Keep this session's runs on Google Drive: mount it (on Colab) and point :func:`runs_home` there."""
    if mount and on_colab() and not Path("/content/drive/MyDrive").is_dir():
        from google.colab import drive  # only exists on Colab

        drive.mount("/content/drive")
    os.environ[DRIVE_ENV] = "1"
    DRIVE_RUNS.mkdir(parents=True, exist_ok=True)
    print(f"runs are kept on Google Drive: {DRIVE_RUNS}")
    return DRIVE_RUNS


def synthetic_root(seed: int = 0, size: int = 128) -> Path:
    """The offline synthetic dataset (generated on first use, reused afterwards)."""
    from .data.synthetic import make_synthetic

    root = data_home() / f"synthetic_s{seed}_{size}"
    root.parent.mkdir(parents=True, exist_ok=True)
    # chapters may run in parallel (pytest -n, two builds): one writer, the others wait for it
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        try:
            import fcntl  # POSIX only; elsewhere chapters simply run one at a time
            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:
            pass
        make_synthetic(root, seed=seed, size=size, progress=False)
    return root


def find_dataset(key: str) -> Optional[Path]:
    """``$PROMPTMOE_DATA/<key>`` if it exists; otherwise print how to get it and return None."""
    root = data_home() / key
    if root.is_dir() and any(root.iterdir()):
        return root
    from .data import DATASETS

    fmt = DATASETS[key]
    how = getattr(fmt, "INSTRUCTIONS", "") or f"see the layout below\n{fmt.LAYOUT}"
    print(f"[{key}] not found at {root}. To use it: {how}".strip())
    return None


def fresh_dir(name: str) -> Path:
    """An empty run folder ``runs_home()/name`` (chapters re-run from scratch)."""
    path = runs_home() / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


@dataclass
class Chapter:
    """What a chapter needs to know about where it runs."""

    preset: str
    config: PromptMoEConfig
    device: torch.device
    quick: bool
    data: str  # words for plots and tables: which data the numbers come from

    def label(self) -> dict:
        return {"preset": self.preset, "data": self.data}


def chapter_setup(seed: int = 0, device=None, data: Optional[str] = None,
                  preset: Optional[str] = None, **overrides) -> Chapter:
    """Pick the preset, seed everything, and say plainly what the chapter's numbers are.

    ``device`` follows :func:`promptmoe.runtime.get_device` (None: CUDA when present, else CPU).
    ``data`` names the data of a chapter that uses the same images on every device (chapters 2,
    3 and 9 work on synthetic images even on a GPU); by default it follows the preset: synthetic
    in quick mode, the real datasets under :func:`data_home` otherwise. ``preset`` fixes the
    preset for a chapter that is about one (chapter 10: ``micro``); by default
    :func:`~promptmoe.runtime.default_preset` decides.
    ``precision`` (an override like any config field): on a GPU ``"auto"`` by default, the
    command line's choice (autocast of the frozen towers, 6.5x faster than fp32 on an H200,
    REFERENCE.md section 5); on a CPU ``"fp32"``. A chapter that compares hand-written float32
    code with the package passes ``precision="fp32"``.
    """
    preset = preset or default_preset()
    device = get_device(device, verbose=True)
    overrides.setdefault("precision", "auto" if device.type == "cuda" else "fp32")
    config = PromptMoEConfig.from_preset(preset, seed=seed, **overrides)
    set_seed(seed)
    quick = is_quick(preset)
    if quick and device.type == "cpu":
        # the offline models' ops are too small to gain from threads; two OpenMP threads on a busy
        # 2-core machine made training 10-20x slower
        torch.set_num_threads(1)
    import matplotlib

    from .plots import BOOK_STYLE

    matplotlib.rcParams.update(BOOK_STYLE)  # fonts that stay >= 9 pt in the book's column
    _dash_for_missing()
    if data is None:
        data = "synthetic (generated offline)" if quick else "real datasets under " + str(data_home())
    print(f"preset: {preset} ({config.clip_model}, {config.image_size} px, blocks {config.layers})")
    print(f"device: {device}; data: {data}")
    if device.type == "cuda":
        print(f"precision of the frozen CLIP towers: {config.precision}")
    if quick:
        print("NOTE:", QUICK_NOTES[preset])
    return Chapter(preset, config, device, quick, data)


def check(name: str, value, expected) -> None:
    """Print ``name: value`` for the reader and fail loudly if it is not ``expected``.

    Chapters are stored without outputs, so nbval has no stored output to compare against;
    cells that show a shape or a check call this instead, and CI fails when it does not hold.
    """
    if isinstance(value, torch.Size):
        value = tuple(value)
    if isinstance(expected, torch.Size):
        expected = tuple(expected)
    ok = value == expected if not torch.is_tensor(value) else bool(torch.equal(value, expected))
    print(f"{name}: {value}  {'ok' if ok else 'MISMATCH, expected ' + repr(expected)}")
    if not ok:
        raise AssertionError(f"{name} is {value!r}, expected {expected!r}")


def check_close(name: str, a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Like :func:`check` for tensors that must agree to floating-point precision."""
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    print(f"{name}: equal (max abs difference {diff:.1e})  ok")


def _dataframe_html(df) -> str:
    """pandas' notebook HTML of ``df`` with missing values shown as "-" (same row/column limits)."""
    import pandas as pd

    return df.to_html(na_rep="-", notebook=True, max_rows=pd.get_option("display.max_rows"),
                      max_cols=pd.get_option("display.max_columns"),
                      show_dimensions=pd.get_option("display.show_dimensions"))


def _dash_for_missing() -> None:
    """In a notebook, display every DataFrame with NaN as "-" (a metric undefined for a category)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    import pandas as pd

    shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, _dataframe_html)


def table_html(df, title: str = "", precision: Optional[int] = None) -> str:
    """``title`` and ``df`` as one HTML block; missing values (NaN) shown as "-"."""
    fmt = None if precision is None else (lambda v: f"{v:.{precision}f}")
    head = f'<p class="pm-table-title">{html.escape(title)}</p>' if title else ""
    body = df.to_html(na_rep="-", float_format=fmt, border=0, classes="pm-table")
    return f'<div class="pm-table-block">{head}{body}</div>'


def show_table(df, title: str = "", precision: Optional[int] = None) -> None:
    """Display a table with its title directly above it, as ONE output (NaN shown as "-").

    A ``print(title)`` followed by ``display(df)`` gives two outputs, which the book's build may
    reorder or separate; this helper keeps them together.
    """
    from IPython.display import HTML, display

    display(HTML(table_html(df, title, precision)))
