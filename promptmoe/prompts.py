"""Learnable state prompts: the VGMoP module (Eq. 2-3) and the static baselines of Table 2.

Taught in chapter 3. REFERENCE.md D2 and D3.

Per feature layer l and branch b in {normal, abnormal}:

1. learnable queries q (N_q, D) cross-attend to F_x = [patch tokens ; F_cls] (Eq. 2; K and V are
   projected from F_x, the queries are used as they are and there is no output projection,
   exactly as Eq. 2 is written; the scale is 1/sqrt(D/heads) per head);
2. r = mean of the N_q outputs; a Linear-ReLU-Linear router turns r into logits z (E,);
3. the top-k logits are kept and w = softmax over them (:func:`route_experts`);
4. S_agg = sum_i w_i s_i over the chosen experts of the pool (:func:`aggregate_state_prompt`).

Everything is batched: a batch of B images routes in one call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import PromptMoEConfig

BRANCHES = ("normal", "abnormal")


@dataclass
class Routing:
    """What a router decided for a batch, stacked over prompt layers.

    Attributes:
        logits: (B, P, E) router logits z.
        probs: (B, P, E) softmax over all E logits (used by the balance loss and the plots).
        indices: (B, P, k) chosen experts, highest logit first.
        weights: (B, P, k) softmax over the chosen logits (sum to 1).
    """

    logits: torch.Tensor
    probs: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor

    def dense_weights(self) -> torch.Tensor:
        """(B, P, E) weights with zeros for experts that were not chosen."""
        dense = torch.zeros_like(self.probs)
        return dense.scatter(-1, self.indices, self.weights)


@dataclass
class PromptOutput:
    """State prompts for a batch.

    Attributes:
        normal: (B, P, M_n, D) aggregated normal states, or (1, P, ...) / (E, P, ...) without a
            batch dimension for the static baselines (``per_image`` False).
        abnormal: (B, P, M_a, D) aggregated abnormal suffixes, same convention.
        routing: {"normal": Routing, "abnormal": Routing}, empty for the static baselines.
        per_image: True when the prompts depend on the image (VGMoP).
    """

    normal: torch.Tensor
    abnormal: torch.Tensor
    routing: Dict[str, Routing]
    per_image: bool


def route_experts(logits: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keep the k largest logits and softmax over them.

    Args:
        logits: (..., E) router logits.
    Returns:
        indices (..., k) of the chosen experts and their weights (..., k), summing to 1.
    """
    top, indices = logits.topk(k, dim=-1)  # (..., k)
    return indices, top.softmax(dim=-1)


def aggregate_state_prompt(pool: torch.Tensor, indices: torch.Tensor,
                           weights: torch.Tensor) -> torch.Tensor:
    """S_agg = sum_i w_i s_i (Eq. 3).

    Args:
        pool: (E, M, D) expert prompts.
        indices: (B, k) chosen experts; weights: (B, k).
    Returns:
        (B, M, D) one aggregated state prompt per image.
    """
    chosen = pool[indices]  # (B, k, M, D)
    return torch.einsum("bk,bkmd->bmd", weights, chosen)


