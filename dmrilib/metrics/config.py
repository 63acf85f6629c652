"""Evaluation settings: :class:`EvalConfig` (the profile's ``evaluate`` section) and its regions."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

from dmrilib.fidelity import resolve as resolve_fidelity
from dmrilib.variants import BASELINE_VARIANT, DAE, RECDISC


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
