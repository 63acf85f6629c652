"""Glioma model: location, size, grade-dependent composition, mass effect, growth.

A tumour is a star-shaped region around a centre ``c`` (subject anatomy mm)
whose radius varies smoothly with direction. In normalised radius
``rho = |x - c| / r(direction)`` it is layered, by grade:

========= ============== ============== ============================
grade     necrosis       enhancing rim  visible edema / tumour
========= ============== ============== ============================
IV        rho < 0.35     rho < 0.55     rho < 0.85 + 0.3 * WM share
III       none           rho < 0.3 (half of the patients)  as IV
II        none           none           as IV (non-enhancing tumour)
========= ============== ============== ============================

Edema reaches further in white matter than in grey matter (it spreads along
fibres). Beyond the visible border lies the infiltration zone: tumour cells
at low density, invisible on FLAIR, with a raised free-water fraction and
radial diffusivity that fade with distance. Its width and strength depend on
grade. The solid part of the tumour pushes the surrounding tissue outwards
(volume-preserving radial displacement), so anatomy is displaced rather than
painted over. At follow-up part of the infiltration zone has become visible
tumour; how much depends on grade (WHO II grows slowly).

With the tumour realism group on (:mod:`dmrilib.simulate.tumour_realism`
draws it), a :class:`Tumour` also carries a :class:`TumourRealism`:
per-patient compartment values, a texture, a haemorrhage, a cyst, a second
focus, and the treated follow-up (resection cavity, gliosis rim, radiation
change, remote recurrence). :func:`tumour_layers` then fills
:attr:`TumourLayers.realism` with one channel per effect
(:data:`REALISM_CHANNELS`); without it that array has no channels, and every
other array is what it was.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from dmrilib.simulate import _portable as pmath
from dmrilib.simulate.variability import SmoothField, smooth_field

__all__ = ["GRADE_PARAMS", "SIZE_RADII_MM", "Tumour", "random_tumour", "tumour_layers", "TumourLayers",
           "TumourRealism", "Blob", "REALISM_CHANNELS"]

#: Visible radius (mm) by size class.
SIZE_RADII_MM = {"large": 24.0, "medium": 16.0, "small": 10.0}

#: Grade -> parameters of the composition (see module docstring).
GRADE_PARAMS: dict[str, dict[str, float]] = {
    "IV": dict(necrosis=0.35, enhancing=0.55, enhancing_prob=1.0, mass=0.5, edema_fw=0.35,
               edema_perp=0.7, infiltration_mm=12.0, infiltration_strength=1.0, growth=0.75),
    "III": dict(necrosis=0.0, enhancing=0.3, enhancing_prob=0.5, mass=0.4, edema_fw=0.28,
                edema_perp=0.55, infiltration_mm=14.0, infiltration_strength=0.8, growth=0.45),
    "II": dict(necrosis=0.0, enhancing=0.0, enhancing_prob=0.0, mass=0.3, edema_fw=0.18,
               edema_perp=0.4, infiltration_mm=16.0, infiltration_strength=0.6, growth=0.2),
}


#: Channels of :attr:`TumourLayers.realism` (tumour realism only): the factor on
#: the compartment values (texture, and the second focus's own values), the
#: haemorrhage and cyst volume fractions, and the follow-up's resection cavity,
#: gliosis rim, radiation change and remote recurrence weights.
REALISM_CHANNELS = ("value", "haemorrhage", "cyst", "cavity", "gliosis", "radiation", "recurrence")


@dataclass(frozen=True)
class Blob:
    """A soft ball: centre (head mm) and radius (mm)."""

    centre: np.ndarray
    radius: float

    def weight(self, points: np.ndarray, voxel_size: float) -> np.ndarray:
        """Fraction of a voxel of width ``voxel_size`` at ``points`` (..., 3) inside the ball."""
        dist = np.sqrt(((points - self.centre.astype(np.float32)) ** 2).sum(axis=-1))
        return _ramp(self.radius - dist, voxel_size)

    def inside(self, points: np.ndarray) -> np.ndarray:
        return ((points - self.centre.astype(np.float32)) ** 2).sum(axis=-1) < self.radius**2


@dataclass(frozen=True)
class TumourRealism:
    """What the tumour realism group adds to a glioma (see :mod:`dmrilib.simulate.tumour_realism`).

    Attributes
    ----------
    values : dict
        Per-patient compartment values: ``edema_fw``, ``edema_perp``,
        ``edema_par`` (free-water fraction and radial/axial factors of the
        visible edema or non-enhancing tumour at full weight),
        ``infiltration_factor``, ``cellular_factor`` (on the cellular
        diffusivities) and ``necrosis_d`` (mm^2/s).
    texture : SmoothField or None
        Log-factor on the compartment values inside the tumour.
    focus : Tumour or None
        A second focus (no mass effect of its own), with ``focus_factor`` on
        its compartment values.
    haemorrhage, cyst, recurrence : Blob or None
        A haemorrhage and a cyst inside the tumour, a remote recurrence
        (follow-up only) outside the infiltration zone.
    cavity_rho : float or None
        Treated follow-up: resection cavity in normalised radius
        (``rho < cavity_rho``); None for an untreated follow-up.
    gliosis_mm : float
        Width of the gliosis rim around the cavity.
    radiation_mm, radiation_gain : float
        Reach beyond the visible border of the radiation change and its
        relative FLAIR increase in white matter.
    info : dict
        What was drawn, for the subject's ``info``.
    """

    values: dict
    texture: SmoothField | None = None
    focus: "Tumour | None" = None
    focus_factor: float = 1.0
    haemorrhage: Blob | None = None
    cyst: Blob | None = None
    recurrence: Blob | None = None
    cavity_rho: float | None = None
    gliosis_mm: float = 3.0
    radiation_mm: float = 20.0
    radiation_gain: float = 0.0
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Tumour:
    """One glioma in subject-anatomy millimetres (``realism``: the tumour realism group's additions)."""

    grade: str
    size_class: str
    centre: np.ndarray
    radius: float
    enhancing: float
    shape: SmoothField
    growth_shape: SmoothField
    params: dict = field(default_factory=dict)
    realism: TumourRealism | None = None

    @property
    def mass_radius(self) -> float:
        """Radius (mm) of the tissue volume displaced by the solid tumour."""
        return self.params["mass"] * self.radius

    def displace(self, points: np.ndarray) -> np.ndarray:
        """Map displaced (with-tumour) positions back to pre-tumour anatomy.

        Tissue at distance ``s`` from the centre moves to ``r`` with
        ``r^3 = s^3 + R^3 t(r)``: the displaced volume ``R^3`` fades with
        distance (``t``), so the map is monotonic in ``r`` and invertible.
        """
        d = points - self.centre.astype(np.float32)
        r = np.linalg.norm(d, axis=-1, keepdims=True)
        rm = self.mass_radius
        taper = pmath.exp(-((r / (3.5 * rm)) ** 2))
        s = pmath.cbrt(np.maximum(r * r * r - rm * rm * rm * taper, 0.0))
        return self.centre.astype(np.float32) + d * (s / np.maximum(r, 1e-6))


def random_tumour(rng: np.random.Generator, grade: str, size_class: str, centre: np.ndarray) -> Tumour:
    """Draw the shape and composition of a glioma at ``centre`` (mm)."""
    if grade not in GRADE_PARAMS:
        raise ValueError(f"grade must be one of {sorted(GRADE_PARAMS)}, got {grade!r}")
    if size_class not in SIZE_RADII_MM:
        raise ValueError(f"size_class must be one of {sorted(SIZE_RADII_MM)}, got {size_class!r}")
    params = dict(GRADE_PARAMS[grade])
    radius = SIZE_RADII_MM[size_class] * rng.uniform(0.85, 1.15)
    enhancing = params["enhancing"] if rng.uniform() < params["enhancing_prob"] else 0.0
    shape = smooth_field(rng, n_waves=8, wavelength=2 * np.pi / 2.5, std=0.18)
    growth = smooth_field(rng, n_waves=8, wavelength=2 * np.pi / 3.0, std=0.5)
    return Tumour(grade, size_class, np.asarray(centre, dtype=float), float(radius), float(enhancing),
                  shape, growth, params)


@dataclass(frozen=True)
class TumourLayers:
    """Soft weights and hard labels of the tumour compartments at some points."""

    necrosis: np.ndarray  # soft weights in [0, 1]
    enhancing: np.ndarray
    edema: np.ndarray
    infiltration: np.ndarray  # infiltration intensity q in [0, strength]
    labels: np.ndarray  # uint8: 0 none, 1 necrosis, 2 enhancing, 3 edema, 4 infiltration
    followup: np.ndarray  # bool: visible at follow-up
    grown: np.ndarray  # soft weight of the infiltration that is visible at follow-up
    realism: np.ndarray  # (..., C) float32, REALISM_CHANNELS (C = 0 without tumour realism)


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    return np.clip(0.5 + x / width, 0.0, 1.0)


def tumour_layers(tumour: Tumour, points: np.ndarray, wm_share: np.ndarray, parenchyma: np.ndarray,
                  voxel_size: float) -> TumourLayers:
    """Compartment weights of ``tumour`` at displaced-anatomy points (..., 3) mm.

    Parameters
    ----------
    wm_share : ndarray
        WM / (WM + GM) at the points (edema spreads further in WM).
    parenchyma : ndarray
        Fraction of brain tissue (GM + WM) at the points; tumour lives there.
    voxel_size : float
        Width (mm) of the soft edges, so coarse voxels get partial volume.
    """
    d = points - tumour.centre.astype(np.float32)
    dist = np.linalg.norm(d, axis=-1)
    unit = d / np.maximum(dist, 1e-6)[..., None]
    r_dir = tumour.radius * pmath.exp(tumour.shape(unit)[..., 0])
    rho = dist / r_dir
    p = tumour.params
    edge = voxel_size / np.maximum(r_dir, 1e-6)
    visible_rho = 0.85 + 0.3 * np.clip(wm_share, 0, 1)
    tissue = np.clip(parenchyma * 1.5, 0, 1)
    nec = _ramp(p["necrosis"] - rho, edge) * (p["necrosis"] > 0) * tissue
    enh = _ramp(tumour.enhancing - rho, edge) * (tumour.enhancing > 0) * tissue
    enh = np.clip(enh - nec, 0, 1)
    vis = _ramp(visible_rho - rho, edge) * tissue
    edema = np.clip(vis - nec - enh, 0, 1)
    out_mm = (rho - visible_rho) * r_dir
    q = p["infiltration_strength"] * np.clip(1.0 - out_mm / p["infiltration_mm"], 0, 1) * (out_mm > -voxel_size / 2)
    q = q * tissue * (1 - vis)

    brain = parenchyma > 0.5
    labels = np.zeros(points.shape[:-1], dtype=np.uint8)
    labels[brain & (out_mm < p["infiltration_mm"])] = 4
    labels[brain & (rho < visible_rho)] = 3
    if tumour.enhancing > 0:
        labels[brain & (rho < tumour.enhancing)] = 2
    if p["necrosis"] > 0:
        labels[brain & (rho < p["necrosis"])] = 1
    grown_mm = p["infiltration_mm"] * p["growth"] * pmath.exp(tumour.growth_shape(unit)[..., 0])
    followup = ((labels > 0) & (labels < 4)) | ((labels == 4) & (out_mm < grown_mm))
    grown = np.clip(0.5 + (grown_mm - out_mm) / voxel_size, 0, 1) * tissue * (1 - vis)
    layers = TumourLayers(nec.astype(np.float32), enh.astype(np.float32), edema.astype(np.float32),
                          q.astype(np.float32), labels, followup, grown.astype(np.float32),
                          np.zeros(points.shape[:-1] + (0,), dtype=np.float32))
    if tumour.realism is None:
        return layers
    return _realistic_layers(tumour, layers, points, wm_share, parenchyma, voxel_size,
                             dict(dist=dist, r_dir=r_dir, rho=rho, vis=vis, out_mm=out_mm, tissue=tissue))


def _merge_focus(first: TumourLayers, focus: Tumour, points, wm_share, parenchyma, voxel_size):
    """Layers of ``first`` and a second focus together, and the second focus's share of each voxel."""
    n = first.labels.shape
    reach = focus.radius * 1.8 + focus.params["infiltration_mm"] + 2 * voxel_size
    roi = ((points - focus.centre.astype(np.float32)) ** 2).sum(axis=-1) < reach**2
    share = np.zeros(n, np.float32)
    if not roi.any():
        return first, share
    plain = Tumour(focus.grade, focus.size_class, focus.centre, focus.radius, focus.enhancing, focus.shape,
                   focus.growth_shape, focus.params)
    sec = tumour_layers(plain, points[roi], wm_share[roi], parenchyma[roi], voxel_size)
    out = {f: getattr(first, f).copy() for f in ("necrosis", "enhancing", "edema", "infiltration", "labels",
                                                 "followup", "grown")}
    a_vis = first.necrosis[roi] + first.enhancing[roi] + first.edema[roi]
    b_vis = sec.necrosis + sec.enhancing + sec.edema
    nec = np.maximum(first.necrosis[roi], sec.necrosis)
    enh = np.minimum(np.maximum(first.enhancing[roi], sec.enhancing), 1 - nec)
    vis = np.maximum(a_vis, b_vis)
    out["necrosis"][roi], out["enhancing"][roi] = nec, enh
    out["edema"][roi] = np.clip(vis - nec - enh, 0, 1)
    out["infiltration"][roi] = np.maximum(first.infiltration[roi] * (1 - b_vis), sec.infiltration * (1 - a_vis))
    out["grown"][roi] = np.maximum(first.grown[roi] * (1 - b_vis), sec.grown * (1 - a_vis))
    la, lb = first.labels[roi], sec.labels
    out["labels"][roi] = np.where(la == 0, lb, np.where(lb == 0, la, np.minimum(la, lb)))
    out["followup"][roi] = first.followup[roi] | sec.followup
    a_all = a_vis + first.infiltration[roi]
    b_all = b_vis + sec.infiltration
    share[roi] = b_all / np.maximum(a_all + b_all, 1e-6)
    return TumourLayers(**out, realism=first.realism), share


def _realistic_layers(tumour: Tumour, layers: TumourLayers, points, wm_share, parenchyma, voxel_size,
                      geo: dict) -> TumourLayers:
    """:func:`tumour_layers` with the tumour realism effects (:class:`TumourRealism`)."""
    real = tumour.realism
    n = layers.labels.shape
    if real.focus is not None:
        layers, share = _merge_focus(layers, real.focus, points, wm_share, parenchyma, voxel_size)
    channels = np.zeros(n + (len(REALISM_CHANNELS),), dtype=np.float32)
    value = np.ones(n, np.float32)
    lesional = (layers.labels > 0) | (layers.infiltration > 0)
    if real.texture is not None and lesional.any():
        value[lesional] = pmath.exp(real.texture(points[lesional])[..., 0])
    if real.focus is not None:
        value *= 1 + (real.focus_factor - 1) * share
    channels[..., 0] = value
    vis = layers.necrosis + layers.enhancing + layers.edema
    if real.haemorrhage is not None:
        channels[..., 1] = real.haemorrhage.weight(points, voxel_size) * vis
    if real.cyst is not None:
        channels[..., 2] = real.cyst.weight(points, voxel_size) * layers.edema
    followup = layers.followup
    tissue = geo["tissue"]
    if real.cavity_rho is not None:
        r_cav = real.cavity_rho * geo["r_dir"]
        cavity = _ramp(r_cav - geo["dist"], voxel_size) * tissue
        rim = _ramp(r_cav + real.gliosis_mm - geo["dist"], voxel_size) * tissue - cavity
        out_mm = geo["out_mm"]
        radiation = _ramp(real.radiation_mm - out_mm, 10.0) * (1 - geo["vis"]) * tissue
        channels[..., 3], channels[..., 4], channels[..., 5] = cavity, np.clip(rim, 0, 1), radiation
        treated = geo["dist"] < r_cav + real.gliosis_mm
        followup = followup & ~treated
    if real.recurrence is not None:
        channels[..., 6] = real.recurrence.weight(points, voxel_size) * tissue
        followup = followup | (real.recurrence.inside(points) & (parenchyma > 0.5))
    return dataclasses.replace(layers, followup=followup, realism=channels)