class QueryCrossAttention(nn.Module):
    """Eq. 2: O = softmax(q K^T / sqrt(d)) V with K = F_x W_K, V = F_x W_V, per head."""

    def __init__(self, n_queries: int, dim: int, visual_dim: int, n_heads: int):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"prompt width {dim} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.queries = nn.Parameter(torch.randn(n_queries, dim) * 0.02)  # (N_q, D)
        self.key = nn.Linear(visual_dim, dim, bias=False)  # W_K
        self.value = nn.Linear(visual_dim, dim, bias=False)  # W_V

    def _scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Attention weights (B, h, N_q, T) without projecting the T tokens to keys.

        q K^T = q (F W_K^T)^T = (q W_K) F^T per head: the fixed queries are mapped into the
        visual space once (h N_q x D_x numbers) instead of projecting all T tokens (T x D).
        """
        n_q, D = self.queries.shape
        h, d = self.n_heads, D // self.n_heads
        w_k = self.key.weight.view(h, d, -1)  # (h, d, D_x): rows of W_K per head
        q = self.queries.view(n_q, h, d).transpose(0, 1)  # (h, N_q, d)
        qk = torch.matmul(q, w_k) / d ** 0.5  # (h, N_q, d) x (h, d, D_x) -> (h, N_q, D_x)
        logits = torch.einsum("hqx,btx->bhqt", qk, feats)  # (B, h, N_q, T)
        return logits.softmax(dim=-1)

    def _values_of(self, mixed: torch.Tensor) -> torch.Tensor:
        """Apply W_V per head to attention-weighted tokens: (B, h, n, D_x) -> (B, n, D)."""
        B, h, n, _ = mixed.shape
        w_v = self.value.weight.view(h, -1, mixed.shape[-1])  # (h, d, D_x)
        out = torch.einsum("bhnx,hdx->bnhd", mixed, w_v)  # (B, n, h, d)
        return out.reshape(B, n, -1)  # (B, n, D)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, T, D_x) visual tokens -> (B, N_q, D) state-relevant context O.

        softmax(q K^T) V = (softmax(q K^T) F) W_V^T per head: V is never formed for all tokens.
        """
        attn = self._scores(feats)  # (B, h, N_q, T)
        mixed = torch.matmul(attn, feats[:, None])  # (B, h, N_q, T) x (B, 1, T, D_x)
        return self._values_of(mixed)  # (B, N_q, D)

    def pooled(self, feats: torch.Tensor) -> torch.Tensor:
        """The routing representation r = mean over queries of O, (B, T, D_x) -> (B, D).

        The mean commutes with the (linear) value projection, so the queries' attention
        weights are averaged first and W_V is applied once per head to one mixed token.
        """
        attn = self._scores(feats).mean(dim=2, keepdim=True)  # (B, h, 1, T)
        mixed = torch.matmul(attn, feats[:, None])  # (B, h, 1, D_x)
        return self._values_of(mixed)[:, 0]  # (B, D)


class Router(nn.Module):
    """G(r) = Linear-ReLU-Linear: routing representation (B, D) -> logits (B, E)."""

    def __init__(self, dim: int, hidden: int, n_experts: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_experts))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.net(r)


class VGMoPLayer(nn.Module):
    """Both branches of VGMoP for one feature layer, with the sharing switches of Table 5.

    A shared pool holds experts of length max(M_n, M_a); the normal branch reads its first M_n
    tokens. Routers are never shared: each branch chooses its own experts.
    """

    def __init__(self, cfg: PromptMoEConfig, dim: int, visual_dim: int):
        super().__init__()
        self.cfg = cfg
        lengths = {"normal": cfg.len_normal, "abnormal": cfg.len_abnormal}
        attn_keys = ("normal",) if cfg.share_attention else BRANCHES
        self.attention = nn.ModuleDict({
            b: QueryCrossAttention(cfg.n_queries, dim, visual_dim, cfg.n_heads) for b in attn_keys})
        self.router = nn.ModuleDict({b: Router(dim, cfg.router_hidden, cfg.n_experts) for b in BRANCHES})
        if cfg.share_pool:
            size = max(lengths.values())
            self.pool = nn.ParameterDict({"shared": nn.Parameter(torch.randn(cfg.n_experts, size, dim) * 0.02)})
        else:
            self.pool = nn.ParameterDict({
                b: nn.Parameter(torch.randn(cfg.n_experts, lengths[b], dim) * 0.02) for b in BRANCHES})
        self.lengths = lengths

    def pool_of(self, branch: str) -> torch.Tensor:
        """(E, M_b, D) experts the branch chooses from."""
        if self.cfg.share_pool:
            return self.pool["shared"][:, : self.lengths[branch]]
        return self.pool[branch]

    def forward(self, feats: torch.Tensor) -> Dict[str, Tuple[torch.Tensor, tuple]]:
        """(B, HW+1, D_x) -> {branch: (S_agg (B, M_b, D), (logits, probs, indices, weights))}."""
        out = {}
        for b in BRANCHES:
            attn = self.attention["normal" if self.cfg.share_attention else b]
            r = attn.pooled(feats)  # (B, D) = mean over queries of Eq. 2's output
            logits = self.router[b](r)  # (B, E)
            indices, weights = route_experts(logits, self.cfg.top_k)  # (B, k), (B, k)
            s_agg = aggregate_state_prompt(self.pool_of(b), indices, weights)  # (B, M_b, D)
            out[b] = (s_agg, (logits, logits.softmax(-1), indices, weights))
        return out


