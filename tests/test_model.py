import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from promptmoe.backbone import FrozenCLIP
from promptmoe.config import PromptMoEConfig
from promptmoe.losses import total_loss
from promptmoe.model import PromptMoE, count_trainable_parameters, gaussian_blur


def _model(tiny_backbone, **kw):
    torch.manual_seed(0)
    cfg = PromptMoEConfig.tiny(**kw)
    from promptmoe.backbone import FrozenCLIP
    return PromptMoE(cfg, backbone=FrozenCLIP(cfg, clip=tiny_backbone.clip))


def test_forward_outputs(tiny_backbone, images):
    model = _model(tiny_backbone).eval()
    out = model(images)
    assert out["anomaly_map"].shape == (4, 64, 64) and out["pred_score"].shape == (4,)
    assert out["layer_maps"].shape == (4, 4, 64, 64) and out["text_features"].shape == (4, 4, 2, 64)
    assert 0 <= out["anomaly_map"].min() and out["anomaly_map"].max() <= 1
    assert ((0 <= out["pred_score"]) & (out["pred_score"] <= 1)).all()
    r = out["routing"]["abnormal"]
    assert r.indices.shape == (4, 4, 4) and r.probs.shape == (4, 4, 8)
    assert not torch.allclose(r.dense_weights()[0], r.dense_weights()[1])  # instance-specific


def test_map_and_score_recomputed_by_hand(tiny_backbone, images):
    model = _model(tiny_backbone).train()
    out = model(images)
    feats = model.backbone.encode_image(images)
    text = out["text_features"]  # (B, L, 2, D)
    l = 2
    patches = F.normalize(feats.layer_tokens[l][:, 1:], dim=-1)
    sim = torch.einsum("bpd,bkd->bpk", patches, text[:, l]) / 0.07
    prob = sim.softmax(-1)[..., 1].view(4, 1, 8, 8)
    up = F.interpolate(prob, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(out["layer_maps"][:, l], up)
    torch.testing.assert_close(out["anomaly_map"], out["layer_maps"].mean(1))  # no smoothing in train
    g = F.normalize(feats.global_feature, dim=-1)
    img = torch.softmax(torch.einsum("bd,bkd->bk", g, text[:, -1]) / 0.01, -1)[:, 1]
    ref = 0.5 * (out["anomaly_map"].flatten(1).max(1).values + img)
    torch.testing.assert_close(out["pred_score"], ref)


def test_smoothing_only_in_eval(tiny_backbone, images):
    model = _model(tiny_backbone)
    with torch.no_grad():
        train_map = model.train()(images)["anomaly_map"]
        eval_out = model.eval()(images)
    torch.testing.assert_close(eval_out["anomaly_map"], gaussian_blur(train_map, 1.0))
    assert not torch.allclose(eval_out["anomaly_map"], train_map)


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_gaussian_blur_matches_scipy(sigma):
    x = torch.rand(2, 40, 37, dtype=torch.float64)
    ours = gaussian_blur(x, sigma).numpy()
    ref = np.stack([gaussian_filter(a, sigma, mode="reflect", truncate=4.0) for a in x.numpy()])
    np.testing.assert_allclose(ours, ref, atol=1e-10)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(torch.rand(1, 10, 10), 4.0)


def test_only_prompt_parameters_train(tiny_backbone):
    model = _model(tiny_backbone)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith(("prompts.", "context")) for n in names)
    assert set(model.trainable_state_dict()) == {n for n, _ in model.named_parameters() if not n.startswith("backbone.")}
    D, Dx, E, Nq, H, P = 64, 64, 8, 8, 32, 4
    per_branch = Nq * D + 2 * Dx * D + (D * H + H + H * E + E)
    per_layer = 2 * per_branch + E * 5 * D + E * 6 * D
    assert model.num_trainable_parameters() == P * per_layer + 8 * D
    assert count_trainable_parameters(model.config, 64, 64) == model.num_trainable_parameters()


def test_paper_preset_parameter_count():
    D, E, Nq, H = 768, 8, 8, 256
    per_branch = Nq * D + 2 * D * D + (D * H + H + H * E + E)
    expected = 4 * (2 * per_branch + E * (5 + 6) * D) + 8 * D
    assert count_trainable_parameters(PromptMoEConfig.paper()) == expected == 11_354_176


def test_cut_prompts_give_the_same_text_features(tiny_backbone, images):
    model = _model(tiny_backbone)
    feats = model.backbone.encode_image(images)
    visual = [torch.cat([t[:, 1:], feats.global_feature[:, None]], 1) for t in feats.layer_tokens]
    p = model.prompts(visual)
    torch.testing.assert_close(model.encode_prompts(p, cut=True), model.encode_prompts(p, cut=False),
                               atol=1e-5, rtol=1e-5)


