"""PromptMoE: frozen CLIP + VGMoP prompts -> anomaly map and image score.

Taught in chapters 3 (prompts), 5 (training) and 6 (evaluation). REFERENCE.md D4 and D5.

Forward of a batch (B, 3, S, S):

* per feature layer l, patch tokens are compared (cosine / tau) with the normal and abnormal text
  features F_T^(l) of *that image*; a softmax over the pair gives the abnormal probability per
  token, reshaped to the grid and bilinearly upsampled to S x S;
* anomaly_map = mean over layers (the paper writes a sum; the mean keeps it in [0, 1] for the BCE
  and ranks pixels identically; ``layer_map_reduce="sum"`` gives the printed sum at inference);
  Gaussian smoothing (sigma) only in eval mode;
* pred_score = 1/2 (max anomaly_map + softmax(F_cls . F_T^(last) / tau')[abnormal]) (Eq. 7).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import FrozenCLIP, ImageFeatures
from .config import PromptMoEConfig
from .prompts import build_branch_sequences, build_prompt_learner, build_sequences
from .runtime import get_device

# split the text tower call by branch when padding would waste at least this share of tokens
PAD_WASTE_SPLIT = 0.05


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian filter of (B, H, W) maps, matching scipy.ndimage.gaussian_filter
    (mode "reflect", i.e. half-sample symmetric padding, kernel radius round(truncate*sigma))."""
    if sigma <= 0:
        return maps
    H, W = maps.shape[-2:]
    radius = int(truncate * sigma + 0.5)
    if radius >= min(H, W):
        raise ValueError(f"sigma={sigma} needs maps larger than {radius} pixels, got {H}x{W}")
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()  # (2r+1,)
    x = maps[:, None]  # (B, 1, H, W)
    # symmetric padding: a b c | c b a
    x = torch.cat([x[..., :radius, :].flip(-2), x, x[..., -radius:, :].flip(-2)], dim=-2)
    x = torch.cat([x[..., :radius].flip(-1), x, x[..., -radius:].flip(-1)], dim=-1)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))  # along H
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))  # along W
    return x[:, 0]


