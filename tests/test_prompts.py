import pytest
import torch

from promptmoe.config import PromptMoEConfig
from promptmoe.prompts import (BRANCHES, QueryCrossAttention, StaticPrompts, VGMoP,
                               aggregate_state_prompt, build_sequences, route_experts)


def test_route_experts_hand_computed():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    idx, w = route_experts(logits, 2)
    assert idx.tolist() == [[1, 3]]
    e = torch.exp(torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(w, (e / e.sum())[None])


def test_aggregate_state_prompt_hand_computed():
    pool = torch.arange(3 * 2 * 1, dtype=torch.float).view(3, 2, 1)  # experts [[0],[1]], [[2],[3]], [[4],[5]]
    idx = torch.tensor([[2, 0], [1, 1]])
    w = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    out = aggregate_state_prompt(pool, idx, w)
    torch.testing.assert_close(out, torch.tensor([[[1.0], [2.0]], [[2.0], [3.0]]]))


def test_cross_attention_matches_eq2_written_out():
    torch.manual_seed(0)
    attn = QueryCrossAttention(n_queries=3, dim=8, visual_dim=6, n_heads=2)
    feats = torch.randn(2, 5, 6)
    out = attn(feats)
    K, V = feats @ attn.key.weight.T, feats @ attn.value.weight.T  # (B, T, D)
    q = attn.queries
    ref = []
    for h in range(2):
        s = slice(4 * h, 4 * h + 4)
        a = torch.softmax(q[:, s] @ K[..., s].transpose(1, 2) / 2.0, dim=-1)  # sqrt(d=4) = 2
        ref.append(a @ V[..., s])
    torch.testing.assert_close(out, torch.cat(ref, dim=-1))


def _vgmop(**kw):
    torch.manual_seed(0)
    cfg = PromptMoEConfig.tiny(**kw)
    return cfg, VGMoP(cfg, dim=16, visual_dim=12)


def _tokens(n_layers=4, B=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, 9, 12, generator=g) * 3 for _ in range(n_layers)]


def test_exactly_k_experts_weights_sum_to_one_and_images_route_differently():
    cfg, vg = _vgmop()
    out = vg(_tokens())
    assert out.normal.shape == (5, 4, cfg.len_normal, 16) and out.abnormal.shape == (5, 4, cfg.len_abnormal, 16)
    for b in BRANCHES:
        r = out.routing[b]
        dense = r.dense_weights()  # (B, P, E)
        assert ((dense > 0).sum(-1) == cfg.top_k).all()
        assert (dense >= 0).all()
        torch.testing.assert_close(dense.sum(-1), torch.ones(5, 4))
        torch.testing.assert_close(r.probs, r.logits.softmax(-1))
        # the chosen experts are those with the largest logits
        assert torch.equal(r.indices, r.logits.topk(cfg.top_k, -1).indices)
        # different images get different mixtures (choices or weights)
        assert not torch.allclose(dense[0], dense[1])
        assert len({tuple(sorted(x)) for x in r.indices[:, 0].tolist()}) > 1


def test_aggregate_equals_the_weighted_sum_of_chosen_experts():
    cfg, vg = _vgmop()
    out = vg(_tokens())
    r = out.routing["abnormal"]
    pool = vg.layers[2].pool["abnormal"]
    i = 3
    ref = sum(r.weights[i, 2, j] * pool[r.indices[i, 2, j]] for j in range(cfg.top_k))
    torch.testing.assert_close(out.abnormal[i, 2], ref)


def test_branches_and_layers_have_distinct_parameters():
    cfg, vg = _vgmop()
    layer = vg.layers[0]
    assert layer.attention["normal"] is not layer.attention["abnormal"]
    assert layer.router["normal"] is not layer.router["abnormal"]
    assert layer.pool["normal"] is not layer.pool["abnormal"]
    assert vg.layers[0].pool["normal"] is not vg.layers[1].pool["normal"]
    pools = vg.expert_pools()
    assert len(pools) == 2 * 4
    assert pools[0] is vg.layers[0].pool["normal"] and pools[1] is vg.layers[0].pool["abnormal"]
    assert pools[6] is vg.layers[3].pool["normal"]


