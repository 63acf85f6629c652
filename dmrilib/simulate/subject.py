"""One simulated subject: anatomy, variability, tumour, diffusion and structural images.

Coordinates flow backwards from the scanner to the template, so every image
of the subject (any grid) is sampled consistently:

1. scanner mm -> head mm (inverse of a small random head pose);
2. head mm -> pre-tumour anatomy (inverse of the tumour's mass effect);
3. anatomy mm -> template MNI mm (random smooth diffeomorphism).

Tissue probabilities are sampled trilinearly at the template points, fibre
directions by nearest neighbour and then rotated by the inverse Jacobian of
the whole chain (so they follow the deformation and the head pose).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dmrilib.simulate.anatomy import grid_affine, grid_coordinates, load_template, sample_template
from dmrilib.simulate.config import CohortConfig
from dmrilib.simulate.fibres import fibre_field
from dmrilib.simulate.lesion import GRADE_PARAMS, SIZE_RADII_MM, Tumour, TumourLayers, random_tumour, tumour_layers
from dmrilib.simulate.signal import D_FREE, GradientScheme, rician, rician_volume, small64d_scheme
from dmrilib.simulate.variability import (
    Deformation,
    HeadPose,
    SmoothField,
    random_deformation,
    random_head_pose,
    smooth_field,
)

__all__ = ["SimulatedSubject", "simulate_subject", "TISSUE_PARAMS"]

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


@dataclass
class SimulatedSubject:
    """Arrays of one simulated subject (diffusion grid unless stated).

    ``dwi`` is float32 ``(X, Y, Z, N)`` with Rician noise; ``tissue`` holds
    the CSF, GM and WM volume fractions ``(3, X, Y, Z)`` (before the lesion
    replaces tissue); ``snr`` is b0 of pure white matter over the noise
    ``sigma``. Label maps are
    bool/uint8 ``(X, Y, Z)``; ``t1w``, ``flair`` and ``flair_followup`` live on
    the structural grid (``structural_affine``). Patient-only maps are
    all-zero for healthy subjects; ``flair_followup`` is ``None`` without a
    follow-up.
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
    tissue: np.ndarray
    snr: float
    sigma: float
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Geometry:
    """What a subject looks like, independent of the grid it is imaged on."""

    pose: HeadPose
    deformation: Deformation
    tumour: Tumour | None
    diffusivity_scale: float
    regional: SmoothField
    bias: SmoothField


def _choose_centre(rng: np.random.Generator, voxel_size: float, deformation: Deformation,
                   size_class: str) -> np.ndarray:
    """A tumour centre in WM/GM of either hemisphere, away from the brain edge."""
    template = load_template(voxel_size)
    step = 4.0
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
    candidates = pts[ok]
    centre_template = candidates[rng.integers(len(candidates))] + rng.uniform(-step / 2, step / 2, 3)
    return deformation.inverse(centre_template[None].astype(np.float32))[0].astype(float)


def _geometry(config: CohortConfig, rng: np.random.Generator, grade: str | None, size_class: str | None) -> _Geometry:
    pose = random_head_pose(rng)
    deformation = random_deformation(rng, amplitude=config.deformation_mm)
    scale = float(np.clip(rng.normal(1.0, 0.04), 0.9, 1.1))
    regional = smooth_field(rng, n_waves=12, wavelength=70.0, std=0.04)
    bias = smooth_field(rng, n_waves=8, wavelength=250.0, std=0.08)
    tumour = None
    if grade is not None:
        centre = _choose_centre(rng, config.voxel_size, deformation, size_class)
        tumour = random_tumour(rng, grade, size_class, centre)
    return _Geometry(pose, deformation, tumour, scale, regional, bias)


@dataclass
class _Sampled:
    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    template_points: np.ndarray
    head_points: np.ndarray
    layers: TumourLayers | None
    bias: np.ndarray


def _sample(geometry: _Geometry, shape: tuple[int, int, int], affine: np.ndarray, voxel_size: float) -> _Sampled:
    template = load_template(voxel_size)
    scanner = grid_coordinates(shape, affine)
    head = geometry.pose.to_head(scanner)
    anatomy = geometry.tumour.displace(head) if geometry.tumour is not None else head
    tpl = geometry.deformation(anatomy)
    csf, gm, wm = sample_template(template, tpl)
    layers = None
    if geometry.tumour is not None:
        par = gm + wm
        layers = tumour_layers(geometry.tumour, head, wm / np.maximum(par, 1e-6), par, voxel_size)
    bias = np.exp(geometry.bias(scanner)[..., 0])
    # The bias field redistributes intensity; it does not change the b0 level
    # that defines the SNR.
    bias /= bias[(gm + wm) > 0.5].mean() if np.any((gm + wm) > 0.5) else 1.0
    return _Sampled(csf, gm, wm, tpl, head, layers, bias)


