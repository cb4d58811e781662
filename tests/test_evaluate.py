from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from promptmoe.config import PromptMoEConfig
from promptmoe.data import load_dataset
from promptmoe.data.synthetic import make_synthetic
from promptmoe.evaluate import Predictions, category_metrics, evaluate, routing_table
from promptmoe.metrics import compute_metrics
from promptmoe.model import build_model


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synthetic(root, size=64, n_train=1, n_test_good=3, n_test_bad=3,
                   categories=["pill", "coins"], progress=False)
    return load_dataset("synthetic", root / "unseen", image_size=64, verbose=False)


def test_report_matches_metrics_computed_directly(synth, tmp_path, device):
    model = build_model(PromptMoEConfig.tiny(), device=device).eval()
    rep = evaluate(model, {"synthetic": synth}, out_dir=tmp_path, keep_predictions=True,
                   progress=False, label={"preset": "tiny", "data": "synthetic"})
    assert list(rep.per_category.category) == ["coins", "pill"]
    for _, row in rep.per_category.iterrows():
        p = rep.predictions[f"synthetic/{row.category}"]
        ref = compute_metrics(p.labels, p.scores, p.masks, p.maps)
        for k, v in ref.items():
            assert row[k] == pytest.approx(v, nan_ok=True)
        assert row.n_images == 6 and row.n_anomalous == 3
    mean = rep.per_category[["image_auroc", "au_pro"]].mean()
    assert rep.summary.loc[0, "image_auroc"] == pytest.approx(mean["image_auroc"])
    # every image chooses exactly k experts per layer and branch
    per = rep.routing.groupby(["branch", "layer"])["count"].sum()
    assert (per == 12 * model.config.top_k).all() and len(per) == 2 * 4
    for name in ("per_category.csv", "summary.csv", "routing.csv", "per_category.md", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0
    md = (tmp_path / "summary.md").read_text()
    assert "preset: tiny" in md and "not what the method achieves" in md
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert "image_auroc (paper)" in summary.columns and "au_pro (this run)" in summary.columns
    # the paper's PRO (AnomalyCLIP's protocol) sits beside our compat PRO, labelled
    cols = list(summary.columns)
    assert cols[cols.index("pro (paper)"):][:3] == ["pro (paper)", "pro_compat (this run)",
                                                    "au_pro (this run)"]
    assert summary.loc[0, "pro_compat (this run)"] == pytest.approx(
        100 * rep.summary.loc[0, "pro_compat"], abs=0.05)
    assert "AnomalyCLIP's protocol" in md


def _pred(labels, has_mask, masks, maps, scores):
    n = len(labels)
    return Predictions(np.asarray(scores, float), np.asarray(labels), np.asarray(maps, float),
                       np.asarray(masks, bool), np.asarray(has_mask), ["c"] * n, [""] * n, {})


def test_pixel_metrics_use_only_images_with_ground_truth():
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 8, 8), bool)
    masks[2, 2:5, 2:5] = True
    maps = rng.random((4, 8, 8))
    maps[2, 2:5, 2:5] += 1
    p = _pred([0, 0, 1, 1], [False, False, True, False], masks, maps, [0.1, 0.2, 0.9, 0.8])
    out = category_metrics(p)
    keep = [0, 1, 2]  # the anomalous image without a mask file is left out of pixel metrics
    ref = compute_metrics(p.labels[keep], p.scores[keep], masks[keep], maps[keep])
    assert out["pixel_auroc"] == pytest.approx(ref["pixel_auroc"]) and out["image_auroc"] == 1.0
    no_masks = _pred([0, 1], [False, False], masks[:2], maps[:2], [0.1, 0.9])
    assert np.isnan(category_metrics(no_masks)["au_pro"])  # HeadCT-like: image metrics only


def test_routing_table_counts():
    w = np.zeros((3, 2, 4))
    w[:, 0, :2] = 0.5
    w[0, 1, 3], w[1, 1, 3], w[2, 1, 0] = 1, 1, 1
    p = _pred([0, 1, 1], [1, 1, 1], np.zeros((3, 2, 2)), np.zeros((3, 2, 2)), [0, 1, 1])
    p.routing = {"normal": w}
    t = routing_table(p, "d", layers=(6, 12))
    got = t.set_index(["layer", "expert"])["count"]
    assert got[(6, 0)] == 3 and got[(6, 2)] == 0 and got[(12, 3)] == 2 and got[(12, 0)] == 1
    assert (t.n_images == 3).all()


def test_saved_maps_hold_the_models_maps(synth, tmp_path, device):
    """evaluate(save_maps=True), i.e. ``promptmoe eval --save-maps``: per category an .npz whose
    maps are the model's own maps of those images (float16), with scores, labels and paths."""
    from promptmoe.cli import main
    from promptmoe.checkpoint import save_checkpoint

    cfg = PromptMoEConfig.tiny()
    model = build_model(cfg, device=device).eval()
    ckpt = save_checkpoint(tmp_path / "c.safetensors", model, cfg, meta={"clip_seed": 0})
    root = Path(synth.records[0].image_path).parents[3]  # <root>/unseen/<cat>/test/<kind>/x.png
    assert main(["eval", "--checkpoint", str(ckpt), "--data", f"mine=synthetic:{root}", "--out",
                 str(tmp_path / "e"), "--save-maps", "--no-compat", "--device", "cpu"]) == 0
    for cat in synth.categories:
        saved = np.load(tmp_path / "e" / "maps" / "mine" / f"{cat}.npz")
        sub = synth.subset(cat)
        images = torch.stack([sub[i]["image"] for i in range(len(sub))]).to(device)
        with torch.no_grad():
            out = model(images)  # the model itself, not evaluate's loop
        assert saved["maps"].dtype == np.float16 and saved["maps"].shape == (6, 64, 64)
        # float16 keeps 11 bits: maps in [0, 1] are within 2^-11 of the float32 values
        np.testing.assert_allclose(saved["maps"].astype(np.float32), out["anomaly_map"].cpu().numpy(),
                                   atol=2 ** -11, rtol=0)
        np.testing.assert_allclose(saved["scores"], out["pred_score"].cpu().numpy(), atol=1e-6)
        assert list(saved["paths"]) == [r.image_path for r in sub.records]
        assert saved["labels"].tolist() == [r.gt_label for r in sub.records]
