import pytest
import torch
import torch.nn.functional as F

from promptmoe.backbone import FrozenCLIP, ImageFeatures, vv_attention
from promptmoe.config import PromptMoEConfig


def test_everything_is_frozen(tiny_backbone):
    assert not any(p.requires_grad for p in tiny_backbone.parameters())
    tiny_backbone.train()
    assert not tiny_backbone.clip.training  # the backbone stays in eval mode


@pytest.mark.parametrize("vv", [False, True])
def test_global_feature_equals_open_clip_encode_image(tiny_backbone, images, vv):
    bb = FrozenCLIP(PromptMoEConfig.tiny(vv_attention=vv), clip=tiny_backbone.clip)
    feats = bb.encode_image(images)
    torch.testing.assert_close(feats.global_feature, bb.clip.encode_image(images))


def test_layers_without_vv_equal_open_clip_intermediates(tiny_backbone, images):
    cfg = PromptMoEConfig.tiny(vv_attention=False)
    bb = FrozenCLIP(cfg, clip=tiny_backbone.clip)
    feats = bb.encode_image(images)
    ref = bb.clip.visual.forward_intermediates(
        images, indices=[l - 1 for l in cfg.layers], normalize_intermediates=True,
        intermediates_only=True, output_fmt="NLC")["image_intermediates"]
    assert feats.grid == (8, 8)
    for ours, theirs in zip(feats.layer_tokens, ref):
        assert ours.shape == (4, 65, 64)
        torch.testing.assert_close(ours[:, 1:], theirs @ bb.clip.visual.proj)


def _manual_vv(block, x):
    """Independent V-V attention: per-head softmax(v v^T / sqrt(d)) v written out by hand."""
    W = x.shape[-1]
    h = block.ln_1(x)
    v = h @ block.attn.in_proj_weight[2 * W:].T + block.attn.in_proj_bias[2 * W:]
    heads = block.attn.num_heads
    d = W // heads
    outs = []
    for i in range(heads):
        vi = v[..., i * d:(i + 1) * d]
        a = torch.softmax(vi @ vi.transpose(1, 2) / d ** 0.5, dim=-1)
        outs.append(a @ vi)
    return block.attn.out_proj(torch.cat(outs, dim=-1))


