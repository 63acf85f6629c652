"""Population realism (L1): how healthy adults differ from one another and from the template.

One :class:`Population` is drawn per subject (:func:`draw_population`) from
the subject's population random stream, only when an effect of the group is
on, so the other groups' draws and the L0 simulator stay as they were. It
acts on the simulator at three places:

* anatomy: before the random deformation, anatomy mm are pulled back to the
  template by an isotropic head scale (about the top of the brain, where an
  operator places the top slice) and a local expansion of the lateral
  ventricles (:meth:`Population.warp`);
* diffusivities: whole-brain axial and radial factors (between-subject spread
  and age) and a smooth per-region factor (:meth:`Population.diffusivity`);
* focal findings that are not tumour: white-matter hyperintensities and an
  old lacunar infarct, given as weights on the template points
  (:meth:`Population.lesion_maps`).

Each value and its source is in :data:`dmrilib.simulate.realism.EFFECTS`;
the constants below, which no ``CohortConfig`` field sets, carry theirs here.
Everything is computed with ``+ - * / sqrt`` and :mod:`dmrilib.simulate._portable`,
so the bits do not depend on the CPU.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dmrilib.simulate import _portable as pmath
from dmrilib.simulate.anatomy import _BRAIN_TOP_MM, load_template, sample_template
from dmrilib.simulate.config import BRAIN_BOX_MM, CohortConfig
from dmrilib.simulate.variability import SmoothField, smooth_field

__all__ = ["Population", "draw_population", "population_on", "VENTRICLE_SITES", "VENTRICLE_AGE_SLOPE", "AXIAL_RADIAL_CORRELATION",
           "WM_RADIAL_CALIBRATION", "WMH_DIFFUSIVITY", "HYPERINTENSITY_CONTRAST"]

_FIELDS = ("axial_scale_sd", "radial_scale_sd", "tract_scale_sd", "head_volume_cv", "ventricle_volume_cv",
           "age_range", "age_radial_slope", "age_axial_slope", "wmh_per_decade", "incidental_rate")

#: Centre line of each lateral ventricle of the template (MNI mm, left side;
#: the right mirrors it), from the template's CSF > 0.6 near the midline:
#: frontal horn, body, atrium. The expansion acts across this line.
_VENTRICLE_LINE = ((-9.0, 18.0, 8.0), (-10.0, 5.0, 15.0), (-12.0, -10.0, 20.0), (-16.0, -25.0, 21.0),
                   (-22.0, -38.0, 14.0), (-24.0, -48.0, 9.0))
_VENTRICLE_WIDTH_MM = 10.0
_VENTRICLE_STEP_MM = 4.0


def _line_sites() -> tuple[tuple[float, float, float], ...]:
    out = []
    for a, b in zip(_VENTRICLE_LINE[:-1], _VENTRICLE_LINE[1:]):
        a, b = np.asarray(a), np.asarray(b)
        n = max(int(np.ceil(np.sqrt(((b - a) ** 2).sum()) / _VENTRICLE_STEP_MM)), 1)
        out += [tuple(a + (b - a) * k / n) for k in range(n)]
    out.append(_VENTRICLE_LINE[-1])
    return tuple((sx * x, y, z) for sx in (1.0, -1.0) for x, y, z in out)


#: Gaussian sites about 4 mm apart along both centre lines; the ventricle warp
#: is ``u(p) = s / G0 sum_k (p - c_k) exp(-|p - c_k|^2 / (2 w^2))`` with
#: ``G0 = sqrt(2 pi) w / step`` (the sum of the weights on the line), so
#: that across the line it is close to a 2-D scaling by ``1 - s`` near the
#: line, fading over ~``w`` (the surrounding tissue is compressed, as in
#: ventricular enlargement with atrophy).
VENTRICLE_SITES = _line_sites()
_G0 = float(np.sqrt(2.0 * np.pi)) * _VENTRICLE_WIDTH_MM / _VENTRICLE_STEP_MM
#: Log-change of the ventricle volume per year over 45: lateral ventricles
#: enlarge by ~2-3%/year in later adulthood, roughly doubling between 45 and
#: 80 (Fjell et al. 2009, Cereb Cortex; Walhovd et al. 2005). Confidence: medium.
VENTRICLE_AGE_SLOPE = 0.02
#: Age from which the age slopes apply: WM FA peaks and RD is lowest around
#: 30-45 years, the decline is steady after (Westlye et al. 2010; Lebel et al. 2012).
AGE_ONSET = 45.0
#: Between-subject correlation of the (log) axial and radial diffusivity
#: factors: whole-WM AD and RD correlate positively across healthy adults
#: (both rise with MD; Westlye et al. 2010 report r ~0.4-0.7 in most tracts).
#: Confidence: low.
AXIAL_RADIAL_CORRELATION = 0.5
#: Factor on the radial diffusivity of white matter with the group on. The
#: template's prescribed tracts give whole-WM FA ~0.51 over WM-labelled
#: voxels at 2.4 mm, while healthy adults' whole-WM FA at 2-2.5 mm is
#: 0.40-0.47 and RD ~0.55-0.65e-3 mm^2/s (Westlye et al. 2010; Pierpaoli et
#: al. 1996; Bennett et al. 2010): the tracts' fibres are more coherent than
#: a real brain's (fanning, bending, small crossings below the voxel).
#: Chosen from those values, not from any detection result.
WM_RADIAL_CALIBRATION = 1.10
#: Diffusivity factors at the core of a white-matter hyperintensity (axial,
#: radial): MD x ~1.4, FA x ~0.75 in typical white matter, as measured in
#: WMH (ADC ratios 1.3-1.6, FA 0.6-0.8 of NAWM; Maniega et al. 2015;
#: Munoz Maniega et al. 2017; Wardlaw et al. 2013). Also used for the
#: gliotic rim of a lacune.
WMH_DIFFUSIVITY = (1.15, 1.8)
#: Relative change of each image at full hyperintensity weight (gliosis,
#: demyelination, more free water): b0 (T2) slightly bright, FLAIR bright,
#: T1w slightly dark (STRIVE definitions, Wardlaw et al. 2013).
HYPERINTENSITY_CONTRAST = dict(b0=0.15, flair=0.7, t1w=-0.15)
#: Regions (MNI mm box) where the focal findings are placed: deep and
#: periventricular white matter for WMH (centrum semiovale, corona radiata,
#: around the ventricles), deep grey/white matter for lacunes (basal ganglia,
#: thalamus, internal capsule, corona radiata).
_WMH_BOX = ((-38.0, 38.0), (-70.0, 35.0), (-5.0, 45.0))
_LACUNE_BOX = ((-32.0, 32.0), (-40.0, 25.0), (-10.0, 30.0))
_WMH_RADIUS_MM = (2.0, 6.0)  # punctate foci to early confluent ones (Fazekas 1-2)
_LACUNE_DIAMETER_MM = (3.0, 12.0)  # STRIVE: round/ovoid cavity 3-15 mm
_RIM_MM = 1.5  # gliotic rim around the cavity
_TRACT_WAVELENGTH_MM = 40.0
_CLIP_SD = 2.5  # normal draws (log scale) are clipped here
_SCALE_CENTRE_Z_MM = _BRAIN_TOP_MM - 42.0
#: Measured on the 2.4 mm template: the lateral ventricles' volume (CSF > 0.5)
#: scales as ``(1 - s)^-k`` with k ~1.0 for expansion (s > 0) and ~1.4 for
#: contraction, so ``s = 1 - f^(-1/k)`` gives the volume factor ``f``.
_VENTRICLE_EXPONENT = (1.0, 1.4)
_LOG_VENT_RANGE = (-0.916, 1.099)  # log 0.4, log 3


def population_on(config: CohortConfig) -> bool:
    """Whether any population effect of ``config`` differs from its L0 (off) value."""
    from dmrilib.simulate.realism import group_active

    return group_active(config, "population")


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ball(points: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Smooth indicator of a ball: 1 inside ``0.6 radius``, 0 beyond ``radius``; float32."""
    r2 = ((points - centre.astype(np.float32)) ** 2).sum(axis=-1)
    return _smoothstep((radius * radius - r2) / np.float32(0.64 * radius * radius)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _candidates(voxel_size: float, kind: str) -> np.ndarray:
    """Template points (MNI mm, 2 mm lattice) where a WMH or a lacune may be centred."""
    box = _WMH_BOX if kind == "wmh" else _LACUNE_BOX
    axes = [np.arange(lo, hi + 1e-6, 2.0) for lo, hi in box]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float32)
    csf, gm, wm = sample_template(load_template(voxel_size), pts)
    ok = (wm > 0.85) if kind == "wmh" else ((gm + wm > 0.95) & (np.abs(pts[:, 0]) > 8))
    return pts[ok]


