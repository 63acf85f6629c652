"""Threshold rules (:data:`THRESHOLD_RULES`), healthy-FPR thresholds and one map's evaluation
(:func:`evaluate_map`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from dmrilib.metrics.config import EvalConfig
from dmrilib.metrics.detection import _dice_counts, _MapStats, _otsu, pooled_maximum, postprocess
from dmrilib.variants import DAE


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
