"""Configuration of PromptMoE: the paper's values as defaults, three presets, the ablation switches.

Taught in chapter 1 (presets) and chapter 7 (ablations). Every field carries a comment; the
defaults are the values of the paper's appendix A, so ``PromptMoEConfig()`` *is* the paper setup.

Presets (REFERENCE.md D1):

* ``paper()``: open_clip ViT-L-14-336 with OpenAI weights at 518 px, blocks 6/12/18/24.
* ``small()``: ViT-B-16 OpenAI at 224 px, blocks 3/6/9/12, for a CPU with internet.
* ``micro()``: a 64-px CLIP *pretrained by this project* on synthetic region twins (chapter 10),
  weights shipped in the package: the offline stand-in whose zero-shot maps find defects on
  categories it never saw. Its numbers are never results of the paper's setting.
* ``tiny()``: a random-init CLIP registered by this package, for fast unit tests.
  Numbers it produces are plumbing, never results of the method.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional, Tuple

PROMPT_MODES = ("static", "ensemble", "vgmop")
PRESETS = ("paper", "small", "micro", "tiny")
MICRO_WEIGHTS = "synthetic-twins"  # the micro preset's pretrained tag: weights shipped in the package
POS_EMBED_RESIZES = ("bicubic", "bilinear")
LAYER_MAP_REDUCES = ("mean", "sum")


@dataclass
class PromptMoEConfig:
    """All hyper-parameters of PromptMoE; defaults are the paper's (appendix A)."""

    # --- backbone (D1) ---
    preset: str = "paper"  # name of the preset these values came from (labels every result)
    clip_model: str = "ViT-L-14-336"  # open_clip architecture name
    pretrained: Optional[str] = "openai"  # open_clip pretrained tag; None = random init
    image_size: int = 518  # input side in pixels (positional embedding resampled once at load)
    layers: Tuple[int, ...] = (6, 12, 18, 24)  # 1-based vision blocks whose patch tokens are used
    vv_attention: bool = True  # V-V attention path for patch tokens (AnomalyCLIP's DPAM)
    vv_start: Optional[int] = None  # first block (1-based) on the V-V path; None = layers[0]
    # D9, choices the paper leaves open (defaults = our reading; AnomalyCLIP's code differs):
    global_ln_post: bool = True  # F_cls = ln_post(CLS) @ proj; False = CLS @ proj (AnomalyCLIP)
    pos_embed_resize: str = "bicubic"  # "bicubic" antialiased at load | "bilinear" (AnomalyCLIP)

    # --- prompts (D2, D3) ---
    prompt_mode: str = "vgmop"  # "static" single prompt | "ensemble" of static prompts | "vgmop"
    layerwise_prompts: bool = True  # one VGMoP per feature layer; False = one module for all
    n_queries: int = 8  # N_q: learnable state queries per layer and branch
    n_experts: int = 8  # E: expert prompts per pool
    top_k: int = 4  # k: experts mixed per image
    n_heads: int = 8  # heads of the query cross-attention
    router_hidden: int = 256  # hidden width of the Linear-ReLU-Linear router
    len_normal: int = 5  # M_n: tokens of a normal-state expert
    len_abnormal: int = 6  # M_a: tokens of an abnormal-state expert (suffix)
    len_context: int = 8  # M_q: shared learnable context tokens Q_ctx
    class_word: str = "object"  # the generic [cls] placeholder word
    share_pool: bool = False  # Table 5: one expert pool for both branches
    share_attention: bool = False  # Table 5: one query cross-attention for both branches

    # --- maps and scores (D4, D5) ---
    tau: float = 0.07  # temperature of the pixel-level softmax
    tau_image: float = 0.01  # tau': temperature of the image-level softmax
    sigma: float = 4.0  # Gaussian smoothing of the map at inference (0 disables)
    # D4/D9: combine layer maps by "mean" (keeps [0, 1]) or "sum" (Eq. 6 as printed: weighs
    # max M by len(layers) in Eq. 7). Inference only: training always averages (the BCE needs [0, 1])
    layer_map_reduce: str = "mean"

    # --- losses (D6) ---
    alpha: float = 0.01  # weight of the load-balancing loss (Eq. 4)
    beta: float = 0.005  # weight of the expert decoupling loss (Eq. 5)
    focal_gamma: float = 2.0  # focusing parameter of the focal loss

    # --- training (D7) ---
    lr: float = 1e-3  # learning rate reached after warm-up
    betas: Tuple[float, float] = (0.6, 0.999)  # Adam betas
    epochs: int = 15  # training epochs
    warmup_epochs: int = 3  # linear warm-up epochs
    batch_size: int = 16  # images per step
    seed: int = 0  # seed of every random choice in training
    # frozen towers: "fp32" (exact, the book's checks compare with it) | "auto" (GPU: bf16, fp16
    # without bf16, + TF32; CPU: fp32; the CLI's default) | "bf16" | "fp16" autocast; the
    # trainable parts and the loss always run in fp32
    precision: str = "fp32"
    # GPU training bit-reproducible (deterministic kernels, a fixed cuBLAS workspace; slower):
    # same seed and data, same weights to the bit. A CPU is deterministic without it
    deterministic: bool = False

    def __post_init__(self) -> None:
        self.layers = tuple(int(x) for x in self.layers)
        self.betas = tuple(float(x) for x in self.betas)
        self.validate()

    # ------------------------------------------------------------------ presets
    @classmethod
    def paper(cls, **overrides) -> "PromptMoEConfig":
        """The paper's setup: ViT-L/14@336 (OpenAI) at 518 px, blocks 6/12/18/24."""
        return cls(**{"preset": "paper", **overrides})

    @classmethod
    def small(cls, **overrides) -> "PromptMoEConfig":
        """ViT-B/16 (OpenAI) at 224 px, blocks 3/6/9/12: runs on a laptop CPU with internet."""
        base = dict(preset="small", clip_model="ViT-B-16", pretrained="openai", image_size=224,
                    layers=(3, 6, 9, 12), batch_size=8)
        return cls(**{**base, **overrides})

    @classmethod
    def micro(cls, **overrides) -> "PromptMoEConfig":
        """The micro CLIP pretrained on synthetic region twins (shipped, offline), 64 px.

        Blocks 1-4 with the V-V path from block 2 were chosen on pretraining-category images
        (chapter 10), never on held-out ones. The paper's 15 epochs and 3 warm-up epochs, at
        lr 5e-3: with the paper's 1e-3 the prompts underfit even their training images (the micro
        text tower's word vectors are ~3x the scale of the prompts' initialisation).
        """
        base = dict(preset="micro", clip_model="promptmoe-micro", pretrained=MICRO_WEIGHTS,
                    image_size=64, layers=(1, 2, 3, 4), vv_start=2, n_heads=4, router_hidden=64,
                    lr=5e-3, epochs=15, warmup_epochs=3, batch_size=8, sigma=1.0)
        return cls(**{**base, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "PromptMoEConfig":
        """Random-init tiny CLIP registered in this package: offline tests and CI only."""
        base = dict(preset="tiny", clip_model="promptmoe-tiny", pretrained=None, image_size=64,
                    layers=(1, 2, 3, 4), n_heads=4, router_hidden=32, epochs=2,
                    warmup_epochs=1, batch_size=8, sigma=1.0)
        return cls(**{**base, **overrides})

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PromptMoEConfig":
        """Build a preset by name ("paper", "small", "micro" or "tiny")."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")
        return getattr(cls, name)(**overrides)

    # ------------------------------------------------------------------ helpers
    def replace(self, **changes) -> "PromptMoEConfig":
        """A copy with some fields changed (used by the ablation loop)."""
        return dataclasses.replace(self, **changes)

    @property
    def first_vv_block(self) -> int:
        """First 1-based block whose patch tokens come from the V-V path."""
        return self.vv_start if self.vv_start is not None else min(self.layers)

    @property
    def n_prompt_layers(self) -> int:
        """How many independent prompt modules exist (one per layer unless shared)."""
        return len(self.layers) if self.layerwise_prompts else 1

    def validate(self) -> None:
        """Raise ValueError naming the field at fault."""
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode={self.prompt_mode!r}; choose one of {PROMPT_MODES}")
        if not self.layers or any(x < 1 for x in self.layers):
            raise ValueError(f"layers={self.layers}: give 1-based block indices, at least one")
        if sorted(set(self.layers)) != list(self.layers):
            raise ValueError(f"layers={self.layers}: must be strictly increasing")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k={self.top_k} must lie in [1, n_experts={self.n_experts}]")
        for name in ("n_queries", "n_heads", "router_hidden", "len_normal", "len_abnormal",
                     "len_context", "image_size", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.warmup_epochs < 0 or self.alpha < 0 or self.beta < 0:
            raise ValueError("warmup_epochs, alpha and beta must be >= 0")
        if self.pos_embed_resize not in POS_EMBED_RESIZES:
            raise ValueError(f"pos_embed_resize={self.pos_embed_resize!r}; choose one of "
                             f"{POS_EMBED_RESIZES}")
        if self.layer_map_reduce not in LAYER_MAP_REDUCES:
            raise ValueError(f"layer_map_reduce={self.layer_map_reduce!r}; choose one of "
                             f"{LAYER_MAP_REDUCES}")
        if self.precision not in ("fp32", "auto", "bf16", "fp16"):
            raise ValueError(f"precision={self.precision!r}; choose fp32, auto, bf16 or fp16")
        if self.tau <= 0 or self.tau_image <= 0:
            raise ValueError(f"temperatures must be > 0 (tau={self.tau}, tau_image={self.tau_image})")

    def to_dict(self) -> dict:
        """Plain JSON-friendly dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "PromptMoEConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    def architecture_dict(self) -> dict:
        """Fields that change parameter shapes: a checkpoint must match these exactly."""
        keys = ("clip_model", "image_size", "layers", "prompt_mode", "layerwise_prompts",
                "n_queries", "n_experts", "n_heads", "router_hidden", "len_normal",
                "len_abnormal", "len_context", "share_pool", "share_attention", "top_k")
        d = self.to_dict()
        return {k: d[k] for k in keys}
