"""One diffusion shell resampled to a fixed set of gradient directions.

Why: the networks read the shell's volumes as input channels, so every
subject must have the same channels in the same order. The simulated cohort
is acquired on dipy's ``small_64D`` scheme (64 directions at b=1000, the
paper's layout), but real datasets rarely are: OpenNeuro ds001226 has about 30
directions per shell (b=700/1200/2800), and their number and order differ
between scanners and even subjects. :func:`resample_shell` predicts each
voxel's signal at a fixed direction set (:func:`target_directions`), which
gives real and simulated cohorts the same channel layout.

Method: a regularised fit of the real, symmetric spherical harmonics
(dipy's ``descoteaux07`` basis, ``legacy=False``, even orders only) with
the Laplace-Beltrami penalty ``smooth`` (Descoteaux et al. 2007, MRM 58:497),
evaluated at the target directions: exactly what
``dipy.reconst.shm.sf_to_sh(..., smooth=smooth)`` followed by ``sh_to_sf``
does, folded into one (M x N) matrix applied to all voxels.

What it assumes: at clinical b-values (up to ~1500 s/mm^2) the signal is a
smooth, antipodally symmetric function of the direction (a direction and its
opposite measure the same thing), so a tensor or an order-4 SH fit to ~30
well-spread directions predicts new directions well. Measured on noiseless
single tensors (MD 0.8e-3 mm^2/s, b=1000, 30 directions, default order 4 and
``smooth``): largest error of the attenuation 0.007 (FA 0.3) and 0.04
(FA 0.8), nearly all from the regulariser's shrinkage (0.0004 and 0.013
without it). With noise it pays: at SNR 30 (b0) the resampled values lie
closer to the noiseless truth (rms 0.018 at FA 0.3, 0.028 at FA 0.8) than
one measured direction does (0.033). See ``tests/test_directions.py``.

Limits: the resampled channels are interpolated, not measured. They carry
no more angular information than the acquired directions (an order-4 fit
from 30 directions cannot show the sharper crossing-fibre profiles of high
b-values), neighbouring channels become correlated, and noise is smoothed
(its level per channel falls, its spatial texture changes), so a network
trained on measured 64-direction data sees slightly different statistics.
Directions are taken in the frame of the given ``bvecs`` (the image axes for
FSL ``.bvec`` files): the target set is fixed in that frame, not in the
scanner's. One shell at a time: b-values differing within the shell (a few
percent) are ignored.
"""
from __future__ import annotations

import numpy as np

__all__ = ["DIRECTION_SETS", "target_directions", "choose_sh_order", "resample_shell"]

#: Names accepted by :func:`target_directions` (and ``prepare.directions``).
DIRECTION_SETS = ("small_64D",)

#: Highest order :func:`choose_sh_order` picks: order 8 (45 coefficients) already
#: resolves more than a clinical single shell holds; higher orders fit noise.
_MAX_AUTO_ORDER = 8
#: Directions needed per coefficient when the order is chosen automatically.
_DIRECTIONS_PER_COEFFICIENT = 1.5
#: |norm - 1| allowed for a "unit" direction: 4-decimal .bvec files are within 1e-4.
_UNIT_TOLERANCE = 1e-3
#: Two directions closer than this (up to sign) count as one when counting distinct ones.
_SAME_AXIS_DEG = 1.0
#: Voxels per matrix product: bounds the temporaries to a few MB whatever the volume.
_CHUNK = 1 << 16


def target_directions(name: str) -> np.ndarray:
    """The unit directions of a named direction set.

    Parameters
    ----------
    name : {"small_64D"}
        ``"small_64D"``: the 64 directions of dipy's ``small_64D`` scheme in
        its file order, as the simulator uses them
        (``dmrilib.simulate.signal.small64d_scheme``), so a resampled real
        cohort and a simulated one have the same channels.

    Returns
    -------
    ndarray of float64, shape (M, 3)
        Unit vectors (a new array each call).

    Raises
    ------
    ValueError
        If ``name`` is not in :data:`DIRECTION_SETS`.
    """
    if name not in DIRECTION_SETS:
        raise ValueError(f"unknown direction set {name!r}; known: {list(DIRECTION_SETS)}.")
    # Imported here: the simulator package costs ~0.4 s to import.
    from dmrilib.simulate.signal import small64d_scheme

    return np.array(small64d_scheme((1000.0,)).bvecs[1:], dtype=np.float64)


