"""Tests for promptmoe/metrics.py: real values against scikit-learn and slow, independent references."""
import numpy as np
import pytest
from skimage import measure
from sklearn.metrics import auc, average_precision_score, roc_auc_score

from promptmoe import metrics as M


# ----------------------------------------------------------------------------- helpers
def blob_data(n=4, h=12, w=12, seed=0, decimals=None, normal_images=1):
    """Random maps and masks with a few blob regions per image; the first images are normal."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for i in range(normal_images, n):
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, h), rng.integers(0, w)
            rr, cc = rng.integers(1, 4, size=2)
            masks[i, r:r + rr, c:c + cc] = 1
    maps = (rng.random((n, h, w)) + 0.6 * masks).astype(np.float32)
    if decimals is not None:
        maps = np.round(maps, decimals).astype(np.float32)
    return masks, maps


def ref_regions(masks, connectivity=2):
    """Every ground-truth region as a full (N, H, W) bool array (skimage, not scipy)."""
    out = []
    for i, m in enumerate(masks):
        lab = measure.label(m, connectivity=connectivity)
        for r in range(1, lab.max() + 1):
            full = np.zeros(masks.shape, dtype=bool)
            full[i] = lab == r
            out.append(full)
    return out


def ref_pro_curve(masks, maps, connectivity=2):
    """Slow official curve: at every distinct threshold (descending) count FPR and overlaps directly."""
    masks = masks.astype(bool)
    regions = ref_regions(masks, connectivity)
    xs, ys = [0.0], [0.0]
    for th in np.unique(maps)[::-1]:
        pred = maps >= th
        xs.append((pred & ~masks).sum() / (~masks).sum())
        ys.append(np.mean([(pred & r).sum() / r.sum() for r in regions]))
    return np.array(xs), np.array(ys)


def ref_integrate(xs, ys, limit):
    """Trapezoid segment by segment, the segment that crosses the limit cut by interpolation."""
    area = 0.0
    for x0, x1, y0, y1 in zip(xs[:-1], xs[1:], ys[:-1], ys[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
    return area / limit


def ref_au_pro(masks, maps, limit=0.3, connectivity=2):
    return ref_integrate(*ref_pro_curve(masks, maps, connectivity), limit)


def ref_pro_compat(masks, maps, max_steps=200, expect_fpr=0.3):
    """Straightforward compat PRO: relabel the regions at every one of the equally spaced thresholds."""
    masks = masks.astype(bool)
    lo, hi = maps.min(), maps.max()
    fprs, pros = [], []
    for th in np.arange(lo, hi, (hi - lo) / np.float32(max_steps)):
        binary = maps > th
        overlaps = []
        for b, m in zip(binary, masks):
            for reg in measure.regionprops(measure.label(m)):
                overlaps.append(b[reg.coords[:, 0], reg.coords[:, 1]].sum() / reg.area)
        pros.append(np.mean(overlaps))
        fprs.append((binary & ~masks).sum() / (~masks).sum())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < expect_fpr
    f = fprs[keep]
    return auc((f - f.min()) / (f.max() - f.min()), pros[keep])


# ----------------------------------------------------------------------------- image level
def test_image_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 50)
    scores = np.round(rng.random(50) + 0.3 * labels, 1)  # ties on purpose
    assert M.image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert M.image_ap(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_image_metrics_single_class_is_nan():
    assert np.isnan(M.image_auroc([1, 1, 1], [0.1, 0.5, 0.2]))
    assert np.isnan(M.image_ap([0, 0], [0.1, 0.5]))


def test_image_metrics_errors_name_the_argument():
    with pytest.raises(ValueError, match="labels"):
        M.image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        M.image_ap([0, 1], [0.1, np.nan])


# ----------------------------------------------------------------------------- pixel AUROC
@pytest.mark.parametrize("decimals", [None, 1])
def test_pixel_auroc_matches_sklearn(decimals):
    masks, maps = blob_data(n=6, h=20, w=20, seed=2, decimals=decimals)
    want = roc_auc_score(masks.ravel(), maps.ravel())
    assert M.pixel_auroc(masks, maps) == pytest.approx(want, abs=1e-12)


def test_pixel_auroc_chunked_and_both_loop_directions(monkeypatch):
    monkeypatch.setattr(M, "_CHUNK", 7)  # many chunk boundaries, runs of ties split across them
    masks, maps = blob_data(n=5, h=16, w=16, seed=3, decimals=1)
    want = roc_auc_score(masks.ravel(), maps.ravel())
    assert M.pixel_auroc(masks, maps) == pytest.approx(want, abs=1e-12)
    # More anomalous than normal pixels: the loop runs over the normal class instead.
    inv_masks, inv_maps = 1 - masks, 1.0 - maps
    assert M.pixel_auroc(inv_masks, inv_maps) == pytest.approx(
        roc_auc_score(inv_masks.ravel(), inv_maps.ravel()), abs=1e-12)


def test_pixel_auroc_one_class_is_nan():
    maps = np.random.default_rng(0).random((2, 5, 5))
    assert np.isnan(M.pixel_auroc(np.zeros((2, 5, 5), bool), maps))
    assert np.isnan(M.pixel_auroc(np.ones((2, 5, 5), bool), maps))
    assert np.isnan(M.au_pro(np.zeros((2, 5, 5), bool), maps))
    assert np.isnan(M.au_pro(np.ones((2, 5, 5), bool), maps))


def test_pixel_input_errors():
    masks, maps = blob_data(n=2, h=6, w=6)
    with pytest.raises(ValueError, match="masks has shape"):
        M.pixel_auroc(masks[:, :5], maps)
    bad = maps.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"maps\[1\] contains NaN"):
        M.au_pro(masks, bad)
    with pytest.raises(ValueError, match=r"masks\[1\]"):
        M.pixel_auroc(masks * 0.5, maps)
    with pytest.raises(ValueError, match="labels has 3 images but masks has 2"):
        M.compute_metrics([0, 1, 1], [0.1, 0.2, 0.3], masks, maps)


# ----------------------------------------------------------------------------- AU-PRO
@pytest.mark.parametrize("seed,decimals", [(0, None), (1, None), (2, 1), (3, 2)])
def test_au_pro_matches_slow_reference(seed, decimals):
    masks, maps = blob_data(n=4, h=12, w=12, seed=seed, decimals=decimals)
    assert M.au_pro(masks, maps) == pytest.approx(ref_au_pro(masks, maps), abs=1e-10)
    assert M.au_pro(masks, maps, fpr_limit=1.0) == pytest.approx(ref_au_pro(masks, maps, 1.0), abs=1e-10)


def test_au_pro_chunked_matches_reference(monkeypatch):
    monkeypatch.setattr(M, "_CHUNK", 5)
    masks, maps = blob_data(n=4, h=12, w=12, seed=4, decimals=1)
    assert M.au_pro(masks, maps) == pytest.approx(ref_au_pro(masks, maps), abs=1e-10)


def test_pro_curve_equals_reference_points():
    masks, maps = blob_data(n=3, h=10, w=10, seed=5, decimals=1)
    fprs, pros = M.pro_curve(masks, maps)
    want_f, want_p = ref_pro_curve(masks, maps)
    np.testing.assert_allclose(fprs, want_f, atol=1e-12)
    np.testing.assert_allclose(pros, want_p, atol=1e-12)
    assert (fprs[-1], pros[-1]) == pytest.approx((1.0, 1.0))


def test_au_pro_perfect_and_inverted_maps():
    masks, _ = blob_data(n=4, h=12, w=12, seed=6)
    perfect = masks.astype(np.float32)
    assert M.au_pro(masks, perfect) == pytest.approx(1.0, abs=1e-12)
    assert M.pixel_auroc(masks, perfect) == pytest.approx(1.0, abs=1e-12)
    inverted = 1.0 - perfect  # every normal pixel first: FPR reaches 1 before any overlap
    assert M.au_pro(masks, inverted) == pytest.approx(0.0, abs=1e-12)
    assert M.au_pro(masks, inverted) == pytest.approx(ref_au_pro(masks, inverted), abs=1e-12)


def test_au_pro_hand_computed_1x4():
    # Pixels [a, b, c, d], b anomalous (one region of size 1); a ties with b at 0.5.
    # Normal pixels a, c, d -> each adds 1/3 to FPR. Descending thresholds:
    #   0.5: a and b positive -> (FPR, PRO) = (1/3, 1); 0.3 -> (2/3, 1); 0.1 -> (1, 1).
    # Curve (0,0) -> (1/3, 1) crosses FPR 0.3: PRO there = 0.3 / (1/3) = 0.9,
    # area = 0.3 * (0 + 0.9) / 2 = 0.135, divided by 0.3 -> 0.45.
    masks = np.array([[[0, 1, 0, 0]]], dtype=np.uint8)
    maps = np.array([[[0.5, 0.5, 0.1, 0.3]]], dtype=np.float32)
    assert M.au_pro(masks, maps) == pytest.approx(0.45, abs=1e-12)
    # pixel AUROC by hand: b beats c and d, ties a -> (2 + 0.5) / 3.
    assert M.pixel_auroc(masks, maps) == pytest.approx(2.5 / 3, abs=1e-12)


def test_regions_are_8_connected():
    # (0,0) and (1,1) touch diagonally: one region of 2 pixels, and (3,3) a region of 1.
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 3, 3] = 1
    maps = np.full((1, 4, 4), 0.5, np.float32)
    maps[0][masks[0] == 1] = 0.0
    maps[0, 0, 0] = 1.0
    # Only (0,0) is found before the first normal pixel: PRO = (1/2 + 0 + ...) / 2 regions = 0.25,
    # flat until FPR jumps to 1, so AU-PRO = 0.25. With 4-connectivity it would be 1/3.
    assert M.au_pro(masks, maps) == pytest.approx(0.25, abs=1e-12)
    assert ref_au_pro(masks, maps, connectivity=1) == pytest.approx(1 / 3, abs=1e-12)


# ----------------------------------------------------------------------------- compat PRO
@pytest.mark.parametrize("seed,decimals", [(0, None), (2, 1)])
def test_pro_compat_matches_slow_reference(seed, decimals):
    masks, maps = blob_data(n=3, h=10, w=10, seed=seed, decimals=decimals)
    maps = maps / 3  # a spread the 200 thresholds resolve into several kept points
    maps[0, 0, 0] = 1.0  # an outlier stretches the grid, as real maps do
    assert M.pro_compat(masks, maps) == pytest.approx(ref_pro_compat(masks, maps), abs=1e-10)
    assert M.pro_compat(masks, maps, max_steps=50) == pytest.approx(
        ref_pro_compat(masks, maps, max_steps=50), abs=1e-10)


def test_pro_compat_scores_on_threshold_boundaries():
    # Thresholds are float64 (np.arange); put float32 scores right at, just above and just below
    # each one, where a float32 comparison and a float64 one could disagree.
    ths = np.arange(np.float32(0), np.float32(1), np.float32(1) / np.float32(200))
    near = ths.astype(np.float32)
    vals = np.concatenate([near, np.nextafter(near, np.float32(2)), np.nextafter(near, np.float32(-1)),
                           [np.float32(1)]])
    rng = np.random.default_rng(11)
    vals = rng.permutation(np.resize(vals, 4 * 16 * 16)).astype(np.float32)
    maps = np.clip(vals, 0, 1).reshape(4, 16, 16)
    maps[0, 0, 0], maps[0, 0, 1] = 0.0, 1.0
    masks, _ = blob_data(n=4, h=16, w=16, seed=11)
    maps = np.where(masks == 1, np.sqrt(maps), maps).astype(np.float32)
    assert M.pro_compat(masks, maps) == pytest.approx(ref_pro_compat(masks, maps), abs=1e-10)


def test_perfect_separation_gives_one_for_both_pro():
    rng = np.random.default_rng(7)
    masks, _ = blob_data(n=4, h=12, w=12, seed=7)
    maps = np.where(masks == 1, 0.5 + 0.5 * rng.random(masks.shape), 0.5 * rng.random(masks.shape))
    maps = maps.astype(np.float32)
    assert M.au_pro(masks, maps) == pytest.approx(1.0, abs=1e-12)
    assert M.pro_compat(masks, maps) == pytest.approx(1.0, abs=1e-12)
    assert ref_pro_compat(masks, maps) == pytest.approx(1.0, abs=1e-12)


def test_pro_compat_binary_map_is_nan():
    # A 0/1 map puts every kept point at FPR 0, so the min-max rescale is 0/0 (AnomalyCLIP gives nan).
    masks, _ = blob_data(n=3, h=8, w=8, seed=8)
    assert np.isnan(M.pro_compat(masks, masks.astype(np.float32)))


# ----------------------------------------------------------------------------- reports
def test_compute_metrics_keys_and_shared_values():
    masks, maps = blob_data(n=6, h=12, w=12, seed=9, normal_images=2)
    labels = masks.reshape(6, -1).max(1)
    scores = maps.reshape(6, -1).max(1)
    out = M.compute_metrics(labels, scores, masks, maps)
    assert tuple(out) == M.METRIC_KEYS
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert out["au_pro"] == pytest.approx(ref_au_pro(masks, maps), abs=1e-10)
    assert out["pro_compat"] == pytest.approx(M.pro_compat(masks, maps), abs=1e-12)
    image_only = M.compute_metrics(labels, scores)
    assert image_only["image_auroc"] == out["image_auroc"]
    assert all(np.isnan(image_only[k]) for k in ("pixel_auroc", "au_pro", "pro_compat"))
    assert np.isnan(M.compute_metrics(labels, scores, masks, maps, compat=False)["pro_compat"])


def test_evaluate_by_category_mean_is_nanmean_and_single_class_is_nan():
    masks, maps = blob_data(n=9, h=10, w=10, seed=10, normal_images=0)
    masks[6:] = 0  # category "c": only normal images
    labels = masks.reshape(9, -1).max(1)
    scores = maps.reshape(9, -1).max(1) + np.linspace(0, 0.1, 9)
    labels[0] = 0  # category "a" keeps both classes
    cats = ["a", "a", "a", "b", "b", "b", "c", "c", "c"]
    res = M.evaluate_by_category(cats, labels, scores, masks, maps)
    assert list(res) == ["a", "b", "c", "mean"]
    for k in ("image_auroc", "image_ap", "pixel_auroc", "au_pro"):
        assert np.isnan(res["c"][k])
    assert np.isnan(res["b"]["image_auroc"])  # all anomalous
    assert not np.isnan(res["b"]["au_pro"])
    for k in M.METRIC_KEYS:
        vals = [res[c][k] for c in "abc"]
        if np.all(np.isnan(vals)):
            assert np.isnan(res["mean"][k])
        else:
            assert res["mean"][k] == pytest.approx(np.nanmean(vals), abs=1e-12)
    idx = [0, 1, 2]
    assert res["a"]["au_pro"] == pytest.approx(ref_au_pro(masks[idx], maps[idx]), abs=1e-10)