def test_sharing_ablations_share_what_they_say():
    cfg, vg = _vgmop(share_pool=True, share_attention=True)
    layer = vg.layers[0]
    assert set(layer.attention) == {"normal"} and set(layer.pool) == {"shared"}
    assert layer.router["normal"] is not layer.router["abnormal"]
    pool = layer.pool["shared"]
    assert pool.shape[1] == max(cfg.len_normal, cfg.len_abnormal)
    assert layer.pool_of("normal").shape[1] == cfg.len_normal
    out = vg(_tokens())
    assert out.normal.shape[2] == cfg.len_normal and len(vg.expert_pools()) == 4


def test_single_prompt_module_routes_on_the_last_layer():
    cfg, vg = _vgmop(layerwise_prompts=False)
    toks = _tokens()
    out = vg(toks)
    assert out.normal.shape[1] == 1 and len(vg.layers) == 1
    changed = [t.clone() for t in toks]
    changed[0] += 5  # the first layer does not feed the single module
    torch.testing.assert_close(vg(changed).normal, out.normal)


def test_gradients_reach_router_attention_and_pool():
    cfg, vg = _vgmop()
    out = vg(_tokens())
    (out.normal.sum() + out.abnormal.pow(2).sum()).backward()
    layer = vg.layers[1]
    for p in (layer.router["normal"].net[0].weight, layer.attention["abnormal"].key.weight,
              layer.attention["normal"].queries, layer.pool["abnormal"]):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("mode, n", [("static", 1), ("ensemble", 8)])
def test_static_baselines(mode, n):
    cfg = PromptMoEConfig.tiny(prompt_mode=mode)
    sp = StaticPrompts(cfg, dim=16)
    out = sp(_tokens())
    assert not out.per_image and out.routing == {}
    assert out.normal.shape == (n, 4, cfg.len_normal, 16)


def test_build_sequences_layout():
    D = 3
    normal = torch.full((2, 5, D), 1.0)
    abnormal = torch.full((2, 6, D), 2.0)
    ctx = torch.full((8, D), 3.0)
    sot, eot, cls = torch.full((D,), 7.0), torch.full((D,), 9.0), torch.full((1, D), 5.0)
    seq, eot_idx = build_sequences(normal, abnormal, ctx, sot, eot, cls)
    assert seq.shape == (4, 1 + 5 + 6 + 1 + 8 + 1, D)
    assert eot_idx.tolist() == [15, 15, 21, 21]
    row_n = seq[0, :, 0].tolist()
    assert row_n == [7] + [1] * 5 + [5] + [3] * 8 + [9] + [0] * 6
    row_a = seq[2, :, 0].tolist()
    assert row_a == [7] + [1] * 5 + [2] * 6 + [5] + [3] * 8 + [9]


def _projected_reference(attn, feats):
    """Eq. 2 the direct way: project every token to K and V, attend, per head (the old code)."""
    B, T, _ = feats.shape
    n_q, D = attn.queries.shape
    h, d = attn.n_heads, D // attn.n_heads
    k = attn.key(feats).view(B, T, h, d).transpose(1, 2)
    v = attn.value(feats).view(B, T, h, d).transpose(1, 2)
    q = attn.queries.view(n_q, h, d).transpose(0, 1).expand(B, h, n_q, d)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, n_q, D)


def test_cross_attention_without_token_projections_equals_the_direct_way():
    torch.manual_seed(1)
    attn = QueryCrossAttention(n_queries=8, dim=32, visual_dim=24, n_heads=4)
    with torch.no_grad():
        attn.queries.mul_(50)  # peaked attention: a wrong scale or head split would show
    feats = torch.randn(3, 50, 24)
    ref = _projected_reference(attn, feats)  # (3, 8, 32)
    torch.testing.assert_close(attn(feats), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn.pooled(feats), ref.mean(dim=1), atol=1e-5, rtol=1e-5)
    # the gradients reaching the trainable weights are the same too
    attn.pooled(feats).square().sum().backward()
    fast = [p.grad.clone() for p in attn.parameters()]
    attn.zero_grad()
    ref = _projected_reference(attn, feats)
    ref.mean(dim=1).square().sum().backward()
    for a, b in zip(fast, [p.grad for p in attn.parameters()]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