def interpolation_matrix(n_out: int, n_in: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation with ``align_corners=False``, as
    ``F.interpolate`` computes them: output i reads the input at (i + 0.5) n_in / n_out - 0.5
    (clamped at 0), mixing its two neighbours."""
    src = ((torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5)
    src = src.clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)  # (n_out,)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    m = torch.zeros(n_out, n_in, device=device, dtype=torch.float64)
    rows = torch.arange(n_out, device=device)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(dtype)


def _deterministic_cuda(x: torch.Tensor) -> bool:
    """True where F.interpolate's bilinear backward would raise: deterministic mode, a GPU, grad."""
    return x.is_cuda and x.requires_grad and torch.are_deterministic_algorithms_enabled()


def upsample_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` of (B, C, h, w) maps.

    In deterministic mode on a GPU (``config.deterministic``) torch has no deterministic kernel
    for that op's backward and raises; there the same interpolation runs as two matmuls with
    :func:`interpolation_matrix` (A_H x A_W^T), whose backward is deterministic. The two agree
    to float rounding (tests/test_model.py)."""
    if not _deterministic_cuda(x):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    a_h = interpolation_matrix(size[0], x.shape[-2], x.device, x.dtype)  # (H, h)
    a_w = interpolation_matrix(size[1], x.shape[-1], x.device, x.dtype)  # (W, w)
    return a_h @ x @ a_w.T  # (H, h) x (B, C, h, w) x (w, W) -> (B, C, H, W)


def model_device(model: nn.Module, device=None) -> torch.device:
    """The device of ``model``'s weights. A different ``device`` is an error naming both: CPU
    inputs for CUDA weights (or the reverse) would fail later, less clearly."""
    own = next(model.parameters()).device
    if device is not None and torch.device(device) != own:
        want = torch.device(device)
        if not (want.type == own.type and want.index is None):  # "cuda" means cuda:0 etc.
            raise ValueError(f"device={str(want)!r} but the model's weights are on {own}: move "
                             f"the model (model.to({str(want)!r})) or leave device unset")
    return own


class PromptMoE(nn.Module):
    """The full model. Only the prompt learner and Q_ctx are trainable.

    Args:
        config: hyper-parameters (``PromptMoEConfig.paper()`` etc.).
        backbone: a ready :class:`FrozenCLIP` (built from the config when omitted).
    """

    def __init__(self, config: PromptMoEConfig, backbone: Optional[FrozenCLIP] = None):
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else FrozenCLIP(config)
        dim, visual_dim = self.backbone.token_dim, self.backbone.embed_dim
        self.prompts = build_prompt_learner(config, dim, visual_dim)
        self.context = nn.Parameter(torch.randn(config.len_context, dim) * 0.02)  # Q_ctx (M_q, D)
        with torch.no_grad():
            sot, eot = self.backbone.special_embeddings()
            cls = self.backbone.word_embeddings(config.class_word)
        self.register_buffer("sot_embedding", sot.clone(), persistent=False)  # (D,)
        self.register_buffer("eot_embedding", eot.clone(), persistent=False)  # (D,)
        self.register_buffer("class_embedding", cls.clone(), persistent=False)  # (c, D)

    # ------------------------------------------------------------------ parameters
    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """Only what training changes (prompts, routers, attention, pools, Q_ctx)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def expert_pools(self):
        """Every distinct expert pool (E, M, D)."""
        return self.prompts.expert_pools()

    # ------------------------------------------------------------------ text side
    def encode_prompts(self, prompt_out, cut: bool = True) -> torch.Tensor:
        """Text features (N, P, 2, D), L2-normalised; N = B for VGMoP, 1 for static prompts.

        All images x prompt layers x {normal, abnormal} go through the text tower in one call.
        """
        normal, abnormal = prompt_out.normal, prompt_out.abnormal  # (N, P, M_n, D), (N, P, M_a, D)
        N, P = normal.shape[:2]
        parts = (normal.flatten(0, 1), abnormal.flatten(0, 1), self.context,
                 self.sot_embedding, self.eot_embedding, self.class_embedding)
        seq_n, seq_a = build_branch_sequences(*parts)  # (NP, L_n, D), (NP, L_a, D)
        L_n, L_a = seq_n.shape[1], seq_a.shape[1]
        if cut and (L_a - L_n) >= PAD_WASTE_SPLIT * L_a:
            # two tower calls at their own lengths beat one call with padded normal prompts
            # (the paper preset: 16 vs 22 tokens, 14% of the text tower's FLOPs saved)
            enc = self.backbone.encode_embeddings
            n, dev = seq_n.shape[0], seq_n.device
            feats = torch.cat([  # (2NP, D_out): normal rows first, as build_sequences orders them
                enc(seq_n, torch.full((n,), L_n - 1, device=dev), length=L_n),
                enc(seq_a, torch.full((n,), L_a - 1, device=dev), length=L_a)])
        else:
            embeds, eot_index = build_sequences(*parts)  # (2NP, L, D)
            feats = self.backbone.encode_embeddings(embeds, eot_index, cut=cut)  # (2NP, D_out)
        feats = F.normalize(feats, dim=-1).view(2, N, P, -1).permute(1, 2, 0, 3)  # (N, P, 2, D)
        if not prompt_out.per_image and N > 1:  # static ensemble: average the members
            feats = F.normalize(feats.mean(dim=0, keepdim=True), dim=-1)  # (1, P, 2, D)
        return feats

    # ------------------------------------------------------------------ forward
    def forward(self, images: torch.Tensor) -> Dict[str, object]:
        """images (B, 3, S, S), CLIP-normalised -> dict (see :meth:`forward_features`)."""
        feats = self.backbone.encode_image(images)
        return self.forward_features(feats, out_size=tuple(images.shape[-2:]))

    def forward_features(self, feats: ImageFeatures, out_size=None) -> Dict[str, object]:
        """Everything after the frozen image tower (so cached features can be reused).

        Returns a dict with:
            anomaly_map (B, H, W) in [0, 1]; pred_score (B,) in [0, 1];
            layer_maps (B, L, H, W) abnormal probability per feature layer;
            image_prob (B,) the global-feature branch of Eq. 7;
            text_features (B, L, 2, D); routing {"normal", "abnormal"} -> Routing (VGMoP only).
        """
        cfg = self.config
        S = out_size or (cfg.image_size, cfg.image_size)
        h, w = feats.grid
        g = feats.global_feature  # (B, D)
        B = g.shape[0]
        # F_x^(l) = [patch tokens of l ; F_cls]: (B, HW+1, D)
        visual = [torch.cat([t[:, 1:], g[:, None]], dim=1) for t in feats.layer_tokens]
        prompt_out = self.prompts(visual)
        text = self.encode_prompts(prompt_out)  # (N, P, 2, D)
        n_layers = len(feats.layer_tokens)
        if text.shape[1] != n_layers:  # one prompt module for all layers
            text = text.expand(-1, n_layers, -1, -1)
        text = text.expand(B, -1, -1, -1)  # (B, L, 2, D)
        maps = []
        for l, tokens in enumerate(feats.layer_tokens):
            patches = F.normalize(tokens[:, 1:], dim=-1)  # (B, HW, D)
            logits = patches @ text[:, l].transpose(1, 2) / cfg.tau  # (B, HW, D) x (B, D, 2) -> (B, HW, 2)
            prob = logits.softmax(dim=-1)[..., 1].view(B, 1, h, w)  # abnormal probability
            maps.append(upsample_bilinear(prob, S)[:, 0])  # (B, H, W)
        layer_maps = torch.stack(maps, dim=1)  # (B, L, H, W)
        if cfg.layer_map_reduce == "sum" and not self.training:  # Eq. 6 as printed (D4, D9)
            anomaly_map = layer_maps.sum(dim=1)  # (B, H, W) in [0, L]
        else:
            anomaly_map = layer_maps.mean(dim=1)  # (B, H, W) in [0, 1]
        if not self.training and cfg.sigma > 0:
            anomaly_map = gaussian_blur(anomaly_map, cfg.sigma)
        g_n = F.normalize(g, dim=-1)
        image_logits = torch.einsum("bd,bkd->bk", g_n, text[:, -1]) / cfg.tau_image  # (B, 2)
        image_prob = image_logits.softmax(dim=-1)[:, 1]  # (B,)
        pred_score = 0.5 * (anomaly_map.flatten(1).max(dim=1).values + image_prob)
        return {"anomaly_map": anomaly_map, "pred_score": pred_score, "layer_maps": layer_maps,
                "image_prob": image_prob, "text_features": text, "routing": prompt_out.routing}


def count_trainable_parameters(config: PromptMoEConfig, dim: int = 768, visual_dim: int = 768) -> int:
    """Trainable parameters of a config without loading CLIP (dims of ViT-L-14-336 by default)."""
    learner = build_prompt_learner(config, dim, visual_dim)
    return sum(p.numel() for p in learner.parameters()) + config.len_context * dim


def sequence_length(config: PromptMoEConfig, n_class_tokens: int = 1) -> int:
    """Tokens of the longer (abnormal) prompt after cutting at EOT."""
    return 1 + config.len_normal + config.len_abnormal + n_class_tokens + config.len_context + 1



TINY_CLIP_SEED = 0  # the tiny preset's random CLIP is rebuilt from this seed wherever it is loaded


def build_model(config: PromptMoEConfig, device=None, clip_seed: int = TINY_CLIP_SEED) -> PromptMoE:
    """The model of a config, reproducibly: a random (tiny) CLIP from ``clip_seed``, prompts from
    ``config.seed``. Loading pretrained weights (paper/small) does not depend on the seeds.
    ``device=None`` follows :func:`promptmoe.runtime.get_device` (CUDA when present)."""

    if config.pretrained is None:
        torch.manual_seed(clip_seed)
    backbone = FrozenCLIP(config)
    torch.manual_seed(config.seed)
    return PromptMoE(config, backbone=backbone).to(get_device(device))
