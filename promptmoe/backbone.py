"""The frozen CLIP backbone: per-layer patch tokens (with the V-V attention path) and a text tower
that accepts learnable token embeddings.

Taught in chapter 2 (image side) and chapter 3 (text side). REFERENCE.md D1 and D2.

Every layer's tokens are returned as a *separate* tensor computed from that block's output,
never a view that later blocks update in place (the AnomalyCLIP bug where "4 layers" were layer
24 four times cannot happen here; ``tests/test_backbone.py`` checks it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from .config import MICRO_WEIGHTS, PromptMoEConfig
from .precision import frozen_autocast

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)  # registers "promptmoe-tiny" (random init, offline)
log = logging.getLogger(__name__)


@dataclass
class ImageFeatures:
    """What the frozen image tower gives PromptMoE for a batch.

    Attributes:
        layer_tokens: one tensor per requested block, each (B, HW+1, D) after ln_post and proj;
            index 0 is that block's CLS token, the rest are patch tokens in raster order.
        global_feature: F_cls, (B, D): the original path's CLS -> ln_post -> proj.
        grid: (h, w) token grid, e.g. (37, 37) at 518 px with patch 14.
    """

    layer_tokens: List[torch.Tensor]
    global_feature: torch.Tensor
    grid: Tuple[int, int]

    def to(self, *args, **kwargs) -> "ImageFeatures":
        return ImageFeatures([t.to(*args, **kwargs) for t in self.layer_tokens],
                             self.global_feature.to(*args, **kwargs), self.grid)

    def __getitem__(self, idx) -> "ImageFeatures":
        """Select images (a slice or an index tensor) from the batch."""
        return ImageFeatures([t[idx] for t in self.layer_tokens], self.global_feature[idx], self.grid)

    @staticmethod
    def cat(items: Sequence["ImageFeatures"]) -> "ImageFeatures":
        """Concatenate batches along the image dimension."""
        n = len(items[0].layer_tokens)
        return ImageFeatures([torch.cat([it.layer_tokens[i] for it in items]) for i in range(n)],
                             torch.cat([it.global_feature for it in items]), items[0].grid)


def vv_attention(attn: nn.MultiheadAttention, h: torch.Tensor) -> torch.Tensor:
    """Value-value self-attention with a block's frozen weights: q and k are replaced by v.

    Args:
        attn: the block's ``nn.MultiheadAttention`` (batch_first).
        h: (B, L, W) the block input after ``ln_1``.
    Returns:
        (B, L, W) the attention output after ``out_proj``.
    """
    B, L, W = h.shape
    n_heads = attn.num_heads
    w_v = attn.in_proj_weight[2 * W:]  # (W, W): rows of the value projection
    b_v = attn.in_proj_bias[2 * W:] if attn.in_proj_bias is not None else None
    v = F.linear(h, w_v, b_v)  # (B, L, W)
    v = v.view(B, L, n_heads, W // n_heads).transpose(1, 2)  # (B, h, L, W/h)
    out = F.scaled_dot_product_attention(v, v, v)  # softmax(v v^T / sqrt(W/h)) v
    out = out.transpose(1, 2).reshape(B, L, W)  # (B, L, W)
    return attn.out_proj(out)


def _plain_block(block: nn.Module) -> bool:
    """True for open_clip's ResidualAttentionBlock with a fused q,k,v projection."""
    attn = getattr(block, "attn", None)
    return (isinstance(attn, nn.MultiheadAttention) and attn.batch_first
            and attn.in_proj_weight is not None and not hasattr(block, "ln_1_kv"))


