"""Settings of a simulated cohort (the ``cohort`` section of a profile)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

__all__ = ["CohortConfig", "GRADES", "PAPER_GRADE_COUNTS", "BRAIN_BOX_MM", "POSE_CLIP_SD"]

#: Tumour grades, most aggressive first.
GRADES = ("IV", "III", "II")
#: The paper's patients: 14 glioblastoma, 10 WHO III, 8 WHO II.
PAPER_GRADE_COUNTS = {"IV": 14, "III": 10, "II": 8}
#: Extent (MNI mm, per axis) of the template brain, cerebellum included; a
#: separate structural grid covers it with a margin for the head pose.
BRAIN_BOX_MM = ((-72.0, 72.0), (-107.0, 73.0), (-72.0, 82.0))
#: Between-session head movements are normal draws clipped at this many sd.
POSE_CLIP_SD = 2.5
# Largest head pose of the diffusion scan (dmrilib.simulate.variability.random_head_pose).
_DWI_POSE_DEG = 3.0
_DWI_POSE_MM = 3.0
# Worst-case shift (mm) of the template brain's bounding box per degree of
# rotation about every axis at once (measured: 0.70 mm at 3 degrees, 0.53 mm
# at 10 degrees; the box moves less than the far points of the brain).
_MM_PER_DEG = 0.75
# Room for the random anatomical deformation and partial volume at the edge.
_EDGE_MM = 6.0


def _normalised(value: Any) -> Any:
    """An effect value in comparable form (lists and tuples alike, ints as floats)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(float(v) for v in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


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
        Voxel size of T1w/FLAIR in mm. ``None`` (default) images them on the
        diffusion grid itself; a value gives them their own grid
        (:attr:`structural_shape`, :attr:`structural_affine`), which covers
        the whole brain (cerebellum included) with a margin for the
        structural head pose.
    structural_snr : float
        SNR of the structural images in white matter.
    structural_pose_deg, structural_pose_mm : float
        Typical head movement between the structural session and the diffusion
        scan: per subject, a rotation about each axis (degrees) and a
        translation along each axis (mm) are drawn from normal distributions
        with these standard deviations, clipped at 2.5 sd. 0 and 0 give the
        structural images the diffusion scan's head pose.
    epi_distortion_mm : float
        Peak susceptibility distortion of the DWI along the phase-encode axis
        (y, anterior-posterior): the largest displacement over the brain,
        strongest in orbitofrontal and anterior temporal regions (next to the
        sinuses and ear canals). 0 gives an undistorted DWI. Peaks above
        about 6 mm may come out lower: the field's slope along y is kept
        below 0.9 so that the distortion stays one-to-one.
    snr_jitter : float
        Relative spread of the per-subject SNR (uniform, +-).
    deformation_mm : float
        Typical displacement of the random anatomical deformation.
    seed : int
        Cohort seed; every subject's seed derives from it.
    realism : str
        Which groups of realism effects are on (:mod:`dmrilib.simulate.realism`):
        ``"L0"`` (default: the original simulator, bit for bit) to ``"L4"``,
        or groups joined by ``+`` (``"L0+acquisition"``). Each effect below
        defaults to ``None``: its value under ``realism``; a written value wins.
    axial_scale_sd, radial_scale_sd, tract_scale_sd, head_volume_cv, ventricle_volume_cv, \
age_range, age_radial_slope, age_axial_slope, wmh_per_decade, incidental_rate : optional
        Population effects (L1); see :data:`dmrilib.simulate.realism.EFFECTS`
        for each value, its unit and its source.
    snr_cv, noise_map_sd, motion_mm, outlier_slice_rate, gibbs_kspace_fraction, vibration_rate, \
distortion_spread : optional
        Acquisition effects (L2).
    tumour_value_cv, tumour_texture_sd, haemorrhage_rate, cyst_rate, multifocal_rate, \
followup_treatment, remote_recurrence_rate : optional
        Tumour and follow-up effects (L3).
    scanner_offset, scanner_share : optional
        Two-scanner split (L4).
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
    structural_pose_deg: float = 3.0
    structural_pose_mm: float = 4.0
    epi_distortion_mm: float = 3.0
    snr_jitter: float = 0.05
    deformation_mm: float = 3.0
    seed: int = 0
    realism: str = "L0"
    axial_scale_sd: Any = None
    radial_scale_sd: Any = None
    tract_scale_sd: Any = None
    head_volume_cv: Any = None
    ventricle_volume_cv: Any = None
    age_range: Any = None
    age_radial_slope: Any = None
    age_axial_slope: Any = None
    wmh_per_decade: Any = None
    incidental_rate: Any = None
    snr_cv: Any = None
    noise_map_sd: Any = None
    motion_mm: Any = None
    outlier_slice_rate: Any = None
    gibbs_kspace_fraction: Any = None
    vibration_rate: Any = None
    distortion_spread: Any = None
    tumour_value_cv: Any = None
    tumour_texture_sd: Any = None
    haemorrhage_rate: Any = None
    cyst_rate: Any = None
    multifocal_rate: Any = None
    followup_treatment: Any = None
    remote_recurrence_rate: Any = None
    scanner_offset: Any = None
    scanner_share: Any = None
    # Which effects were written, and the realism they were resolved under:
    # dataclasses.replace(config, realism="L3") passes the resolved values
    # back in, and this tells them from written ones. Not part of the settings.
    _resolution: Any = field(default=None, repr=False, compare=False)

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
        for name, top in (("structural_pose_deg", 10.0), ("structural_pose_mm", 15.0), ("epi_distortion_mm", 10.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) <= top:
                raise ValueError(
                    f"cohort.{name} must be a number in [0, {top:g}] (0 switches it off), got {value!r}"
                )
            set_(name, float(value))
        if not 0 <= float(self.snr_jitter) < 0.5:
            raise ValueError(f"cohort.snr_jitter must be in [0, 0.5), got {self.snr_jitter!r}")
        if not 0 <= float(self.deformation_mm) <= 10:
            raise ValueError(f"cohort.deformation_mm must be in [0, 10] mm, got {self.deformation_mm!r}")
        set_("snr_jitter", float(self.snr_jitter))
        set_("deformation_mm", float(self.deformation_mm))
        set_("seed", int(self.seed))
        self._resolve_effects(set_)

    def _resolve_effects(self, set_) -> None:
        """Fill the realism effects left at None from ``realism``; check every value."""
        from dmrilib.simulate.realism import EFFECTS, effect_defaults

        set_("realism", str(self.realism).replace(" ", "") if isinstance(self.realism, str) else self.realism)
        defaults = effect_defaults(self.realism)  # raises for an unknown level or group
        if self._resolution is None:  # made from settings: the effects given are the written ones
            written = {e.field for e in EFFECTS if getattr(self, e.field) is not None}
        else:  # a copy (dataclasses.replace): written before, or changed from the old level's value
            old_level, old_written = self._resolution
            old = effect_defaults(old_level)
            written = set(old_written) | {e.field for e in EFFECTS
                                          if getattr(self, e.field) is not None
                                          and _normalised(getattr(self, e.field)) != _normalised(old[e.field])}
        set_("_resolution", (self.realism, frozenset(written)))
        for effect in EFFECTS:
            name = effect.field
            value = getattr(self, name) if name in written else None
            if value is None:
                value = defaults[name]
            if isinstance(effect.on, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"cohort.{name} must be true or false, got {value!r}")
            elif isinstance(effect.on, tuple):
                if value is not None:
                    if isinstance(value, (str, bytes)) or len(np.atleast_1d(value)) != 2:
                        raise ValueError(f"cohort.{name} must be two numbers ({effect.unit}), got {value!r}")
                    value = tuple(float(v) for v in value)
                    if min(value) < 0 or (name == "age_range" and not 0 <= value[0] <= value[1] <= 110):
                        raise ValueError(f"cohort.{name} must be two non-negative numbers ({effect.unit}), got {value!r}")
                    if name in ("outlier_slice_rate", "scanner_share") and max(value) > 1:
                        raise ValueError(f"cohort.{name} must be fractions in [0, 1], got {value!r}")
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value) >= 0:
                    raise ValueError(f"cohort.{name} must be a non-negative number ({effect.unit}), got {value!r}")
                value = float(value)
                if name == "gibbs_kspace_fraction" and not 0.25 <= value <= 1:
                    raise ValueError(f"cohort.{name} must be in [0.25, 1] (1: no ringing), got {value!r}")
                if name.endswith("_rate") and value > 1:
                    raise ValueError(f"cohort.{name} must be a fraction in [0, 1], got {value!r}")
            set_(name, value)

    @property
    def groups(self) -> frozenset[str]:
        """The realism groups switched on (:func:`dmrilib.simulate.realism.parse_realism`)."""
        from dmrilib.simulate.realism import parse_realism

        return parse_realism(self.realism)

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
        """Voxel size (mm) of the structural images."""
        return self.voxel_size if self.structural_voxel_size is None else self.structural_voxel_size

    @property
    def structural_margin_mm(self) -> float:
        """Room (mm) around the brain on each side of a separate structural grid.

        Covers the largest head pose a subject can get (the diffusion pose plus
        the clipped between-session movement), so the brain never leaves the
        structural field of view.
        """
        rotation = _DWI_POSE_DEG + POSE_CLIP_SD * self.structural_pose_deg
        translation = _DWI_POSE_MM + POSE_CLIP_SD * self.structural_pose_mm
        return _EDGE_MM + translation + _MM_PER_DEG * rotation

    @property
    def structural_shape(self) -> tuple[int, int, int]:
        """Shape of the structural grid (the diffusion grid's when ``structural_voxel_size`` is None)."""
        if self.structural_voxel_size is None:
            return self.shape
        extent = np.diff(np.asarray(BRAIN_BOX_MM), axis=1)[:, 0] + 2 * self.structural_margin_mm
        return tuple(int(np.ceil(e / self.structural_spacing)) for e in extent)

    @property
    def structural_affine(self) -> np.ndarray:
        """Voxel -> scanner mm of the structural grid (axial RAS, centred on the brain box)."""
        if self.structural_voxel_size is None:
            from dmrilib.simulate.anatomy import grid_affine

            return grid_affine(self.shape, self.voxel_size)
        vs = self.structural_spacing
        centre = np.asarray(BRAIN_BOX_MM).mean(axis=1)
        affine = np.diag([vs, vs, vs, 1.0])
        affine[:3, 3] = centre - (np.asarray(self.structural_shape) - 1) / 2.0 * vs
        return affine
