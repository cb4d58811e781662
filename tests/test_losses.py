import math

import torch

from promptmoe import losses
from promptmoe.prompts import Routing


def test_focal_hand_computed():
    p = torch.tensor([[[0.9, 0.2]]])
    m = torch.tensor([[[1.0, 0.0]]])
    # pixel 1: -(0.1^2) log 0.9 ; pixel 2: -(0.2^2) log 0.8 ; mean of the two
    ref = (-(0.01) * math.log(0.9) - 0.04 * math.log(0.8)) / 2
    assert abs(losses.focal_loss(p, m).item() - ref) < 1e-6
    # gamma = 0 is plain BCE
    bce = torch.nn.functional.binary_cross_entropy(p, m)
    torch.testing.assert_close(losses.focal_loss(p, m, gamma=0.0), bce)


def test_dice_hand_computed():
    p = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])
    m = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # inter = 0.5 + 1 = 1.5, sum p = 2, sum m = 2: 1 - (3 + 1) / (4 + 1)
    assert abs(losses.dice_loss(p, m).item() - (1 - 4 / 5)) < 1e-6
    two = torch.cat([p, torch.zeros_like(p)])
    # second image: empty mask, empty prediction: 1 - 1/1 = 0; mean of the batch
    assert abs(losses.dice_loss(two, torch.cat([m, torch.zeros_like(m)])).item() - 0.1) < 1e-6


def test_score_bce():
    s, c = torch.tensor([0.8, 0.3]), torch.tensor([1, 0])
    ref = -(math.log(0.8) + math.log(0.7)) / 2
    assert abs(losses.score_bce(s, c).item() - ref) < 1e-6


def _routing(probs):
    logits = probs.log()
    idx = logits.topk(1, -1).indices
    return Routing(logits, probs, idx, torch.ones_like(idx, dtype=probs.dtype))


def test_balance_loss_hand_computed():
    E = 4
    uniform = torch.full((3, 2, E), 1 / E)  # B=3, two layers
    assert abs(losses.balance_loss({"normal": _routing(uniform)}).item() - 2.0) < 1e-6
    one_hot = torch.zeros(3, 1, E)
    one_hot[..., 0] = 1.0
    assert abs(losses.balance_loss({"normal": _routing(one_hot)}).item() - E) < 1e-6
    probs = torch.tensor([[[0.7, 0.1, 0.1, 0.1]], [[0.1, 0.1, 0.1, 0.7]]])
    # batch mean (0.4, 0.1, 0.1, 0.4): 4 * (0.16 + 0.01 + 0.01 + 0.16) = 1.36; two branches
    got = losses.balance_loss({"normal": _routing(probs), "abnormal": _routing(probs)})
    assert abs(got.item() - 2 * 1.36) < 1e-5


def test_decouple_loss_hand_computed():
    orth = torch.eye(3)[:, None, :].repeat(1, 2, 1) * 5.0  # 3 experts, mean embeddings orthogonal
    assert losses.decouple_loss([orth]).item() < 1e-10
    same = torch.ones(3, 2, 4)  # identical experts: every off-diagonal cosine is 1
    assert abs(losses.decouple_loss([same]).item() - 6.0) < 1e-5
    pair = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])  # cos 45 deg: two off-diagonals of 1/2
    assert abs(losses.decouple_loss([pair, orth]).item() - 2 * 0.5) < 1e-5


def test_total_loss_weighs_the_terms():
    torch.manual_seed(0)
    amap = torch.rand(2, 4, 4)
    mask = (torch.rand(2, 4, 4) > 0.7).float()
    probs = torch.softmax(torch.randn(2, 3, 8), -1)
    out = {"anomaly_map": amap, "pred_score": torch.tensor([0.3, 0.9]),
           "routing": {"normal": _routing(probs)}}
    pools = [torch.randn(8, 5, 16)]
    t = losses.total_loss(out, mask, torch.tensor([0, 1]), pools, alpha=0.01, beta=0.005)
    ref = (losses.focal_loss(amap, mask) + losses.dice_loss(amap, mask)
           + losses.score_bce(out["pred_score"], torch.tensor([0, 1]))
           + 0.01 * losses.balance_loss(out["routing"]) + 0.005 * losses.decouple_loss(pools))
    torch.testing.assert_close(t["total"], ref)
    assert set(t) == {"total", "focal", "dice", "bce", "balance", "decouple"}
    # static prompts have no routing and no pools: the auxiliary terms are zero
    t0 = losses.total_loss({**out, "routing": {}}, mask, torch.tensor([0, 1]), [], 0.01, 0.005)
    assert t0["balance"].item() == 0 and t0["decouple"].item() == 0
