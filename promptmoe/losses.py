"""Losses of PromptMoE (Eq. 4, 5, 8): focal + dice on the map, BCE on the score, and the two
auxiliary losses that keep the experts used (balance) and different (decouple).

Taught in chapter 4. REFERENCE.md D6. ``balance_loss`` and ``decouple_loss`` are returned
without alpha and beta so they can be checked against the formulas; :func:`total_loss` weighs them.
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping

import torch
import torch.nn.functional as F

EPS = 1e-6


def focal_loss(pred: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss on probabilities, averaged over pixels (Lin et al. 2017).

    FL = -[m (1-p)^gamma log p + (1-m) p^gamma log(1-p)]

    Args:
        pred: (B, H, W) abnormal probability in [0, 1]; target: (B, H, W) mask in {0, 1}.
    """
    p = pred.clamp(EPS, 1 - EPS)
    pos = target * (1 - p).pow(gamma) * torch.log(p)
    neg = (1 - target) * p.pow(gamma) * torch.log(1 - p)
    return -(pos + neg).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per image, averaged over the batch (Milletari et al. 2016).

    Dice = 1 - (2 sum(p m) + smooth) / (sum p + sum m + smooth)
    """
    p, m = pred.flatten(1), target.flatten(1)  # (B, HW)
    inter = (p * m).sum(dim=1)
    return (1 - (2 * inter + smooth) / (p.sum(dim=1) + m.sum(dim=1) + smooth)).mean()


def score_bce(score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """BCE between the image score s in [0, 1] and the label c in {0, 1}."""
    return F.binary_cross_entropy(score.clamp(EPS, 1 - EPS), label.float())


def balance_loss(routing: Mapping[str, object]) -> torch.Tensor:
    """Eq. 4 without alpha: sum over layers and branches of E * sum_j (mean_i p_ij)^2.

    Args:
        routing: {branch: Routing} with ``probs`` (B, P, E), softmax over all E logits.
    Returns:
        A scalar; 1 per layer and branch when the batch uses every expert equally, E when it
        always puts all its mass on one expert.
    """
    total = None
    for r in routing.values():
        probs = r.probs  # (B, P, E)
        E = probs.shape[-1]
        per_layer = E * probs.mean(dim=0).pow(2).sum(dim=-1)  # (P,)
        total = per_layer.sum() if total is None else total + per_layer.sum()
    return total if total is not None else torch.zeros(())


def decouple_loss(pools: Iterable[torch.Tensor]) -> torch.Tensor:
    """Eq. 5 without beta: sum over pools of ||S_hat S_hat^T - I||_F^2.

    Args:
        pools: expert pools (E, M, D); S_hat holds the L2-normalised mean embedding of each expert.
    """
    total = None
    for pool in pools:
        s_hat = F.normalize(pool.mean(dim=1), dim=-1)  # (E, D)
        gram = s_hat @ s_hat.T  # (E, E)
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        term = (gram - eye).pow(2).sum()
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


def total_loss(outputs: Mapping[str, object], gt_mask: torch.Tensor, gt_label: torch.Tensor,
               pools: Iterable[torch.Tensor], alpha: float, beta: float,
               gamma: float = 2.0) -> Dict[str, torch.Tensor]:
    """Eq. 8: BCE(s, c) + Dice(M, m) + Focal(M, m) + alpha L_balance + beta L_decouple.

    Args:
        outputs: the model's forward dict (``anomaly_map``, ``pred_score``, ``routing``).
        gt_mask: (B, H, W) in {0, 1}; gt_label: (B,) in {0, 1}.
        pools: the model's expert pools (``model.expert_pools()``).
    Returns:
        {"total", "focal", "dice", "bce", "balance", "decouple"}; balance and decouple unweighted.
    """
    amap = outputs["anomaly_map"]
    terms = {
        "focal": focal_loss(amap, gt_mask, gamma),
        "dice": dice_loss(amap, gt_mask),
        "bce": score_bce(outputs["pred_score"], gt_label),
        "balance": balance_loss(outputs["routing"]).to(amap.device),
        "decouple": decouple_loss(pools).to(amap.device),
    }
    terms["total"] = (terms["focal"] + terms["dice"] + terms["bce"]
                      + alpha * terms["balance"] + beta * terms["decouple"])
    return terms