def test_vv_path_matches_a_hand_written_reference(tiny_backbone, images):
    cfg = PromptMoEConfig.tiny(layers=(2, 4))  # V-V path from block 2 on
    bb = FrozenCLIP(cfg, clip=tiny_backbone.clip)
    visual = bb.clip.visual
    x = visual._embeds(images)
    y = None
    expected = {}
    for idx, block in enumerate(visual.transformer.resblocks, start=1):
        if idx >= 2:
            y = (x if y is None else y) + _manual_vv(block, x)
        x = block(x)
        expected[idx] = visual.ln_post(y if y is not None else x) @ visual.proj
    feats = bb.encode_image(images)
    torch.testing.assert_close(feats.layer_tokens[0], expected[2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(feats.layer_tokens[1], expected[4], atol=1e-5, rtol=1e-4)


def test_vv_attention_function_against_reference(tiny_backbone):
    block = tiny_backbone.clip.visual.transformer.resblocks[0]
    x = torch.randn(2, 10, 64)
    torch.testing.assert_close(vv_attention(block.attn, block.ln_1(x)), _manual_vv(block, x),
                               atol=1e-5, rtol=1e-4)


def test_each_layer_is_a_distinct_tensor(tiny_backbone, images):
    feats = tiny_backbone.encode_image(images)
    toks = feats.layer_tokens
    ptrs = {t.data_ptr() for t in toks}
    assert len(ptrs) == len(toks)  # no aliasing: the AnomalyCLIP layer bug cannot happen
    for i in range(len(toks)):
        for j in range(i + 1, len(toks)):
            assert (toks[i] - toks[j]).abs().max() > 1e-3


def test_cut_text_encoding_equals_full_77_tokens(tiny_backbone):
    bb = tiny_backbone
    ids = bb.tokenize(["a photo of a damaged object", "flawless"])
    embeds = bb.clip.token_embedding(ids)
    eot = ids.argmax(dim=-1)
    full = bb.encode_embeddings(embeds, eot, cut=False)
    cut = bb.encode_embeddings(embeds[:, :12], eot, cut=True)
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, bb.clip.encode_text(ids))
    torch.testing.assert_close(bb.encode_text(["flawless"]), F.normalize(full[1:], dim=-1))


def test_word_and_special_embeddings(tiny_backbone):
    bb = tiny_backbone
    ids = bb.tokenize(["object"])[0]
    sot, eot = bb.special_embeddings()
    table = bb.clip.token_embedding.weight
    torch.testing.assert_close(sot, table[ids[0]])
    torch.testing.assert_close(eot, table[int(ids[ids.argmax()])])
    torch.testing.assert_close(bb.word_embeddings("object"), table[ids[1:int(ids.argmax())]])


def test_bad_layers_and_long_prompts_are_errors(tiny_backbone):
    with pytest.raises(ValueError, match=r"layers \[5\] exceed the 4 blocks"):
        FrozenCLIP(PromptMoEConfig.tiny(layers=(1, 5)), clip=tiny_backbone.clip)
    with pytest.raises(ValueError, match="context length"):
        tiny_backbone.encode_embeddings(torch.zeros(1, 78, 64), torch.tensor([77]))


def test_image_features_helpers(tiny_backbone, images):
    feats = tiny_backbone.encode_image(images)
    both = ImageFeatures.cat([feats[:2], feats[2:]])
    for a, b in zip(both.layer_tokens, feats.layer_tokens):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(both.global_feature, feats.global_feature)


def test_block_with_vv_equals_open_clip_block_and_separate_vv(tiny_backbone):
    """The shared q,k,v projection changes nothing: both outputs match the separate paths."""
    from promptmoe.backbone import block_with_vv

    g = torch.Generator().manual_seed(3)
    for block in tiny_backbone.clip.visual.transformer.resblocks:
        x = torch.randn(3, 17, 64, generator=g)
        out, vv = block_with_vv(block, x)
        torch.testing.assert_close(out, block(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vv, _manual_vv(block, x), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(vv, block.attn(block.ln_1(x), block.ln_1(x), block.ln_1(x))[0],
                                  atol=1e-3)  # V-V differs from q-k attention


def _reference_features(visual, images, layers, first_vv):
    """Hand-written: the original path throughout; from block ``first_vv`` on a V-V path that
    starts from the original path's input there and adds only V-V attention (no MLP)."""
    x, y, out = visual._embeds(images), None, {}
    for idx, block in enumerate(visual.transformer.resblocks, start=1):
        if idx >= first_vv:
            y = (x if y is None else y) + _manual_vv(block, x)
        x = block(x)
        if idx in layers:
            out[idx] = visual.ln_post(y if y is not None else x) @ visual.proj  # (B, HW+1, D)
    return [out[i] for i in layers]


def _table4_and_more():
    from promptmoe import ablation

    rows = [(name, c.layers, c.vv_start) for name, c in
            ablation.configs_for(4, PromptMoEConfig.tiny()).items()]
    # vv_start after some of the feature blocks: those come from the original path
    return rows + [("V-V from block 3", (1, 2, 3, 4), 3), ("V-V from block 2", (4,), 2)]


@pytest.mark.parametrize("name, layers, vv_start", _table4_and_more(),
                         ids=[r[0] for r in _table4_and_more()])
def test_every_table4_row_matches_the_hand_written_vv_path(tiny_backbone, images, name, layers,
                                                           vv_start):
    cfg = PromptMoEConfig.tiny(layers=layers, vv_start=vv_start)
    if name.startswith("{"):  # a Table 4 row: the V-V path starts where the base model's does
        assert cfg.first_vv_block == 1
    feats = FrozenCLIP(cfg, clip=tiny_backbone.clip).encode_image(images)
    expected = _reference_features(tiny_backbone.clip.visual, images, layers, cfg.first_vv_block)
    for block, ours, ref in zip(layers, feats.layer_tokens, expected):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4,
                                   msg=lambda m, b=block: f"block {b}: {m}")
    if min(layers) > cfg.first_vv_block:  # not vacuous: the start of the V-V path matters
        late = FrozenCLIP(cfg.replace(vv_start=min(layers)), clip=tiny_backbone.clip)
        assert (late.encode_image(images).layer_tokens[0] - feats.layer_tokens[0]).abs().max() > 1e-3
