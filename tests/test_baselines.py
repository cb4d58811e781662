"""Baselines: the colour distance by hand, and the hand-written prompts against an independent
computation of Eq. 6 with fixed text."""
import torch
import torch.nn.functional as F

from promptmoe.baselines import HandPrompts, colour_distance_maps
from promptmoe.microclip.compare import ColourDistance


def test_colour_distance_by_hand():
    img = torch.full((1, 3, 16, 16), 0.5)
    img[0, :, 8:, 8:] = torch.tensor([0.5, 0.9, 0.5]).view(3, 1, 1)  # one 8x8 cell turns green
    maps = colour_distance_maps(img, cell=8)  # cells: 3 grey, 1 green; per-channel median = grey
    assert maps.shape == (1, 16, 16)
    # bilinear upsampling (align_corners=False) leaves the outer quarter of each cell at its value
    assert abs(maps[0, 15, 15].item() - 0.4) < 1e-6  # the green cell: distance |(0, 0.4, 0)|
    assert abs(maps[0, 0, 0].item()) < 1e-6  # a grey cell: distance 0
    assert 0 < maps[0, 8, 8].item() < 0.4  # between cells: interpolated


def test_colour_distance_model_scores_the_max_of_the_smoothed_map(tiny_config):
    m = ColourDistance(tiny_config.replace(sigma=0.0))
    mean, std = m.mean, m.std
    px = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = m((px - mean) / std)
    ref = colour_distance_maps(px)
    torch.testing.assert_close(out["anomaly_map"], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["pred_score"], ref.flatten(1).max(1).values, atol=1e-5, rtol=1e-5)


def test_hand_prompts_equal_eq6_with_fixed_text(tiny_backbone):
    model = HandPrompts(tiny_backbone, ["a photo of a flawless object.", "a photo of a damaged object."]).eval()
    cfg = model.config
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(x)
        feats = tiny_backbone.encode_image(x)
        text = tiny_backbone.encode_text(list(model.sentences))  # (2, D)
        h, w = feats.grid
        maps = []
        for tokens in feats.layer_tokens:
            p = F.normalize(tokens[:, 1:], dim=-1)
            prob = (p @ text.T / cfg.tau).softmax(-1)[..., 1].view(2, 1, h, w)
            maps.append(F.interpolate(prob, size=(64, 64), mode="bilinear", align_corners=False)[:, 0])
        torch.testing.assert_close(out["layer_maps"], torch.stack(maps, 1), atol=1e-5, rtol=1e-5)
        g = F.normalize(feats.global_feature, dim=-1)
        image_prob = (g @ text.T / cfg.tau_image).softmax(-1)[:, 1]
        torch.testing.assert_close(out["image_prob"], image_prob, atol=1e-5, rtol=1e-5)
