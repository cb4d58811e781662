import numpy as np
import torch

from promptmoe.config import PromptMoEConfig
from promptmoe.evaluate import predict
from promptmoe.loading import OrderSampler, default_workers, make_loader
from promptmoe.model import build_model
from promptmoe.train import train
from test_train import FixedDataset, _cfg


class NamedDataset(FixedDataset):
    """FixedDataset with the fields evaluation reads (category, image_path)."""

    def __getitem__(self, i):
        return {**super().__getitem__(i), "category": "c", "image_path": f"img{i}.png"}


def test_default_workers_and_pinning():
    assert default_workers("cpu") == 0  # workers would compete with the model for the cores
    loader = make_loader(FixedDataset(4), 2, "cpu", num_workers=None)
    assert loader.num_workers == 0 and not loader.pin_memory


def test_order_sampler_follows_the_order_it_is_given():
    s = OrderSampler(range(3))
    assert list(s) == [0, 1, 2]
    s.order = [2, 0, 1]
    assert list(s) == [2, 0, 1] and len(s) == 3


def test_predictions_do_not_depend_on_the_worker_count():
    model = build_model(PromptMoEConfig.tiny()).eval()
    ds = NamedDataset(6)
    a = predict(model, ds, batch_size=4, progress=False, num_workers=0)
    b = predict(model, ds, batch_size=4, progress=False, num_workers=2)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.maps, b.maps)
    assert b.paths == [f"img{i}.png" for i in range(6)]  # dataset order kept


def test_uncached_training_does_not_depend_on_the_worker_count(tmp_path):
    a = train(_cfg(), FixedDataset(), tmp_path / "a", cache_features=False, num_workers=0,
              progress=False)
    b = train(_cfg(), FixedDataset(), tmp_path / "b", cache_features=False, num_workers=2,
              progress=False)
    for k, v in a.model.trainable_state_dict().items():
        assert torch.equal(v, b.model.trainable_state_dict()[k]), k
    assert a.log["total"].tolist() == b.log["total"].tolist()
