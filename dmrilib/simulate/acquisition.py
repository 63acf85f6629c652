"""Acquisition and scanner artefacts of the simulated DWI (realism groups L2 and L4).

Every effect is a :class:`~dmrilib.simulate.CohortConfig` field (values and
sources in :data:`dmrilib.simulate.realism.EFFECTS`); each one draws from the
subject's acquisition stream only when it is on, so a cohort without it keeps
its bytes. In the order a scan meets them:

``distortion_spread`` (s)
    Per-subject factor ``U(1 - s, 1 + s)`` on the EPI distortion peak
    (``epi_distortion_mm``): the B0 field's inhomogeneity depends on head
    size and shim, with peaks of about 2-8 mm at 3 T.
``snr_cv``
    Per-subject b0 SNR, log-normal with median ``snr`` and this coefficient of
    variation (0.15: b0 SNR varies 10-20% between sessions of one site in QC
    reports such as eddy QUAD). Replaces the uniform ``snr_jitter`` draw.
``scanner_offset`` (offset, reduction), with the subject's scanner
    Scanner 1 measures diffusivities ``1 + offset`` times higher (its signal is
    computed with b-values times ``1 + offset`` while the written b-values stay
    nominal: a gradient calibration difference) and has its SNR times
    ``1 - reduction`` (inter-scanner DTI differences of 3-5%, Vollmar et al.
    2010, NeuroImage).
``vibration_rate``
    Fraction of subjects whose scanner table vibrates (Gallichan et al. 2010,
    Hum Brain Mapp): in volumes whose gradient is mostly left-right
    (``|g_x| > 0.6``) the signal drops in a posterior-parietal blob, by a
    per-subject severity ``U(0.3, 0.8)`` scaled by ``(|g_x| - 0.6) / 0.4``.
``motion_mm``
    Residual rigid motion after eddy/motion correction, 0.1-0.5 mm rms
    (Andersson & Sotiropoulos 2016, NeuroImage): every volume but the first
    b0 (the reference) is resampled (trilinear) with a random rigid transform
    whose rms displacement over the brain is about ``motion_mm``.
``outlier_slice_rate`` (controls, patients)
    Fraction of the axial diffusion-weighted brain slices whose signal drops to
    ``U(0.2, 0.7)`` of its value (motion during the diffusion encoding); eddy
    flags 0.5-1% of slices, more in patients (Andersson et al. 2016, NeuroImage).
``gibbs_kspace_fraction``
    Central fraction of the in-plane k-space that is kept (zero-filled back to
    the grid): truncation ringing at sharp edges, as in partial Fourier and
    zero-filled reconstructions (Kellner et al. 2016, MRM).
``noise_map_sd``
    Spatial variation of the noise level (coil sensitivity and g-factor, 1.0-1.4
    at acceleration 2 with 32-channel coils, Pruessmann et al. 1999, MRM):
    sigma times ``exp(f)`` for a smooth random field ``f`` (wavelength about
    120 mm) of this sd, normalised so the brain's mean sigma is the subject's.

All arithmetic is CPU-portable (:mod:`dmrilib.simulate._portable`;
``scipy.ndimage`` resampling and ``numpy.fft`` use no CPU-dispatched code).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from dmrilib.simulate import _portable as pmath
from dmrilib.simulate.anatomy import grid_coordinates
from dmrilib.simulate.signal import GradientScheme
from dmrilib.simulate.variability import smooth_field

__all__ = ["distortion_factor", "subject_snr", "scanner_scheme", "dwi_effects_on", "apply", "gibbs_ringing",
           "rigid_motion", "VIBRATION_CENTRE_MM", "VIBRATION_WIDTH_MM", "VIBRATION_MIN_GX"]

#: Centre (head mm, about MNI) and width (Gaussian sd, mm) of the table-vibration
#: signal loss: posterior parietal cortex, where Gallichan et al. (2010) saw it.
VIBRATION_CENTRE_MM = (0.0, -65.0, 35.0)
VIBRATION_WIDTH_MM = 25.0
#: Volumes whose gradient has ``|g_x|`` above this lose signal when the table vibrates.
VIBRATION_MIN_GX = 0.6
_VIBRATION_SEVERITY = (0.3, 0.8)
_DROPOUT = (0.2, 0.7)
_NOISE_MAP_WAVELENGTH_MM = 120.0
# Rigid motion: a point at this radius (mm) moves as far under the rotation
# as under the translation.
_MOTION_RADIUS_MM = 60.0


def distortion_factor(config, rng: np.random.Generator) -> float:
    """Per-subject factor on ``epi_distortion_mm``: ``U(1 - s, 1 + s)``, or 1 (no draw) when ``s`` is 0."""
    s = config.distortion_spread
    if s == 0:
        return 1.0
    return float(rng.uniform(1.0 - s, 1.0 + s))


def _lognormal_sd(cv: float) -> float:
    """sd of ``log X`` for a log-normal ``X`` with coefficient of variation ``cv``: ``sqrt(log(1 + cv^2))``.

    The logarithm is found by Newton's method on ``exp`` (portable bits).
    """
    target = 1.0 + cv * cv
    y = cv * cv
    for _ in range(30):
        y -= 1.0 - target / float(pmath.exp(y))
    return float(np.sqrt(y))


def subject_snr(config, rng: np.random.Generator, jitter_rng: np.random.Generator, scanner: int) -> float:
    """The subject's b0 SNR.

    Log-normal with median ``config.snr`` and CV ``config.snr_cv`` (one normal
    draw from ``rng``), or, when ``snr_cv`` is 0, uniform within
    ``+-snr_jitter`` (one draw from ``jitter_rng``, as the original
    simulator). Scanner 1 then loses ``scanner_offset[1]`` of it.
    """
    if config.snr_cv > 0:
        snr = config.snr * float(pmath.exp(_lognormal_sd(config.snr_cv) * rng.standard_normal()))
    else:
        snr = config.snr * (1 + jitter_rng.uniform(-config.snr_jitter, config.snr_jitter))
    if scanner == 1 and config.scanner_offset[1] > 0:
        snr *= 1.0 - config.scanner_offset[1]
    return snr


def scanner_scheme(config, scheme: GradientScheme, scanner: int) -> GradientScheme:
    """Gradient scheme the signal is computed with: b-values times ``1 + offset`` on scanner 1.

    The written b-values stay nominal, so a DTI fit of scanner 1's data finds
    every diffusivity ``1 + offset`` times higher.
    """
    offset = config.scanner_offset[0]
    if scanner == 0 or offset == 0:
        return scheme
    return GradientScheme(scheme.bvals * (1.0 + offset), scheme.bvecs)


def dwi_effects_on(config) -> bool:
    """Whether any effect that :func:`apply` renders is on."""
    return (config.noise_map_sd > 0 or config.motion_mm > 0 or max(config.outlier_slice_rate) > 0
            or config.gibbs_kspace_fraction < 1 or config.vibration_rate > 0)


def rigid_motion(rng: np.random.Generator, n_volumes: int, motion_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-volume rotations (degrees about x, y, z) and translations (mm); the first volume does not move.

    Each translation component is normal with sd ``a = motion_mm / sqrt(5)``
    and each rotation angle normal with sd ``a / 60 mm`` (radians): over a
    brain of rms radius about 60 mm the expected squared displacement is
    ``3 a^2`` from the translation plus ``2 a^2`` from the rotation, so the
    rms displacement is about ``motion_mm``.
    """
    a = motion_mm / np.sqrt(5.0)
    shifts = rng.normal(0.0, a, size=(n_volumes, 3))
    angles = np.rad2deg(rng.normal(0.0, a / _MOTION_RADIUS_MM, size=(n_volumes, 3)))
    shifts[0] = 0.0
    angles[0] = 0.0
    return angles, shifts


