"""Evaluation metrics: image AUROC/AP, pixel AUROC, AU-PRO (official MVTec) and compat PRO.

Taught in chapter 6 and chapter 9. All values are in [0, 1], not percent. A metric that is
undefined (only one class present, no ground-truth region) is NaN, never an exception.

Pixel metrics are built on one pass that splits every pixel score by class and sorts each class
once (:func:`_pixel_stats`); pixel AUROC, AU-PRO and compat PRO all read the same sorted arrays:

* pixel AUROC = P(anomalous pixel scores above a normal one) + 1/2 P(tie) (Mann-Whitney). This is
  exactly the trapezoid over distinct thresholds that ``sklearn.metrics.roc_auc_score`` computes,
  without its float64 copies and index arrays of every pixel (tens of GB at 200 x 518 x 518).
* AU-PRO follows the official MVTec AD evaluation (``pro_curve_util.compute_pro``): one global
  descending order of all scores, cumulative sums, tied scores collapsed, (0, 0) prepended,
  trapezoid up to ``fpr_limit`` with linear interpolation, divided by ``fpr_limit``. The FPR only
  moves at normal-pixel scores, so the integral is a sum over distinct normal scores t of
  dFPR(t) * (PRO(> t) + PRO(>= t)) / 2: the same numbers the global sort gives, read from the two
  class-sorted arrays. Memory stays near 4 bytes per pixel plus ~24 bytes per anomalous pixel.
* Compat PRO (AnomalyCLIP's ``cal_pro_score``) re-labels the ground-truth regions at each of its
  200 thresholds, but those regions never depend on the threshold: its mean overlap equals the
  same per-pixel weights 1 / (region size * number of regions), so it reads the same arrays too.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, roc_auc_score

METRIC_KEYS = ("image_auroc", "image_ap", "pixel_auroc", "au_pro", "pro_compat")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=int)  # diagonal neighbours join a region (official MVTec)
_CHUNK = 1 << 20  # scores per vectorised step: bounds temporaries to ~100 MB


# ----------------------------------------------------------------------------- image level
def _check_image_inputs(labels, scores) -> Tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels has {labels.size} entries but scores has {scores.size}; "
                         "pass one label and one score per image.")
    if not np.isfinite(scores).all():
        kind = "NaN" if np.isnan(scores).any() else "inf"
        raise ValueError(f"scores contains {kind}; check the model output before evaluating.")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (normal) or 1 (anomalous), got {np.unique(labels)}.")
    return labels.astype(np.int64), scores


def _two_classes(labels: np.ndarray) -> bool:
    return labels.size > 0 and 0 < labels.sum() < labels.size


def image_auroc(labels, scores) -> float:
    """Image-level area under the ROC curve.

    Args:
        labels: (N,) 0 normal, 1 anomalous.
        scores: (N,) anomaly scores, higher = more anomalous.

    Returns:
        AUROC in [0, 1]; NaN when only one class is present.
    """
    labels, scores = _check_image_inputs(labels, scores)
    return float(roc_auc_score(labels, scores)) if _two_classes(labels) else float("nan")


def image_ap(labels, scores) -> float:
    """Image-level average precision (area under precision-recall, anomalous = positive).

    Args:
        labels: (N,) 0 normal, 1 anomalous.
        scores: (N,) anomaly scores.

    Returns:
        AP in [0, 1]; NaN when only one class is present.
    """
    labels, scores = _check_image_inputs(labels, scores)
    return float(average_precision_score(labels, scores)) if _two_classes(labels) else float("nan")


# ----------------------------------------------------------------------------- pixel level
@dataclass
class _PixelStats:
    """Every pixel score, split by class and sorted ascending (float32)."""

    neg: np.ndarray  # (N_normal,) scores of normal pixels, ascending
    pos: np.ndarray  # (N_anom,) scores of anomalous pixels, ascending
    pro_tail: np.ndarray  # (N_anom + 1,) float64: [i] = PRO of pos[i:], i.e. sum of their weights
    num_regions: int  # 8-connected ground-truth regions over all images


def _as_nhw(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[1] == 1:  # (N, 1, H, W) straight from a model
        x = x[:, 0]
    if x.ndim == 2:  # one image
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W), got {x.shape}.")
    return x


def _check_pixel_inputs(masks, maps) -> Tuple[np.ndarray, np.ndarray]:
    masks, maps = _as_nhw(masks, "masks"), _as_nhw(maps, "maps")
    if masks.shape != maps.shape:
        raise ValueError(f"masks has shape {masks.shape} but maps has shape {maps.shape}; "
                         "resize masks to the map size (threshold at 0.5) or vice versa.")
    return masks, maps


def _pixel_stats(masks, maps) -> _PixelStats:
    """Split pixels by class, label 8-connected regions and sort each class once.

    Args:
        masks: (N, H, W) binary ground truth (bool or 0/1).
        maps: (N, H, W) anomaly maps; compared in float32.

    Returns:
        The sorted statistics every pixel metric reads.
    """
    masks, maps = _check_pixel_inputs(masks, maps)
    n_anom = 0
    for i, m in enumerate(masks):  # first pass: validate and size the output arrays
        if m.dtype != bool and ((m != 0) & (m != 1)).any():
            raise ValueError(f"masks[{i}] holds values other than 0/1; binarise it first "
                             "(a resized mask: > 0.5).")
        n_anom += int(np.count_nonzero(m))
    n_pix = masks.size
    neg = np.empty(n_pix - n_anom, dtype=np.float32)  # (N_normal,)
    pos = np.empty(n_anom, dtype=np.float32)  # (N_anom,)
    inv_size = np.empty(n_anom, dtype=np.float64)  # (N_anom,) 1 / size of the pixel's region
    num_regions, i_neg, i_pos = 0, 0, 0
    for i, (m, a) in enumerate(zip(masks, maps)):
        a = np.asarray(a, dtype=np.float32)  # (H, W), one image at a time: no full float64 copy
        if not np.isfinite(a).all():  # inf would sort as a perfect score and skew every metric
            kind = "NaN" if np.isnan(a).any() else "inf"
            raise ValueError(f"maps[{i}] contains {kind}; check the model output before evaluating.")
        m = m.astype(bool, copy=False)
        regions, n = ndimage.label(m, structure=_EIGHT_CONNECTED)  # (H, W) 0 = normal
        k = regions.size - int(m.sum())
        neg[i_neg:i_neg + k] = a[~m]
        ids = regions[m]  # (n_i,) region id of each anomalous pixel, 1..n
        pos[i_pos:i_pos + ids.size] = a[m]
        inv_size[i_pos:i_pos + ids.size] = 1.0 / np.bincount(ids)[ids]
        num_regions, i_neg, i_pos = num_regions + n, i_neg + k, i_pos + ids.size
    neg.sort()
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    weight = inv_size[order] / max(num_regions, 1)  # each region counts 1 / num_regions in PRO
    pro_tail = np.zeros(n_anom + 1)
    pro_tail[:n_anom] = np.cumsum(weight[::-1])[::-1]  # summed from the top score, like the official
    return _PixelStats(neg=neg, pos=pos, pro_tail=pro_tail, num_regions=num_regions)


def _auroc_from_stats(st: _PixelStats) -> float:
    """Mann-Whitney AUROC, exact integer counting; loops over the smaller class in chunks."""
    n_neg, n_pos = st.neg.size, st.pos.size
    if n_neg == 0 or n_pos == 0:
        return float("nan")
    small, big, small_is_pos = (st.pos, st.neg, True) if n_pos <= n_neg else (st.neg, st.pos, False)
    twice_wins = 0  # 2 * (#pairs the anomalous pixel wins) + #ties, an exact integer
    for s in range(0, small.size, _CHUNK):
        t = small[s:s + _CHUNK]
        lo = np.searchsorted(big, t, side="left")  # big scores < t
        hi = np.searchsorted(big, t, side="right")  # big scores <= t
        below = lo if small_is_pos else big.size - hi  # pairs where the anomalous pixel is higher
        twice_wins += 2 * int(below.sum()) + int((hi - lo).sum())
    return twice_wins / (2.0 * n_pos * n_neg)


def _au_pro_from_stats(st: _PixelStats, fpr_limit: float) -> float:
    """Official AU-PRO: trapezoid of PRO over FPR up to fpr_limit, divided by fpr_limit."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}.")
    n_neg = st.neg.size
    if n_neg == 0 or st.pos.size == 0:
        return float("nan")
    desc = st.neg[::-1]  # (N_normal,) descending view, no copy
    area = 0.0
    for s in range(0, n_neg, _CHUNK):
        v = desc[s:s + _CHUNK]
        first = np.empty(v.size, dtype=bool)  # True where a run of equal scores starts
        first[0] = s == 0 or v[0] != desc[s - 1]
        first[1:] = v[1:] != v[:-1]
        starts = np.flatnonzero(first)
        if starts.size == 0:
            continue  # the whole chunk continues the previous run; handled there
        t = v[starts]  # (D,) distinct normal scores, descending
        n_gt = s + starts  # normal pixels strictly above t: the run starts right after them
        n_ge = np.empty_like(n_gt)  # normal pixels >= t: where the next run starts
        n_ge[:-1] = n_gt[1:]
        n_ge[-1] = n_neg - np.searchsorted(st.neg, t[-1], side="left")
        fpr_gt, fpr_ge = n_gt / n_neg, n_ge / n_neg  # curve x before / after taking in t
        pro_gt = st.pro_tail[np.searchsorted(st.pos, t, side="right")]  # PRO(> t)
        pro_ge = st.pro_tail[np.searchsorted(st.pos, t, side="left")]  # PRO(>= t)
        inside = fpr_ge <= fpr_limit
        area += float(np.sum((fpr_ge - fpr_gt)[inside] * 0.5 * (pro_gt + pro_ge)[inside]))
        if not inside.all():  # this segment crosses the limit: interpolate linearly inside it
            j = int(np.argmin(inside))
            x0, x1, y0, y1 = fpr_gt[j], fpr_ge[j], pro_gt[j], pro_ge[j]
            if x0 < fpr_limit:
                y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
                area += 0.5 * (y0 + y_lim) * (fpr_limit - x0)
            break
    return float(area / fpr_limit)  # a Python float, like the other metrics