def block_with_vv(block: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One open_clip block on the original path plus its V-V attention, sharing the work.

    The block's own attention computes ln_1(x) and v = ln_1(x) W_V^T + b_V; the V-V path needs
    exactly the same v, so both come from one q,k,v projection instead of two (this saves the
    V-V path's value projection, 5.4% of the paper preset's FLOPs, and one LayerNorm).

    Args:
        block: an open_clip ``ResidualAttentionBlock`` (batch_first, no attention mask).
        x: (B, L, W) the block input.
    Returns:
        the block output (B, L, W), equal to ``block(x)``, and the V-V attention output
        (B, L, W) after ``out_proj`` (without layer scale), equal to ``vv_attention``.
    """
    if not _plain_block(block):  # another block type: fall back to the two separate paths
        return block(x), vv_attention(block.attn, block.ln_1(x))
    attn = block.attn
    B, L, W = x.shape
    n_heads = attn.num_heads
    h = block.ln_1(x)  # (B, L, W)
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)  # (B, L, 3W)
    qkv = qkv.view(B, L, 3, n_heads, W // n_heads).permute(2, 0, 3, 1, 4)  # (3, B, h, L, W/h)
    q, k, v = qkv.unbind(0)  # each (B, h, L, W/h)
    both = torch.cat([F.scaled_dot_product_attention(q, k, v),  # softmax(q k^T / sqrt(d)) v
                      F.scaled_dot_product_attention(v, v, v)])  # (2B, h, L, W/h)
    both = attn.out_proj(both.transpose(1, 2).reshape(2 * B, L, W))  # (2B, L, W)
    out, vv = both[:B], both[B:]  # (B, L, W) each
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))  # (B, L, W)
    return x, vv


class FrozenCLIP(nn.Module):
    """open_clip CLIP with every weight frozen; exposes the pieces PromptMoE needs.

    Args:
        config: which architecture, weights, input size, blocks and V-V path to use.
        clip: an already built open_clip model (tests pass one to compare against open_clip).
    """

    def __init__(self, config: PromptMoEConfig, clip: Optional[nn.Module] = None):
        super().__init__()
        self.config = config
        if clip is None:
            clip = create_clip(config)
        self.clip = clip.eval()
        for p in self.clip.parameters():
            p.requires_grad_(False)
        visual = self.clip.visual
        if not getattr(visual.transformer, "batch_first", True):
            raise RuntimeError("this open_clip build runs its transformer sequence-first; "
                               "install open_clip_torch>=2.26")
        n_blocks = len(visual.transformer.resblocks)
        bad = [b for b in config.layers if b > n_blocks]
        if bad:
            raise ValueError(f"layers {bad} exceed the {n_blocks} blocks of {config.clip_model}")
        self.tokenizer = open_clip.get_tokenizer(config.clip_model)

    # ------------------------------------------------------------------ sizes
    @property
    def embed_dim(self) -> int:
        """D of projected image/text features (768 for ViT-L-14-336)."""
        return self.clip.visual.proj.shape[1]

    @property
    def token_dim(self) -> int:
        """Width of the text tower's token embeddings (the D of learnable prompt vectors)."""
        return self.clip.token_embedding.weight.shape[1]

    @property
    def grid_size(self) -> Tuple[int, int]:
        return tuple(self.clip.visual.grid_size)

    def train(self, mode: bool = True) -> "FrozenCLIP":
        """The backbone stays in eval mode whatever the parent module does."""
        super().train(mode)
        self.clip.eval()
        return self

    # ------------------------------------------------------------------ image side
    @torch.no_grad()
    @frozen_autocast
    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """Run the frozen image tower once and collect the requested blocks.

        Args:
            images: (B, 3, S, S) CLIP-normalised images, S = config.image_size.
        """
        visual = self.clip.visual
        want = set(self.config.layers)
        first_vv = self.config.first_vv_block if self.config.vv_attention else None
        x = visual._embeds(images)  # (B, HW+1, W) after ln_pre
        y = None  # the V-V path, started from the original path at block first_vv
        taken = {}
        for idx, block in enumerate(visual.transformer.resblocks, start=1):
            if first_vv is not None and idx >= first_vv:
                # one ln_1 and one q,k,v projection feed both paths (REFERENCE.md section 5)
                x_in = x
                x, vv = block_with_vv(block, x)
                y = (x_in if y is None else y) + block.ls_1(vv)  # no MLP on the V-V path
            else:
                x = block(x)  # the original path, exactly open_clip's block
            if idx in want:
                tokens = y if (y is not None) else x  # (B, HW+1, W), a new tensor each block
                taken[idx] = visual.ln_post(tokens) @ visual.proj  # (B, HW+1, D)
        if self.config.global_ln_post:
            pooled, _ = visual._pool(x)  # (B, W): CLS after ln_post
        else:
            pooled = x[:, 0]  # (B, W): CLS without ln_post, as AnomalyCLIP's code (D9)
        global_feature = pooled @ visual.proj  # (B, D)
        layer_tokens = [taken[i] for i in self.config.layers]
        return ImageFeatures(layer_tokens, global_feature, self.grid_size)

    # ------------------------------------------------------------------ text side
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, 77) token ids with SOT ... EOT and zero padding."""
        return self.tokenizer(list(texts))

    def word_embeddings(self, text: str) -> torch.Tensor:
        """Embeddings (n, W) of the tokens of ``text`` without SOT/EOT (e.g. the class word)."""
        ids = self.tokenize([text])[0]
        eot = int(ids.argmax())
        return self.clip.token_embedding(ids[1:eot].to(self.clip.token_embedding.weight.device))

    def special_embeddings(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (W,) of the start-of-text and end-of-text tokens."""
        ids = self.tokenize([""])[0]
        emb = self.clip.token_embedding(ids[:2].to(self.clip.token_embedding.weight.device))
        return emb[0], emb[1]

    @frozen_autocast
    def encode_embeddings(self, embeds: torch.Tensor, eot_index: torch.Tensor,
                          cut: bool = True, length: Optional[int] = None) -> torch.Tensor:
        """Text features of token-embedding sequences that may hold learnable vectors.

        Args:
            embeds: (N, L, W) token embeddings, SOT first, L <= context length; positions after
                each sequence's EOT are ignored (the mask is causal).
            eot_index: (N,) position of EOT in each sequence.
            cut: drop the positions after the last EOT before running the tower. Because the
                attention mask is causal this gives the same features at a fraction of the cost.
            length: the cut length when the caller knows it (max(eot_index) + 1); saves reading
                ``eot_index`` back from the GPU.
        Returns:
            (N, D) text features (not normalised).
        """
        clip = self.clip
        n_ctx = clip.positional_embedding.shape[0]
        N, L, W = embeds.shape
        if L > n_ctx:
            raise ValueError(f"prompt of {L} tokens exceeds the context length {n_ctx}")
        if cut:
            if length is not None:
                L = int(length)
            elif eot_index.device.type != "meta":  # meta tensors hold no values: keep all L (tests)
                L = int(eot_index.max()) + 1
            embeds = embeds[:, :L]
        elif L < n_ctx:
            embeds = F.pad(embeds, (0, 0, 0, n_ctx - L))  # zero rows after EOT: the full 77
            L = n_ctx
        x = embeds + clip.positional_embedding[:L]  # (N, L, W)
        mask = clip.attn_mask[:L, :L].contiguous() if clip.attn_mask is not None else None
        x = clip.transformer(x, attn_mask=mask)  # (N, L, W)
        x = clip.ln_final(x)
        x = x[torch.arange(N, device=x.device), eot_index]  # (N, W): features at EOT
        proj = clip.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj  # (N, D)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised features (N, D) of plain sentences (hand-written prompts)."""
        ids = self.tokenize(texts).to(self.clip.token_embedding.weight.device)
        embeds = self.clip.token_embedding(ids)
        return F.normalize(self.encode_embeddings(embeds, ids.argmax(dim=-1)), dim=-1)