#: Spacing (mm) of the lattice on which the ventricle warp is tabulated once
#: per process; subjects interpolate it trilinearly. The warp varies over its
#: width (10 mm): at 2 mm the interpolation error is below 0.05 mm, and
#: evaluating ~44 Gaussians at every point of every subject took a third of
#: an L3 subject's time.
_VENTRICLE_LATTICE_MM = 2.0


def _ventricle_sum(points: np.ndarray) -> np.ndarray:
    """``sum_k (p - c_k) exp(-|p - c_k|^2 / (2 w^2)) / G0`` at points (N, 3); float32 (N, 3)."""
    w = _VENTRICLE_WIDTH_MM
    part = np.zeros(points.shape, dtype=np.float32)
    for site in np.asarray(VENTRICLE_SITES, dtype=np.float32):
        diff = points - site
        g = pmath.exp((diff * diff).sum(axis=-1) * np.float32(-0.5 / (w * w)))
        part += diff * g[:, None]
    return part * np.float32(1.0 / _G0)


def _ventricle_box() -> tuple[np.ndarray, np.ndarray]:
    # Beyond 4 w of every site a term is below exp(-8) of its peak: the
    # field is zero there (a step under 0.01 mm), which saves most of the work.
    sites = np.asarray(VENTRICLE_SITES, dtype=np.float32)
    return sites.min(0) - 4 * _VENTRICLE_WIDTH_MM, sites.max(0) + 4 * _VENTRICLE_WIDTH_MM