def _n_coefficients(order: int) -> int:
    return (order + 1) * (order + 2) // 2


def choose_sh_order(n_directions: int) -> int:
    """The spherical-harmonic order :func:`resample_shell` uses by default.

    The largest even order ``L <= 8`` whose number of coefficients
    ``(L + 1)(L + 2) / 2`` is at most ``n_directions / 1.5``: 1.5 directions
    per coefficient leaves the least-squares fit overdetermined enough to
    average noise. 30 directions give 4, 64 give 6.

    Parameters
    ----------
    n_directions : int
        Distinct directions of the shell (a direction and its opposite count once).

    Returns
    -------
    int
        Even order, at least 2.

    Raises
    ------
    ValueError
        If ``n_directions`` is not an integer or is below 9, too few for an
        order-2 fit (6 coefficients); order 0 would make every channel the
        shell's mean, which removes the directional information.
    """
    if isinstance(n_directions, bool) or not isinstance(n_directions, (int, np.integer)):
        raise ValueError(f"n_directions must be an integer, got {n_directions!r}.")
    best = None
    for order in range(2, _MAX_AUTO_ORDER + 1, 2):
        if _n_coefficients(order) * _DIRECTIONS_PER_COEFFICIENT <= n_directions:
            best = order
    if best is None:
        raise ValueError(
            f"{n_directions} distinct direction(s) are too few to resample a shell: an order-2 "
            f"spherical-harmonic fit needs at least {int(np.ceil(6 * _DIRECTIONS_PER_COEFFICIENT))}."
        )
    return best


def _check_directions(vectors, name: str) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, 3) with N >= 1, got {v.shape}.")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} holds NaN or infinite values; give only the shell's (non-b0) directions.")
    norms = np.linalg.norm(v, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > _UNIT_TOLERANCE)
    if bad.size:
        raise ValueError(
            f"{name} must be unit vectors: row(s) {bad[:10].tolist()} have norm "
            f"{np.round(norms[bad[:3]], 4).tolist()}. Normalise them "
            "(v / np.linalg.norm(v, axis=1, keepdims=True)) and pass the shell's volumes only, no b0."
        )
    return v / norms[:, None]


def _distinct_axes(v: np.ndarray) -> int:
    """Directions that differ by more than _SAME_AXIS_DEG, a direction and its opposite counting once."""
    cos = np.abs(v @ v.T)
    same = cos >= np.cos(np.radians(_SAME_AXIS_DEG))
    kept: list[int] = []
    for i in range(len(v)):
        if not any(same[i, j] for j in kept):
            kept.append(i)
    return len(kept)


def _sh_basis(order: int, v: np.ndarray) -> np.ndarray:
    from dipy.reconst.shm import real_sh_descoteaux

    # dipy's spherical angles: theta polar from +z, phi azimuth (as dipy.core.geometry.cart2sphere).
    # Fit and evaluation use the same basis, so the result does not depend on its sign/order
    # conventions (legacy or not): only on the span (even orders <= L) and the per-order penalty.
    theta = np.arccos(np.clip(v[:, 2], -1.0, 1.0))
    phi = np.arctan2(v[:, 1], v[:, 0])
    basis, _, _ = real_sh_descoteaux(order, theta, phi, full_basis=False, legacy=False)
    return basis


def _resampling_matrix(bvecs: np.ndarray, target: np.ndarray, order: int, smooth: float) -> np.ndarray:
    """(M, N) float64 matrix: target values = matrix @ acquired values."""
    from dipy.reconst.shm import sph_harm_ind_list, smooth_pinv

    b_in = _sh_basis(order, bvecs)
    _, l_values = sph_harm_ind_list(order)
    # As dipy's sf_to_sh: penalty sqrt(smooth) * l(l+1) on each coefficient (Laplace-Beltrami).
    fit = smooth_pinv(b_in, np.sqrt(smooth) * (-l_values * (l_values + 1.0)))
    return _sh_basis(order, target) @ fit


