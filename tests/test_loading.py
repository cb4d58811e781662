"""Tests for promptmoe/loading.py: worker counts, order, and loaders whose workers end with them."""
import gc
import multiprocessing
import threading

import numpy as np
import pytest
import torch

from promptmoe.config import PromptMoEConfig
from promptmoe.evaluate import evaluate, predict
from promptmoe.loading import Loader, OrderSampler, batches, default_workers, make_loader
from promptmoe.model import build_model
from promptmoe.train import train
from test_train import FixedDataset, _cfg


class NamedDataset(FixedDataset):
    """FixedDataset with the fields evaluation reads (category, image_path)."""

    def __getitem__(self, i):
        return {**super().__getitem__(i), "category": "c", "image_path": f"img{i}.png"}


class BrokenDataset(NamedDataset):
    """Item ``bad`` cannot be read (a corrupt file, say): the loader raises mid-epoch."""

    bad = 5

    def __getitem__(self, i):
        if i == self.bad:
            raise OSError(f"image {i} is corrupt")
        return super().__getitem__(i)


def _loader_threads():
    names = ("QueueFeederThread", "_pin_memory_loop")
    return [t for t in threading.enumerate() if any(n in t.name for n in names)]


def _workers():
    return [p for p in multiprocessing.active_children() if p.is_alive()]


def test_default_workers_and_pinning(monkeypatch):
    assert default_workers("cpu") == 0  # workers would compete with the model for the cores
    loader = make_loader(FixedDataset(4), 2, "cpu", num_workers=None)
    assert loader.num_workers == 0 and not loader.pin_memory
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_workers("cuda") == 8  # one per core but one, at most 8
    loader = make_loader(FixedDataset(4), 2, "cuda", num_workers=2, sampler=OrderSampler(range(4)))
    assert loader.pin_memory and loader.persistent_workers and loader.prefetch_factor == 4


def test_order_sampler_follows_the_order_it_is_given():
    s = OrderSampler(range(3))
    assert list(s) == [0, 1, 2]
    s.order = [2, 0, 1]
    assert list(s) == [2, 0, 1] and len(s) == 3


def test_predictions_do_not_depend_on_the_worker_count(each_device):
    model = build_model(PromptMoEConfig.tiny(), device=each_device).eval()
    ds = NamedDataset(6)
    a = predict(model, ds, batch_size=4, progress=False, num_workers=0)
    b = predict(model, ds, batch_size=4, progress=False, num_workers=2)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.maps, b.maps)
    assert b.paths == [f"img{i}.png" for i in range(6)]  # dataset order kept


def test_uncached_training_does_not_depend_on_the_worker_count(tmp_path, each_device):
    # deterministic kernels: bit-identical on CUDA too (a CPU is deterministic anyway)
    kw = dict(cache_features=False, progress=False, device=each_device)
    a = train(_cfg(deterministic=True), FixedDataset(), tmp_path / "a", num_workers=0, **kw)
    b = train(_cfg(deterministic=True), FixedDataset(), tmp_path / "b", num_workers=2, **kw)
    for k, v in a.model.trainable_state_dict().items():
        assert torch.equal(v, b.model.trainable_state_dict()[k]), k
    assert a.log["total"].tolist() == b.log["total"].tolist()


# ----------------------------------------------------------------- worker lifetime
def test_a_progress_bar_never_starts_a_second_iterator(monkeypatch):
    """tqdm.auto calls iter() on what it wraps: around a loader that made a second iterator,
    with its own worker processes (the cause of the tracebacks on a GPU, promptmoe/loading.py)."""
    from tqdm.auto import tqdm

    made = []
    real = Loader.__iter__
    monkeypatch.setattr(Loader, "__iter__", lambda self: (made.append(1), real(self))[1])
    with make_loader(NamedDataset(4), 2, "cpu", num_workers=0) as loader:
        paths = [b["image_path"] for b in batches(loader, progress=True, desc="scoring")]
        assert paths == [["img0.png", "img1.png"], ["img2.png", "img3.png"]] and len(made) == 1
        made.clear()
        assert len(list(tqdm(loader, disable=True))) == 2
        assert len(made) == 2  # what batches() avoids: one iterator more than the loop uses


def test_a_loader_left_mid_epoch_ends_its_workers_with_its_block():
    with make_loader(NamedDataset(8), 2, "cpu", num_workers=2,
                     sampler=OrderSampler(range(8))) as loader:
        assert isinstance(loader, Loader)
        for epoch in range(2):  # persistent workers: the same two serve both epochs
            batch = next(iter(loader))  # then leave the epoch: prefetched batches are in flight
            assert batch["image_path"] == ["img0.png", "img1.png"]
            assert len(_workers()) == 2
    assert _workers() == [] and _loader_threads() == []  # nothing left for the collector
    loader.close()  # a second close does nothing


