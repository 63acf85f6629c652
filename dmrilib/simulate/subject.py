"""One simulated subject: anatomy, variability, tumour, diffusion and structural images.

Coordinates flow backwards from the scanner to the template, so every image
of the subject (any grid) is sampled consistently:

0. diffusion only: a DWI voxel at scanner mm ``x`` images the tissue at
   ``x + d(x) e_y`` (susceptibility distortion along the phase-encode axis);
1. scanner mm -> head mm (inverse of the session's head pose: the diffusion
   scan's, or for T1w/FLAIR that pose moved by the between-session motion);
2. head mm -> pre-tumour anatomy (inverse of the tumour's mass effect);
3. anatomy mm -> template MNI mm (random smooth diffeomorphism).

Tissue probabilities are sampled trilinearly at the template points, fibre
directions by nearest neighbour and then rotated by the inverse Jacobian of
the chain from the undistorted scanner position (so they follow the
deformation and the head pose; the distortion moves the signal, not the
fibres). Every diffusion-grid label is sampled through the same chain as the
DWI, so labels and DWI agree voxel for voxel; :class:`DwiToStructural` is the
known ground truth that a DWI-to-T1w registration has to recover.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from threadpoolctl import threadpool_limits

from dmrilib.simulate import _portable as pmath
from dmrilib.simulate import acquisition
from dmrilib.simulate import tumour_realism
from dmrilib.simulate.anatomy import Template, grid_affine, grid_coordinates, load_template, sample_template
from dmrilib.simulate.config import BRAIN_BOX_MM, POSE_CLIP_SD, CohortConfig
from dmrilib.simulate.fibres import fibre_field
from dmrilib.simulate.population import HYPERINTENSITY_CONTRAST, WMH_DIFFUSIVITY, Population, draw_population
from dmrilib.simulate.lesion import GRADE_PARAMS, SIZE_RADII_MM, Tumour, TumourLayers, random_tumour, tumour_layers
from dmrilib.simulate.signal import D_FREE, GradientScheme, rician_volume, small64d_scheme
from dmrilib.simulate.variability import (
    Deformation,
    HeadPose,
    SmoothField,
    random_deformation,
    random_head_pose,
    smooth_field,
)

__all__ = ["SimulatedSubject", "simulate_subject", "structural_lesion_of", "TISSUE_PARAMS", "EpiDistortion",
           "DwiToStructural"]

#: Compartment parameters: diffusivities (mm^2/s) and relative b0 / T1w / FLAIR intensities.
TISSUE_PARAMS = {
    "wm_par": (1.35e-3, 0.40e-3),  # axial diffusivity: background + coherence * extra
    "wm_perp": (0.47e-3, -0.17e-3),
    "gm": (0.92e-3, 0.74e-3),
    "necrosis": 2.4e-3,
    "cellular": (1.25e-3, 1.0e-3),
    "s0": dict(csf=2.0, gm=1.1, wm=0.85, necrosis=1.7, cellular=1.25),
    "t1w": dict(csf=0.25, gm=0.6, wm=0.9, necrosis=0.3, cellular=0.55, fluid=0.25),
    "flair": dict(csf=0.08, gm=0.75, wm=0.6, necrosis=0.3, cellular=0.95, fluid=1.4),
}
_B0_WM = 1000.0  # b0 intensity of pure white matter before the bias field
#: Where susceptibility distortion is strongest (head mm, about MNI): the
#: orbitofrontal cortex above the frontal sinus and both anterior temporal
#: lobes above the ear canals; (x, y, z, width mm, relative strength).
_EPI_SITES = ((0.0, 38.0, -18.0, 18.0, 1.0), (-44.0, 4.0, -28.0, 16.0, 0.6), (44.0, 4.0, -28.0, 16.0, 0.6))
#: Bound on |grad d| (so on d d / d y): x -> x + d(x) e_y stays one-to-one.
#: The bound is loose (measured slopes stay below half of it); it only lowers
#: peaks above about 6 mm.
_MAX_DISTORTION_SLOPE = 0.9


@dataclass(frozen=True)
class EpiDistortion:
    """Susceptibility displacement (mm) along the phase-encode axis y, in head mm.

    ``d(h) = sum_k a_k exp(-|h - c_k|^2 / (2 w_k^2)) + f(h)``: Gaussian bumps
    at the air-tissue interfaces plus a weak smooth background ``f``. Being a
    function of head coordinates, it moves with the head, as the sinuses do.
    """

    centres: np.ndarray  # (K, 3) head mm
    widths: np.ndarray  # (K,) mm
    amps: np.ndarray  # (K,) mm, signed (the sign is the phase-encode polarity)
    background: SmoothField

    def __call__(self, head: np.ndarray) -> np.ndarray:
        """Displacement (mm) at head points ``(..., 3)``; returns ``(...)`` float32."""
        flat = head.reshape(-1, 3).astype(np.float32)
        out = self.background(flat)[:, 0]
        for c, w, a in zip(self.centres.astype(np.float32), self.widths, self.amps):
            r2 = ((flat - c) ** 2).sum(axis=1)
            out += np.float32(a) * pmath.exp(r2 * np.float32(-0.5 / w**2))
        return out.reshape(head.shape[:-1])

    def gradient(self, head: np.ndarray) -> np.ndarray:
        """Gradient (mm/mm) with respect to head mm at ``(..., 3)``; returns ``(..., 3)`` float32."""
        flat = head.reshape(-1, 3).astype(np.float32)
        bg = self.background
        out = -bg.wave_sum(flat, pmath.sin, bg.freqs, scale=bg.amps[:, 0])
        for c, w, a in zip(self.centres.astype(np.float32), self.widths, self.amps):
            diff = flat - c
            bump = np.float32(a) * pmath.exp((diff**2).sum(axis=1) * np.float32(-0.5 / w**2))
            out -= (bump * np.float32(1.0 / w**2))[:, None] * diff
        return out.reshape(head.shape)

    @property
    def lipschitz(self) -> float:
        """Upper bound of ``|grad d|`` (a Gaussian bump's slope peaks at ``|a| / w * e^-1/2``)."""
        bumps = float((np.abs(self.amps) / self.widths).sum() * pmath.exp(-0.5))
        return bumps + self.background.lipschitz

    def scaled(self, factor: float) -> "EpiDistortion":
        bg = self.background
        return EpiDistortion(self.centres, self.widths, self.amps * factor,
                             SmoothField(bg.freqs, bg.phases, bg.amps * factor))


@functools.lru_cache(maxsize=4)
def _brain_points(voxel_size: float) -> np.ndarray:
    """Template brain on a 4 mm lattice (MNI mm), where the distortion peak is measured."""
    axes = [np.arange(lo, hi + 1e-6, 4.0) for lo, hi in BRAIN_BOX_MM]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float32)
    return pts[sample_template(load_template(voxel_size), pts).sum(0) > 0.5]


