"""What the micro CLIP is trained with: the windowed image forward, the text forward, two losses.

Taught in chapter 10, where each function is checked against open_clip or a loss written by hand
(as in ``tests/test_microclip.py``); :mod:`.pretrain` runs them in its loop.

* :func:`encode_windows` runs only a ``g x g`` window of the patch grid through the image tower,
  each token keeping its positional embedding from the full grid (so a window is exactly a part
  of a test image); with average pooling its embedding is the mean of ``proj(ln_post(patch))``.
* :func:`contrastive_loss` is CLIP's symmetric InfoNCE with identical captions sharing a target;
  :func:`twin_loss` is the two-way decision between a crop's caption and its twin's, the same
  softmax the anomaly maps compute at test time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backbone import block_with_vv

def encode_windows(visual, images: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                   side: int, vv_start: int = 0):
    """Image embeddings of a ``side x side`` window of patch tokens per image.

    Args:
        visual: an open_clip VisionTransformer with average pooling.
        images: (B, 3, S, S) CLIP-normalised.
        top, left: (B,) first row and column of each window, in patches.
        side: window side in patches (the full grid gives ``visual(images)`` exactly).
        vv_start: also return the embedding of the V-V attention path started at this 1-based
            block (as :meth:`promptmoe.backbone.FrozenCLIP.encode_image` computes it); 0 = not.
    Returns:
        (B, D) the average-pooled, projected embedding of the window's patch tokens; with
        ``vv_start``, a pair (original path, V-V path).
    """
    x = visual.conv1(images)  # (B, W, h, w)
    B, W, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)  # (B, h*w, W)
    ar = torch.arange(side, device=x.device)
    rows, cols = top.to(x.device)[:, None] + ar, left.to(x.device)[:, None] + ar  # (B, side)
    idx = (rows[:, :, None] * w + cols[:, None, :]).flatten(1)  # (B, side*side) raster order
    pos = visual.positional_embedding.to(x.dtype)  # (1 + h*w, W)
    x = x.gather(1, idx[..., None].expand(-1, -1, W)) + pos[1:][idx]  # (B, side*side, W)
    cls = (visual.class_embedding.to(x.dtype) + pos[0]).expand(B, 1, W)
    x = visual.ln_pre(torch.cat([cls, x], dim=1))  # (B, 1 + side*side, W)
    if not vv_start:
        x = visual.transformer(x)
        pooled, _ = visual._pool(x)  # (B, W): mean of ln_post(patch tokens)
        return pooled @ visual.proj  # (B, D)
    y = None  # the V-V path, as in FrozenCLIP.encode_image
    for idx_block, block in enumerate(visual.transformer.resblocks, start=1):
        if idx_block >= vv_start:
            x_in = x
            x, vv = block_with_vv(block, x)
            y = (x_in if y is None else y) + block.ls_1(vv)
        else:
            x = block(x)
    pooled, _ = visual._pool(x)  # (B, W)
    pooled_vv, _ = visual._pool(y)  # (B, W): mean of ln_post(V-V patch tokens)
    return pooled @ visual.proj, pooled_vv @ visual.proj


def encode_tokens(clip, tokens: torch.Tensor) -> torch.Tensor:
    """Text embeddings (N, D) of (N, 77) token ids, cut after the longest EOT (the mask is causal,
    so the features equal ``clip.encode_text`` at a fraction of the cost)."""
    L = int(tokens.argmax(dim=-1).max()) + 1
    ids = tokens[:, :L]
    x = clip.token_embedding(ids) + clip.positional_embedding[:L]  # (N, L, W)
    x = clip.transformer(x, attn_mask=clip.attn_mask[:L, :L])
    x = clip.ln_final(x)[torch.arange(len(ids), device=ids.device), ids.argmax(dim=-1)]  # (N, W)
    return x @ clip.text_projection  # (N, D)


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_ids: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE where identical captions are not negatives of each other.

    Args:
        image_emb, text_emb: (B, D) row i of each is a pair (not normalised).
        caption_ids: (B,) the table index of each caption; equal ids share the target mass.
        logit_scale: the learnable log temperature (scalar).
    """
    img, txt = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * img @ txt.T  # (B, B)
    same = (caption_ids[:, None] == caption_ids[None, :]).float()  # symmetric
    target = same / same.sum(dim=1, keepdim=True)  # (B, B), rows sum to 1
    loss_i = -(target * logits.log_softmax(dim=1)).sum(1).mean()  # image -> its captions
    loss_t = -(target * logits.T.log_softmax(dim=1)).sum(1).mean()  # caption -> its images
    return 0.5 * (loss_i + loss_t)


def twin_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The state decision itself: each image of a twin pair picks its own caption over its twin's.

    Rows ``i`` and ``n + i`` (n = B/2) are the clean and defective views of one crop. In the
    full contrastive loss the twin's caption is one negative among B; here it is the only one, so
    the gradient goes to the state word and to what the defect changed in the image. This is the
    same two-way softmax the anomaly maps compute at test time (normal vs abnormal prompt).
    """
    img, txt = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
    n = len(img) // 2
    twin_txt = torch.cat([txt[n:], txt[:n]])  # each row's twin caption
    scale = logit_scale.exp().clamp(max=100)
    logits = scale * torch.stack([(img * txt).sum(-1), (img * twin_txt).sum(-1)], dim=1)  # (B, 2)
    return F.cross_entropy(logits, torch.zeros(len(img), dtype=torch.long, device=img.device))


@torch.no_grad()
def twin_accuracy(image_emb, text_emb) -> float:
    """Share of twins (clean i, defective n + i) whose image is closer to its own caption than to
    its twin's, over both halves of a batch."""
    img, txt = F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1)
    n = len(img) // 2
    own = (img * txt).sum(-1)  # (B,)
    swapped = (img * torch.cat([txt[n:], txt[:n]])).sum(-1)  # each image vs its twin's caption
    return float((own > swapped).float().mean())