def test_training_that_fails_mid_epoch_leaves_no_worker_behind(tmp_path, device):
    with pytest.raises(OSError, match="image 5 is corrupt") as failure:
        train(_cfg(), BrokenDataset(), tmp_path, cache_features=False, num_workers=2,
              progress=False, device=device)
    # the traceback (which a notebook keeps) holds train()'s frames, and with them the loader:
    # its workers are nonetheless gone
    assert failure.traceback and _workers() == [] and _loader_threads() == []


def test_scoring_that_fails_mid_way_leaves_no_worker_behind(device):
    model = build_model(PromptMoEConfig.tiny(), device=device).eval()
    with pytest.raises(OSError, match="image 5 is corrupt") as failure:
        predict(model, BrokenDataset(), batch_size=2, progress=False, num_workers=2)
    assert failure.traceback and _workers() == [] and _loader_threads() == []


def test_predict_takes_its_device_from_the_model(device):
    model = build_model(PromptMoEConfig.tiny(), device=device).eval()
    with pytest.raises(ValueError, match="device='meta' but the model's weights are on cpu"):
        predict(model, NamedDataset(2), device="meta", progress=False)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from promptmoe.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("synth")
    make_synthetic(root, size=64, n_train=1, n_test_good=2, n_test_bad=2,
                   categories=["brick", "pill", "coins"], progress=False)
    return root


def test_training_and_evaluation_with_workers_print_nothing(synth, tmp_path, capfd, device):
    """Twice in one process, with worker processes: stdout/stderr at the file-descriptor level
    (where the workers and the queue threads would print) stay empty."""
    from promptmoe.data import load_dataset

    seen = load_dataset("synthetic", synth / "seen", 64, verbose=False)
    unseen = load_dataset("synthetic", synth / "unseen", 64, verbose=False)
    capfd.readouterr()
    for run in range(2):
        for cache in ("none", "memory"):
            res = train(_cfg(epochs=2), seen, tmp_path / f"{run}{cache}", cache_features=cache,
                        num_workers=2, progress=False, device=device)
            evaluate(res.model, {"unseen": unseen}, compat=False, progress=False, num_workers=2)
        gc.collect()  # what a kernel's collector does at some point: nothing may happen then
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    assert _workers() == [] and _loader_threads() == []


def test_a_kernel_shows_no_traceback_from_the_loaders(synth, tmp_path, each_device):
    """As chapters 4-6 run: in a Jupyter kernel, with progress bars (tqdm's notebook widget) and
    worker processes (pinned memory on CUDA), training and evaluation twice, then a garbage
    collection. On an H200 this printed ``Exception in thread QueueFeederThread`` tracebacks
    into the page, and so did this test on a CPU before the fix (``can only test a child
    process``, ``Bad file descriptor``, ``semaphore or lock released too many times``): no output
    may go to stderr, and no cell may fail."""
    import nbformat
    from nbclient import NotebookClient

    setup = f"""
import gc, time
from pathlib import Path
from promptmoe.config import PromptMoEConfig
from promptmoe.data import load_dataset
from promptmoe.evaluate import evaluate
from promptmoe.train import train
root, out, device = Path({str(synth)!r}), Path({str(tmp_path)!r}), {str(each_device)!r}
seen = load_dataset("synthetic", root / "seen", 64, verbose=False)
unseen = load_dataset("synthetic", root / "unseen", 64, verbose=False)
cfg = PromptMoEConfig.tiny(epochs=2, warmup_epochs=1, batch_size=4)
"""
    run = """
for cache in ("none", "memory"):
    res = train(cfg, seen, out / f"{{RUN}}{cache}", cache_features=cache, num_workers=2,
                device=device, progress=True)
    evaluate(res.model, {"unseen": unseen}, compat=False, num_workers=2, progress=True)
gc.collect()
time.sleep(1)  # a queue thread that fails late would print by now
"""
    cells = [setup] + [run.replace("{{RUN}}", str(i)) for i in range(2)]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    printed = [o.get("text", "") for c in nb.cells for o in c.outputs
               if o.output_type == "stream" and o.name == "stderr"]
    errors = [o for c in nb.cells for o in c.outputs if o.output_type == "error"]
    assert printed == [] and errors == []