@functools.lru_cache(maxsize=1)
def _ventricle_lattice() -> np.ndarray:
    """The warp per unit strength on the lattice over :func:`_ventricle_box`; float32 (3, X, Y, Z)."""
    lo, hi = _ventricle_box()
    axes = [np.arange(a, b + _VENTRICLE_LATTICE_MM, _VENTRICLE_LATTICE_MM, dtype=np.float32) for a, b in zip(lo, hi)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return np.moveaxis(_ventricle_sum(pts.reshape(-1, 3)).reshape(pts.shape), -1, 0).copy()


@functools.lru_cache(maxsize=1)
def _ventricle_reach() -> float:
    """Largest displacement (mm) of the ventricle warp per unit strength.

    Trilinear interpolation is a convex combination of lattice values, so the
    largest norm on the lattice bounds it everywhere.
    """
    lattice = _ventricle_lattice()
    return float(np.sqrt((lattice * lattice).sum(axis=0)).max())


def _ventricle_field(points: np.ndarray) -> np.ndarray:
    """The ventricle warp per unit strength at points (N, 3), interpolated from the lattice; float32 (N, 3)."""
    out = np.zeros(points.shape, dtype=np.float32)
    lo, hi = _ventricle_box()
    inside = np.all((points > lo) & (points < hi), axis=-1)
    coords = ((points[inside] - lo) * np.float32(1.0 / _VENTRICLE_LATTICE_MM)).T.astype(np.float64)
    lattice = _ventricle_lattice()
    for axis in range(3):
        out[inside, axis] = ndimage.map_coordinates(lattice[axis], coords, order=1, mode="nearest")
    return out


@dataclass(frozen=True)
class Population:
    """One subject's population effects (see the module docstring).

    Attributes
    ----------
    age : float or None
        Age in years (None: no age effects).
    axial, radial : float
        Whole-brain factors on the axial and radial diffusivities: the
        between-subject spread (``axial_scale_sd``, ``radial_scale_sd``) times
        the age change over :data:`AGE_ONSET` (``age_axial_slope``,
        ``age_radial_slope``).
    tract : SmoothField or None
        Log-factor on both diffusivities over template mm (``tract_scale_sd``,
        wavelength ~40 mm, the size of a tract segment).
    head_scale : float
        Linear scale of the brain (the cube root of its volume factor, ``head_volume_cv``).
    ventricle_strength : float
        ``s = 1 - f^(-1/k)`` for the ventricle volume factor ``f``: the warp
        scales the ventricles' cross-section by ``1 / (1 - s)`` near their
        centre line (``k``: :data:`_VENTRICLE_EXPONENT`).
        (``ventricle_volume_cv`` and :data:`VENTRICLE_AGE_SLOPE`).
    ventricle_factor : float
        ``f``.
    wmh : ndarray (K, 4)
        White-matter hyperintensities: template centre (mm) and radius (mm).
    lacunes : ndarray (L, 4)
        Old lacunar infarcts (0 or 1): template centre and cavity radius (mm).
    radial_calibration : float
        :data:`WM_RADIAL_CALIBRATION` (1 when no diffusivity effect is on).
    """

    age: float | None
    axial: float
    radial: float
    tract: SmoothField | None
    head_scale: float
    ventricle_strength: float
    ventricle_factor: float
    wmh: np.ndarray
    lacunes: np.ndarray
    radial_calibration: float = 1.0

    @property
    def _centre(self) -> np.ndarray:
        # The head scales about a point of the upper brain, so the vertex
        # moves at most ~4 mm (2.5 sd) and stays in a field of view placed just
        # above the template's vertex, as an operator places it per head.
        return np.array([0.0, -17.0, _SCALE_CENTRE_Z_MM], dtype=np.float32)

    def warp(self, points: np.ndarray) -> np.ndarray:
        """Anatomy mm -> the frame the deformation takes to the template; ``(..., 3)`` float32."""
        p = np.asarray(points, dtype=np.float32)
        if self.head_scale != 1.0:
            c = self._centre
            p = (p - c) * np.float32(1.0 / self.head_scale) + c
        if self.ventricle_strength != 0.0:
            flat = p.reshape(-1, 3)
            p = (flat - np.float32(self.ventricle_strength) * _ventricle_field(flat)).reshape(p.shape)
        return p.astype(np.float32)

    def inverse(self, points: np.ndarray, n_iter: int = 12) -> np.ndarray:
        """Inverse of :meth:`warp` (fixed point for the ventricles, which contract)."""
        q = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        x = q.copy()
        if self.ventricle_strength != 0.0:
            for _ in range(n_iter):
                x = q + np.float32(self.ventricle_strength) * _ventricle_field(x)
        if self.head_scale != 1.0:
            c = self._centre
            x = (x - c) * np.float32(self.head_scale) + c
        return x.reshape(np.shape(points)).astype(np.float32)

    @property
    def reach_mm(self) -> float:
        """Largest ``|warp(a) - a|`` over anatomy that can land within 40 mm of the template brain box."""
        vent = abs(self.ventricle_strength) * _ventricle_reach()
        box = np.asarray(BRAIN_BOX_MM) + np.array([-40.0, 40.0])
        corners = np.stack(np.meshgrid(*box, indexing="ij"), axis=-1).reshape(-1, 3)
        radius = float(np.sqrt(((corners - self._centre) ** 2).sum(-1)).max())
        return abs(self.head_scale - 1.0) * (radius + vent) + vent

    def diffusivity(self, template_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Axial and radial factors (float32, per point) at template points ``(N, 3)``."""
        n = template_points.shape[0]
        local = np.ones(n, np.float32) if self.tract is None else pmath.exp(self.tract(template_points)[..., 0])
        return (local * np.float32(self.axial)).astype(np.float32), (local * np.float32(self.radial)).astype(np.float32)

    def lesion_maps(self, maps: np.ndarray, template_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply the lacunes' cavities to tissue fractions; weight of hyperintense (gliotic) tissue.

        Parameters
        ----------
        maps : ndarray (3, N)
            CSF, GM, WM fractions at ``template_points`` (N, 3).

        Returns
        -------
        maps : ndarray (3, N)
            The cavity (CSF-like fluid) replaces tissue.
        hyper : ndarray (N,) float32
            In [0, 1]: WMH (only in the white-matter share of a voxel) and the
            gliotic rim of a lacune.
        """
        csf, gm, wm = maps
        hyper = np.zeros(csf.shape, np.float32)
        share = wm / np.maximum(gm + wm, np.float32(1e-6))
        for x, y, z, r in self.wmh:
            hyper = np.maximum(hyper, _ball(template_points, np.array([x, y, z]), r) * share)
        if len(self.lacunes):
            csf, gm, wm = csf.copy(), gm.copy(), wm.copy()
            for x, y, z, r in self.lacunes:
                centre = np.array([x, y, z])
                cavity = _ball(template_points, centre, r)
                rim = np.clip(_ball(template_points, centre, r + _RIM_MM) - cavity, 0.0, 1.0)
                csf += cavity * (gm + wm)
                gm *= 1.0 - cavity
                wm *= 1.0 - cavity
                hyper = np.maximum(hyper, rim)
        return np.stack([csf, gm, wm]).astype(np.float32), hyper.astype(np.float32)

    def info(self) -> dict:
        """What the subject's ``info`` records about the population effects."""
        return dict(
            age=None if self.age is None else float(self.age),
            axial_diffusivity_factor=float(self.axial),
            radial_diffusivity_factor=float(self.radial),
            head_volume_factor=float(self.head_scale**3),
            ventricle_volume_factor=float(self.ventricle_factor),
            wmh_count=int(len(self.wmh)),
            lacune_count=int(len(self.lacunes)),
            lacune_diameter_mm=[float(2 * r) for r in self.lacunes[:, 3]],
        )


def _log_normal(rng: np.random.Generator, cv: float) -> float:
    """The log of a factor: normal with sd ``cv``, clipped at 2.5 sd.

    The factor's coefficient of variation is ``sqrt(exp(cv^2) - 1)``, within
    5% of ``cv`` up to 0.4 (no log is taken: numpy's is not CPU-portable).
    """
    z = float(np.clip(rng.standard_normal(), -_CLIP_SD, _CLIP_SD))
    return z * cv


def _exp(x: float) -> float:
    return float(pmath.exp(np.float64(x))) if x != 0 else 1.0


def draw_population(config: CohortConfig, rng: np.random.Generator, age: float | None = None) -> Population | None:
    """Draw one subject's population effects; ``None`` when the group is off.

    The draws happen in a fixed order whatever the values (so changing one
    effect's value leaves the others' draws unchanged).

    Parameters
    ----------
    config : CohortConfig
        Its population fields (:data:`dmrilib.simulate.realism.EFFECTS`).
    rng : numpy.random.Generator
        The subject's population stream.
    age : float, optional
        The subject's age (the cohort plan's); drawn uniformly in
        ``config.age_range`` when None and the range is set.
    """
    if not population_on(config):
        return None
    drawn_age = rng.uniform(*config.age_range) if config.age_range is not None else None
    if age is None:
        age = drawn_age
    over = 0.0 if age is None else max(float(age) - AGE_ONSET, 0.0)
    # Subjects with a high axial diffusivity tend to have a high radial one
    # too (a shared whole-brain water/myelin component).
    z_axial, z_radial = _log_normal(rng, 1.0), _log_normal(rng, 1.0)
    z_radial = AXIAL_RADIAL_CORRELATION * z_axial + float(np.sqrt(1.0 - AXIAL_RADIAL_CORRELATION**2)) * z_radial
    axial = _exp(z_axial * config.axial_scale_sd) * (1.0 + config.age_axial_slope * over)
    radial = _exp(z_radial * config.radial_scale_sd) * (1.0 + config.age_radial_slope * over)
    tract_field = smooth_field(rng, n_waves=12, wavelength=_TRACT_WAVELENGTH_MM, std=1.0)
    tract = None
    if config.tract_scale_sd > 0:
        tract = SmoothField(tract_field.freqs, tract_field.phases, tract_field.amps * config.tract_scale_sd)
    head_scale = _exp(_log_normal(rng, config.head_volume_cv) / 3.0)
    log_vent = _log_normal(rng, config.ventricle_volume_cv)
    if age is not None and config.age_range is not None:
        log_vent += VENTRICLE_AGE_SLOPE * (float(age) - AGE_ONSET)
    # Factor 0.4-3 keeps the warp one-to-one (strength in [-0.93, 0.67]).
    log_vent = float(np.clip(log_vent, _LOG_VENT_RANGE[0], _LOG_VENT_RANGE[1]))
    k = _VENTRICLE_EXPONENT[0] if log_vent >= 0 else _VENTRICLE_EXPONENT[1]
    vent = _exp(log_vent)
    strength = 1.0 - _exp(-log_vent / k)
    n_wmh = int(rng.poisson(config.wmh_per_decade * max(0.0 if age is None else float(age) - 40.0, 0.0) / 10.0))
    wmh_pts = _candidates(config.voxel_size, "wmh")
    wmh = np.zeros((n_wmh, 4))
    for k in range(n_wmh):
        wmh[k, :3] = wmh_pts[rng.integers(len(wmh_pts))] + rng.uniform(-1.0, 1.0, 3)
        wmh[k, 3] = rng.uniform(*_WMH_RADIUS_MM)
    has_lacune = rng.uniform() < config.incidental_rate
    lac_pts = _candidates(config.voxel_size, "lacune")
    centre = lac_pts[rng.integers(len(lac_pts))] + rng.uniform(-1.0, 1.0, 3)
    radius = rng.uniform(*_LACUNE_DIAMETER_MM) / 2.0
    lacunes = np.array([[*centre, radius]]) if has_lacune else np.zeros((0, 4))
    diffusive = any(getattr(config, f) for f in ("axial_scale_sd", "radial_scale_sd", "tract_scale_sd",
                                                 "age_radial_slope", "age_axial_slope"))
    return Population(age=None if age is None else float(age), axial=axial, radial=radial, tract=tract,
                      head_scale=head_scale, ventricle_strength=strength, ventricle_factor=vent, wmh=wmh,
                      lacunes=lacunes, radial_calibration=WM_RADIAL_CALIBRATION if diffusive else 1.0)
