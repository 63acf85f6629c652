"""Settings of a simulated cohort (the ``cohort`` section of a profile)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

__all__ = ["CohortConfig", "GRADES", "PAPER_GRADE_COUNTS"]

#: Tumour grades, most aggressive first.
GRADES = ("IV", "III", "II")
#: The paper's patients: 14 glioblastoma, 10 WHO III, 8 WHO II.
PAPER_GRADE_COUNTS = {"IV": 14, "III": 10, "II": 8}


def _largest_remainder(counts: Mapping[str, int], total: int) -> dict[str, int]:
    keys = list(counts)
    raw = np.array([counts[k] for k in keys], dtype=float)
    exact = raw / raw.sum() * total
    out = np.floor(exact).astype(int)
    order = np.argsort(-(exact - out), kind="stable")
    out[order[: total - out.sum()]] += 1
    return {k: int(v) for k, v in zip(keys, out)}


@dataclass(frozen=True)
class CohortConfig:
    """A simulated glioma dMRI cohort.

    Parameters
    ----------
    n_healthy, n_patients : int
        Subjects per group (paper: 28 and 32).
    grade_counts : mapping
        Patients per WHO grade (``"IV"``, ``"III"``, ``"II"``); scaled
        proportionally (largest remainder) when they do not sum to ``n_patients``.
    n_followup : int
        Patients with a follow-up (paper: 28 of 32); scaled like ``grade_counts``.
    shape : tuple of 3 int
        Diffusion grid (paper: 90 x 90 x 54).
    voxel_size : float
        Isotropic diffusion voxel size in mm (paper: 2.4).
    snr : float
        b0 signal-to-noise ratio in white matter (signal / Gaussian sigma).
    bvalue : float or sequence of float
        b-value(s) in s/mm^2; each shell uses the 64 directions of dipy's
        ``small_64D``.
    n_b0 : int
        Number of b0 volumes.
    structural_voxel_size : float, optional
        Voxel size of T1w/FLAIR over the same field of view; ``None`` (default)
        uses the diffusion grid.
    structural_snr : float
        SNR of the structural images in white matter.
    snr_jitter : float
        Relative spread of the per-subject SNR (uniform, +-).
    deformation_mm : float
        Typical displacement of the random anatomical deformation.
    seed : int
        Cohort seed; every subject's seed derives from it.
    """

    n_healthy: int = 28
    n_patients: int = 32
    grade_counts: Mapping[str, int] = field(default_factory=lambda: dict(PAPER_GRADE_COUNTS))
    n_followup: int = 28
    shape: tuple[int, int, int] = (90, 90, 54)
    voxel_size: float = 2.4
    snr: float = 25.0
    bvalue: float | tuple[float, ...] = 1000.0
    n_b0: int = 1
    structural_voxel_size: float | None = None
    structural_snr: float = 30.0
    snr_jitter: float = 0.05
    deformation_mm: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        shape = tuple(int(s) for s in np.atleast_1d(self.shape))
        if len(shape) != 3 or min(shape) < 8:
            raise ValueError(f"cohort.shape must be three sizes >= 8 (e.g. [90, 90, 54]), got {self.shape!r}")
        set_("shape", shape)
        b = tuple(float(v) for v in np.atleast_1d(self.bvalue))
        if not b or min(b) <= 0:
            raise ValueError(f"cohort.bvalue must be positive (one value or a list of shells), got {self.bvalue!r}")
        set_("bvalue", b[0] if len(b) == 1 else b)
        for name in ("n_healthy", "n_patients", "n_followup", "n_b0"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"cohort.{name} must be >= 0, got {getattr(self, name)!r}")
            set_(name, int(getattr(self, name)))
        if self.n_b0 < 1:
            raise ValueError("cohort.n_b0 must be at least 1: attenuation needs a b0.")
        if self.n_healthy + self.n_patients == 0:
            raise ValueError("cohort: n_healthy + n_patients is 0; nothing to simulate.")
        grades = {str(k): int(v) for k, v in dict(self.grade_counts).items()}
        unknown = sorted(set(grades) - set(GRADES))
        if unknown or min(grades.values(), default=0) < 0 or (self.n_patients and sum(grades.values()) == 0):
            raise ValueError(
                f"cohort.grade_counts must map grades {list(GRADES)} to non-negative counts, got {self.grade_counts!r}"
            )
        set_("grade_counts", grades)
        if self.n_followup > sum(grades.values()):
            raise ValueError(f"cohort.n_followup ({self.n_followup}) exceeds the patients in grade_counts.")
        for name in ("voxel_size", "snr", "structural_snr"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"cohort.{name} must be positive, got {getattr(self, name)!r}")
            set_(name, float(getattr(self, name)))
        if self.structural_voxel_size is not None:
            if not float(self.structural_voxel_size) > 0:
                raise ValueError(f"cohort.structural_voxel_size must be positive or null, got {self.structural_voxel_size!r}")
            set_("structural_voxel_size", float(self.structural_voxel_size))
        if not 0 <= float(self.snr_jitter) < 0.5:
            raise ValueError(f"cohort.snr_jitter must be in [0, 0.5), got {self.snr_jitter!r}")
        if not 0 <= float(self.deformation_mm) <= 10:
            raise ValueError(f"cohort.deformation_mm must be in [0, 10] mm, got {self.deformation_mm!r}")
        set_("snr_jitter", float(self.snr_jitter))
        set_("deformation_mm", float(self.deformation_mm))
        set_("seed", int(self.seed))

    @property
    def bvalues(self) -> tuple[float, ...]:
        """The shells as a tuple."""
        return tuple(np.atleast_1d(self.bvalue).tolist())

    @property
    def patient_grades(self) -> dict[str, int]:
        """Patients per grade, scaled to ``n_patients``."""
        if sum(self.grade_counts.values()) == self.n_patients:
            return dict(self.grade_counts)
        return _largest_remainder(self.grade_counts, self.n_patients)

    @property
    def followup_count(self) -> int:
        """Patients with a follow-up, scaled to ``n_patients``."""
        total = sum(self.grade_counts.values())
        if total == self.n_patients:
            return self.n_followup
        return int(round(self.n_followup * self.n_patients / total)) if total else 0

    @property
    def structural_spacing(self) -> float:
        return self.voxel_size if self.structural_voxel_size is None else self.structural_voxel_size

    @property
    def structural_shape(self) -> tuple[int, int, int]:
        """Structural grid over the same field of view."""
        ratio = self.voxel_size / self.structural_spacing
        return tuple(int(round(s * ratio)) for s in self.shape)