def _pro_compat_from_stats(st: _PixelStats, lo: float, hi: float, max_steps: int,
                           expect_fpr: float) -> float:
    """AnomalyCLIP's cal_pro_score from the sorted arrays (same thresholds, same formula)."""
    if st.neg.size == 0 or st.pos.size == 0 or not hi > lo:
        return float("nan")
    lo, hi = np.float32(lo), np.float32(hi)
    ths = np.arange(lo, hi, (hi - lo) / np.float32(max_steps))  # (T,) float64, as np.arange gives
    # A pixel is positive when score > th. For float32 scores, score > th exactly when score > the
    # largest float32 <= th; searching with float32 keys avoids a float64 copy of every score.
    keys = ths.astype(np.float32)
    keys = np.where(keys > ths, np.nextafter(keys, np.float32(-np.inf)), keys)
    fprs = (st.neg.size - np.searchsorted(st.neg, keys, side="right")) / st.neg.size
    pros = st.pro_tail[np.searchsorted(st.pos, keys, side="right")]
    keep = fprs < expect_fpr
    fprs, pros = fprs[keep], pros[keep]
    if fprs.size < 2 or fprs.max() == fprs.min():
        return float("nan")
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())  # their min-max rescale to [0, 1]
    return float(auc(fprs, pros))