def test_static_prompts_are_image_independent_and_ensemble_averages(tiny_backbone, images):
    static = _model(tiny_backbone, prompt_mode="static")
    out = static(images)
    assert out["routing"] == {}
    torch.testing.assert_close(out["text_features"][0], out["text_features"][3])
    ens = _model(tiny_backbone, prompt_mode="ensemble")
    p = ens.prompts([])
    members = []
    for i in range(8):
        single = type(p)(p.normal[i:i + 1], p.abnormal[i:i + 1], {}, False)
        members.append(ens.encode_prompts(single))
    ref = F.normalize(torch.cat(members).mean(0, keepdim=True), dim=-1)
    torch.testing.assert_close(ens.encode_prompts(p), ref)


def test_a_few_adam_steps_lower_the_loss(tiny_backbone, images):
    model = _model(tiny_backbone).train()
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(4, 64, 64)
    mask[1, 10:30, 20:40] = 1
    mask[3, 40:60, 5:25] = 1
    label = torch.tensor([0, 1, 0, 1])
    feats = model.backbone.encode_image(images)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2, betas=(0.6, 0.999))
    history = []
    for _ in range(8):
        out = model.forward_features(feats)
        loss = total_loss(out, mask, label, model.expert_pools(), 0.01, 0.005)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < history[0] - 0.05, history


def test_unpadded_branches_give_the_padded_text_features(tiny_backbone, images, monkeypatch):
    """Two text-tower calls at the branches' own lengths equal one call with padded normals."""
    import promptmoe.model as model_mod

    model = _model(tiny_backbone)
    feats = model.backbone.encode_image(images)
    visual = [torch.cat([t[:, 1:], feats.global_feature[:, None]], 1) for t in feats.layer_tokens]
    p = model.prompts(visual)
    split = model.encode_prompts(p)  # 16 vs 22 tokens: 27% padding, so split
    monkeypatch.setattr(model_mod, "PAD_WASTE_SPLIT", 2.0)  # never split
    padded = model.encode_prompts(p)
    torch.testing.assert_close(split, padded, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(split[:, :, 0], split[:, :, 1], atol=1e-4)  # branches differ


# ----------------------------------------------------------------- deterministic upsampling
@pytest.mark.parametrize("h, w, H, W", [(8, 8, 64, 64), (37, 37, 518, 518), (5, 3, 7, 11),
                                        (10, 10, 4, 6)])
def test_interpolation_matrices_are_bilinear_interpolation(h, w, H, W):
    from promptmoe.model import interpolation_matrix

    x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    ref = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
    a_h, a_w = interpolation_matrix(H, h, dtype=torch.float64), interpolation_matrix(W, w, dtype=torch.float64)
    mine = a_h @ x @ a_w.T
    torch.testing.assert_close(mine, ref, atol=1e-12, rtol=0)
    assert torch.allclose(a_h.sum(1), torch.ones(H, dtype=torch.float64))  # rows are convex weights
    g = torch.randn(2, 3, H, W, dtype=torch.float64)
    (grad_ref,) = torch.autograd.grad(ref, x, g)
    (grad_mine,) = torch.autograd.grad(mine, x, g)
    torch.testing.assert_close(grad_mine, grad_ref, atol=1e-12, rtol=0)


def test_deterministic_gpu_path_gives_the_same_maps_and_gradients(tiny_backbone, images, monkeypatch):
    """On a GPU in deterministic mode the maps are upsampled by matmuls (F.interpolate's backward
    has no deterministic CUDA kernel); forced on here, it gives the CPU path's maps and grads."""
    from promptmoe import model as model_module

    def run():  # in float64 (a copy: the session's backbone stays float32), so that the two
        # orders of summation agree to 1e-12
        torch.manual_seed(0)
        cfg = PromptMoEConfig.tiny()
        clip = copy.deepcopy(tiny_backbone.clip)
        model = PromptMoE(cfg, backbone=FrozenCLIP(cfg, clip=clip)).double().train()
        feats = model.backbone.encode_image(images.double())
        out = model.forward_features(feats, out_size=(64, 64))
        out["anomaly_map"].square().sum().backward()
        return out["anomaly_map"].detach(), model.context.grad.clone()

    plain_map, plain_grad = run()
    used = []
    monkeypatch.setattr(model_module, "_deterministic_cuda", lambda x: used.append(1) or True)
    det_map, det_grad = run()
    assert len(used) == 4  # one upsampling per feature layer took the matmul path
    torch.testing.assert_close(det_map, plain_map, atol=1e-12, rtol=0)
    torch.testing.assert_close(det_grad, plain_grad, atol=1e-10, rtol=1e-10)


def test_model_device_comes_from_the_weights(tiny_backbone):
    from promptmoe.model import model_device

    model = _model(tiny_backbone)
    assert model_device(model) == torch.device("cpu") == model_device(model, "cpu")
    with pytest.raises(ValueError, match="device='meta' but the model's weights are on cpu"):
        model_device(model, "meta")