class _DropRandomInitNotice(logging.Filter):
    """Drops open_clip's root-logger line "No pretrained weights loaded ..." for a model we build
    without weights on purpose (tiny preset, tests); :func:`create_clip` says it once itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")


def uses_quick_gelu(clip_model: str, pretrained: Optional[str]) -> bool:
    """Whether the weights of ``pretrained`` were trained with QuickGELU, from open_clip's
    pretrained table (True for every OpenAI tag); False for random init, a local file or the
    package's own micro weights."""
    if not pretrained or pretrained == MICRO_WEIGHTS:
        return False
    return bool(open_clip.get_pretrained_cfg(clip_model, pretrained).get("quick_gelu", False))


def native_image_size(clip_model: str) -> int:
    """The input side the architecture's weights were trained at (336 for ViT-L-14-336)."""
    cfg = open_clip.get_model_config(clip_model)
    if cfg is None:
        raise ValueError(f"open_clip has no model config named {clip_model!r}")
    size = cfg["vision_cfg"]["image_size"]
    return int(size if isinstance(size, int) else size[0])


def resample_positional_embedding(visual: nn.Module, image_size: int, mode: str) -> None:
    """Resample a ViT's positional embedding (CLS row kept) to the grid of ``image_size``, once.

    ``mode="bicubic"`` is open_clip's load-time resize (antialiased); ``"bilinear"`` is what
    AnomalyCLIP's code does at its first forward (no antialiasing). REFERENCE.md D9.
    """
    pos = visual.positional_embedding.detach()  # (1 + g*g, W)
    old = tuple(visual.grid_size)
    patch = visual.patch_size if isinstance(visual.patch_size, tuple) else (visual.patch_size,) * 2
    new = (image_size // patch[0], image_size // patch[1])
    W = pos.shape[1]
    grid = pos[1:].reshape(1, old[0], old[1], W).permute(0, 3, 1, 2)  # (1, W, g, g)
    extra = {"antialias": True} if mode == "bicubic" else {}
    grid = F.interpolate(grid, size=new, mode=mode, align_corners=False, **extra)  # (1, W, g', g')
    grid = grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], W)  # (g'*g', W)
    visual.positional_embedding = nn.Parameter(torch.cat([pos[:1], grid]), requires_grad=False)
    visual.grid_size = new
    visual.image_size = (image_size, image_size)