def _fibres(sampled: _Sampled, voxel_size: float, affine: np.ndarray, where: np.ndarray):
    """Fibre populations at the voxels ``where``, rotated into scanner space."""
    ff = fibre_field(voxel_size)
    inv = np.linalg.inv(ff.affine)
    tpl = sampled.template_points[where]
    idx = np.rint(tpl @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)
    idx = np.clip(idx, 0, np.array(ff.v1.shape[:3]) - 1)
    ii = (idx[:, 0], idx[:, 1], idx[:, 2])
    v1, v2 = ff.v1[ii], ff.v2[ii]
    # J[i, j] = d template_i / d scanner_j; directions map by J^-1.
    step = np.abs(np.diag(affine[:3, :3]))
    grads = np.stack([np.gradient(sampled.template_points, axis=a) / step[a] for a in range(3)], axis=-1)
    jac = grads[where].astype(np.float64)
    # Inside the solid tumour the anatomy is compressed to a point; no fibre
    # orientation survives there, so keep the template direction.
    singular = np.abs(np.linalg.det(jac)) < 1e-2
    jac[singular] = np.eye(3)
    both = np.concatenate([v1, v2], axis=1).reshape(-1, 2, 3).transpose(0, 2, 1).astype(np.float64)
    rotated = np.linalg.solve(jac, both).transpose(0, 2, 1)
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
    keep = np.clip(1.0 - nec - enh, 0.0, 1.0)
    water = (params["edema_fw"] * ed + 0.08 * q) if params else zero
    perp = (1.0 + params["edema_perp"] * ed + 0.3 * q) if params else zero + 1
    par = 1.0 - 0.1 * ed - 0.04 * q
    return dict(
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
    )