def _random_distortion(rng: np.random.Generator, peak_mm: float, voxel_size: float) -> EpiDistortion | None:
    """A distortion field whose largest ``|d|`` over the template brain is ``peak_mm``."""
    if peak_mm == 0:
        return None
    sites = np.asarray(_EPI_SITES)
    centres = sites[:, :3] + rng.normal(0.0, 4.0, size=(len(sites), 3))
    widths = sites[:, 3] * rng.uniform(0.85, 1.15, size=len(sites))
    # Phase-encode polarity (A>P or P>A) flips the whole field.
    sign = 1.0 if rng.uniform() < 0.5 else -1.0
    amps = sign * sites[:, 4] * rng.uniform(0.7, 1.0, size=len(sites))
    background = smooth_field(rng, n_waves=8, wavelength=120.0, std=0.12)
    raw = EpiDistortion(centres, widths, amps, SmoothField(background.freqs, background.phases,
                                                           sign * background.amps))
    factor = peak_mm / float(np.abs(raw(_brain_points(voxel_size))).max())
    return raw.scaled(min(factor, _MAX_DISTORTION_SLOPE / raw.lipschitz))


@dataclass(frozen=True)
class DwiToStructural:
    """The true map from diffusion-scanner mm to structural-scanner mm.

    A DWI voxel at scanner mm ``x`` shows the tissue that an undistorted scan
    would place at ``u = x + d(x) e_y``; the diffusion head pose takes ``u``
    to head mm, and the structural head pose takes those to the structural
    scanner's mm. Call it on points ``(..., 3)``.

    Attributes
    ----------
    dwi_pose, structural_pose : HeadPose
        Head position of the diffusion and the structural session.
    distortion : EpiDistortion or None
        Phase-encode displacement in head mm (None: undistorted DWI).
    motion_deg, motion_mm : ndarray (3,)
        Between-session movement: rotation about x, y, z (degrees; applied
        as ``Rz @ Ry @ Rx``) about ``dwi_pose.centre`` and translation (mm).
    """

    dwi_pose: HeadPose
    structural_pose: HeadPose
    distortion: EpiDistortion | None
    motion_deg: np.ndarray
    motion_mm: np.ndarray

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """``d(x)`` (mm along y) at diffusion-scanner points ``(..., 3)``; float32 ``(...)``."""
        if self.distortion is None:
            return np.zeros(points.shape[:-1], dtype=np.float32)
        return self.distortion(self.dwi_pose.to_head(points))

    def displacement_gradient(self, points: np.ndarray) -> np.ndarray:
        """Gradient of ``d`` with respect to diffusion-scanner mm; float32 ``(..., 3)``."""
        if self.distortion is None:
            return np.zeros(points.shape, dtype=np.float32)
        # h = R^T (x - c - t) + c, so grad_x d = R grad_h d (row vectors: g_h R^T).
        g = self.distortion.gradient(self.dwi_pose.to_head(points))
        return pmath.matmul(g, self.dwi_pose.rotation.T.astype(np.float32))

    def undistort(self, points: np.ndarray) -> np.ndarray:
        """Where the tissue imaged at ``points`` sits in the undistorted diffusion scanner frame."""
        points = np.asarray(points, dtype=np.float32)
        if self.distortion is None:
            return points
        out = points.copy()
        out[..., 1] += self.displacement(points)
        return out

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Structural-scanner mm of the anatomy imaged at diffusion-scanner mm ``points``."""
        return self.structural_pose.to_scanner(self.dwi_pose.to_head(self.undistort(points)))

    @property
    def rigid(self) -> np.ndarray:
        """4x4 rigid map from undistorted diffusion-scanner mm to structural-scanner mm."""
        rot = pmath.rotation_xyz(np.deg2rad(self.motion_deg))
        out = np.eye(4)
        out[:3, :3] = rot
        out[:3, 3] = self.dwi_pose.centre + self.motion_mm - pmath.matmul(rot, self.dwi_pose.centre)
        return out


def _session_motion(rng: np.random.Generator, pose: HeadPose, sd_deg: float, sd_mm: float):
    """Head pose of the structural session: ``pose`` moved rigidly about its centre.

    Returns the moved pose, the rotation angles (degrees) and the translation (mm).
    """
    angles = np.clip(rng.standard_normal(3), -POSE_CLIP_SD, POSE_CLIP_SD) * sd_deg
    shift = np.clip(rng.standard_normal(3), -POSE_CLIP_SD, POSE_CLIP_SD) * sd_mm
    if sd_deg == 0 and sd_mm == 0:
        return pose, np.zeros(3), np.zeros(3)
    rot = pmath.rotation_xyz(np.deg2rad(angles))
    # M(y) = R (y - c) + c + t after the pose y = R_d (h - c) + c + t_d is
    # again a pose about c: rotation R R_d, translation R t_d + t.
    moved = HeadPose(pmath.matmul(rot, pose.rotation), pmath.matmul(rot, pose.translation) + shift, pose.centre)
    return moved, angles, shift


@dataclass
class SimulatedSubject:
    """Arrays of one simulated subject (diffusion grid unless stated).

    ``dwi`` is float32 ``(X, Y, Z, N)`` with Rician noise; ``tissue`` holds
    the CSF, GM and WM volume fractions ``(3, X, Y, Z)`` (before the lesion
    replaces tissue); ``snr`` is b0 of pure white matter over the noise
    ``sigma``. Label maps are bool/uint8 ``(X, Y, Z)`` and, like ``tissue``,
    are sampled through the DWI's distortion and head pose, so they match the
    DWI voxel for voxel. ``t1w``, ``flair``, ``flair_followup`` and the
    ``structural_*`` labels live on the structural grid
    (``structural_affine``), imaged with the structural session's head pose
    and no distortion: ``structural_lesion`` (visible tumour, dseg 1-3),
    ``structural_tumour_dseg`` (0 none, 1 necrosis, 2 enhancing, 3 edema,
    4 infiltration) and ``structural_brain_mask``; they are ``None`` when the
    structural images were not rendered. ``dwi_to_structural`` is float32
    ``(X, Y, Z, 3)``: for each DWI voxel centre, the structural-scanner mm of
    the anatomy it shows; ``transform`` maps any diffusion-scanner mm points
    the same way. Patient-only maps are all-zero for healthy subjects;
    ``flair_followup`` is ``None`` without a follow-up.
    """

    dwi: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    affine: np.ndarray
    brain_mask: np.ndarray
    dseg: np.ndarray
    wmgm_mask: np.ndarray
    lesion: np.ndarray
    infiltration: np.ndarray
    tumour_dseg: np.ndarray
    followup_lesion: np.ndarray
    t1w: np.ndarray | None
    flair: np.ndarray | None
    flair_followup: np.ndarray | None
    structural_affine: np.ndarray
    structural_lesion: np.ndarray | None
    structural_tumour_dseg: np.ndarray | None
    structural_brain_mask: np.ndarray | None
    dwi_to_structural: np.ndarray
    transform: DwiToStructural
    tissue: np.ndarray
    snr: float
    sigma: float
    info: dict = field(default_factory=dict)


def structural_lesion_of(subject) -> np.ndarray:
    """The visible lesion of a :class:`SimulatedSubject` on its structural grid."""
    lesion = getattr(subject, "structural_lesion", None)
    if lesion is not None:
        return np.asarray(lesion, bool)
    if subject.t1w is not None and subject.t1w.shape == subject.lesion.shape:
        # No separate structural grid: structural and diffusion grids coincide.
        return np.asarray(subject.lesion, bool)
    raise ValueError("simulated subject has no structural_lesion and its structural grid differs from the "
                     "diffusion grid; update dmrilib.simulate.")


@dataclass(frozen=True)
class _Geometry:
    """What a subject looks like, independent of the grid it is imaged on."""

    pose: HeadPose
    deformation: Deformation
    tumour: Tumour | None
    diffusivity_scale: float
    regional: SmoothField
    bias: SmoothField
    population: Population | None = None

    @functools.cached_property
    def deformation_reach_mm(self) -> float:
        """Largest displacement of the deformation where it can carry a point onto template tissue."""
        field_ = self.deformation.field
        # The closed-form bound holds everywhere but is loose; within that
        # bound of the template's tissue (the brain box plus the smoothing of
        # the coarsest template) the maximum over a 6 mm lattice, plus the
        # most the field can change within half a lattice diagonal, is tight.
        loose = float(np.linalg.norm(field_.amps, axis=1).sum())
        step, reach = 6.0, loose + 16.0
        axes = [np.arange(lo - reach, hi + reach + step, step) for lo, hi in BRAIN_BOX_MM]
        lattice = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        tight = float(np.linalg.norm(field_(lattice), axis=-1).max()) + field_.lipschitz * step * np.sqrt(3.0) / 2
        return min(loose, tight)


_CENTRE_STEP = 4.0  # mm between candidate tumour centres
#: Random streams of the realism groups (children of the subject seed).
STREAM_POPULATION, STREAM_ACQUISITION, STREAM_TUMOUR, STREAM_SCANNER = 7, 8, 9, 10


@functools.lru_cache(maxsize=16)
def _centre_candidates(voxel_size: float, size_class: str) -> np.ndarray:
    """Template points (MNI mm) in WM/GM of either hemisphere, away from the brain edge."""
    template = load_template(voxel_size)
    step = _CENTRE_STEP
    axes = [np.arange(-60, 61, step), np.arange(-90, 60, step), np.arange(-20, 66, step)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float32)
    csf, gm, wm = sample_template(template, pts)
    ok = (wm + gm > 0.9) & (np.abs(pts[:, 0]) > 12)
    # Keep the solid tumour inside the brain: require tissue a radius away.
    margin = 0.8 * SIZE_RADII_MM[size_class]
    for off in np.eye(3, dtype=np.float32):
        for sgn in (-1.0, 1.0):
            c2, g2, w2 = sample_template(template, pts + sgn * margin * off)
            ok &= (g2 + w2 + c2) > 0.9
    return pts[ok]


def _choose_centre(rng: np.random.Generator, voxel_size: float, deformation: Deformation,
                   size_class: str) -> np.ndarray:
    """A tumour centre in WM/GM of either hemisphere, away from the brain edge."""
    candidates = _centre_candidates(voxel_size, size_class)
    half = _CENTRE_STEP / 2
    centre_template = candidates[rng.integers(len(candidates))] + rng.uniform(-half, half, 3)
    return deformation.inverse(centre_template[None].astype(np.float32))[0].astype(float)


def _geometry(config: CohortConfig, rng: np.random.Generator, grade: str | None, size_class: str | None,
              population: Population | None = None) -> _Geometry:
    pose = random_head_pose(rng)
    deformation = random_deformation(rng, amplitude=config.deformation_mm)
    scale = float(np.clip(rng.normal(1.0, 0.04), 0.9, 1.1))
    regional = smooth_field(rng, n_waves=12, wavelength=70.0, std=0.04)
    bias = smooth_field(rng, n_waves=8, wavelength=250.0, std=0.08)
    tumour = None
    if grade is not None:
        centre = _choose_centre(rng, config.voxel_size, deformation, size_class)
        if population is not None:  # the anatomy is scaled/warped before the deformation
            centre = population.inverse(centre[None])[0].astype(float)
        tumour = random_tumour(rng, grade, size_class, centre)
    return _Geometry(pose, deformation, tumour, scale, regional, bias, population)


@dataclass
class _Sampled:
    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    template_points: np.ndarray | None
    head_points: np.ndarray | None
    layers: TumourLayers | None
    bias: np.ndarray
    hyper: np.ndarray | None = None  # population: WMH / gliotic weight in [0, 1]


_CELL = 4  # template voxels per side of a cell of the coarse support map
_PAD_CELLS = 12  # cells of air added around the template box


@functools.lru_cache(maxsize=4)
def _support_distance(voxel_size: float) -> np.ndarray:
    """Distance (template voxels) from each coarse cell to the nearest cell holding tissue.

    The map reaches ``_PAD_CELLS`` cells beyond the template box on every side.
    """
    support = load_template(voxel_size).maps.sum(0) > 0
    pad = [(_PAD_CELLS * _CELL, (-n) % _CELL + _PAD_CELLS * _CELL) for n in support.shape]
    support = np.pad(support, pad)
    cells = tuple(n // _CELL for n in support.shape)
    occupied = support.reshape(cells[0], _CELL, cells[1], _CELL, cells[2], _CELL).any(axis=(1, 3, 5))
    return (ndimage.distance_transform_edt(~occupied) * _CELL).astype(np.float32)


def _near_template(template: Template, voxel_size: float, points: np.ndarray, reach_mm: float) -> np.ndarray:
    """Points (..., 3) MNI mm that may lie within ``reach_mm`` of template tissue (conservative)."""
    mm = float(pmath.cbrt(np.abs(pmath.det3(template.affine[:3, :3]))))
    # Two points in cells whose centres are D apart are at least D minus a
    # cell diagonal apart.
    limit = reach_mm / mm + _CELL * np.sqrt(3.0)
    if limit >= _PAD_CELLS * _CELL:  # beyond the map: keep everything
        return np.ones(points.shape[:-1], dtype=bool)
    within = _support_distance(voxel_size) <= limit
    inv = pmath.inv_affine(template.affine)
    # cell index = floor(voxel / _CELL) + padding, folded into one affine map
    to_cell = (inv[:3, :3] / _CELL).T.astype(np.float32)
    flat = pmath.matmul(points.reshape(-1, 3), to_cell)
    flat += (inv[:3, 3] / _CELL + _PAD_CELLS).astype(np.float32)
    np.floor(flat, out=flat)
    # Cells beyond the map are farther than its border cells, which are not within.
    idx = np.clip(flat, 0, np.array(within.shape, dtype=np.float32) - 1).astype(np.intp)
    flat_index = (idx[:, 0] * within.shape[1] + idx[:, 1]) * within.shape[2] + idx[:, 2]
    return within.reshape(-1)[flat_index].reshape(points.shape[:-1])


def _scatter(values: np.ndarray, near: np.ndarray, fill=0) -> np.ndarray:
    out = np.full(near.shape + values.shape[1:], fill, dtype=values.dtype)
    out[near] = values
    return out


def _sample(geometry: _Geometry, pose: HeadPose, scanner: np.ndarray, voxel_size: float, *,
            neighbours: bool = False, candidates: np.ndarray | None = None) -> _Sampled:
    """Tissue of a grid's voxels under head ``pose``.

    Parameters
    ----------
    scanner : ndarray (X, Y, Z, 3), or (M, 3) with ``candidates``
        Undistorted scanner mm of every voxel, or of the ``candidates`` only.
    neighbours : bool
        Also follow the voxels next to tissue through the whole chain and keep
        the template points (the diffusion signal needs them for the fibres,
        whose Jacobian takes finite differences there).
    candidates : ndarray of bool (X, Y, Z), optional
        The voxels ``scanner`` lists; the others hold no tissue. Head points
        are then not kept.
    """
    template = load_template(voxel_size)
    head = pose.to_head(scanner)
    anatomy = geometry.tumour.displace(head) if geometry.tumour is not None else head
    # Only voxels whose anatomy can land on template tissue (or within the
    # trilinear kernel's reach of it) go through the costly deformation and
    # sampling; a structural grid is mostly air.
    reach = geometry.deformation_reach_mm + np.sqrt(3.0) + (2.0 * voxel_size if neighbours else 0.0)
    population = geometry.population
    if population is not None:
        reach += population.reach_mm
    near = _near_template(template, voxel_size, anatomy, reach)
    on_grid = near
    if candidates is not None:
        on_grid = np.zeros(candidates.shape, dtype=bool)
        on_grid[candidates] = near
    tpl_near = geometry.deformation(anatomy[near] if population is None else population.warp(anatomy[near]))
    maps = sample_template(template, tpl_near)
    hyper = None
    if population is not None:
        maps, hyper = population.lesion_maps(maps, tpl_near)
        hyper = _scatter(hyper, on_grid)
    csf, gm, wm = (_scatter(m, on_grid) for m in maps)
    tpl = None
    if neighbours:
        tpl = anatomy.copy()
        tpl[near] = tpl_near
    layers = None
    if geometry.tumour is not None:
        par = gm[on_grid] + wm[on_grid]
        part = tumour_layers(geometry.tumour, head[near], wm[on_grid] / np.maximum(par, 1e-6), par, voxel_size)
        layers = TumourLayers(**{f.name: _scatter(getattr(part, f.name), on_grid)
                                 for f in dataclasses.fields(TumourLayers)})
    bias = _scatter(pmath.exp(geometry.bias(scanner[near])[..., 0]), on_grid, fill=np.float32(1))
    # The bias field redistributes intensity; it does not change the b0 level
    # that defines the SNR.
    bias /= bias[(gm + wm) > 0.5].mean() if np.any((gm + wm) > 0.5) else 1.0
    return _Sampled(csf, gm, wm, tpl, head if candidates is None else None, layers, bias, hyper)


_CANDIDATE_LATTICE_MM = 8.0


def _sample_grid(geometry: _Geometry, pose: HeadPose, shape: tuple[int, int, int], affine: np.ndarray,
                 voxel_size: float) -> _Sampled:
    """:func:`_sample` on a large, mostly empty grid (the structural one).

    A lattice ``k`` times coarser (about 8 mm) finds the voxels that may hold
    tissue, so the full grid's coordinates are never built: every voxel lies
    within ``k / 2`` steps per axis of its nearest lattice node, and the mass
    effect moves anatomy at most its radius from the head point.
    """
    k = max(1, int(round(_CANDIDATE_LATTICE_MM / voxel_size)))
    coarse = tuple(int(np.rint((n - 1) / k)) + 1 for n in shape)
    coarse_affine = pmath.matmul(affine, np.diag([k, k, k, 1.0]))
    head = pose.to_head(grid_coordinates(coarse, coarse_affine))
    # |A|_2, the largest singular value: sqrt of A^T A's largest eigenvalue.
    spectral = float(np.sqrt(pmath.eigh3(pmath.matmul(affine[:3, :3].T, affine[:3, :3]))[0][-1]))
    slack = k / 2 * np.sqrt(3.0) * spectral
    reach = geometry.deformation_reach_mm + np.sqrt(3.0) + slack
    if geometry.tumour is not None:
        reach += geometry.tumour.mass_radius
    if geometry.population is not None:
        reach += geometry.population.reach_mm
    near = _near_template(load_template(voxel_size), voxel_size, head, reach)
    nodes = [np.minimum(np.rint(np.arange(n) / k), c - 1).astype(np.intp) for n, c in zip(shape, coarse)]
    candidates = near[np.ix_(*nodes)]
    index = np.stack(np.nonzero(candidates), axis=-1).astype(np.float32)
    scanner = pmath.affine_apply(index, affine[:3, :3], affine[:3, 3])
    return _sample(geometry, pose, scanner, voxel_size, candidates=candidates)


def _fibres(sampled: _Sampled, voxel_size: float, affine: np.ndarray, where: np.ndarray,
            slope: np.ndarray | None = None):
    """Fibre populations at the voxels ``where``, rotated into scanner space.

    ``slope`` is the gradient of the distortion at those voxels (None: none).
    """
    ff = fibre_field(voxel_size)
    inv = pmath.inv_affine(ff.affine)
    tpl = sampled.template_points[where]
    idx = np.rint(pmath.affine_apply(tpl.astype(np.float64), inv[:3, :3], inv[:3, 3])).astype(np.int64)
    idx = np.clip(idx, 0, np.array(ff.v1.shape[:3]) - 1)
    ii = (idx[:, 0], idx[:, 1], idx[:, 2])
    v1, v2 = ff.v1[ii], ff.v2[ii]
    # J[i, j] = d template_i / d scanner_j; directions map by J^-1.
    step = np.abs(np.diag(affine[:3, :3]))
    grads = np.stack([np.gradient(sampled.template_points, axis=a) / step[a] for a in range(3)], axis=-1)
    jac = grads[where].astype(np.float64)
    if slope is not None:
        # The grid samples T(x + d(x) e_y), so J = J_u (I + e_y g^T); the
        # fibres follow J_u = J - J[:, y] g^T / (1 + g_y), since EPI
        # distortion moves where the signal lands, not the tissue's fibres.
        g = slope.astype(np.float64)
        jac -= jac[:, :, 1:2] * (g / (1.0 + g[:, 1:2]))[:, None, :]
    # Inside the solid tumour the anatomy is compressed to a point; no fibre
    # orientation survives there, so keep the template direction.
    singular = np.abs(pmath.det3(jac)) < 1e-2
    jac[singular] = np.eye(3)
    both = np.concatenate([v1, v2], axis=1).reshape(-1, 2, 3).transpose(0, 2, 1).astype(np.float64)
    rotated = pmath.solve3(jac, both).transpose(0, 2, 1)
    rotated /= np.maximum(np.linalg.norm(rotated, axis=-1, keepdims=True), 1e-9)
    return (rotated[:, 0].astype(np.float32), rotated[:, 1].astype(np.float32),
            ff.crossing[ii], ff.coherence[ii])


def _compartments(s: _Sampled, where: np.ndarray, params: dict | None):
    """Volume fractions and diffusivity factors at ``where`` (lesion applied)."""
    csf, gm, wm = s.csf[where], s.gm[where], s.wm[where]
    n = csf.shape[0]
    zero = np.zeros(n, dtype=np.float32)
    if s.layers is None:
        nec = enh = ed = q = grown = zero
    else:
        nec, enh, ed, q = (s.layers.necrosis[where], s.layers.enhancing[where],
                           s.layers.edema[where], s.layers.infiltration[where])
        grown = s.layers.grown[where]
    total = csf + gm + wm
    real = None if s.layers is None or not s.layers.realism.shape[-1] else s.layers.realism[where]
    if real is not None:  # tumour realism (L3): the patient's values times the voxel's texture
        params, q = tumour_realism.voxel_values(params, real, q)
    keep = np.clip(1.0 - nec - enh, 0.0, 1.0)
    water = (params["edema_fw"] * ed + 0.08 * q) if params else zero
    perp = (1.0 + params["edema_perp"] * ed + 0.3 * q) if params else zero + 1
    par = 1.0 - (0.1 if real is None else params["edema_par"]) * ed - 0.04 * q
    hyper = None
    if s.hyper is not None:  # population: WMH and gliotic rims raise the diffusivities
        hyper = s.hyper[where]
        par = par * (1.0 + np.float32(WMH_DIFFUSIVITY[0] - 1.0) * hyper)
        perp = perp * (1.0 + np.float32(WMH_DIFFUSIVITY[1] - 1.0) * hyper)
    out = dict(
        csf=keep * csf,
        gm=keep * gm * (1 - water),
        wm=keep * wm * (1 - water),
        fluid=keep * (gm + wm) * water,
        necrosis=nec * total,
        cellular=enh * total,
        perp=perp.astype(np.float32),
        par=par.astype(np.float32),
        edema=ed,
        infiltration=q,
        grown=grown,
        hyper=hyper,
    )
    if real is not None:  # haemorrhage, cyst, the treated follow-up's channels
        out = tumour_realism.lesion_fractions(out, real, params, total)
    return out


def _dwi(config: CohortConfig, geometry: _Geometry, s: _Sampled, scheme: GradientScheme,
         affine: np.ndarray, rng: np.random.Generator, sigma: float, slope: np.ndarray | None,
         acq_rng: np.random.Generator | None = None, acq_record: dict | None = None) -> np.ndarray:
    """Noisy DWI; ``acq_rng`` (the acquisition stream) renders :mod:`~dmrilib.simulate.acquisition`'s
    effects, recording what was drawn in ``acq_record``; None leaves the signal as it is."""
    shape = s.csf.shape
    where = (s.csf + s.gm + s.wm) > 1e-3
    c = _compartments(s, where, geometry.tumour.params if geometry.tumour else None)
    slope = None if slope is None else slope[where]
    v1, v2, crossing, coherence = _fibres(s, config.voxel_size, affine, where, slope)
    scale = geometry.diffusivity_scale * pmath.exp(geometry.regional(s.template_points[where])[..., 0])
    wm_par = (TISSUE_PARAMS["wm_par"][0] + TISSUE_PARAMS["wm_par"][1] * coherence) * scale * c["par"]
    wm_perp = (TISSUE_PARAMS["wm_perp"][0] + TISSUE_PARAMS["wm_perp"][1] * coherence) * scale * c["perp"]
    gm_par = TISSUE_PARAMS["gm"][0] * scale * c["par"]
    gm_perp = TISSUE_PARAMS["gm"][1] * scale * c["perp"]
    if geometry.population is not None:  # between-subject, age and regional factors
        ax, rad = geometry.population.diffusivity(s.template_points[where])
        wm_par, gm_par = wm_par * ax, gm_par * ax
        wm_perp, gm_perp = wm_perp * (rad * np.float32(geometry.population.radial_calibration)), gm_perp * rad
    s0 = TISSUE_PARAMS["s0"]
    t2 = 1.0 + 0.3 * c["edema"] + 0.03 * c["infiltration"]
    if c["hyper"] is not None:
        t2 = t2 + np.float32(HYPERINTENSITY_CONTRAST["b0"]) * c["hyper"]
    b = scheme.bvals.astype(np.float32)
    bvecs = scheme.bvecs.T.astype(np.float32)
    cos1 = pmath.matmul(v1, bvecs) ** 2  # shared by every compartment aligned with v1
    signal = ((c["csf"] + c["fluid"]) * s0["csf"])[:, None] * pmath.exp(-b * D_FREE)[None]
    signal += (c["gm"] * s0["gm"] * t2)[:, None] * _attenuation(b, cos1, gm_par, gm_perp)
    wm_w = c["wm"] * s0["wm"] * t2
    signal += ((1 - crossing) * wm_w)[:, None] * _attenuation(b, cos1, wm_par, wm_perp)
    crossed = crossing > 0
    signal[crossed] += (crossing * wm_w)[crossed, None] * _attenuation(
        b, pmath.matmul(v2[crossed], bvecs) ** 2, wm_par[crossed], wm_perp[crossed])
    if geometry.tumour is not None:
        necrosis_d = c.get("necrosis_d", TISSUE_PARAMS["necrosis"])
        signal += (c["necrosis"] * s0["necrosis"])[:, None] * pmath.exp(-b * necrosis_d)[None]
        cp, cq = TISSUE_PARAMS["cellular"]
        # Tumour realism: the patient's cellular diffusivity, textured.
        cscale = scale * c["cellular_factor"] if "cellular_factor" in c else scale
        lesional = c["cellular"] > 0
        signal[lesional] += (c["cellular"] * s0["cellular"])[lesional, None] * _attenuation(
            b, cos1[lesional], cp * cscale[lesional], cq * cscale[lesional])
        if "blood" in c:  # tumour realism: haemorrhage
            signal += tumour_realism.lesion_signal(c, b)
    gain = (_B0_WM / s0["wm"]) * s.bias[where]
    if slope is not None:
        # Signal piles up where the distortion compresses (1 + dd/dy < 1
        # spreads it out): the Jacobian of x -> x + d(x) e_y.
        gain = gain * (1.0 + slope[:, 1])
    signal *= gain[:, None]
    if acq_rng is not None:
        where, signal, sigma = acquisition.apply(
            config, where, signal, sigma, (s.csf + s.gm + s.wm) > 0.5, s.head_points, scheme, affine, acq_rng,
            geometry.tumour is not None, acq_record)
    return rician_volume(shape + (len(b),), where, signal, sigma, rng)


def _attenuation(b: np.ndarray, cos2: np.ndarray, d_par: np.ndarray, d_perp: np.ndarray) -> np.ndarray:
    """``exp(-b (d_perp + (d_par - d_perp) cos^2))`` for (N, G) squared cosines."""
    adc = cos2 * (d_par - d_perp)[:, None].astype(np.float32)
    adc += d_perp[:, None].astype(np.float32)
    adc *= -b[None]
    return pmath.exp(adc)


def _structural(s: _Sampled, where: np.ndarray, c: dict, contrast: str, snr: float, rng: np.random.Generator,
                followup: bool = False) -> np.ndarray:
    """One structural contrast from the compartments ``c`` at ``where`` (see :func:`_compartments`)."""
    k = TISSUE_PARAMS[contrast]
    ed = c["edema"]
    if followup:
        ed = np.maximum(ed, c["grown"])
    if contrast == "flair":
        tissue = 1.0 + 0.8 * ed + 0.05 * c["infiltration"]
    else:
        tissue = 1.0 - 0.3 * ed - 0.02 * c["infiltration"]
    if c["hyper"] is not None:  # population: WMH and gliotic rims
        tissue = tissue + np.float32(HYPERINTENSITY_CONTRAST[contrast]) * c["hyper"]
    img = (c["csf"] * k["csf"] + c["fluid"] * k["fluid"] + (c["gm"] * k["gm"] + c["wm"] * k["wm"]) * tissue
           + c["necrosis"] * k["necrosis"] + c["cellular"] * k["cellular"])
    if "blood" in c:  # tumour realism: haemorrhage; the treated follow-up
        img = tumour_realism.lesion_structural(img, c, contrast, k, followup)
    # Rayleigh noise outside the head: a structural grid is mostly air.
    return rician_volume(s.csf.shape, where, (1000.0 * img * s.bias[where]).astype(np.float32),
                         1000.0 * k["wm"] / snr, rng)


def _tumour_labels(s: _Sampled) -> dict[str, np.ndarray]:
    """Brain mask, tumour dseg and visible lesion (all the structural grid carries)."""
    brain = (s.csf + s.gm + s.wm) > 0.5
    if s.layers is not None:
        tumour = np.where(brain, s.layers.labels, 0).astype(np.uint8)
    else:
        tumour = np.zeros(brain.shape, np.uint8)
    return dict(brain_mask=brain, tumour_dseg=tumour, lesion=(tumour >= 1) & (tumour <= 3))


def _labels(s: _Sampled) -> dict[str, np.ndarray]:
    out = _tumour_labels(s)
    brain, tumour = out["brain_mask"], out["tumour_dseg"]
    dseg = np.where(brain, np.argmax(np.stack([s.csf, s.gm, s.wm]), axis=0) + 1, 0).astype(np.uint8)
    followup = s.layers.followup & brain if s.layers is not None else np.zeros(brain.shape, bool)
    out.update(
        dseg=dseg,
        wmgm_mask=brain & ((dseg >= 2) | out["lesion"]),
        infiltration=tumour == 4,
        followup_lesion=followup,
    )
    return out


def simulate_subject(
    config: CohortConfig,
    seed: int,
    *,
    grade: str | None = None,
    size_class: str | None = None,
    followup: bool = False,
    structural: bool = True,
    affine: np.ndarray | None = None,
    age: float | None = None,
    scanner: int | None = 0,
) -> SimulatedSubject:
    """Simulate one subject's diffusion, structural images and ground truth.

    Parameters
    ----------
    config : CohortConfig
        Geometry, SNR and acquisition (the cohort sizes are ignored).
    seed : int
        Subject seed: the same seed gives the same arrays.
    grade : {"IV", "III", "II"}, optional
        WHO grade for a patient; ``None`` simulates a healthy control.
    size_class : {"large", "medium", "small"}, optional
        Tumour size class (required with ``grade``).
    followup : bool
        Also render the follow-up FLAIR (patients only).
    structural : bool
        Render T1w, FLAIR and the ``structural_*`` labels (skip for speed in
        tests; ``dwi_to_structural`` is always computed).
    affine : ndarray (4, 4), optional
        Place the diffusion grid (``config.shape``, ``config.voxel_size``)
        elsewhere than the default brain-centred position, e.g. a thin slab
        for tests. The structural grid follows it when
        ``config.structural_voxel_size`` is None.
    age : float, optional
        Age in years (population realism; the cohort plan draws it). ``None``
        with ``config.age_range`` set draws it from the subject's population stream.
    scanner : {0, 1}
        Scanner of the two-scanner split (L4 realism); 0 is the reference scanner.

    Returns
    -------
    SimulatedSubject
    """
    if grade is not None and grade not in GRADE_PARAMS:
        raise ValueError(f"grade must be one of {sorted(GRADE_PARAMS)} or None, got {grade!r}")
    if grade is not None and size_class not in SIZE_RADII_MM:
        raise ValueError(f"size_class must be one of {sorted(SIZE_RADII_MM)} for a patient, got {size_class!r}")
    if followup and grade is None:
        raise ValueError("followup=True needs a patient (grade is None).")
    scanner = 0 if scanner is None else scanner  # a plan without the scanner split
    if scanner not in (0, 1):
        raise ValueError(f"scanner must be 0 or 1 (or None: 0), got {scanner!r}")
    # Every matrix product here is N x 3 by 3 x K: BLAS threads only add
    # overhead (2x slower on 2 cores) and the cohort runs a subject per core.
    with threadpool_limits(limits=1, user_api="blas"):
        return _simulate(config, seed, grade, size_class, followup, structural, affine, age, int(scanner))


@dataclass(frozen=True)
class _Draws:
    """A subject's random make-up, drawn before any grid is imaged.

    ``transform`` holds the head poses of both sessions, the motion between
    them and the EPI distortion; ``acq_rng`` is the acquisition stream, which
    the DWI's artefacts draw on further.
    """

    streams: list[np.random.SeedSequence]
    population: Population | None
    geometry: _Geometry
    transform: DwiToStructural
    snr: float
    acq_rng: np.random.Generator

    @property
    def sigma(self) -> float:
        """Noise level: b0 of pure white matter over the SNR."""
        return _B0_WM / self.snr


@dataclass(frozen=True)
class _DiffusionImage:
    """The subject imaged on the diffusion grid: noisy DWI and the labels that match it."""

    affine: np.ndarray
    grid: np.ndarray
    scheme: GradientScheme
    sampled: _Sampled
    dwi: np.ndarray
    labels: dict[str, np.ndarray]
    dwi_to_structural: np.ndarray
    acq_record: dict


@dataclass(frozen=True)
class _StructuralImages:
    """T1w, FLAIR (and the follow-up FLAIR) with their labels on the structural grid; None when not rendered."""

    affine: np.ndarray
    t1w: np.ndarray | None = None
    flair: np.ndarray | None = None
    flair_followup: np.ndarray | None = None
    labels: dict[str, np.ndarray | None] = field(
        default_factory=lambda: dict(brain_mask=None, tumour_dseg=None, lesion=None))


def _simulate(config: CohortConfig, seed: int, grade: str | None, size_class: str | None, followup: bool,
              structural: bool, affine: np.ndarray | None, age: float | None = None,
              scanner: int = 0) -> SimulatedSubject:
    """:func:`simulate_subject` after its checks: draw the subject, image it on both grids, record it."""
    draws = _draw_subject(config, seed, grade, size_class, age, scanner)
    diffusion = _image_diffusion(config, draws, affine, followup, scanner)
    s_affine = diffusion.affine if config.structural_voxel_size is None else config.structural_affine
    images = _StructuralImages(s_affine)
    if structural:
        images = _image_structural(config, draws, diffusion, s_affine, followup)
    info = _subject_info(config, seed, grade, size_class, scanner, draws, diffusion)
    sampled = diffusion.sampled
    return SimulatedSubject(
        dwi=diffusion.dwi, bvals=diffusion.scheme.bvals, bvecs=diffusion.scheme.bvecs, affine=diffusion.affine,
        structural_affine=images.affine,
        tissue=np.stack([sampled.csf, sampled.gm, sampled.wm]).astype(np.float32),
        t1w=images.t1w, flair=images.flair, flair_followup=images.flair_followup, snr=float(draws.snr),
        sigma=float(draws.sigma), info=info,
        structural_lesion=images.labels["lesion"], structural_tumour_dseg=images.labels["tumour_dseg"],
        structural_brain_mask=images.labels["brain_mask"],
        dwi_to_structural=diffusion.dwi_to_structural, transform=draws.transform, **diffusion.labels,
    )


def _draw_subject(config: CohortConfig, seed: int, grade: str | None, size_class: str | None,
                  age: float | None, scanner: int) -> _Draws:
    """Population, anatomy, tumour, session motion, EPI distortion and SNR, each from its own stream."""
    # Children 0-6 keep their meaning whatever is added after them; the
    # realism groups draw only from their own streams (7-10), so a level that
    # switches a group off leaves every other draw, and L0 every byte, as it was.
    streams = np.random.SeedSequence(int(seed)).spawn(11)
    population = draw_population(config, np.random.default_rng(streams[STREAM_POPULATION]), age)
    geometry = _geometry(config, np.random.default_rng(streams[0]), grade, size_class, population)
    if geometry.tumour is not None and tumour_realism.tumour_realism_on(config):
        geometry = dataclasses.replace(geometry, tumour=tumour_realism.realistic_tumour(
            config, geometry.tumour, geometry.deformation, config.voxel_size, streams[STREAM_TUMOUR],
            geometry.population))
    s_pose, motion_deg, motion_mm = _session_motion(np.random.default_rng(streams[5]), geometry.pose,
                                                    config.structural_pose_deg, config.structural_pose_mm)
    # The acquisition stream is drawn in this order: distortion spread, SNR,
    # then the DWI's artefacts (in _image_diffusion).
    acq_rng = np.random.default_rng(streams[STREAM_ACQUISITION])
    distortion = _random_distortion(np.random.default_rng(streams[6]),
                                    config.epi_distortion_mm * acquisition.distortion_factor(config, acq_rng),
                                    config.voxel_size)
    transform = DwiToStructural(geometry.pose, s_pose, distortion, motion_deg, motion_mm)
    snr = acquisition.subject_snr(config, acq_rng, np.random.default_rng(streams[1]), scanner)
    return _Draws(streams, population, geometry, transform, snr, acq_rng)


def _image_diffusion(config: CohortConfig, draws: _Draws, affine: np.ndarray | None, followup: bool,
                     scanner: int) -> _DiffusionImage:
    """Sample the subject on the diffusion grid through the distortion, render the noisy DWI and its labels."""
    geometry, transform = draws.geometry, draws.transform
    scheme = small64d_scheme(config.bvalues, config.n_b0)
    acq_record: dict = {}
    if affine is None:
        affine = grid_affine(config.shape, config.voxel_size)
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be a 4x4 matrix, got shape {affine.shape}")
    grid = grid_coordinates(config.shape, affine)
    sampled = _sample(geometry, geometry.pose, transform.undistort(grid), config.voxel_size, neighbours=True)
    slope = None if transform.distortion is None else transform.displacement_gradient(grid)
    dwi = _dwi(config, geometry, sampled, acquisition.scanner_scheme(config, scheme, scanner), affine,
               np.random.default_rng(draws.streams[2]), draws.sigma, slope,
               draws.acq_rng if acquisition.dwi_effects_on(config) else None, acq_record)
    labels = _labels(sampled)
    if not followup:
        labels["followup_lesion"] = np.zeros_like(labels["followup_lesion"])
    dwi_to_structural = transform.structural_pose.to_scanner(sampled.head_points).astype(np.float32)
    return _DiffusionImage(affine, grid, scheme, sampled, dwi, labels, dwi_to_structural, acq_record)


def _image_structural(config: CohortConfig, draws: _Draws, diffusion: _DiffusionImage, s_affine: np.ndarray,
                      followup: bool) -> _StructuralImages:
    """T1w, FLAIR and the follow-up FLAIR on the structural grid, with the structural session's pose."""
    geometry, s_pose = draws.geometry, draws.transform.structural_pose
    if config.structural_voxel_size is None and draws.transform.distortion is None and s_pose is geometry.pose:
        # Same grid, same pose, no distortion: the diffusion grid's sampling is this one.
        s_sampled = diffusion.sampled
    else:
        s_sampled = _sample_grid(geometry, s_pose, config.structural_shape, s_affine, config.structural_spacing)
    where = (s_sampled.csf + s_sampled.gm + s_sampled.wm) > 1e-3
    comp = _compartments(s_sampled, where, geometry.tumour.params if geometry.tumour else None)
    rng = np.random.default_rng(draws.streams[3])
    t1w = _structural(s_sampled, where, comp, "t1w", config.structural_snr, rng)
    flair = _structural(s_sampled, where, comp, "flair", config.structural_snr, rng)
    flair_fu = None
    if followup:
        flair_fu = _structural(s_sampled, where, comp, "flair", config.structural_snr,
                               np.random.default_rng(draws.streams[4]), followup=True)
    return _StructuralImages(s_affine, t1w, flair, flair_fu, _tumour_labels(s_sampled))