def resample_shell(signal, bvecs, target, *, sh_order: int | None = None, smooth: float = 0.006) -> np.ndarray:
    """Predict a shell's signal at other gradient directions (see the module docstring).

    Parameters
    ----------
    signal : array-like, shape (..., N)
        One shell per voxel (attenuation or raw diffusion-weighted signal),
        the last axis in the order of ``bvecs``; finite.
    bvecs : array-like, shape (N, 3)
        Unit gradient directions of the shell (no b0 rows).
    target : array-like, shape (M, 3)
        Unit directions to predict, e.g. ``target_directions("small_64D")``.
    sh_order : int, optional
        Even spherical-harmonic order of the fit; default
        :func:`choose_sh_order` of the number of distinct directions.
    smooth : float
        Laplace-Beltrami regularisation (dipy's ``sf_to_sh`` ``smooth``);
        >= 0. The default 0.006 is dipy's usual value for DTI-like shells.

    Returns
    -------
    ndarray, shape (..., M)
        float32 for float16/float32 input, else float64. Linear in
        ``signal`` (zero stays zero); values may leave the input's range
        slightly (e.g. an attenuation above 1 near a sharp peak): clip them
        if the range matters.

    Raises
    ------
    ValueError
        If shapes disagree, directions are not unit vectors or not finite,
        ``signal`` holds NaN/inf, ``smooth`` is negative, ``sh_order`` is not
        an even integer, or the order needs more coefficients than there are
        distinct directions (a direction and its opposite count once).

    Examples
    --------
    >>> from dmrilib.directions import resample_shell, target_directions
    >>> att64 = resample_shell(att30, bvecs30, target_directions("small_64D"))  # doctest: +SKIP
    """
    v_in = _check_directions(bvecs, "bvecs")
    v_out = _check_directions(target, "target")
    signal = np.asarray(signal)
    if signal.ndim < 1 or signal.shape[-1] != len(v_in):
        raise ValueError(
            f"signal has shape {signal.shape} but bvecs has {len(v_in)} directions; the last axis of "
            "signal must hold the shell's volumes in the order of bvecs."
        )
    if not (np.issubdtype(signal.dtype, np.floating) or np.issubdtype(signal.dtype, np.integer)):
        raise ValueError(f"signal must be a real numeric array, got dtype {signal.dtype}.")
    if isinstance(smooth, bool) or not isinstance(smooth, (int, float, np.floating, np.integer)) \
            or not np.isfinite(smooth) or smooth < 0:
        raise ValueError(f"smooth must be a finite number >= 0, got {smooth!r}.")
    n_distinct = _distinct_axes(v_in)
    if sh_order is None:
        order = choose_sh_order(n_distinct)
    else:
        if isinstance(sh_order, bool) or not isinstance(sh_order, (int, np.integer)) or sh_order < 0 \
                or sh_order % 2:
            raise ValueError(
                f"sh_order must be an even integer >= 0 (the signal is antipodally symmetric), got {sh_order!r}."
            )
        order = int(sh_order)
        if _n_coefficients(order) > n_distinct:
            raise ValueError(
                f"sh_order={order} needs {_n_coefficients(order)} coefficients but the shell has only "
                f"{n_distinct} distinct directions (of {len(v_in)}; opposite directions count once). "
                "Use a lower order, or sh_order=None to choose it from the number of directions."
            )
    out_dtype = np.float32 if signal.dtype in (np.float16, np.float32) else np.float64
    matrix_t = _resampling_matrix(v_in, v_out, order, float(smooth)).T.astype(out_dtype)
    flat = signal.reshape(-1, len(v_in))
    out = np.empty((flat.shape[0], len(v_out)), dtype=out_dtype)
    # In chunks of voxels: no float64 or boolean copy of a whole (e.g. 128x128x70x30) volume.
    for start in range(0, flat.shape[0], _CHUNK):
        block = np.asarray(flat[start:start + _CHUNK], dtype=out_dtype)
        if not np.isfinite(block).all():
            raise ValueError("signal holds NaN or infinite values; replace them (e.g. by 0 outside the brain).")
        np.matmul(block, matrix_t, out=out[start:start + _CHUNK])
    return out.reshape(*signal.shape[:-1], len(v_out))
