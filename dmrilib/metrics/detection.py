"""Voxelwise detection scores (ROC, AUROC, average precision), evaluation regions, Dice and the
binary post-processing (opening, small components, pooled maximum, Otsu)."""
from __future__ import annotations

import math
from functools import cached_property
from typing import Callable

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from dmrilib.metrics.config import THRESHOLD_REGIONS


def _check_inputs(
    score_map: ArrayLike, truth: ArrayLike | None, mask: ArrayLike, brain_mask: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    score_map = np.asarray(score_map)
    mask = np.asarray(mask)
    if score_map.shape != mask.shape:
        raise ValueError(
            f"score_map has shape {score_map.shape} but mask has shape {mask.shape}; "
            "both must be on the same grid (crop/pad the map to the mask's grid first)."
        )
    if truth is not None:
        truth = np.asarray(truth)
        if truth.shape != score_map.shape:
            raise ValueError(
                f"truth has shape {truth.shape} but score_map has shape {score_map.shape}; "
                "both must be on the same grid."
            )
        truth = truth.astype(bool, copy=False)
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        raise ValueError("mask holds no voxels: nothing to evaluate. Check that the right mask was passed.")
    if brain_mask is None:
        region = mask
    else:
        region = np.asarray(brain_mask).astype(bool, copy=False)
        if region.shape != score_map.shape:
            raise ValueError(f"brain_mask has shape {region.shape} but score_map has shape {score_map.shape}.")
        region = region | mask
    if not np.issubdtype(score_map.dtype, np.number) or np.issubdtype(score_map.dtype, np.complexfloating):
        raise ValueError(f"score_map must hold real numbers, got dtype {score_map.dtype}.")
    bad = ~np.isfinite(score_map[region])
    if bad.any():
        raise ValueError(
            f"score_map has {int(bad.sum())} NaN/inf voxel(s) inside the evaluated region; "
            "replace them (e.g. np.nan_to_num) or exclude them from the mask."
        )
    return score_map, truth, mask, region


class _MapStats:
    """One validated map: the masked scores sorted once, shared by every rule."""

    def __init__(self, score_map: ArrayLike, truth: ArrayLike | None, mask: ArrayLike,
                 brain_mask: ArrayLike | None = None) -> None:
        self.score_map, self.truth, self.mask, self.region = _check_inputs(score_map, truth, mask, brain_mask)

    @cached_property
    def values(self) -> np.ndarray:
        v = self.score_map[self.mask]
        # sort in the map's own float type (float32 sorts twice as fast as float64)
        return v if np.issubdtype(v.dtype, np.floating) else v.astype(np.float64)

    @cached_property
    def labels(self) -> np.ndarray:
        if self.truth is None:
            raise ValueError("this computation needs the ground truth, but truth=None was given.")
        return self.truth[self.mask]

    @cached_property
    def region_values(self) -> np.ndarray:
        return self.score_map[self.region].astype(np.float64)

    @cached_property
    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(thresholds descending, tps, fps): counts flagged by ``score >= threshold``."""
        order = np.argsort(self.values, kind="stable")[::-1]
        sv = self.values[order]
        sl = self.labels[order]
        last = np.r_[np.flatnonzero(np.diff(sv)), sv.size - 1]
        tps = np.cumsum(sl, dtype=np.int64)[last]
        fps = last + 1 - tps
        return sv[last].astype(np.float64), tps, fps

    @property
    def n_pos(self) -> int:
        return int(self.curve[1][-1])

    @property
    def n_neg(self) -> int:
        return int(self.curve[2][-1])


# --------------------------------------------------------------------------- detection


def roc_curve(score_map: ArrayLike, truth: ArrayLike, mask: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxelwise ROC curve inside a mask.

    Parameters
    ----------
    score_map : ndarray, shape (X, Y, Z)
        Anomaly score per voxel; higher means more anomalous.
    truth : ndarray of bool, shape (X, Y, Z)
        Ground-truth lesion mask.
    mask : ndarray of bool, shape (X, Y, Z)
        Voxels to evaluate (the paper uses white + grey matter).

    Returns
    -------
    fpr, tpr, thresholds : ndarray
        One point per distinct score plus a first point ``(0, 0)`` at threshold
        ``inf``; thresholds decrease. Same as
        ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.
        NaN rates where the mask holds only one class.

    See Also
    --------
    auroc
    """
    return _roc(_MapStats(score_map, truth, mask))


def _roc(st: _MapStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    thr, tps, fps = st.curve
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, tps / st.n_pos] if st.n_pos else np.full(thr.size + 1, np.nan)
        fpr = np.r_[0.0, fps / st.n_neg] if st.n_neg else np.full(thr.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, thr]


def auroc(score_map: ArrayLike, truth: ArrayLike, mask: ArrayLike) -> float:
    """Voxelwise area under the ROC curve inside a mask.

    Parameters
    ----------
    score_map : ndarray, shape (X, Y, Z)
        Anomaly score per voxel; higher means more anomalous.
    truth : ndarray of bool, shape (X, Y, Z)
        Ground-truth lesion mask.
    mask : ndarray of bool, shape (X, Y, Z)
        Voxels to evaluate (the paper uses white + grey matter).

    Returns
    -------
    float
        AUROC in [0, 1] (ties count one half); NaN when the mask holds only
        one class.

    See Also
    --------
    roc_curve, evaluate_map
    """
    return _auroc(_MapStats(score_map, truth, mask))


def _auroc(st: _MapStats) -> float:
    if st.n_pos == 0 or st.n_neg == 0:
        return math.nan
    fpr, tpr, _ = _roc(st)
    return float(np.trapezoid(tpr, fpr))


def average_precision(score_map: ArrayLike, truth: ArrayLike, mask: ArrayLike) -> float:
    """Average precision (area under the step precision-recall curve) inside a mask.

    Same definition as ``sklearn.metrics.average_precision_score``:
    ``sum_n (R_n - R_{n-1}) P_n`` over decreasing thresholds. NaN when the mask
    holds no lesion voxel.
    """
    return _average_precision(_MapStats(score_map, truth, mask))


def _average_precision(st: _MapStats) -> float:
    if st.n_pos == 0:
        return math.nan
    _, tps, fps = st.curve
    precision = tps / (tps + fps)
    recall = tps / st.n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def detection_scores(score_map: ArrayLike, truth: ArrayLike, mask: ArrayLike) -> dict[str, float]:
    """AUROC and average precision of one map from a single sort.

    Returns
    -------
    dict
        ``{"auroc": float, "ap": float}`` (NaN where undefined).
    """
    st = _MapStats(score_map, truth, mask)
    return {"auroc": _auroc(st), "ap": _average_precision(st)}


# --------------------------------------------------------------------------- regions


def evaluation_regions(brain_mask: ArrayLike, tissue_mask: ArrayLike,
                       threshold_region: str = "eroded_brain_no_csf") -> tuple[np.ndarray, np.ndarray]:
    """The evaluation mask and the rule region of one subject.

    Parameters
    ----------
    brain_mask : ndarray of bool, shape (X, Y, Z)
        Brain mask (CSF included).
    tissue_mask : ndarray of bool, shape (X, Y, Z)
        White + grey matter, CSF and ventricles out, lesion voxels in (the
        prepared cohort's ``eval_mask``, BIDS ``desc-wmgm_mask``).
    threshold_region : {"eroded_brain_no_csf", "wmgm", "brain"}
        ``eroded_brain_no_csf``: the brain mask eroded by a 3x3x3 cube (voxels
        outside the array count as background), without CSF, i.e. intersected
        with ``tissue_mask``; both masks are that region, as in the authors'
        code (map and lesion zeroed outside it before every rule, the opening
        and every score). ``brain``: scores inside ``tissue_mask``, rules on
        the whole ``brain_mask``. ``wmgm``: ``tissue_mask`` for both.

    Returns
    -------
    mask, rule_region : ndarray of bool
        ``mask`` for Dice, AUROC and the healthy-FPR thresholds (``mask`` of
        :func:`evaluate_map`); ``rule_region`` for Otsu, the pooled maximum
        and the binary map (its ``brain_mask``).

    Raises
    ------
    ValueError
        Unknown ``threshold_region``, masks of different shapes, or an eroded
        region without voxels.
    """
    brain = np.asarray(brain_mask).astype(bool, copy=False)
    tissue = np.asarray(tissue_mask).astype(bool, copy=False)
    if brain.shape != tissue.shape:
        raise ValueError(f"brain_mask has shape {brain.shape} but tissue_mask has shape {tissue.shape}.")
    if threshold_region == "brain":
        return tissue, brain
    if threshold_region == "wmgm":
        return tissue, tissue
    if threshold_region != "eroded_brain_no_csf":
        raise ValueError(f"threshold_region must be one of {list(THRESHOLD_REGIONS)}, got {threshold_region!r}.")
    region = ndimage.binary_erosion(brain, structure=np.ones((3,) * brain.ndim, dtype=bool)) & tissue
    if not region.any():
        raise ValueError("the brain mask eroded by a 3x3x3 cube holds no white/grey-matter voxel: nothing to "
                         "evaluate. Check the masks, or set evaluate.threshold_region: wmgm for a grid this coarse.")
    return region, region


# --------------------------------------------------------------------------- binary maps


def dice(pred: ArrayLike, truth: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Dice coefficient ``2|A & B| / (|A| + |B|)`` of two binary maps.

    Parameters
    ----------
    pred, truth : ndarray of bool
        Binary maps of the same shape.
    mask : ndarray of bool, optional
        Only voxels inside the mask count.

    Returns
    -------
    float
        In [0, 1]; 1.0 when both maps are empty (perfect agreement).
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    truth = np.asarray(truth).astype(bool, copy=False)
    if pred.shape != truth.shape:
        raise ValueError(f"pred has shape {pred.shape} but truth has shape {truth.shape}.")
    if mask is not None:
        mask = np.asarray(mask).astype(bool, copy=False)
        if mask.shape != pred.shape:
            raise ValueError(f"mask has shape {mask.shape} but pred has shape {pred.shape}.")
        pred = pred & mask
        truth = truth & mask
    return _dice_counts(int(np.count_nonzero(pred & truth)), int(np.count_nonzero(pred)), int(np.count_nonzero(truth)))


def _dice_counts(inter: int, n_pred: int, n_truth: int) -> float:
    denom = n_pred + n_truth
    return 1.0 if denom == 0 else 2.0 * inter / denom


def opening(binary: ArrayLike, size: int = 3) -> np.ndarray:
    """Morphological opening with a cubic structuring element.

    Equivalent to ``scipy.ndimage.binary_opening(binary, np.ones((size,)*ndim))``
    (voxels outside the array count as background), computed with separable
    1-D minimum/maximum filters.

    Parameters
    ----------
    binary : ndarray of bool
        Binary map of any dimensionality.
    size : int
        Odd side length of the cube; 0 or 1 returns the input unchanged.
    """
    binary = np.asarray(binary).astype(bool, copy=False)
    if size <= 1:
        return binary.copy()
    if size % 2 == 0:
        raise ValueError(f"opening size must be odd (e.g. 3), got {size}.")
    result = np.zeros_like(binary)
    if not binary.any():
        return result
    r = size // 2
    # opening never adds voxels, so work on the bounding box; the zero padding
    # plays the role of the background outside the array
    box = []
    for axis in range(binary.ndim):
        hit = np.flatnonzero(binary.any(axis=tuple(a for a in range(binary.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    box = tuple(box)
    work = np.pad(binary[box], r)
    for op in (np.logical_and, np.logical_or):  # erosion, then dilation
        for axis in range(work.ndim):
            work = _shift_reduce(work, r, axis, op)
    result[box] = work[(slice(r, -r),) * work.ndim]
    return result


def _shift_reduce(a: np.ndarray, r: int, axis: int, op: Callable[..., np.ndarray]) -> np.ndarray:
    """``op`` of ``a`` shifted by -r..r along ``axis`` (zeros shifted in)."""
    out = a.copy()
    n = a.shape[axis]
    for s in range(1, r + 1):
        lo = [slice(None)] * a.ndim
        hi = [slice(None)] * a.ndim
        lo[axis], hi[axis] = slice(0, n - s), slice(s, n)
        fwd = np.zeros_like(a)
        fwd[tuple(lo)] = a[tuple(hi)]
        bwd = np.zeros_like(a)
        bwd[tuple(hi)] = a[tuple(lo)]
        out = op(op(out, fwd), bwd)
    return out


def postprocess(binary: ArrayLike, *, opening_size: int = 3, min_component_size: int = 0) -> np.ndarray:
    """Opening with a cube, then removal of connected components below a size.

    Parameters
    ----------
    binary : ndarray of bool
        Thresholded map.
    opening_size : int
        Side of the cubic opening element (0/1: no opening).
    min_component_size : int
        Components (26-connected) with fewer voxels are removed; 0 keeps all.
    """
    out = opening(binary, opening_size)
    if min_component_size > 1 and out.any():
        labels, n = ndimage.label(out, structure=np.ones((3,) * out.ndim, dtype=bool))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_component_size
        keep[0] = False
        out = keep[labels]
    return out


def pooled_maximum(score_map: ArrayLike, size: int = 16, stride: int | str = 1) -> float:
    """Maximum of the mean-pooled map (the ``pool_max`` threshold).

    With ``stride="block"`` the map is cut into non-overlapping ``size``-cubes,
    zero-padded at the end of each axis to a multiple of ``size``, and the
    largest block mean is returned: the maximum of
    ``skimage.measure.block_reduce(score_map, (size,)*ndim, np.mean)``, as the
    authors' code computes it. With an integer stride the window slides by
    that step; only windows that lie fully inside the array count (no
    padding), and a window larger than the array along an axis is clipped to
    the array.

    Parameters
    ----------
    score_map : ndarray
        Map, zero where it should not count (outside the rule region).
    size : int
        Side of the cubic window.
    stride : int or "block"
        Step between windows, or ``"block"`` for non-overlapping blocks.
    """
    if stride == "block":
        return _block_maximum(np.asarray(score_map, dtype=np.float64), size)
    arr = np.asarray(score_map, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    k = tuple(min(size, n) for n in arr.shape)
    # separable box means; keep only the windows that lie fully inside the array
    for axis, (kk, n) in enumerate(zip(k, arr.shape)):
        arr = ndimage.uniform_filter1d(arr, kk, axis=axis, mode="constant")
        valid = [slice(None)] * arr.ndim
        valid[axis] = slice(kk // 2, n - kk + kk // 2 + 1, stride)
        arr = arr[tuple(valid)]
    # running sums can stray by an ulp; a mean never leaves the data's range
    return float(np.clip(arr.max(), lo, hi))


def _block_maximum(arr: np.ndarray, size: int) -> float:
    """Largest mean of the non-overlapping ``size``-cubes of ``arr`` (zero padding at the end)."""
    arr = np.pad(arr, [(0, -n % size) for n in arr.shape])
    blocks = arr.reshape([d for n in arr.shape for d in (n // size, size)])
    return float(blocks.mean(axis=tuple(range(1, 2 * arr.ndim, 2))).max())


def _otsu(values: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold, same algorithm as ``skimage.filters.threshold_otsu``."""
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        return lo
    hist, edges = np.histogram(values, bins=nbins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2.0
    hist = hist.astype(np.float64)
    w1 = np.cumsum(hist)
    w2 = np.cumsum(hist[::-1])[::-1]
    m1 = np.cumsum(hist * centers) / w1
    m2 = (np.cumsum((hist * centers)[::-1]) / w2[::-1])[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centers[np.argmax(between)])