def _subject_info(config: CohortConfig, seed: int, grade: str | None, size_class: str | None, scanner: int,
                  draws: _Draws, diffusion: _DiffusionImage) -> dict:
    """The subject's record (``SimulatedSubject.info``): what was drawn and where the tumour sits."""
    geometry, transform = draws.geometry, draws.transform
    s_pose = transform.structural_pose
    d = transform.displacement(diffusion.grid)[diffusion.labels["brain_mask"]]
    if d.size == 0:  # a grid that misses the brain (a test slab)
        d = np.zeros(1, np.float32)
    info = dict(
        seed=int(seed),
        group="healthy" if grade is None else "patient",
        grade=grade,
        size_class=size_class,
        snr=float(draws.snr),
        diffusivity_scale=geometry.diffusivity_scale,
        head_rotation=geometry.pose.rotation.tolist(),
        head_translation_mm=geometry.pose.translation.tolist(),
        structural_head_rotation=s_pose.rotation.tolist(),
        structural_head_translation_mm=s_pose.translation.tolist(),
        structural_motion_deg=[float(v) for v in transform.motion_deg],
        structural_motion_mm=[float(v) for v in transform.motion_mm],
        head_pose_centre_mm=geometry.pose.centre.tolist(),
        dwi_to_structural_rigid=transform.rigid.tolist(),
        epi_distortion_peak_mm=float(np.abs(d).max()),
        epi_distortion_range_mm=[float(d.min()), float(d.max())],
        phase_encoding_axis="j",
    )
    if geometry.tumour is not None:
        info.update(_tumour_info(geometry, s_pose))
    if draws.population is not None:
        info.update(draws.population.info())
        if diffusion.sampled.hyper is not None:
            voxel_mm3 = abs(float(pmath.det3(diffusion.affine[:3, :3])))
            info["hyperintensity_volume_mm3"] = float(diffusion.sampled.hyper.sum()) * voxel_mm3
    artefacts = acquisition.sidecar_record(config, scanner, draws.snr, diffusion.acq_record)
    if artefacts:
        info["simulated_artefacts"] = artefacts
    return info


def _tumour_info(geometry: _Geometry, s_pose: HeadPose) -> dict:
    """Where the tumour sits in both scanners' mm, its size and, with tumour realism, what was drawn."""
    tumour = geometry.tumour
    centre = geometry.pose.to_scanner(tumour.centre[None].astype(np.float32))[0]
    s_centre = s_pose.to_scanner(tumour.centre[None].astype(np.float32))[0]
    info = dict(tumour_centre_mm=[float(v) for v in centre], tumour_radius_mm=tumour.radius,
                tumour_centre_structural_mm=[float(v) for v in s_centre],
                enhancing=bool(tumour.enhancing > 0))
    if tumour.realism is not None:
        info.update(tumour.realism.info)
        info.update(tumour_realism.site_info(tumour.realism, geometry.pose.to_scanner))
    return info