class VGMoP(nn.Module):
    """Visually-guided mixture of prompts over all feature layers (or one module for all)."""

    def __init__(self, cfg: PromptMoEConfig, dim: int, visual_dim: int):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(VGMoPLayer(cfg, dim, visual_dim) for _ in range(cfg.n_prompt_layers))

    def expert_pools(self) -> List[torch.Tensor]:
        """Every distinct (E, M, D) pool, layer by layer, normal before abnormal (one shared pool
        per layer with ``share_pool``), for the decoupling loss and the t-SNE plot."""
        keys = ("shared",) if self.cfg.share_pool else BRANCHES
        return [layer.pool[k] for layer in self.layers for k in keys]

    def forward(self, visual_tokens: List[torch.Tensor]) -> PromptOutput:
        """visual_tokens: per feature layer (B, HW+1, D_x) = [patches ; F_cls]."""
        inputs = visual_tokens if self.cfg.layerwise_prompts else visual_tokens[-1:]
        results = [layer(x) for layer, x in zip(self.layers, inputs)]
        states, routing = {}, {}
        for b in BRANCHES:
            states[b] = torch.stack([r[b][0] for r in results], dim=1)  # (B, P, M_b, D)
            parts = [torch.stack([r[b][1][i] for r in results], dim=1) for i in range(4)]
            routing[b] = Routing(*parts)  # each (B, P, E) or (B, P, k)
        return PromptOutput(states["normal"], states["abnormal"], routing, per_image=True)


class StaticPrompts(nn.Module):
    """The baselines of Table 2: one learnable prompt pair ("static") or E pairs whose text
    features are averaged ("ensemble"). They do not look at the image."""

    def __init__(self, cfg: PromptMoEConfig, dim: int):
        super().__init__()
        self.cfg = cfg
        n = 1 if cfg.prompt_mode == "static" else cfg.n_experts
        P = cfg.n_prompt_layers
        self.normal = nn.Parameter(torch.randn(n, P, cfg.len_normal, dim) * 0.02)  # (n, P, M_n, D)
        self.abnormal = nn.Parameter(torch.randn(n, P, cfg.len_abnormal, dim) * 0.02)  # (n, P, M_a, D)

    def expert_pools(self) -> List[torch.Tensor]:
        return []

    def forward(self, visual_tokens: List[torch.Tensor]) -> PromptOutput:
        return PromptOutput(self.normal, self.abnormal, {}, per_image=False)


def build_prompt_learner(cfg: PromptMoEConfig, dim: int, visual_dim: int) -> nn.Module:
    """VGMoP or a static baseline, as ``cfg.prompt_mode`` says."""
    if cfg.prompt_mode == "vgmop":
        return VGMoP(cfg, dim, visual_dim)
    return StaticPrompts(cfg, dim)


def build_branch_sequences(normal: torch.Tensor, abnormal: torch.Tensor, context: torch.Tensor,
                           sot: torch.Tensor, eot: torch.Tensor, cls: torch.Tensor):
    """The two branches' sequences of Eq. 1 at their own lengths (no padding).

    Args: as :func:`build_sequences`.
    Returns:
        (seq_n (N, L_n, D), seq_a (N, L_a, D)); EOT is the last position of each.
    """
    N = normal.shape[0]

    def expand(t):  # (n, D) -> (N, n, D)
        return t.expand(N, *t.shape)

    ends = [expand(cls), expand(context), expand(eot[None])]
    seq_n = torch.cat([expand(sot[None]), normal, *ends], dim=1)  # (N, L_n, D)
    seq_a = torch.cat([expand(sot[None]), normal, abnormal, *ends], dim=1)  # (N, L_a, D)
    return seq_n, seq_a


def build_sequences(normal: torch.Tensor, abnormal: torch.Tensor, context: torch.Tensor,
                    sot: torch.Tensor, eot: torch.Tensor, cls: torch.Tensor):
    """Token-embedding sequences of Eq. 1 (REFERENCE.md D2).

    normal:   [SOT][S_n][cls][Q_ctx][EOT]
    abnormal: [SOT][S_n][S_a][cls][Q_ctx][EOT]

    Args:
        normal: (N, M_n, D); abnormal: (N, M_a, D); context: (M_q, D) shared Q_ctx;
        sot, eot: (D,); cls: (c, D) embeddings of the class word.
    Returns:
        embeds (2N, L, D) (normal rows first, then abnormal; the normal rows are zero-padded
        after their EOT) and eot_index (2N,).
    """
    N = normal.shape[0]
    seq_n, seq_a = build_branch_sequences(normal, abnormal, context, sot, eot, cls)
    pad = seq_a.shape[1] - seq_n.shape[1]
    seq_n = F.pad(seq_n, (0, 0, 0, pad))
    eot_index = torch.cat([torch.full((N,), seq_a.shape[1] - pad - 1),
                           torch.full((N,), seq_a.shape[1] - 1)]).to(normal.device)
    return torch.cat([seq_n, seq_a]), eot_index
