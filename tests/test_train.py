import pandas as pd
import pytest
import torch

from promptmoe.checkpoint import CheckpointError, load_model, read_checkpoint
from promptmoe.config import PromptMoEConfig
from promptmoe.train import LOG_COLUMNS, epoch_order, learning_rate, train


class FixedDataset(torch.utils.data.Dataset):
    """Eight random 64 px images, every other one with a square defect."""

    def __init__(self, n=8):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 64, 64, generator=g)
        self.masks = torch.zeros(n, 64, 64)
        for i in range(1, n, 2):
            self.masks[i, 8 * (i % 4):8 * (i % 4) + 16, 20:36] = 1

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "gt_mask": self.masks[i],
                "gt_label": torch.tensor(int(self.masks[i].any())), "has_mask": torch.tensor(True)}


def _cfg(**kw):
    return PromptMoEConfig.tiny(**{**dict(epochs=2, warmup_epochs=1, batch_size=4), **kw})


def test_learning_rate_warmup_is_linear_then_constant():
    cfg = PromptMoEConfig(lr=1e-3, warmup_epochs=3)
    lrs = [learning_rate(s, 10, cfg) for s in range(40)]
    assert lrs[0] == pytest.approx(1e-3 / 30) and lrs[29] == pytest.approx(1e-3)
    assert all(b > a for a, b in zip(lrs[:29], lrs[1:30])) and set(lrs[30:]) == {1e-3}
    assert learning_rate(0, 10, PromptMoEConfig(warmup_epochs=0)) == 1e-3


def test_epoch_order_depends_only_on_seed_and_epoch():
    assert torch.equal(epoch_order(10, 0, 3), epoch_order(10, 0, 3))
    assert not torch.equal(epoch_order(10, 0, 3), epoch_order(10, 0, 4))
    assert sorted(epoch_order(10, 1, 0).tolist()) == list(range(10))


@pytest.mark.parametrize("cache", [True, False])
def test_training_writes_log_and_checkpoint(tmp_path, cache, device):
    res = train(_cfg(), FixedDataset(), tmp_path, cache_features=cache, progress=False,
                device=device)
    log = pd.read_csv(tmp_path / "train_log.csv")
    assert tuple(log.columns) == LOG_COLUMNS and len(log) == 4  # 2 epochs x 2 steps
    assert log["step"].tolist() == [0, 1, 2, 3] and log["epoch"].tolist() == [1, 1, 2, 2]
    assert log["lr"].tolist() == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])
    recomputed = log.focal + log.dice + log.bce + 0.01 * log.balance + 0.005 * log.decouple
    assert recomputed.values == pytest.approx(log.total.values, rel=1e-5)
    cfg, tensors, meta = read_checkpoint(res.checkpoint)
    assert cfg == _cfg() and meta["epoch"] == 2 and meta["global_step"] == 4
    assert not any(k.startswith("model.backbone") for k in tensors)
    assert any(k.startswith("optim.") and k.endswith("exp_avg") for k in tensors)


def test_cached_and_uncached_training_agree(tmp_path, each_device):
    cfg = _cfg(deterministic=True)  # fp32 towers: the cache holds float32 features
    a = train(cfg, FixedDataset(), tmp_path / "a", cache_features=True, progress=False,
              device=each_device)
    b = train(cfg, FixedDataset(), tmp_path / "b", cache_features=False, progress=False,
              device=each_device)
    # The cache encodes the images in dataset order, the uncached run in each epoch's shuffled
    # batches. On a CPU an image's features do not depend on its batch (float32 tolerance). On
    # CUDA a GEMM may take another kernel for another batch: features differ in the last bits,
    # and Adam's first steps move a weight by about lr * sign(gradient), so a gradient near 0
    # may flip its step: up to 2 x lr (2e-3) after the 4 steps here.
    tol = {} if each_device.type == "cpu" else {"atol": 2e-3, "rtol": 0.0}
    for k, v in a.model.trainable_state_dict().items():
        torch.testing.assert_close(v, b.model.trainable_state_dict()[k], **tol)
    # the first step starts from the same weights: its loss agrees to float rounding everywhere
    assert a.log["total"].iloc[0] == pytest.approx(b.log["total"].iloc[0], rel=1e-5)


def test_resume_reaches_the_same_weights(tmp_path, each_device):
    # deterministic kernels: bit-identical on CUDA too (a CPU is deterministic anyway)
    kw = dict(progress=False, device=each_device)
    straight = train(_cfg(deterministic=True), FixedDataset(), tmp_path / "straight", **kw)
    train(_cfg(epochs=1, deterministic=True), FixedDataset(), tmp_path / "split", **kw)
    resumed = train(_cfg(deterministic=True), FixedDataset(), tmp_path / "split", resume=True,
                    **kw)
    for k, v in straight.model.trainable_state_dict().items():
        assert torch.equal(v, resumed.model.trainable_state_dict()[k]), k
    assert pd.read_csv(tmp_path / "split" / "train_log.csv").equals(
        pd.read_csv(tmp_path / "straight" / "train_log.csv"))


def test_existing_work_is_never_overwritten_and_configs_must_match(tmp_path, device):
    train(_cfg(epochs=1), FixedDataset(), tmp_path, progress=False, device=device)
    with pytest.raises(CheckpointError, match="exists: pass resume=True"):
        train(_cfg(), FixedDataset(), tmp_path, progress=False, device=device)
    with pytest.raises(CheckpointError, match="top_k: checkpoint 4 vs now 2"):
        train(_cfg(top_k=2), FixedDataset(), tmp_path, resume=True, progress=False, device=device)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(_cfg(), FixedDataset(), tmp_path / "empty", resume=True, progress=False,
              device=device)


def test_loaded_checkpoint_scores_like_the_trained_model(tmp_path, device):
    res = train(_cfg(epochs=1), FixedDataset(), tmp_path, progress=False, device=device)
    model, meta = load_model(res.checkpoint, device=device)
    images = FixedDataset().images[:3]
    with torch.no_grad():
        a, b = res.model.eval()(images), model(images)
    torch.testing.assert_close(a["anomaly_map"], b["anomaly_map"])
    torch.testing.assert_close(a["pred_score"], b["pred_score"])