def _dwi(config: CohortConfig, geometry: _Geometry, s: _Sampled, scheme: GradientScheme,
         affine: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    shape = s.csf.shape
    where = (s.csf + s.gm + s.wm) > 1e-3
    c = _compartments(s, where, geometry.tumour.params if geometry.tumour else None)
    v1, v2, crossing, coherence = _fibres(s, config.voxel_size, affine, where)
    scale = geometry.diffusivity_scale * np.exp(geometry.regional(s.template_points[where])[..., 0])
    wm_par = (TISSUE_PARAMS["wm_par"][0] + TISSUE_PARAMS["wm_par"][1] * coherence) * scale * c["par"]
    wm_perp = (TISSUE_PARAMS["wm_perp"][0] + TISSUE_PARAMS["wm_perp"][1] * coherence) * scale * c["perp"]
    gm_par = TISSUE_PARAMS["gm"][0] * scale * c["par"]
    gm_perp = TISSUE_PARAMS["gm"][1] * scale * c["perp"]
    s0 = TISSUE_PARAMS["s0"]
    t2 = 1.0 + 0.3 * c["edema"] + 0.03 * c["infiltration"]
    b = scheme.bvals.astype(np.float32)
    bvecs = scheme.bvecs.T.astype(np.float32)
    cos1 = (v1 @ bvecs) ** 2  # shared by every compartment aligned with v1
    signal = ((c["csf"] + c["fluid"]) * s0["csf"])[:, None] * np.exp(-b * D_FREE)[None]
    signal += (c["gm"] * s0["gm"] * t2)[:, None] * _attenuation(b, cos1, gm_par, gm_perp)
    wm_w = c["wm"] * s0["wm"] * t2
    signal += ((1 - crossing) * wm_w)[:, None] * _attenuation(b, cos1, wm_par, wm_perp)
    crossed = crossing > 0
    signal[crossed] += (crossing * wm_w)[crossed, None] * _attenuation(
        b, (v2[crossed] @ bvecs) ** 2, wm_par[crossed], wm_perp[crossed])
    if geometry.tumour is not None:
        signal += (c["necrosis"] * s0["necrosis"])[:, None] * np.exp(-b * TISSUE_PARAMS["necrosis"])[None]
        cp, cq = TISSUE_PARAMS["cellular"]
        lesional = c["cellular"] > 0
        signal[lesional] += (c["cellular"] * s0["cellular"])[lesional, None] * _attenuation(
            b, cos1[lesional], cp * scale[lesional], cq * scale[lesional])
    signal *= ((_B0_WM / s0["wm"]) * s.bias[where])[:, None]
    return rician_volume(shape + (len(b),), where, signal, sigma, rng)


def _attenuation(b: np.ndarray, cos2: np.ndarray, d_par: np.ndarray, d_perp: np.ndarray) -> np.ndarray:
    """``exp(-b (d_perp + (d_par - d_perp) cos^2))`` for (N, G) squared cosines."""
    adc = cos2 * (d_par - d_perp)[:, None].astype(np.float32)
    adc += d_perp[:, None].astype(np.float32)
    adc *= -b[None]
    return np.exp(adc, out=adc)


def _structural(geometry: _Geometry, s: _Sampled, contrast: str, snr: float, rng: np.random.Generator,
                followup: bool = False) -> np.ndarray:
    where = (s.csf + s.gm + s.wm) > 1e-3
    c = _compartments(s, where, geometry.tumour.params if geometry.tumour else None)
    k = TISSUE_PARAMS[contrast]
    ed = c["edema"]
    if followup:
        ed = np.maximum(ed, c["grown"])
    if contrast == "flair":
        tissue = 1.0 + 0.8 * ed + 0.05 * c["infiltration"]
    else:
        tissue = 1.0 - 0.3 * ed - 0.02 * c["infiltration"]
    img = (c["csf"] * k["csf"] + c["fluid"] * k["fluid"] + (c["gm"] * k["gm"] + c["wm"] * k["wm"]) * tissue
           + c["necrosis"] * k["necrosis"] + c["cellular"] * k["cellular"])
    full = np.zeros(s.csf.shape, dtype=np.float32)
    full[where] = 1000.0 * img * s.bias[where]
    return rician(full, 1000.0 * k["wm"] / snr, rng)


def _labels(s: _Sampled) -> dict[str, np.ndarray]:
    total = s.csf + s.gm + s.wm
    brain = total > 0.5
    dseg = np.where(brain, np.argmax(np.stack([s.csf, s.gm, s.wm]), axis=0) + 1, 0).astype(np.uint8)
    if s.layers is not None:
        tumour = np.where(brain, s.layers.labels, 0).astype(np.uint8)
        followup = s.layers.followup & brain
    else:
        tumour = np.zeros(dseg.shape, np.uint8)
        followup = np.zeros(dseg.shape, bool)
    lesion = (tumour >= 1) & (tumour <= 3)
    return dict(
        brain_mask=brain,
        dseg=dseg,
        wmgm_mask=brain & ((dseg >= 2) | lesion),
        lesion=lesion,
        infiltration=tumour == 4,
        tumour_dseg=tumour,
        followup_lesion=followup,
    )


def simulate_subject(
    config: CohortConfig,
    seed: int,
    *,
    grade: str | None = None,
    size_class: str | None = None,
    followup: bool = False,
    structural: bool = True,
    affine: np.ndarray | None = None,
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
        Render T1w and FLAIR (skip for speed in tests).
    affine : ndarray (4, 4), optional
        Place the diffusion grid (``config.shape``, ``config.voxel_size``)
        elsewhere than the default brain-centred position, e.g. a thin slab
        for tests. The structural grid follows it when the voxel sizes match.

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
    streams = np.random.SeedSequence(int(seed)).spawn(5)
    geometry = _geometry(config, np.random.default_rng(streams[0]), grade, size_class)
    snr_rng = np.random.default_rng(streams[1])
    snr = config.snr * (1 + snr_rng.uniform(-config.snr_jitter, config.snr_jitter))
    sigma = _B0_WM / snr
    scheme = small64d_scheme(config.bvalues, config.n_b0)
    if affine is None:
        affine = grid_affine(config.shape, config.voxel_size)
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be a 4x4 matrix, got shape {affine.shape}")
    sampled = _sample(geometry, config.shape, affine, config.voxel_size)
    dwi = _dwi(config, geometry, sampled, scheme, affine, np.random.default_rng(streams[2]), sigma)
    labels = _labels(sampled)

    same_grid = config.structural_spacing == config.voxel_size
    s_affine = affine if same_grid else grid_affine(config.structural_shape, config.structural_spacing)
    t1w = flair = flair_fu = None
    if structural:
        if same_grid:
            s_sampled = sampled
        else:
            s_sampled = _sample(geometry, config.structural_shape, s_affine, config.structural_spacing)
        rng = np.random.default_rng(streams[3])
        t1w = _structural(geometry, s_sampled, "t1w", config.structural_snr, rng)
        flair = _structural(geometry, s_sampled, "flair", config.structural_snr, rng)
        if followup:
            flair_fu = _structural(geometry, s_sampled, "flair", config.structural_snr,
                                   np.random.default_rng(streams[4]), followup=True)
    if not followup:
        labels["followup_lesion"] = np.zeros_like(labels["followup_lesion"])
    tumour = geometry.tumour
    info = dict(
        seed=int(seed),
        group="healthy" if grade is None else "patient",
        grade=grade,
        size_class=size_class,
        snr=float(snr),
        diffusivity_scale=geometry.diffusivity_scale,
        head_rotation=geometry.pose.rotation.tolist(),
        head_translation_mm=geometry.pose.translation.tolist(),
    )
    if tumour is not None:
        centre = geometry.pose.to_scanner(tumour.centre[None].astype(np.float32))[0]
        info.update(tumour_centre_mm=[float(v) for v in centre], tumour_radius_mm=tumour.radius,
                    enhancing=bool(tumour.enhancing > 0))
    return SimulatedSubject(
        dwi=dwi, bvals=scheme.bvals, bvecs=scheme.bvecs, affine=affine, structural_affine=s_affine,
        tissue=np.stack([sampled.csf, sampled.gm, sampled.wm]).astype(np.float32),
        t1w=t1w, flair=flair, flair_followup=flair_fu, snr=float(snr), sigma=float(sigma), info=info, **labels,
    )