def create_clip(config: PromptMoEConfig) -> nn.Module:
    """Build the open_clip model of a config (downloads OpenAI weights for paper/small).

    QuickGELU follows the pretrained tag (open_clip's table says which weights were trained with
    it), so open_clip's "QuickGELU mismatch" warning cannot occur. The positional embedding is
    resampled to ``config.image_size`` once here, as ``config.pos_embed_resize`` says.
    """
    if config.pretrained == MICRO_WEIGHTS:
        return _create_micro_clip(config)
    quick = uses_quick_gelu(config.clip_model, config.pretrained)
    model_cfg = open_clip.get_model_config(config.clip_model) or {}
    if config.pretrained and model_cfg.get("quick_gelu", False) and not quick:
        raise ValueError(f"{config.clip_model} uses QuickGELU but the weights "
                         f"{config.pretrained!r} were trained without it: choose the model name "
                         "without the -quickgelu suffix")
    # bilinear (AnomalyCLIP): load at the native size, resample ourselves; bicubic: open_clip's
    # own antialiased resize while loading. Random weights have nothing to resample.
    ours = (config.pretrained and config.pos_embed_resize == "bilinear"
            and native_image_size(config.clip_model) != config.image_size)
    root = logging.getLogger()
    quiet = _DropRandomInitNotice()
    root.addFilter(quiet)
    try:
        clip = open_clip.create_model(config.clip_model, pretrained=config.pretrained,
                                      force_quick_gelu=quick,
                                      force_image_size=None if ours else config.image_size)
    except Exception as err:  # network or cache problems: say what to do
        if config.pretrained:
            raise RuntimeError(
                f"could not load open_clip {config.clip_model!r} with pretrained="
                f"{config.pretrained!r}: {err}. The weights come from the internet on first use; "
                "offline, use the micro preset (PROMPTMOE_PRESET=micro: a small CLIP this "
                "project pretrained, shipped with the package) or pre-populate the Hugging Face "
                "cache.") from err
        raise
    finally:
        root.removeFilter(quiet)
    if ours:
        resample_positional_embedding(clip.visual, config.image_size, "bilinear")
    if config.pretrained is None and config.preset not in ("tiny", "micro"):
        log.warning("%s has random weights: its outputs show plumbing, not the method",
                    config.clip_model)
    return clip


def _create_micro_clip(config: PromptMoEConfig) -> nn.Module:
    """The micro CLIP with the weights shipped in the package (no network): chapter 10."""
    from .microclip.export import load_weights

    if config.clip_model != "promptmoe-micro":
        raise ValueError(f"pretrained={MICRO_WEIGHTS!r} are weights of 'promptmoe-micro', "
                         f"not of {config.clip_model!r}")
    root = logging.getLogger()
    quiet = _DropRandomInitNotice()  # the weights are loaded right below
    root.addFilter(quiet)
    try:
        clip = open_clip.create_model(config.clip_model, pretrained=None)
    finally:
        root.removeFilter(quiet)
    load_weights(clip)
    if config.image_size != native_image_size(config.clip_model):
        resample_positional_embedding(clip.visual, config.image_size, config.pos_embed_resize)
    return clip
