"""A non-deep baseline: voxelwise normative z-scores of FA and MD.

The healthy training subjects of a fold give a voxelwise mean and standard
deviation of fractional anisotropy (FA) and mean diffusivity (MD) on the
network grid. A test subject's anomaly map combines its two z-scores
(``NormativeBaseline().fit(fa, md, masks).score(fa_test, md_test)``). The map
is evaluated with exactly the functions of :mod:`dmrilib.metrics` (model name
``"normative"``, whose fixed threshold is a z of 3).

Subjects share the network grid but are not registered to each other, so at
tissue borders (WM/GM, ventricles) the voxelwise spread of a few subjects is
dominated by misalignment, not by biology. Two guards keep those borders from
dominating the map: the variance is smoothed with a Gaussian inside the brain
(normalised convolution), and the standard deviation is floored at a fraction
of its median inside the brain.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

__all__ = ["NormativeBaseline", "NormativeFit"]


def _masked_smooth(values: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of ``values`` where ``weight`` > 0 (normalised convolution)."""
    if sigma <= 0:
        return values
    num = ndimage.gaussian_filter(values * weight, sigma, mode="constant")
    den = ndimage.gaussian_filter(weight, sigma, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-6, num / den, 0.0)


@dataclass(frozen=True)
class NormativeBaseline:
    """Voxelwise normative model of FA and MD (settings; :meth:`fit` estimates it).

    Parameters
    ----------
    smooth_sigma : float
        Gaussian sigma (voxels) applied to the variance maps inside the brain;
        0 disables.
    sd_floor : float
        The sd is at least this fraction of its median inside the support.
    min_subjects : int
        Voxels inside fewer training brains are left out (score 0 there).
    combine : {"rms", "max"}
        ``rms``: sqrt((z_fa^2 + z_md^2) / 2); ``max``: max(|z_fa|, |z_md|).

    Examples
    --------
    >>> fit = NormativeBaseline().fit(fa_train, md_train, brain_train)  # doctest: +SKIP
    >>> score = fit.score(fa_test, md_test)  # doctest: +SKIP
    """

    smooth_sigma: float = 1.0
    sd_floor: float = 0.5
    min_subjects: int = 2
    combine: str = "rms"

    def __post_init__(self) -> None:
        if self.combine not in ("rms", "max"):
            raise ValueError(f"combine must be 'rms' or 'max', got {self.combine!r}.")
        if self.min_subjects < 2:
            raise ValueError(f"min_subjects must be >= 2 to estimate a standard deviation, got {self.min_subjects}.")
        if self.sd_floor < 0 or self.smooth_sigma < 0:
            raise ValueError(f"sd_floor and smooth_sigma must be >= 0, got {self.sd_floor} and {self.smooth_sigma}.")

    def fit(self, fa: ArrayLike, md: ArrayLike, brain_masks: ArrayLike) -> "NormativeFit":
        """Estimate the normative statistics from healthy subjects.

        Parameters
        ----------
        fa, md : ndarray, shape (S, X, Y, Z)
            DTI maps of the fold's healthy training subjects on one grid.
        brain_masks : ndarray of bool, shape (S, X, Y, Z)
            Their brain masks; only voxels inside a subject's brain count.

        Returns
        -------
        NormativeFit
        """
        fa = np.asarray(fa, dtype=np.float64)
        md = np.asarray(md, dtype=np.float64)
        masks = np.asarray(brain_masks).astype(bool, copy=False)
        if not fa.shape == md.shape == masks.shape or fa.ndim != 4:
            raise ValueError(
                f"fa {fa.shape}, md {md.shape} and brain_masks {masks.shape} must all be (S, X, Y, Z) "
                "arrays of the same shape (one volume per healthy subject)."
            )
        if fa.shape[0] < self.min_subjects:
            raise ValueError(
                f"need at least min_subjects={self.min_subjects} healthy subjects to estimate a "
                f"standard deviation; got {fa.shape[0]}."
            )
        count = masks.sum(axis=0)
        support = count >= self.min_subjects
        if not support.any():
            raise ValueError("no voxel is inside the brain of enough training subjects; check the brain masks.")
        weight = support.astype(np.float64)
        stats = []
        for name, x in (("fa", fa), ("md", md)):
            if not np.isfinite(x[masks]).all():
                raise ValueError(f"{name} holds NaN/inf inside the brain masks; clean it first.")
            x = np.where(masks, x, 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(support, x.sum(axis=0) / count, 0.0)
                dev2 = np.where(masks, x - mean, 0.0) ** 2
                var = np.where(support, dev2.sum(axis=0) / (count - 1), 0.0)
            var = _masked_smooth(var, weight, self.smooth_sigma)
            sd = np.sqrt(np.maximum(var, 0.0))
            floor = max(self.sd_floor * float(np.median(sd[support])), float(np.finfo(np.float32).tiny))
            sd = np.where(support, np.maximum(sd, floor), 1.0)
            stats.append((mean.astype(np.float32), sd.astype(np.float32)))
        (fa_mean, fa_sd), (md_mean, md_sd) = stats
        return NormativeFit(fa_mean, fa_sd, md_mean, md_sd, support, self.combine)


@dataclass(frozen=True)
class NormativeFit:
    """A fitted normative model; :meth:`score` gives anomaly maps.

    Attributes
    ----------
    fa_mean, fa_sd, md_mean, md_sd : ndarray, shape (X, Y, Z)
        Normative statistics (sd smoothed and floored).
    support : ndarray of bool, shape (X, Y, Z)
        Voxels inside enough training brains; scores are 0 elsewhere.
    combine : {"rms", "max"}
        How the two absolute z-scores become one score.
    """

    fa_mean: np.ndarray
    fa_sd: np.ndarray
    md_mean: np.ndarray
    md_sd: np.ndarray
    support: np.ndarray
    combine: str = "rms"

    def z_scores(self, fa: ArrayLike, md: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Signed z-scores of FA and MD (0 outside the support).

        Parameters
        ----------
        fa, md : ndarray, shape (X, Y, Z) or (S, X, Y, Z)
            Maps of one or more subjects on the fitted grid.
        """
        fa = np.asarray(fa, dtype=np.float32)
        md = np.asarray(md, dtype=np.float32)
        if fa.shape != md.shape or fa.shape[-3:] != self.support.shape:
            raise ValueError(
                f"fa {fa.shape} and md {md.shape} must match each other and end with the "
                f"fitted grid {self.support.shape}."
            )
        z_fa = np.where(self.support, (fa - self.fa_mean) / self.fa_sd, 0.0).astype(np.float32)
        z_md = np.where(self.support, (md - self.md_mean) / self.md_sd, 0.0).astype(np.float32)
        return z_fa, z_md

    def score(self, fa: ArrayLike, md: ArrayLike, brain_mask: ArrayLike | None = None) -> np.ndarray:
        """Combined anomaly score (>= 0, in units of z) per voxel.

        Parameters
        ----------
        fa, md : ndarray, shape (X, Y, Z) or (S, X, Y, Z)
            DTI maps of the subjects to score.
        brain_mask : ndarray of bool, optional
            Same shape as ``fa``; the score is 0 outside it.

        Returns
        -------
        ndarray of float32
        """
        z_fa, z_md = self.z_scores(fa, md)
        if self.combine == "rms":
            out = np.sqrt(0.5 * (z_fa**2 + z_md**2))
        else:
            out = np.maximum(np.abs(z_fa), np.abs(z_md))
        if brain_mask is not None:
            brain_mask = np.asarray(brain_mask).astype(bool, copy=False)
            if brain_mask.shape != out.shape:
                raise ValueError(f"brain_mask has shape {brain_mask.shape} but the maps have {out.shape}.")
            out = np.where(brain_mask, out, 0.0)
        return out.astype(np.float32)
