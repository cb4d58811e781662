"""Device safety without a GPU: the ``meta`` device stands in for CUDA.

A tensor created on the CPU and combined with a meta tensor raises, exactly as it would against a
CUDA tensor, while meta computes only shapes (a paper-preset step costs nothing). So running the
paper preset and the chapters' device-sensitive cells on meta catches every "created on the CPU,
used with the model" bug; both crashes of chapters 3 and 4 on Colab were of this kind.
"""
import json
import types
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from promptmoe import losses
from promptmoe.backbone import FrozenCLIP
from promptmoe.config import PROMPT_MODES, PromptMoEConfig
from promptmoe.model import PromptMoE

META = torch.device("meta")
BOOK = Path(__file__).resolve().parents[1] / "book"


def meta_model(config: PromptMoEConfig) -> PromptMoE:
    """The model of ``config`` with every tensor on meta (no weights are read or initialised)."""
    with torch.device(META):
        clip = open_clip.create_model(config.clip_model, pretrained=None, force_quick_gelu=True,
                                      force_image_size=config.image_size, device=META)
    return PromptMoE(config, backbone=FrozenCLIP(config, clip=clip)).to(META)


@pytest.fixture(scope="module")
def paper_model():
    return meta_model(PromptMoEConfig.paper(pretrained=None))


def _batch(config, B=2):
    S = config.image_size
    return (torch.empty(B, 3, S, S, device=META), torch.empty(B, S, S, device=META),
            torch.empty(B, dtype=torch.long, device=META))


def test_paper_training_step_on_meta(paper_model):
    model, cfg = paper_model, paper_model.config
    images, masks, labels = _batch(cfg)
    model.train()
    out = model(images)
    assert out["anomaly_map"].shape == (2, 518, 518) and out["anomaly_map"].device == META
    terms = losses.total_loss(out, masks, labels, model.expert_pools(), cfg.alpha, cfg.beta,
                              cfg.focal_gamma)  # Eq. 8
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    assert all(p.grad is not None and p.grad.device == META for p in params)
    optimizer.step()
    assert all(optimizer.state[p]["exp_avg"].device == META for p in params)
    assert not any(p.requires_grad for p in model.backbone.parameters())


@pytest.mark.parametrize("changes", [{"prompt_mode": m} for m in PROMPT_MODES] + [
    {"share_pool": True}, {"share_attention": True}, {"share_pool": True, "share_attention": True},
    {"layerwise_prompts": False}, {"vv_attention": False}, {"global_ln_post": False},
    {"layer_map_reduce": "sum"}])
def test_eval_forward_on_meta(paper_model, changes):
    cfg = paper_model.config.replace(**changes)
    backbone = paper_model.backbone if cfg.vv_attention and cfg.global_ln_post else \
        FrozenCLIP(cfg, clip=paper_model.backbone.clip)
    model = PromptMoE(cfg, backbone=backbone).to(META).eval()
    images = _batch(cfg)[0]
    with torch.no_grad():
        out = model(images)
    for key in ("anomaly_map", "pred_score", "layer_maps", "image_prob", "text_features"):
        assert out[key].device == META, key
    assert out["anomaly_map"].shape == (2, 518, 518) and out["pred_score"].shape == (2,)


# ---------------------------------------------------------------- chapters' own code on meta
def _cells(notebook: str, *markers: str):
    """Source of the code cell holding each marker (each must be in exactly one cell)."""
    cells = json.loads((BOOK / notebook).read_text())["cells"]
    out = []
    for marker in markers:
        hits = ["".join(c["source"]) for c in cells
                if c["cell_type"] == "code" and marker in "".join(c["source"])]
        assert len(hits) == 1, f"{notebook}: {len(hits)} code cells contain {marker!r}"
        out.append(hits[0])
    return out


def _check(name, value, expected):
    if not torch.is_tensor(value):
        assert value == expected, name


def _check_close(name, a, b, **tol):
    """Same devices and shapes always; values only where the tensors hold data."""
    assert a.device == b.device, f"{name}: {a.device} vs {b.device}"
    assert a.shape == b.shape, name
    if a.device != META:
        torch.testing.assert_close(a, b, **tol)


def _namespace(**extra):
    ch = types.SimpleNamespace(device=META, quick=False)  # what chapter_setup returns on a GPU
    return {"torch": torch, "nn": nn, "F": F, "check": _check, "check_close": _check_close,
            "print": lambda *a, **k: None, "ch": ch, **extra}


def test_chapter3_attention_cells_on_meta(paper_model):
    """Chapter 3 rebuilds Eq. 2 by hand and as nn.MultiheadAttention with W_Q = W_O = I."""
    model = paper_model.eval()
    cfg, backbone = model.config, model.backbone
    B = 2
    feats = backbone.encode_image(_batch(cfg, B)[0])
    g = feats.global_feature
    visual = [torch.cat([t[:, 1:], g[:, None]], dim=1) for t in feats.layer_tokens]
    layer = model.prompts.layers[0]
    ns = _namespace(model=model, cfg=cfg, backbone=backbone, D=backbone.token_dim, B=B,
                    attn=layer.attention["normal"], Fx=visual[0], T=visual[0].shape[1])
    for source in _cells("03_prompts.ipynb", "q = attn.queries", "Eq. 2 by hand",
                         "W_Q = I"):
        exec(compile(source, "chapter 3", "exec"), ns)
    assert ns["O_mha"].device == META and ns["O_mha"].shape == (B, cfg.n_queries, backbone.token_dim)


def test_chapter4_loss_cells_on_meta(paper_model):
    """Chapter 4 re-implements every term of Eq. 8 and applies them to the model's outputs."""
    import math

    import pandas as pd

    from promptmoe.prompts import Routing

    ns = _namespace(losses=losses, math=math, pd=pd, Routing=Routing)
    for source in _cells("04_losses.ipynb", "def my_focal", "def my_dice", "def my_bce",
                         "def my_balance", "def my_decouple"):
        exec(compile(source, "chapter 4", "exec"), ns)  # the worked examples run on the CPU
    model, cfg = paper_model.train(), paper_model.config
    images, masks, labels = _batch(cfg)
    out = model(images)
    # what the chapter's "Eq. 8 from scratch" cell computes, on the model's device
    mine = (ns["my_focal"](out["anomaly_map"], masks) + ns["my_dice"](out["anomaly_map"], masks)
            + ns["my_bce"](out["pred_score"], labels.float())
            + cfg.alpha * ns["my_balance"]({b: r.probs for b, r in out["routing"].items()})
            + cfg.beta * ns["my_decouple"](model.expert_pools()))
    assert mine.device == META and mine.shape == ()