def pixel_auroc(masks, maps) -> float:
    """Pixel-level AUROC over all pixels of all images, exact (ties count 1/2, as in sklearn).

    Args:
        masks: (N, H, W) binary ground truth.
        maps: (N, H, W) anomaly maps.

    Returns:
        AUROC in [0, 1]; NaN when all pixels are of one class.
    """
    return _auroc_from_stats(_pixel_stats(masks, maps))


def au_pro(masks, maps, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised (official MVTec AD).

    Args:
        masks: (N, H, W) binary ground truth; regions are 8-connected components per image.
        maps: (N, H, W) anomaly maps.
        fpr_limit: integration limit on the false positive rate.

    Returns:
        AU-PRO in [0, 1]; NaN when there is no anomalous or no normal pixel.
    """
    return _au_pro_from_stats(_pixel_stats(masks, maps), fpr_limit)


def pro_curve(masks, maps) -> Tuple[np.ndarray, np.ndarray]:
    """The official PRO curve: one point per distinct score (descending), (0, 0) prepended.

    Args:
        masks: (N, H, W) binary ground truth.
        maps: (N, H, W) anomaly maps.

    Returns:
        fprs, pros: (P,) float64 each, FPR non-decreasing; empty when au_pro would be NaN.
        Every pixel may be its own point: decimate before plotting large sets.
    """
    st = _pixel_stats(masks, maps)
    if st.neg.size == 0 or st.pos.size == 0:
        return np.zeros(0), np.zeros(0)
    t = np.union1d(st.neg, st.pos)[::-1]  # (P - 1,) distinct thresholds, descending
    fprs = (st.neg.size - np.searchsorted(st.neg, t, side="left")) / st.neg.size
    pros = st.pro_tail[np.searchsorted(st.pos, t, side="left")]
    return np.concatenate(([0.0], fprs)), np.concatenate(([0.0], pros))


def pro_compat(masks, maps, max_steps: int = 200, expect_fpr: float = 0.3) -> float:
    """The PRO most zero-shot AD papers report (AnomalyCLIP's ``cal_pro_score``).

    ``max_steps`` thresholds equally spaced from the smallest to the largest map value, a pixel is
    positive when its score is above the threshold; points with FPR < ``expect_fpr`` are kept,
    their FPRs min-max rescaled to [0, 1] and the area taken without interpolation. Not the
    official AU-PRO: it differs from :func:`au_pro` by up to about a point.

    Args:
        masks: (N, H, W) binary ground truth; regions are 8-connected components per image.
        maps: (N, H, W) anomaly maps.
        max_steps: number of threshold steps between min and max.
        expect_fpr: keep points with FPR strictly below this.

    Returns:
        Compat PRO in [0, 1]; NaN when undefined (one class, a constant map, < 2 points kept).
    """
    st = _pixel_stats(masks, maps)
    lo, hi = _map_range(st)
    return _pro_compat_from_stats(st, lo, hi, max_steps, expect_fpr)


def _map_range(st: _PixelStats) -> Tuple[float, float]:
    ends = [a[i] for a in (st.neg, st.pos) if a.size for i in (0, -1)]
    return (min(ends), max(ends)) if ends else (0.0, 0.0)


# ----------------------------------------------------------------------------- reports
def compute_metrics(labels, scores, masks=None, maps=None, compat: bool = True) -> Dict[str, float]:
    """All metrics of one set of images (e.g. one category), pixel metrics from one sort.

    Args:
        labels: (N,) 0 normal, 1 anomalous.
        scores: (N,) image anomaly scores.
        masks: (N, H, W) binary ground truth, or None for image-level metrics only.
        maps: (N, H, W) anomaly maps, or None.
        compat: also compute :func:`pro_compat` (else it is NaN).

    Returns:
        Dict with keys ``image_auroc``, ``image_ap``, ``pixel_auroc``, ``au_pro``, ``pro_compat``.
    """
    out = {"image_auroc": image_auroc(labels, scores), "image_ap": image_ap(labels, scores)}
    out.update(pixel_auroc=float("nan"), au_pro=float("nan"), pro_compat=float("nan"))
    if (masks is None) != (maps is None):
        raise ValueError("pass both masks and maps for pixel metrics, or neither.")
    if masks is None:
        return out
    n = np.asarray(labels).size
    n_px = _as_nhw(masks, "masks").shape[0]
    if n_px != n:
        raise ValueError(f"labels has {n} images but masks has {n_px}; they must match.")
    st = _pixel_stats(masks, maps)
    out["pixel_auroc"] = _auroc_from_stats(st)
    out["au_pro"] = _au_pro_from_stats(st, 0.3)
    if compat:
        out["pro_compat"] = _pro_compat_from_stats(st, *_map_range(st), 200, 0.3)
    return out


def evaluate_by_category(categories: Sequence[str], labels, scores, masks=None, maps=None,
                         compat: bool = True) -> Dict[str, Dict[str, float]]:
    """Metrics per category plus their ``"mean"`` (NaN-aware), as papers report them.

    Args:
        categories: (N,) category name of each image.
        labels: (N,) 0 normal, 1 anomalous.
        scores: (N,) image anomaly scores.
        masks: (N, H, W) binary ground truth, or None.
        maps: (N, H, W) anomaly maps, or None.
        compat: also compute compat PRO.

    Returns:
        ``{category: metrics, ..., "mean": metrics}``; categories in order of first appearance.
    """
    cats = np.asarray(list(categories), dtype=object)
    labels, scores = np.asarray(labels), np.asarray(scores)
    if not cats.size == labels.size == scores.size:
        raise ValueError(f"categories ({cats.size}), labels ({labels.size}) and scores "
                         f"({scores.size}) must have one entry per image.")
    if "mean" in set(cats):
        raise ValueError('categories may not contain the name "mean"; it is the average row.')
    if masks is not None:
        masks = _as_nhw(masks, "masks")
    if maps is not None:
        maps = _as_nhw(maps, "maps")
    out: Dict[str, Dict[str, float]] = {}
    for cat in dict.fromkeys(cats):  # first-appearance order
        idx = np.flatnonzero(cats == cat)
        out[cat] = compute_metrics(labels[idx], scores[idx],
                                   None if masks is None else masks[idx],
                                   None if maps is None else maps[idx], compat=compat)
    with warnings.catch_warnings():  # an all-NaN column averages to NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        out["mean"] = {k: float(np.nanmean([out[c][k] for c in out])) for k in METRIC_KEYS}
    return out