def gibbs_ringing(volume: np.ndarray, fraction: float) -> np.ndarray:
    """Keep the central ``fraction`` of the in-plane (x, y) k-space of a 3D volume, zero-fill, go back.

    Parameters
    ----------
    volume : ndarray (X, Y, Z)
        Real image (noise-free signal).
    fraction : float
        Kept fraction of each in-plane k-space axis (1: unchanged).

    Returns
    -------
    ndarray (X, Y, Z) float32
        The band-limited image: blurred, with ringing (overshoot and ripples) next to sharp edges.
    """
    nx, ny = volume.shape[:2]
    keep_x = np.abs(np.fft.fftfreq(nx)) <= fraction / 2
    keep_y = np.abs(np.fft.rfftfreq(ny)) <= fraction / 2
    spectrum = np.fft.rfftn(volume.astype(np.float32, copy=False), axes=(0, 1))
    spectrum *= (keep_x[:, None] & keep_y[None, :])[:, :, None]
    return np.fft.irfftn(spectrum, s=(nx, ny), axes=(0, 1)).astype(np.float32, copy=False)


def _noise_map(config, rng, shape, affine, where) -> np.ndarray:
    """Relative noise level per voxel, ``exp(f)`` with mean 1 over ``where``; Fortran-ordered float32."""
    field_ = smooth_field(rng, n_waves=8, wavelength=_NOISE_MAP_WAVELENGTH_MM, std=config.noise_map_sd)
    level = pmath.exp(field_(grid_coordinates(shape, affine))[..., 0])
    if where.any():  # a test slab may miss the head
        level /= np.float32(level[where].mean())
    return np.asfortranarray(level)


