"""Gradient scheme and the multi-compartment diffusion signal.

The signal of a voxel is a partial-volume sum of compartments, each a
Gaussian (tensor) attenuation ``exp(-b g^T D g)`` weighted by its volume
fraction and its own non-diffusion-weighted intensity (T2 weighting):
cylindrically symmetric tensors along up to two fibre populations in white
matter, a low-anisotropy tensor in grey matter, free water (3.0e-3 mm^2/s)
in CSF and edema, and isotropic compartments for necrosis and the cellular
enhancing rim. This is the same model as dipy's
``dipy.sims.voxel.multi_tensor`` evaluated for all voxels at once (dipy's
per-voxel call takes minutes for one subject); a test checks they agree.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmrilib.simulate import _portable as pmath
__all__ = ["GradientScheme", "small64d_scheme", "tensor_attenuation", "rician", "rician_volume"]

#: Free water diffusivity at body temperature (mm^2/s).
D_FREE = 3.0e-3


@dataclass(frozen=True)
class GradientScheme:
    """b-values (s/mm^2) and unit gradient directions (FSL convention, b0 rows zero)."""

    bvals: np.ndarray  # (N,)
    bvecs: np.ndarray  # (N, 3)


def _small64d_files() -> tuple[Path, Path]:
    # Locating the files directly avoids importing dipy.data (~3 s).
    folder = Path(importlib.util.find_spec("dipy").origin).parent / "data" / "files"
    fbval, fbvec = folder / "small_64D.bval", folder / "small_64D.bvec"
    if not (fbval.is_file() and fbvec.is_file()):
        from dipy.data import get_fnames

        _, bval_name, bvec_name = get_fnames(name="small_64D")
        fbval, fbvec = Path(bval_name), Path(bvec_name)
    return fbval, fbvec


@functools.lru_cache(maxsize=8)
def small64d_scheme(bvalues: tuple[float, ...] = (1000.0,), n_b0: int = 1) -> GradientScheme:
    """dipy's real 64-direction ``small_64D`` scheme, one shell per b-value.

    The scanner's b-values scatter around 1000 (987-1003); each shell keeps that
    scatter, scaled to its nominal b-value. dipy stores NaN for the b0
    direction; it is written as zeros here.
    """
    fbval, fbvec = _small64d_files()
    bvals = np.loadtxt(fbval)
    bvecs = np.loadtxt(fbvec)
    if bvecs.shape[0] == 3:
        bvecs = bvecs.T
    dw = bvals > 50
    vecs = bvecs[dw] / np.linalg.norm(bvecs[dw], axis=1, keepdims=True)
    rel = bvals[dw] / 1000.0
    all_b = [np.zeros(n_b0)] + [rel * b for b in bvalues]
    all_v = [np.zeros((n_b0, 3))] + [vecs for _ in bvalues]
    return GradientScheme(np.round(np.concatenate(all_b), 2), np.concatenate(all_v))


def tensor_attenuation(scheme: GradientScheme, direction: np.ndarray, d_par: np.ndarray,
                       d_perp: np.ndarray) -> np.ndarray:
    """Attenuation of cylindrically symmetric tensors for all gradients.

    Parameters
    ----------
    direction : ndarray (N, 3)
        Unit principal directions.
    d_par, d_perp : ndarray (N,)
        Axial and radial diffusivities (mm^2/s).

    Returns
    -------
    ndarray (N, G) float32
    """
    cos2 = pmath.matmul(direction.astype(np.float32), scheme.bvecs.T.astype(np.float32)) ** 2
    adc = d_perp[:, None] + (d_par - d_perp)[:, None] * cos2
    return pmath.exp(-scheme.bvals.astype(np.float32)[None] * adc).astype(np.float32)


def rician(signal: np.ndarray, sigma: float | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of ``signal`` plus complex Gaussian noise of std ``sigma`` per channel.

    ``sigma`` is one value or an array that broadcasts against ``signal`` (float32).
    """
    real = rng.standard_normal(signal.shape, dtype=np.float32)
    real *= sigma
    real += signal
    imag = rng.standard_normal(signal.shape, dtype=np.float32)
    imag *= sigma
    np.multiply(real, real, out=real)
    np.multiply(imag, imag, out=imag)
    real += imag
    return np.sqrt(real, out=real)


def rician_volume(shape: tuple[int, ...], where: np.ndarray, signal: np.ndarray, sigma: float | np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Noisy magnitude volume: Rician where there is signal, Rayleigh elsewhere.

    Parameters
    ----------
    shape : tuple
        ``(X, Y, Z, G)`` (or ``(X, Y, Z)``).
    where : ndarray of bool, shape (X, Y, Z)
        Voxels with signal.
    signal : ndarray, shape (where.sum(), G)
        Noise-free signal of those voxels.
    sigma : float or ndarray, shape (X, Y, Z)
        Noise standard deviation per channel: one value, or one per voxel
        (spatially varying noise: coil sensitivity, g-factor); the same for
        every volume of a voxel.

    Returns
    -------
    ndarray, float32, Fortran order (the NIfTI on-disk order, so writing is a copy-free dump)

    Notes
    -----
    Outside the head the magnitude of pure noise is Rayleigh,
    ``sigma * sqrt(2 E)`` with ``E ~ Exp(1)``: one draw instead of two
    Gaussians, for most of the volume.
    """
    out = np.empty(shape, dtype=np.float32, order="F")
    flat = out.reshape(-1, order="F")
    rng.standard_exponential(out=flat, dtype=np.float32)
    if np.ndim(sigma) == 0:
        flat *= 2.0 * sigma * sigma
        np.sqrt(flat, out=flat)
        out[where] = rician(signal, sigma, rng)
        return out
    sigma = np.asarray(sigma, dtype=np.float32)
    two_var = 2.0 * sigma * sigma
    out *= two_var.reshape(two_var.shape + (1,) * (out.ndim - sigma.ndim))
    np.sqrt(flat, out=flat)
    local = sigma[where]
    out[where] = rician(signal, local.reshape(local.shape + (1,) * (signal.ndim - 1)), rng)
    return out
