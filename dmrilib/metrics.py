"""Evaluation of anomaly maps: AUROC, threshold rules, Dice, tables, statistics.

Everything here works on plain numpy arrays (one map, one ground truth, one
evaluation mask) and on tidy :class:`pandas.DataFrame` tables, so it is
independent of the models that produced the maps. Maps stored as NIfTI files are
read, checked and scored by :mod:`dmrilib.evaluation`; nothing here reads a file.

Conventions
-----------
* A voxel is flagged when ``score >= threshold`` (every rule, every function).
* Detection metrics and Dice are computed inside the evaluation ``mask``.
* Otsu, the pooled-maximum rule and the binary map that is post-processed use
  the rule region (``brain_mask``, which defaults to ``mask``); the map is
  taken as zero outside it.
* Which voxels these are is ``EvalConfig.threshold_region``
  (:func:`evaluation_regions`): the authors' code scores everything inside the
  brain mask eroded by a 3x3x3 cube without CSF (``eroded_brain_no_csf``, the
  default); ``brain`` applies the rules on the whole brain (CSF included) and
  scores inside white + grey matter; ``wmgm`` uses white + grey matter for both.
* Post-processing is a morphological opening with a cubic element (paper:
  3x3x3), optionally followed by removing connected components smaller than
  ``min_component_size`` voxels (26-connectivity).
* Dice of two empty sets is 1 (perfect agreement); a supervised rule on a map
  whose mask holds no lesion voxel gives a NaN threshold and NaN Dice.

Threshold rules (:data:`THRESHOLD_RULES`)
-----------------------------------------
``fixed``         per-model constant (paper: DAE 0.3, RecDiscNet 0.5)
``otsu``          Otsu's method (256-bin histogram) on the map inside the rule region
``pool_max``      maximum of the mean-pooled map (cube of ``pool_size`` voxels,
                  non-overlapping blocks or a sliding window: ``pool_stride``)
``youden``        maximum of TPR - FPR on the ROC (supervised)
``dice_optimal``  maximum of the unprocessed Dice (supervised, oracle)

and, beyond the paper, ``healthy_fpr_<percent>`` rows (e.g. ``healthy_fpr_05``)
from thresholds that flag a fraction of the validation healthy subjects' voxels
(:func:`healthy_fpr_thresholds`): unsupervised and free of test-label leakage.

Tables (:func:`summarise` and everything built on it) report a mean and an SD
per group as set by ``EvalConfig.aggregate``: ``per_fold`` (the authors' code)
takes the patients' mean and population SD within each fold and averages both
over folds; ``pooled`` takes mean and sample SD over all patient x fold rows.

``EvalConfig.fidelity`` (``code`` or ``paper``) sets the defaults of
``threshold_region``, ``pool_stride`` and ``aggregate`` (:mod:`dmrilib.fidelity`);
a key given explicitly wins.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import ndimage

from dmrilib.fidelity import resolve as resolve_fidelity
from dmrilib.variants import BASELINE_VARIANT, DAE, MODELS, RECDISC

__all__ = [
    "EvalConfig",
    "THRESHOLD_REGIONS",
    "evaluation_regions",
    "Threshold",
    "ThresholdRule",
    "THRESHOLD_RULES",
    "auroc",
    "roc_curve",
    "average_precision",
    "detection_scores",
    "dice",
    "opening",
    "postprocess",
    "pooled_maximum",
    "evaluate_map",
    "healthy_fpr_thresholds",
    "score_densities",
    "followup_colocalisation",
    "bootstrap_ci",
    "summarise",
    "best_variants",
    "best_auroc_variant",
    "table_auroc",
    "table_dice",
    "summarise_by_group",
    "paired_wilcoxon",
]

_DEFAULT_FIXED = {DAE: 0.3, RECDISC: 0.5, BASELINE_VARIANT: 3.0}

#: Values of ``EvalConfig.threshold_region`` (see :func:`evaluation_regions`).
THRESHOLD_REGIONS = ("eroded_brain_no_csf", "wmgm", "brain")

# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class EvalConfig:
    """Settings of the evaluation (profile section ``evaluate``).

    Parameters
    ----------
    fixed_thresholds : mapping of str to float
        Threshold of the ``fixed`` rule per model (paper: DAE 0.3, RecDiscNet
        0.5; ``normative`` is the z-score baseline of :mod:`dmrilib.baselines`).
    fidelity : {"code", "paper"}
        Whose protocol sets the defaults of ``threshold_region``,
        ``pool_stride`` and ``aggregate`` when they are not given
        (:mod:`dmrilib.fidelity`): the authors' code (default) or the paper's
        text. Set from the profile's top-level ``fidelity``.
    threshold_region : {"eroded_brain_no_csf", "wmgm", "brain"}, optional
        Voxels the threshold rules, the opening and the scores see
        (:func:`evaluation_regions`). ``eroded_brain_no_csf`` (code): the brain
        mask eroded by a 3x3x3 cube, CSF removed, for rules and scores alike;
        ``brain`` (paper): rules on the whole brain incl. CSF, scores inside
        white + grey matter; ``wmgm``: white + grey matter for both.
    pool_size : int
        Side of the cubic mean-pooling window of the ``pool_max`` rule (paper:
        16 at 2.4 mm; use 8 on a grid with voxels twice as large).
    pool_stride : int or "block", optional
        ``"block"`` (code): non-overlapping blocks, the map zero-padded to a
        multiple of ``pool_size`` (``skimage.measure.block_reduce``); an
        integer slides the window with that step, 1 over every position (the
        paper's convolution ``I * f``).
    aggregate : {"per_fold", "pooled"}, optional
        How tables summarise patients and folds (:func:`summarise`):
        ``per_fold`` (code) averages each fold's patient mean and population
        SD over folds; ``pooled`` (paper) takes mean and sample SD over all
        patient x fold rows.
    opening_size : int
        Side of the cubic opening element (paper: 3); 0 or 1 switches it off.
    healthy_fprs : tuple of float
        Fractions of healthy validation voxels flagged by the ``healthy_fpr``
        thresholds.
    n_bootstrap : int
        Bootstrap resamples for confidence intervals.
    ci : float
        Confidence level of the intervals.
    min_component_size : int
        After opening, remove connected components smaller than this (0: off).
    best_by : {"dice_post", "dice"}
        Column whose mean over patients and folds picks the best variant of a
        model for a threshold rule (Tables 3-6).
    seed : int
        Seed of the bootstrap.
    """

    fixed_thresholds: Mapping[str, float] = field(default_factory=lambda: dict(_DEFAULT_FIXED))
    fidelity: Literal["code", "paper"] = "code"
    threshold_region: Literal["eroded_brain_no_csf", "wmgm", "brain"] | None = None
    pool_size: int = 16
    pool_stride: int | Literal["block"] | None = None
    aggregate: Literal["per_fold", "pooled"] | None = None
    opening_size: int = 3
    healthy_fprs: tuple[float, ...] = (0.01, 0.05, 0.10)
    n_bootstrap: int = 1000
    ci: float = 0.95
    min_component_size: int = 0
    best_by: str = "dice_post"
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(str(k) for k in set(dict(self.fixed_thresholds)) - set(_DEFAULT_FIXED))
        if unknown:  # a misspelt model would silently keep its default threshold
            raise ValueError(f"evaluate.fixed_thresholds: unknown model(s) {unknown}; "
                             f"known: {sorted(_DEFAULT_FIXED)}.")
        fixed = dict(_DEFAULT_FIXED)
        fixed.update({str(k): float(v) for k, v in dict(self.fixed_thresholds).items()})
        object.__setattr__(self, "fixed_thresholds", fixed)
        object.__setattr__(self, "healthy_fprs", tuple(float(q) for q in self.healthy_fprs))
        # The switched keys hold the values actually used (and hashed); a key given explicitly wins.
        resolve_fidelity(self, "evaluate")
        if self.threshold_region not in THRESHOLD_REGIONS:
            raise ValueError(f"evaluate.threshold_region must be one of {list(THRESHOLD_REGIONS)}, "
                             f"got {self.threshold_region!r}.")
        if self.aggregate not in ("per_fold", "pooled"):
            raise ValueError(f"evaluate.aggregate must be 'per_fold' or 'pooled', got {self.aggregate!r}.")
        if int(self.pool_size) < 1:
            raise ValueError(f"evaluate.pool_size must be >= 1, got {self.pool_size}.")
        stride = self.pool_stride
        if stride != "block" and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1):
            raise ValueError(f"evaluate.pool_stride must be 'block' or an integer >= 1, got {stride!r}.")
        if self.opening_size < 0 or (self.opening_size > 1 and self.opening_size % 2 == 0):
            raise ValueError(
                f"evaluate.opening_size must be 0/1 (off) or an odd size such as 3, got {self.opening_size}."
            )
        if any(not 0.0 < q < 1.0 for q in self.healthy_fprs):
            raise ValueError(f"evaluate.healthy_fprs must lie in (0, 1), got {self.healthy_fprs}.")
        if self.n_bootstrap < 1:
            raise ValueError(f"evaluate.n_bootstrap must be >= 1, got {self.n_bootstrap}.")
        if not 0.0 < self.ci < 1.0:
            raise ValueError(f"evaluate.ci must lie in (0, 1), e.g. 0.95; got {self.ci}.")
        if self.min_component_size < 0:
            raise ValueError(f"evaluate.min_component_size must be >= 0, got {self.min_component_size}.")
        if self.best_by not in ("dice_post", "dice"):
            raise ValueError(f"evaluate.best_by must be 'dice_post' or 'dice', got {self.best_by!r}.")


# --------------------------------------------------------------------------- validation


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


# --------------------------------------------------------------------------- threshold rules


@dataclass(frozen=True)
class Threshold:
    """A threshold and where it came from.

    Attributes
    ----------
    rule : str
        Rule name (a key of :data:`THRESHOLD_RULES` or ``healthy_fpr_<percent>``).
    value : float
        Voxels with ``score >= value`` are flagged; NaN when undefined.
    supervised : bool
        True when the rule looked at the ground truth of this map.
    detail : str
        Provenance in words (parameters, inputs).
    """

    rule: str
    value: float
    supervised: bool
    detail: str


@dataclass(frozen=True)
class ThresholdRule:
    """A named threshold rule; call it on one map to get a :class:`Threshold`.

    ``rule(score_map, truth, mask, *, model="dae", config=None, brain_mask=None)``;
    ``truth`` is only read by supervised rules (it may be None otherwise).
    """

    name: str
    supervised: bool
    description: str
    compute: Callable[["_MapStats", EvalConfig, str], tuple[float, str]] = field(repr=False)

    def __call__(self, score_map: ArrayLike, truth: ArrayLike | None = None, mask: ArrayLike | None = None, *,
                 model: str = DAE, config: EvalConfig | None = None,
                 brain_mask: ArrayLike | None = None) -> Threshold:
        if mask is None:
            raise ValueError(f"threshold rule {self.name!r} needs an evaluation mask (mask=...).")
        if self.supervised and truth is None:
            raise ValueError(f"threshold rule {self.name!r} is supervised: pass the ground truth (truth=...).")
        return self._apply(_MapStats(score_map, truth, mask, brain_mask), config or EvalConfig(), model)

    def _apply(self, st: _MapStats, config: EvalConfig, model: str) -> Threshold:
        value, detail = self.compute(st, config, model)
        return Threshold(self.name, float(value), self.supervised, detail)


def _rule_fixed(st: _MapStats, config: EvalConfig, model: str) -> tuple[float, str]:
    if model not in config.fixed_thresholds:
        return math.nan, f"no fixed threshold for model {model!r} in evaluate.fixed_thresholds"
    return config.fixed_thresholds[model], f"evaluate.fixed_thresholds[{model!r}]"


def _rule_otsu(st: _MapStats, config: EvalConfig, model: str) -> tuple[float, str]:
    return _otsu(st.region_values), f"Otsu, 256 bins, {st.region_values.size} voxels of the rule region"


def _rule_pool(st: _MapStats, config: EvalConfig, model: str) -> tuple[float, str]:
    masked = np.where(st.region, st.score_map, 0.0)
    value = pooled_maximum(masked, config.pool_size, config.pool_stride)
    windows = "blocks" if config.pool_stride == "block" else f"stride {config.pool_stride}"
    return value, f"max of {config.pool_size}^3 mean pool, {windows}, zero outside the rule region"


def _rule_youden(st: _MapStats, config: EvalConfig, model: str) -> tuple[float, str]:
    if st.n_pos == 0 or st.n_neg == 0:
        return math.nan, "undefined: the mask holds only one class"
    thr, tps, fps = st.curve
    j = tps / st.n_pos - fps / st.n_neg
    i = int(np.argmax(j))
    return thr[i], f"max TPR-FPR = {j[i]:.4f} on the ROC (uses labels)"


def _rule_dice_optimal(st: _MapStats, config: EvalConfig, model: str) -> tuple[float, str]:
    thr, tps, fps = st.curve
    if st.n_pos == 0:
        return math.nan, "undefined: no lesion voxel in the mask"
    d = 2.0 * tps / (st.n_pos + tps + fps)
    i = int(np.argmax(d))
    return thr[i], f"max unprocessed Dice = {d[i]:.4f} over all distinct scores (oracle, uses labels)"


#: The per-map threshold rules of the paper, by name (see the module docstring).
THRESHOLD_RULES: dict[str, ThresholdRule] = {
    r.name: r
    for r in (
        ThresholdRule("fixed", False, "per-model constant (DAE 0.3, RecDiscNet 0.5)", _rule_fixed),
        ThresholdRule("otsu", False, "Otsu's method on the map inside the rule region", _rule_otsu),
        ThresholdRule("pool_max", False, "maximum of the mean-pooled map (DRAEM rule)", _rule_pool),
        ThresholdRule("youden", True, "maximum Youden's J on the ROC", _rule_youden),
        ThresholdRule("dice_optimal", True, "maximum unprocessed Dice (oracle)", _rule_dice_optimal),
    )
}


def _healthy_key(q: float) -> str:
    # percent, two digits: 0.01 -> "healthy_fpr_01", 0.1 -> "healthy_fpr_10", 0.025 -> "healthy_fpr_2.5"
    return f"healthy_fpr_{q * 100:02g}"


def healthy_fpr_thresholds(maps: ArrayLike, masks: ArrayLike,
                           fprs: Sequence[float] = (0.01, 0.05, 0.10)) -> dict[str, float]:
    """Thresholds that flag a given fraction of healthy voxels.

    Pools the scores of the fold's validation healthy subjects inside their
    masks and returns, for each fraction ``q``, the smallest threshold ``t``
    with ``mean(score >= t) <= q``. Uses no patient data and no labels.

    Parameters
    ----------
    maps : ndarray, shape (S, X, Y, Z) or sequence of (X, Y, Z)
        Anomaly maps of healthy subjects.
    masks : ndarray of bool, same shape as ``maps``
        Evaluation masks of the same subjects.
    fprs : sequence of float
        Fractions in (0, 1).

    Returns
    -------
    dict
        ``{"healthy_fpr_01": t, "healthy_fpr_05": ..., "healthy_fpr_10": ...}``
        (the fraction in percent; keys become rule names in
        :func:`evaluate_map` rows).
    """
    maps_arr = np.asarray(maps)
    masks_arr = np.asarray(masks).astype(bool, copy=False)
    if maps_arr.shape != masks_arr.shape:
        raise ValueError(f"maps have shape {maps_arr.shape} but masks have shape {masks_arr.shape}.")
    values = maps_arr[masks_arr]
    # stay in the maps' own float type: a threshold nudged above a tie in
    # float64 could round back onto the tie when compared with a float32 map
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    if values.size == 0:
        raise ValueError("healthy masks hold no voxels: cannot estimate healthy-FPR thresholds.")
    if not np.isfinite(values).all():
        raise ValueError("healthy maps hold NaN/inf inside their masks; clean them first.")
    desc = np.sort(values)[::-1]
    n = desc.size
    out = {}
    for q in fprs:
        q = float(q)
        if not 0.0 < q < 1.0:
            raise ValueError(f"healthy FPR must lie in (0, 1), got {q}.")
        k = int(math.floor(q * n))  # voxels that may be flagged
        if k >= n:
            t = desc[-1]
        else:
            # flag everything strictly above the (k+1)-th largest score; ties there stay unflagged
            above = desc[:k][desc[:k] > desc[k]]
            t = above[-1] if above.size else np.nextafter(desc[k], np.inf)
        out[_healthy_key(q)] = float(t)
    return out


def evaluate_map(
    score_map: ArrayLike,
    truth: ArrayLike,
    mask: ArrayLike,
    *,
    model: str,
    config: EvalConfig | None = None,
    healthy_thresholds: Mapping[str, float] | None = None,
    brain_mask: ArrayLike | None = None,
    rules: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Threshold one map with every rule; Dice before and after post-processing.

    Parameters
    ----------
    score_map : ndarray, shape (X, Y, Z)
        Anomaly map.
    truth : ndarray of bool, shape (X, Y, Z)
        Ground-truth lesion.
    mask : ndarray of bool, shape (X, Y, Z)
        Evaluation region (first output of :func:`evaluation_regions`).
    model : str
        ``"dae"``, ``"recdisc"`` or ``"normative"``: picks the fixed threshold.
    config : EvalConfig, optional
        Evaluation settings (defaults to the authors' code).
    healthy_thresholds : mapping, optional
        Output of :func:`healthy_fpr_thresholds` for this fold; adds one row each.
    brain_mask : ndarray of bool, optional
        Region for Otsu, pooling and the binary map (second output of
        :func:`evaluation_regions`; defaults to ``mask``).
    rules : iterable of str, optional
        Subset of :data:`THRESHOLD_RULES` (default: all).

    Returns
    -------
    list of dict
        One row per rule: ``rule, threshold, supervised, dice, dice_post``.
        Dice is computed inside ``mask``; NaN where the threshold is undefined.
    """
    config = config or EvalConfig()
    st = _MapStats(score_map, truth, mask, brain_mask)
    if st.truth is None:
        raise ValueError("evaluate_map needs the ground truth (truth=...).")
    names = list(THRESHOLD_RULES) if rules is None else list(rules)
    unknown = sorted(set(names) - set(THRESHOLD_RULES))
    if unknown:
        raise ValueError(f"unknown threshold rule(s) {unknown}; known: {sorted(THRESHOLD_RULES)}.")
    thresholds = [THRESHOLD_RULES[n]._apply(st, config, model) for n in names]
    for key, value in (healthy_thresholds or {}).items():
        thresholds.append(Threshold(key, float(value), False, "validation healthy subjects of the fold"))
    truth_in = st.truth & st.mask
    n_truth = int(np.count_nonzero(truth_in))
    rows = []
    for th in thresholds:
        row = {"rule": th.rule, "threshold": th.value, "supervised": th.supervised,
               "dice": math.nan, "dice_post": math.nan}
        if np.isfinite(th.value):
            binary = (st.score_map >= th.value) & st.region
            row["dice"] = _dice_in(binary, truth_in, st.mask, n_truth)
            post = postprocess(binary, opening_size=config.opening_size,
                               min_component_size=config.min_component_size)
            row["dice_post"] = _dice_in(post, truth_in, st.mask, n_truth)
        rows.append(row)
    return rows


def _dice_in(binary: np.ndarray, truth_in: np.ndarray, mask: np.ndarray, n_truth: int) -> float:
    pred = binary & mask
    return _dice_counts(int(np.count_nonzero(pred & truth_in)), int(np.count_nonzero(pred)), n_truth)


# --------------------------------------------------------------------------- figures' data


def score_densities(score_maps: ArrayLike, truths: ArrayLike, masks: ArrayLike, *, bins: int = 100,
                    value_range: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """Histogram densities of scores in healthy tissue vs lesion (paper Fig. 4).

    Parameters
    ----------
    score_maps, truths, masks : ndarray
        Same shapes, one map ``(X, Y, Z)`` or a stack ``(S, X, Y, Z)``; voxels
        inside the mask are split by ``truth``.
    bins : int
        Number of bins.
    value_range : (float, float), optional
        Histogram range (default: min and max inside the masks).

    Returns
    -------
    dict
        ``edges, centers, healthy, lesion`` (densities integrating to 1, or
        zeros for an empty class) and ``n_healthy, n_lesion``.
    """
    scores = np.asarray(score_maps)
    truths = np.asarray(truths).astype(bool, copy=False)
    masks = np.asarray(masks).astype(bool, copy=False)
    if not scores.shape == truths.shape == masks.shape:
        raise ValueError(
            f"score_maps {scores.shape}, truths {truths.shape} and masks {masks.shape} must have the same shape."
        )
    inside = scores[masks].astype(np.float64)
    if inside.size == 0:
        raise ValueError("masks hold no voxels: no densities to compute.")
    lab = truths[masks]
    if value_range is None:
        value_range = (float(inside.min()), float(inside.max()))
        if value_range[0] == value_range[1]:
            value_range = (value_range[0] - 0.5, value_range[1] + 0.5)
    edges = np.histogram_bin_edges(inside, bins=bins, range=value_range)
    out: dict[str, Any] = {"edges": edges, "centers": (edges[:-1] + edges[1:]) / 2}
    for name, sel in (("healthy", ~lab), ("lesion", lab)):
        if sel.any():
            out[name] = np.histogram(inside[sel], bins=edges, density=True)[0]
        else:
            out[name] = np.zeros(bins)
        out[f"n_{name}"] = int(sel.sum())
    return out


def followup_colocalisation(
    score_map: ArrayLike,
    threshold: float,
    lesion: ArrayLike,
    followup_lesion: ArrayLike,
    mask: ArrayLike,
    *,
    opening_size: int = 3,
    min_mismatch_size: int = 10,
) -> dict[str, Any]:
    """Flagged voxels outside the pre-operative lesion and their follow-up fate.

    The map is thresholded (``>= threshold``) inside ``mask``, opened, and the
    flagged voxels outside ``lesion`` are compared with the follow-up lesion
    (paper Fig. 9, made quantitative).

    Parameters
    ----------
    score_map : ndarray, shape (X, Y, Z)
        Anomaly map.
    threshold : float
        Threshold, e.g. from a rule of :func:`evaluate_map`.
    lesion, followup_lesion : ndarray of bool, shape (X, Y, Z)
        Pre-operative and follow-up lesion (all-False when no follow-up).
    mask : ndarray of bool, shape (X, Y, Z)
        Evaluation region.
    opening_size : int
        Opening element (paper: 3).
    min_mismatch_size : int
        A flagged component outside the lesion with at least this many voxels
        makes the patient a "mismatch".

    Returns
    -------
    dict
        ``flagged_outside`` (voxels), ``outside_in_followup`` (voxels of it that
        are lesion at follow-up), ``fraction_in_followup`` (NaN when nothing is
        flagged outside), ``n_mismatch_components``, ``largest_component``,
        ``mismatch`` (bool), ``mismatch_in_followup`` (a mismatch component
        touches the follow-up lesion).
    """
    st = _MapStats(score_map, lesion, mask)
    followup = np.asarray(followup_lesion).astype(bool, copy=False)
    if followup.shape != st.score_map.shape:
        raise ValueError(f"followup_lesion has shape {followup.shape} but score_map has {st.score_map.shape}.")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}.")
    binary = opening((st.score_map >= threshold) & st.mask, opening_size)
    outside = binary & ~st.truth
    labels, n = ndimage.label(outside, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    big = np.flatnonzero(sizes >= min_mismatch_size) + 1
    touches = np.unique(labels[outside & followup])
    n_out = int(outside.sum())
    n_fu = int((outside & followup).sum())
    return {
        "flagged_outside": n_out,
        "outside_in_followup": n_fu,
        "fraction_in_followup": n_fu / n_out if n_out else math.nan,
        "n_mismatch_components": int(big.size),
        "largest_component": int(sizes.max()) if n else 0,
        "mismatch": bool(big.size),
        "mismatch_in_followup": bool(np.isin(big, touches).any()),
    }


# --------------------------------------------------------------------------- statistics


def bootstrap_ci(values: ArrayLike, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean.

    Parameters
    ----------
    values : array-like of float
        One value per resampling unit (patient); NaNs are dropped.
    n_boot : int
        Number of resamples.
    ci : float
        Confidence level.
    seed : int
        Seed of a fresh ``numpy.random.Generator``: the same values and seed
        always give the same interval.

    Returns
    -------
    (low, high) : tuple of float
        NaN for no values; ``(v, v)`` for a single value.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarise(df: pd.DataFrame, by: Sequence[str], value_cols: Sequence[str],
              config: EvalConfig | None = None) -> pd.DataFrame:
    """Mean, sd, bootstrap CI and count of value columns per group.

    Mean and sd follow ``config.aggregate``: ``per_fold`` (the authors' code)
    takes, within each fold, the mean and the population SD over the group's
    rows (patients) and averages both over folds; ``pooled`` takes the mean
    and the sample SD over all rows of the group (patients and folds). A table
    without a ``fold`` column is one fold. The confidence interval resamples
    *patients*: when the table has a ``subject`` column, values are first
    averaged per subject over folds, so that folds of one patient are not
    treated as independent.

    Parameters
    ----------
    df : DataFrame
        Tidy table.
    by : sequence of str
        Grouping columns.
    value_cols : sequence of str
        Columns to summarise.
    config : EvalConfig, optional
        ``aggregate``, ``n_bootstrap``, ``ci`` and ``seed``.

    Returns
    -------
    DataFrame
        Columns ``*by, metric, mean, sd, ci_low, ci_high, n`` (``n`` counts
        non-NaN rows).
    """
    config = config or EvalConfig()
    by = list(by)
    missing = [c for c in [*by, *value_cols] if c not in df.columns]
    if missing:
        raise ValueError(f"summarise: column(s) {missing} not in the table (columns: {list(df.columns)}).")
    records = []
    groups = df.groupby(by, sort=True, dropna=False) if by else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for col in value_cols:
            vals = g[col].astype(float)
            units = vals.groupby(g["subject"]).mean() if "subject" in g.columns else vals
            low, high = bootstrap_ci(units.to_numpy(), n_boot=config.n_bootstrap, ci=config.ci, seed=config.seed)
            mean, sd = _mean_sd(vals, g["fold"] if "fold" in g.columns else None, config.aggregate)
            records.append({**dict(zip(by, key)), "metric": col, "mean": mean, "sd": sd,
                            "ci_low": low, "ci_high": high, "n": int(vals.notna().sum())})
    return pd.DataFrame.from_records(records, columns=[*by, "metric", "mean", "sd", "ci_low", "ci_high", "n"])


def _mean_sd(values: pd.Series, folds: pd.Series | None, aggregate: str) -> tuple[float, float]:
    """Mean and SD of one group's values (NaNs skipped) under ``EvalConfig.aggregate``."""
    if aggregate == "pooled":
        return float(values.mean()), float(values.std(ddof=1))
    if folds is None:
        return float(values.mean()), float(values.std(ddof=0))
    per_fold = values.groupby(folds, dropna=False)
    # statistics.pstdev per fold in the authors' code; pandas skips NaNs (a
    # fold of NaNs only, e.g. a supervised rule without lesion, drops out)
    return float(per_fold.mean().mean()), float(per_fold.std(ddof=0).mean())


def _group_means(frame: pd.DataFrame, by: list[str], column: str, aggregate: str) -> pd.Series:
    """Mean of ``column`` per ``by`` group, fold means averaged for ``per_fold``."""
    if aggregate == "per_fold" and "fold" in frame.columns:
        return frame.groupby([*by, "fold"], dropna=False)[column].mean().groupby(level=list(range(len(by)))).mean()
    return frame.groupby(by)[column].mean()


def _pm(mean: float, sd: float) -> str:
    return f"{mean:.3f} ± {sd:.2f}"


_DAE_RE = re.compile(r"^lsd(?P<lsd>\d+)-(?P<activation>linear|sigmoid)$")
_REC_RE = re.compile(r"^(?P<distribution>[a-z]+)-(?P<appearance>[a-z]+)-(?P<mean>full|half)$")


def table_auroc(auroc_df: pd.DataFrame, model: str, config: EvalConfig | None = None) -> pd.DataFrame:
    """The paper's Tables 1 (DAE) and 2 (RecDiscNet): AUROC per variant.

    Parameters
    ----------
    auroc_df : DataFrame
        Columns ``model, variant, fold, subject, auroc`` (tidy).
    model : str
        ``"dae"`` or ``"recdisc"``.

    Returns
    -------
    DataFrame
        One row per variant sorted by ascending mean AUROC, index ``1..N``
        (the paper's m/d), with the parsed variant parts, ``auroc_mean,
        auroc_sd, ci_low, ci_high, n`` and ``AUC`` ("mean ± sd").
    """
    sub = auroc_df[auroc_df["model"] == model]
    if sub.empty:
        present = sorted(auroc_df["model"].unique())
        raise ValueError(f"table_auroc: no rows for model {model!r}; models present: {present}.")
    s = summarise(sub, ["variant"], ["auroc"], config).sort_values("mean", kind="stable").reset_index(drop=True)
    pattern = {DAE: _DAE_RE, RECDISC: _REC_RE}.get(model)
    parts = pd.DataFrame([(m.groupdict() if pattern and (m := pattern.match(v)) else {}) for v in s["variant"]],
                         index=s.index)
    out = pd.concat([s[["variant"]], parts], axis=1)
    out["auroc_mean"], out["auroc_sd"] = s["mean"], s["sd"]
    out["ci_low"], out["ci_high"], out["n"] = s["ci_low"], s["ci_high"], s["n"]
    out["AUC"] = [_pm(m, d) for m, d in zip(s["mean"], s["sd"])]
    out.index = pd.RangeIndex(1, len(out) + 1, name="index")
    return out


def best_variants(dice_df: pd.DataFrame, rule: str, config: EvalConfig | None = None) -> dict[str, str]:
    """Best variant of each model under a threshold rule.

    The best variant has the highest mean of ``config.best_by`` (``dice_post``
    by default, or ``dice``) over its patients and folds, the mean taken as
    :func:`summarise` takes it (``config.aggregate``); ties go to the variant
    whose name sorts first.
    """
    config = config or EvalConfig()
    sub = dice_df[dice_df["rule"] == rule]
    if sub.empty:
        raise ValueError(f"no rows for rule {rule!r}; rules present: {sorted(dice_df['rule'].unique())}.")
    means = _group_means(sub, ["model", "variant"], config.best_by, config.aggregate).reset_index()
    means = means.sort_values(["model", config.best_by, "variant"], ascending=[True, False, True])
    return dict(means.groupby("model", sort=True)["variant"].first())


def best_auroc_variant(det_df: pd.DataFrame, model: str) -> str:
    """The variant of ``model`` with the highest mean AUROC over its rows (the paper's choice for follow-up).

    Parameters
    ----------
    det_df : DataFrame
        Columns ``model, variant, auroc`` (e.g. ``tables/auroc_all.csv``).
    model : str

    Raises
    ------
    ValueError
        If ``det_df`` has no row of ``model``.
    """
    det = det_df[det_df["model"] == model]
    return str(det.groupby("variant")["auroc"].mean().idxmax())


def table_dice(dice_df: pd.DataFrame, rule: str, config: EvalConfig | None = None) -> pd.DataFrame:
    """The paper's Tables 3-6: best variant of each model under one threshold rule.

    Parameters
    ----------
    dice_df : DataFrame
        Columns ``model, variant, fold, subject, rule, threshold, dice, dice_post``.
    rule : str
        Threshold rule, e.g. ``"fixed"``, ``"otsu"``, ``"pool_max"``, ``"dice_optimal"``.
    config : EvalConfig, optional
        ``best_by`` selects the variant (see :func:`best_variants`); bootstrap settings.

    Returns
    -------
    DataFrame
        One row per model: ``model, variant, threshold`` (mean), and for
        ``dice`` and ``dice_post``: ``_mean, _sd, _ci_low, _ci_high`` plus the
        formatted "mean ± sd" columns ``Dice`` and ``Dice postprocessed``; ``n``.
    """
    config = config or EvalConfig()
    best = best_variants(dice_df, rule, config)
    rows = []
    for model, variant in best.items():
        g = dice_df[(dice_df["rule"] == rule) & (dice_df["model"] == model) & (dice_df["variant"] == variant)]
        s = summarise(g, [], ["threshold", "dice", "dice_post"], config).set_index("metric")
        row: dict[str, Any] = {"model": model, "variant": variant, "threshold": s.loc["threshold", "mean"]}
        for col in ("dice", "dice_post"):
            for stat in ("mean", "sd", "ci_low", "ci_high"):
                row[f"{col}_{stat}"] = s.loc[col, stat]
        row["Dice"] = _pm(row["dice_mean"], row["dice_sd"])
        row["Dice postprocessed"] = _pm(row["dice_post_mean"], row["dice_post_sd"])
        row["n"] = int(s.loc["dice", "n"])
        rows.append(row)
    return pd.DataFrame(rows)


def summarise_by_group(dice_df: pd.DataFrame, participants: pd.DataFrame, rule: str, *,
                       group: str = "size_class", config: EvalConfig | None = None) -> pd.DataFrame:
    """Dice of each model's best variant per patient group (size class or grade).

    Parameters
    ----------
    dice_df : DataFrame
        Tidy Dice table.
    participants : DataFrame
        ``participants.tsv`` contents: ``participant_id`` (with or without the
        ``sub-`` prefix, or as the index) and the ``group`` column.
    rule : str
        Threshold rule.
    group : str
        ``"size_class"`` or ``"grade"`` (any participants column).

    Returns
    -------
    DataFrame
        :func:`summarise` output grouped by ``model, variant, <group>``.
    """
    config = config or EvalConfig()
    p = participants.reset_index() if "participant_id" not in participants.columns else participants
    if "participant_id" not in p.columns:
        p = p.rename(columns={p.columns[0]: "participant_id"})
    if group not in p.columns:
        raise ValueError(f"participants have no column {group!r}; columns: {list(p.columns)}.")
    key = p["participant_id"].astype(str).map(lambda s: s if s.startswith("sub-") else f"sub-{s}")
    lookup = dict(zip(key, p[group]))
    best = best_variants(dice_df, rule, config)
    sub = dice_df[(dice_df["rule"] == rule) & (dice_df["variant"] == dice_df["model"].map(best))].copy()
    subj = sub["subject"].astype(str).map(lambda s: s if s.startswith("sub-") else f"sub-{s}")
    sub[group] = subj.map(lookup)
    return summarise(sub, ["model", "variant", group], ["dice", "dice_post"], config)


def paired_wilcoxon(dice_df: pd.DataFrame, rule: str, *, value: str = "dice_post",
                    models: tuple[str, str] = MODELS,
                    config: EvalConfig | None = None) -> dict[str, Any]:
    """Paired Wilcoxon signed-rank test between the best variants of two models.

    Each model's best variant under ``rule`` (:func:`best_variants`) gives one
    value per patient (mean over folds); patients present for both are paired.

    Returns
    -------
    dict
        ``a, b`` ("model/variant"), ``n`` pairs, ``median_difference`` (a - b),
        ``statistic``, ``pvalue`` (NaN when fewer than 2 non-zero differences).
    """
    best = best_variants(dice_df, rule, config)
    missing = [m for m in models if m not in best]
    if missing:
        raise ValueError(f"paired_wilcoxon: no rows for model(s) {missing} under rule {rule!r}.")
    per = []
    for m in models:
        g = dice_df[(dice_df["rule"] == rule) & (dice_df["model"] == m) & (dice_df["variant"] == best[m])]
        per.append(g.groupby("subject")[value].mean())
    a, b = per[0].align(per[1], join="inner")
    ok = a.notna() & b.notna()
    a, b = a[ok], b[ok]
    diff = (a - b).to_numpy()
    out: dict[str, Any] = {"a": f"{models[0]}/{best[models[0]]}", "b": f"{models[1]}/{best[models[1]]}",
                           "n": int(diff.size), "median_difference": float(np.median(diff)) if diff.size else math.nan,
                           "statistic": math.nan, "pvalue": math.nan}
    if np.count_nonzero(diff) >= 2:
        from scipy import stats  # imported here: scipy.stats costs ~1 s per job start

        res = stats.wilcoxon(a.to_numpy(), b.to_numpy())
        out["statistic"], out["pvalue"] = float(res.statistic), float(res.pvalue)
    return out