def _vibration(config, rng, signal, head, bvecs, diffusion, record) -> None:
    """Table vibration: posterior-parietal signal loss in left-right gradient volumes (in place)."""
    affected = bool(rng.uniform() < config.vibration_rate)
    severity = float(rng.uniform(*_VIBRATION_SEVERITY))
    gx = np.abs(bvecs[:, 0])
    weight = np.where(diffusion, np.clip((gx - VIBRATION_MIN_GX) / (1.0 - VIBRATION_MIN_GX), 0.0, 1.0), 0.0)
    volumes = np.flatnonzero(weight > 0) if affected else np.zeros(0, int)
    record["vibration"] = dict(affected=affected, severity=severity if affected else 0.0,
                               volumes=volumes.tolist())
    if not affected:
        return
    r2 = ((head - np.asarray(VIBRATION_CENTRE_MM, dtype=np.float32)) ** 2).sum(axis=1)
    blob = pmath.exp(r2 * np.float32(-0.5 / VIBRATION_WIDTH_MM**2))
    for v in volumes:
        signal[:, v] *= 1.0 - np.float32(severity * weight[v]) * blob


def _move(volume: np.ndarray, angles_deg: np.ndarray, shift_mm: np.ndarray, centre: np.ndarray,
          voxel_size: float) -> np.ndarray:
    """Resample a 3D volume (trilinear) after a rigid motion about ``centre`` (voxels).

    ``volume`` may be a box of the grid that holds all the signal with a margin of
    empty voxels, or reaches the grid's edge.
    """
    rot = pmath.rotation_xyz(np.deg2rad(angles_deg))
    # The moved image at voxel o shows the object at R^T (o - c - t) + c.
    matrix = rot.T
    offset = centre - pmath.matmul(matrix, centre + shift_mm / voxel_size)
    # Beyond the grid the tissue goes on (a field of view cuts the cerebellum): repeat the edge voxels.
    return ndimage.affine_transform(volume, matrix, offset=offset, order=1, mode="nearest", output=np.float32)


def _rms_displacement(angles_deg, shifts_mm, points_mm) -> np.ndarray:
    """rms over ``points_mm`` (relative to the rotation centre) of each volume's displacement (mm).

    The displacement of ``p`` is ``M p + t`` with ``M = R - I``, so its mean
    square is ``sum_ij (M^T M)_ij S_ij + 2 t . M m + t . t`` with the points'
    mean ``m`` and second moments ``S``.
    """
    m = points_mm.mean(axis=0)
    second = np.array([[np.mean(points_mm[:, i] * points_mm[:, j]) for j in range(3)] for i in range(3)])
    out = np.empty(len(angles_deg))
    for v, (angles, shift) in enumerate(zip(angles_deg, shifts_mm)):
        move = pmath.rotation_xyz(np.deg2rad(angles)) - np.eye(3)
        square = (pmath.matmul(move.T, move) * second).sum() + 2 * (shift * pmath.matmul(move, m)).sum()
        out[v] = np.sqrt(max(0.0, square + (shift * shift).sum()))
    return out


def _motion_box(where: np.ndarray, angles, shifts, centre: np.ndarray, voxel_size: float) -> tuple[slice, ...]:
    """Box of voxels that can hold signal after the motion: ``where``'s bounding box widened by the
    largest displacement of its corners (a rigid displacement is largest at a corner) plus one voxel."""
    idx = np.argwhere(where)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    corners = np.array([[(lo, hi)[b][a] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)], dtype=float)
    corners = (corners - centre) * voxel_size
    reach = 0.0
    for a, s in zip(angles, shifts):
        moved = pmath.matmul(corners, pmath.rotation_xyz(np.deg2rad(a)).T) + s
        reach = max(reach, float(np.sqrt(((moved - corners) ** 2).sum(axis=1)).max()))
    margin = int(np.ceil(reach / voxel_size)) + 1
    return tuple(slice(max(0, int(l) - margin), min(n, int(h) + margin + 1)) for l, h, n in zip(lo, hi, where.shape))


def apply(config, where: np.ndarray, signal: np.ndarray, sigma: float, brain: np.ndarray, head: np.ndarray,
          scheme: GradientScheme, affine: np.ndarray, rng: np.random.Generator, patient: bool,
          record: dict) -> tuple[np.ndarray, np.ndarray, float | np.ndarray]:
    """Render the acquisition effects into the noise-free signal; return what the noise needs.

    Parameters
    ----------
    config : CohortConfig
    where : ndarray of bool (X, Y, Z)
        Voxels with signal.
    signal : ndarray (where.sum(), G)
        Their noise-free signal.
    sigma : float
        The subject's noise sigma.
    brain : ndarray of bool (X, Y, Z)
        Brain mask (tissue fraction > 0.5): defines brain slices and the motion's rms.
    head : ndarray (X, Y, Z, 3)
        Head mm of every voxel (where the vibration loss lies).
    scheme : GradientScheme
    affine : ndarray (4, 4)
        The diffusion grid (isotropic ``config.voxel_size``).
    rng : numpy.random.Generator
        The subject's acquisition stream.
    patient : bool
        Selects the patients' outlier-slice rate.
    record : dict
        Filled with what was drawn (for the DWI sidecar).

    Returns
    -------
    where, signal, sigma
        For :func:`~dmrilib.simulate.signal.rician_volume`: voxels with signal
        after the effects, their signal, and sigma (per voxel, ``(X, Y, Z)``,
        when ``noise_map_sd`` is on).
    """
    shape = where.shape + (signal.shape[1],)
    diffusion = scheme.bvals > 50
    if config.noise_map_sd > 0:
        sigma = sigma * _noise_map(config, rng, where.shape, affine, where)
        record["noise_map_sd"] = config.noise_map_sd
    if config.vibration_rate > 0:
        _vibration(config, rng, signal, head[where], scheme.bvecs, diffusion, record)
    spatial = config.motion_mm > 0 or max(config.outlier_slice_rate) > 0 or config.gibbs_kspace_fraction < 1
    if not spatial:
        return where, signal, sigma
    volume = np.zeros(shape, dtype=np.float32, order="F")
    volume[where] = signal
    if config.motion_mm > 0:
        angles, shifts = rigid_motion(rng, shape[3], config.motion_mm)
        idx = np.argwhere(brain).astype(np.float64)
        centre = idx.mean(axis=0) if len(idx) else (np.asarray(where.shape) - 1) / 2.0
        box = _motion_box(where, angles, shifts, centre, config.voxel_size) if where.any() else (slice(0, 0),) * 3
        origin = np.array([b.start for b in box], dtype=float)
        for v in range(1, shape[3] if where.any() else 1):
            volume[box + (v,)] = _move(volume[box + (v,)], angles[v], shifts[v], centre - origin,
                                       config.voxel_size)
        rms = _rms_displacement(angles, shifts, (idx - centre) * config.voxel_size) if len(idx) else np.zeros(shape[3])
        record["motion"] = dict(rotation_deg=angles.tolist(), translation_mm=shifts.tolist(), rms_mm=rms.tolist(),
                                rms_over_volumes_mm=float(np.sqrt((rms**2).mean())))
    rate = config.outlier_slice_rate[1 if patient else 0]
    if rate > 0:
        n_dw, nz = int(diffusion.sum()), shape[2]
        hit = rng.uniform(size=(n_dw, nz)) < rate
        factor = rng.uniform(*_DROPOUT, size=(n_dw, nz))
        hit &= brain.any(axis=(0, 1))[None]
        dw_volumes = np.flatnonzero(diffusion)
        slices = []
        for k, z in zip(*np.nonzero(hit)):
            volume[:, :, z, dw_volumes[k]] *= np.float32(factor[k, z])
            slices.append([int(dw_volumes[k]), int(z), float(factor[k, z])])
        record["outlier_slices"] = slices
        record["outlier_slice_fraction"] = len(slices) / max(1, n_dw * int(brain.any(axis=(0, 1)).sum()))
    if config.gibbs_kspace_fraction < 1:
        for v in range(shape[3]):
            volume[..., v] = gibbs_ringing(volume[..., v], config.gibbs_kspace_fraction)
        record["gibbs_kspace_fraction"] = config.gibbs_kspace_fraction
    where = (volume != 0).any(axis=3)
    return where, volume[where], sigma


def sidecar_record(config, scanner: int, snr: float, record: dict) -> dict:
    """What the acquisition and scanner effects drew for one subject (the DWI sidecar's ``SimulatedArtefacts``).

    Empty when every effect is off. Volumes and slices count from 0; the EPI
    distortion's peak (with ``distortion_spread``) is in the DWI-to-T1w sidecar.
    """
    out = dict(record)
    if config.snr_cv > 0:
        out["snr_b0"] = snr
    if config.distortion_spread > 0:
        out["distortion_spread"] = config.distortion_spread
    if max(config.scanner_share) > 0 or max(config.scanner_offset) > 0:
        out["scanner"] = dict(index=int(scanner), diffusivity_offset=config.scanner_offset[0] if scanner else 0.0,
                              snr_reduction=config.scanner_offset[1] if scanner else 0.0)
    return out
