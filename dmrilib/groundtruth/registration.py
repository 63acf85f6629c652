"""Structural (T1w) -> diffusion registration with ANTs, and carrying masks over.

The paper registers each patient's T1w to diffusion space with ANTs' symmetric
diffeomorphic registration (SyN) and carries the tumour masks over with
nearest-neighbour interpolation. :func:`register_structural_to_dwi` does the
same with ANTsPy (fixed: a diffusion-space image such as the mean b0;
moving: the T1w; Mattes mutual information; rigid by default, SyN on
request, see :class:`~dmrilib.groundtruth.RegConfig`) and returns the result
as a dense map: the structural position, in scanner mm, of every diffusion voxel
centre. Everything else follows from that map with plain numpy:

- :func:`warp_to_dwi` samples a structural image or mask at those positions
  (nearest neighbour, ANTs-style ``genericLabel``, or linear);
- :meth:`Registration.to_structural` maps any diffusion-space point;
- :func:`registration_error_mm` compares the map with the true one when it
  is known (simulated data).

The same sampler applied with the *true* map separates segmentation error
from registration error. No transform file outlives the call: ANTs writes
them into a private temporary folder that is removed on return.

Conventions: our millimetre coordinates are RAS (NIfTI/nibabel), ITK's are
LPS; :func:`_to_ants` and the point mapping convert. ANTs' forward
transforms, read as *point* transforms, map fixed-space points (diffusion) to
moving-space points (structural): the inverse sense of image warping, which
is exactly the map we need.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from scipy import ndimage

from dmrilib.groundtruth.config import RegConfig

__all__ = ["Registration", "register_structural_to_dwi", "warp_to_dwi", "registration_error_mm",
           "voxel_centres_mm"]

_LPS = np.diag([-1.0, -1.0, 1.0])
_ANTS_LOCK = threading.Lock()
_ITK_THREADS: list[int] = []  # the thread count ITK picked up (it reads it once per process)


# ----------------------------------------------------------------------------- inputs


def _as_volume(image: Any, affine: np.ndarray | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine) from a nibabel image or an array + affine, validated."""
    if hasattr(image, "affine") and hasattr(image, "get_fdata"):
        if affine is not None:
            raise ValueError(f"{name}: pass either a nibabel image or an array with an affine, not both.")
        data, affine = np.asarray(image.get_fdata(dtype=np.float32)), image.affine
    else:
        if affine is None:
            raise ValueError(f"{name}: an array needs its 4x4 voxel-to-mm affine ({name}_affine=...), "
                             "or pass a nibabel image.")
        data = np.asarray(image)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{name} must be a 3D volume, got shape {data.shape}"
                         + (" (a 4D DWI? pass its mean b0)" if data.ndim == 4 else "") + ".")
    if min(data.shape) < 4:
        raise ValueError(f"{name} has shape {data.shape}; registration needs at least 4 voxels along each axis.")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{name} contains NaN or infinite values; replace them (e.g. with 0) first.")
    if np.ptp(data) == 0:
        raise ValueError(f"{name} is constant ({float(data.flat[0])}); there is nothing to register.")
    return data.astype(np.float32, copy=False), _check_affine(affine, name)


def _check_affine(affine: Any, name: str) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"{name}: the affine must be a finite 4x4 matrix, got shape {affine.shape}.")
    if not np.allclose(affine[3], [0, 0, 0, 1]):
        raise ValueError(f"{name}: the affine's last row must be [0, 0, 0, 1], got {affine[3].tolist()}.")
    m = affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0) or abs(np.linalg.det(m)) < 1e-9:
        raise ValueError(f"{name}: the affine is singular (voxel sizes {spacing.tolist()}).")
    cos = m / spacing
    if not np.allclose(cos.T @ cos, np.eye(3), atol=1e-4):
        raise ValueError(f"{name}: the affine has shear; ANTs needs orthogonal voxel axes. Resample the image "
                         "to an unsheared grid first.")
    return affine


def voxel_centres_mm(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """Scanner mm (RAS) of every voxel centre of a grid, float64 ``(X, Y, Z, 3)``."""
    idx = np.indices(tuple(shape), dtype=np.float64)
    return np.einsum("ij,jxyz->xyzi", affine[:3, :3], idx) + affine[:3, 3]


def _to_ants(data: np.ndarray, affine: np.ndarray):
    """An ANTs image in ITK's LPS physical space from an array + RAS affine."""
    import ants

    m = _LPS @ affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32), origin=(_LPS @ affine[:3, 3]).tolist(),
                           spacing=spacing.tolist(), direction=m / spacing)


# ----------------------------------------------------------------------------- ANTs state


def _fix_itk_threads(threads: int) -> None:
    """Give ITK its thread count before its first use in this process.

    ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once, when the first
    ANTs image is made; later changes are ignored. Mattes mutual information
    sums per-thread partial results in a varying order, so only one thread
    gives bit-identical registrations (measured: ~1e-3 mm differences in the
    rigid stage and up to mm in SyN with two threads).
    """
    with _ANTS_LOCK:
        if not _ITK_THREADS:
            os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
            _ITK_THREADS.append(threads)
        elif _ITK_THREADS[0] != threads:
            warnings.warn(f"registration.threads = {threads}, but ITK already runs with {_ITK_THREADS[0]} "
                          "thread(s) in this process (it reads the setting once); use a new process to change it.",
                          RuntimeWarning, stacklevel=3)


@contextlib.contextmanager
def _ants_session(seed: int) -> Iterator[str]:
    """Seed ANTs for one registration and give it a private temporary folder.

    ANTsPy reads its random seed from the module-level ``ants.config._random_seed``;
    it is set for the call and restored after (under a lock), so nothing leaks
    into other ANTs users. The folder, with every transform file ANTs wrote,
    is removed on exit.
    """
    import ants

    with _ANTS_LOCK:
        old_seed = ants.config._random_seed
        ants.config._random_seed = _ants_seed(seed)
        try:
            with tempfile.TemporaryDirectory(prefix="dmrilib-ants-") as tmp:
                yield tmp
        finally:
            ants.config._random_seed = old_seed


def _ants_seed(seed: int) -> int:
    """A positive 31-bit ANTs seed derived from ``seed``.

    antsRegistration treats ``--random-seed 0`` as "no seed" (a different
    random sampling on every run), so seeds are hashed into [1, 2**31 - 1].
    """
    digest = hashlib.sha256(repr((int(seed), "ants")).encode()).digest()
    return 1 + int.from_bytes(digest[:8], "little") % (2**31 - 2)


# ----------------------------------------------------------------------------- result


@dataclass(frozen=True)
class Registration:
    """A structural -> diffusion registration, as a dense map on the diffusion grid.

    Attributes
    ----------
    dwi_to_structural : ndarray, float32, shape (X, Y, Z, 3)
        Structural scanner mm (RAS) of every diffusion voxel centre.
    dwi_affine : ndarray (4, 4)
        The diffusion grid.
    structural_affine : ndarray (4, 4)
    structural_shape : tuple of 3 int
        The structural grid.
    t1w_in_dwi : ndarray, float32, shape (X, Y, Z)
        The T1w resampled into diffusion space (ANTs, linear), for checking by eye.
    seconds : float
        Wall time of the registration.
    config : RegConfig
    """

    dwi_to_structural: np.ndarray
    dwi_affine: np.ndarray
    structural_affine: np.ndarray
    structural_shape: tuple[int, int, int]
    t1w_in_dwi: np.ndarray
    seconds: float
    config: RegConfig

    @property
    def dwi_shape(self) -> tuple[int, int, int]:
        return tuple(self.dwi_to_structural.shape[:3])

    def warp(self, structural: np.ndarray, interpolation: str | None = None) -> np.ndarray:
        """Carry a structural-grid image or mask to the diffusion grid (see :func:`warp_to_dwi`).

        ``interpolation`` defaults to ``config.interpolation`` for masks and
        label maps and to ``"linear"`` for float images.
        """
        structural = np.asarray(structural)
        if interpolation is None:
            interpolation = "linear" if structural.dtype.kind == "f" else self.config.interpolation
        return warp_to_dwi(structural, self.structural_affine, self.dwi_to_structural, interpolation=interpolation)

    def to_structural(self, points_mm: np.ndarray) -> np.ndarray:
        """Map diffusion-space points (scanner mm, RAS, shape (N, 3)) to structural mm.

        The dense map is interpolated trilinearly, which reproduces ANTs'
        point mapping inside the diffusion grid (its displacement field lives
        on that grid); outside it the nearest edge value is used.
        """
        pts = np.asarray(points_mm, dtype=float)
        if pts.ndim != 2 or pts.shape[1] != 3 or not np.all(np.isfinite(pts)):
            raise ValueError(f"to_structural: points must be a finite (N, 3) array of mm, got shape {pts.shape}.")
        inv = np.linalg.inv(self.dwi_affine)
        ijk = (pts @ inv[:3, :3].T + inv[:3, 3]).T
        return np.stack([ndimage.map_coordinates(self.dwi_to_structural[..., c].astype(np.float64), ijk, order=1,
                                                 mode="nearest") for c in range(3)], axis=1)


# ----------------------------------------------------------------------------- registration


def register_structural_to_dwi(t1w: Any, dwi_reference: Any, *, t1w_affine: np.ndarray | None = None,
                               dwi_affine: np.ndarray | None = None,
                               config: RegConfig | None = None) -> Registration:
    """Register a T1w image to diffusion space (ANTs: linear, then SyN).

    Parameters
    ----------
    t1w : ndarray (X', Y', Z') or nibabel image
        The moving image (structural grid).
    dwi_reference : ndarray (X, Y, Z) or nibabel image
        The fixed image, in diffusion space; the mean b0 is the natural choice.
    t1w_affine, dwi_affine : ndarray (4, 4), optional
        Voxel -> scanner mm (RAS) affines; required for arrays, not allowed
        with nibabel images (theirs are used).
    config : RegConfig, optional
        Stages, iterations, seed and threads (defaults: :class:`RegConfig`).

    Returns
    -------
    Registration

    Raises
    ------
    ValueError
        For images that are not 3D, hold NaN/inf, are constant, or come with
        a missing, singular or sheared affine.

    Notes
    -----
    The linear stage starts from ANTs' centre-of-mass alignment. The SyN stage
    (``config.syn``) starts from the linear result; with
    ``config.restrict_deformation = (0, 1, 0)`` it may only displace along y,
    the phase-encode axis, where EPI susceptibility distortion lives (ANTs
    allows a restriction only on a stage without preceding stages, hence two
    ``ants.registration`` calls). Results are bit-identical for a fixed
    ``config.seed`` with ``config.threads = 1`` (ITK's multi-threaded mutual
    information is not). ANTsPy's ``--random-seed 0`` means "unseeded", so the
    seed is hashed to a positive ANTs seed.
    """
    import ants
    import pandas as pd

    cfg = config if config is not None else RegConfig()
    t1, t1_aff = _as_volume(t1w, t1w_affine, "t1w")
    ref, ref_aff = _as_volume(dwi_reference, dwi_affine, "dwi_reference")
    t0 = time.perf_counter()
    _fix_itk_threads(cfg.threads)
    fixed, moving = _to_ants(ref, ref_aff), _to_ants(t1, t1_aff)
    with _ants_session(cfg.seed) as tmp:
        linear = ants.registration(
            fixed, moving, type_of_transform="Rigid" if cfg.linear == "rigid" else "Affine",
            outprefix=os.path.join(tmp, "linear_"), aff_metric="mattes", aff_sampling=cfg.metric_bins,
            aff_random_sampling_rate=cfg.sampling_rate, aff_iterations=cfg.linear_iterations,
            aff_shrink_factors=cfg.linear_shrink_factors, aff_smoothing_sigmas=cfg.linear_smoothing_sigmas)
        result = linear
        if cfg.syn and any(cfg.syn_iterations):
            result = ants.registration(
                fixed, moving, type_of_transform="SyNOnly", initial_transform=linear["fwdtransforms"],
                outprefix=os.path.join(tmp, "syn_"), syn_metric="CC" if cfg.syn_metric == "cc" else "mattes",
                syn_sampling=cfg.cc_radius if cfg.syn_metric == "cc" else cfg.metric_bins,
                reg_iterations=cfg.syn_iterations, grad_step=cfg.grad_step, flow_sigma=cfg.flow_sigma,
                total_sigma=cfg.total_sigma,
                restrict_transformation=None if cfg.restrict_deformation is None else tuple(cfg.restrict_deformation))
        # Forward transforms as point transforms: diffusion (fixed) mm -> structural (moving) mm, in LPS.
        centres = voxel_centres_mm(ref.shape, ref_aff).reshape(-1, 3) @ _LPS
        mapped = ants.apply_transforms_to_points(3, pd.DataFrame(centres, columns=["x", "y", "z"]),
                                                 result["fwdtransforms"])
        coords = (mapped[["x", "y", "z"]].to_numpy() @ _LPS).reshape(ref.shape + (3,)).astype(np.float32)
        warped = result["warpedmovout"].numpy().astype(np.float32)
    return Registration(dwi_to_structural=coords, dwi_affine=ref_aff, structural_affine=t1_aff,
                        structural_shape=tuple(int(s) for s in t1.shape), t1w_in_dwi=warped,
                        seconds=time.perf_counter() - t0, config=cfg)


# ----------------------------------------------------------------------------- warping and errors


def warp_to_dwi(structural: np.ndarray, structural_affine: np.ndarray, dwi_to_structural: np.ndarray, *,
                interpolation: str = "nearest") -> np.ndarray:
    """Sample a structural-grid image at the structural positions of the diffusion voxels.

    Parameters
    ----------
    structural : ndarray (X', Y', Z')
        Mask (bool), label map (integers) or image (float) on the structural grid.
    structural_affine : ndarray (4, 4)
        Its voxel -> scanner mm affine.
    dwi_to_structural : ndarray (X, Y, Z, 3)
        Structural mm of each diffusion voxel centre: :attr:`Registration.dwi_to_structural`
        (estimated) or the simulation's ``dwi_to_structural`` (true).
    interpolation : {"nearest", "label", "linear"}
        ``nearest``: nearest voxel (the paper's choice for masks). ``label``:
        like ANTs' ``genericLabel``, each label's indicator is interpolated
        linearly and the largest wins (ties go to the lower label, e.g.
        background). ``linear``: trilinear, for float images.

    Returns
    -------
    ndarray (X, Y, Z)
        Same dtype as ``structural`` (float32 for ``linear``); voxels that map
        outside the structural grid get 0 (background).
    """
    structural = np.asarray(structural)
    if structural.ndim != 3:
        raise ValueError(f"warp_to_dwi: structural must be 3D, got shape {structural.shape}.")
    coords = np.asarray(dwi_to_structural)
    if coords.ndim != 4 or coords.shape[3] != 3:
        raise ValueError(f"warp_to_dwi: dwi_to_structural must be (X, Y, Z, 3) mm, got shape {coords.shape}.")
    if not np.all(np.isfinite(coords)):
        raise ValueError("warp_to_dwi: dwi_to_structural contains NaN or infinite values.")
    affine = _check_affine(structural_affine, "structural_affine")
    if interpolation not in ("nearest", "label", "linear"):
        raise ValueError(f"warp_to_dwi: interpolation must be 'nearest', 'label' or 'linear', got {interpolation!r}.")
    inv = np.linalg.inv(affine)
    ijk = np.einsum("ij,xyzj->ixyz", inv[:3, :3], coords.astype(np.float64)) + inv[:3, 3, None, None, None]
    if interpolation == "linear":
        return ndimage.map_coordinates(structural.astype(np.float32), ijk, order=1, mode="constant",
                                       cval=0.0).astype(np.float32)
    if interpolation == "nearest":
        idx = np.rint(ijk).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.array(structural.shape)[:, None, None, None]), axis=0)
        out = np.zeros(coords.shape[:3], structural.dtype)
        out[inside] = structural[tuple(i[inside] for i in idx)]
        return out
    labels = np.unique(structural)
    if structural.dtype == bool or (labels.size <= 2 and set(labels.tolist()) <= {0, 1}):
        frac = ndimage.map_coordinates(structural.astype(np.float32), ijk, order=1, mode="constant", cval=0.0)
        return (frac > 0.5).astype(structural.dtype)
    best = np.full(coords.shape[:3], -1.0, np.float32)
    out = np.zeros(coords.shape[:3], structural.dtype)
    for value in np.union1d(labels, [0]):  # ascending: ties go to the lower label
        frac = ndimage.map_coordinates((structural == value).astype(np.float32), ijk, order=1, mode="constant",
                                       cval=float(value == 0))
        win = frac > best
        out[win], best[win] = value, frac[win]
    return out


def registration_error_mm(estimated: np.ndarray, true: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Distance (mm) between estimated and true structural positions of diffusion voxels.

    Parameters
    ----------
    estimated, true : ndarray, shape (X, Y, Z, 3)
        Structural mm of each diffusion voxel centre (:attr:`Registration.dwi_to_structural`
        and the simulation's ``dwi_to_structural``).
    mask : ndarray of bool, shape (X, Y, Z)
        Voxels to evaluate (the diffusion brain mask).

    Returns
    -------
    dict
        ``mean``, ``median``, ``p95`` and ``max`` in mm, and ``n`` voxels.
    """
    estimated, true, mask = np.asarray(estimated), np.asarray(true), np.asarray(mask, bool)
    if estimated.shape != true.shape or estimated.ndim != 4 or estimated.shape[3] != 3:
        raise ValueError(f"registration_error_mm: estimated {estimated.shape} and true {true.shape} must both "
                         "be (X, Y, Z, 3).")
    if mask.shape != estimated.shape[:3]:
        raise ValueError(f"registration_error_mm: mask has shape {mask.shape}, expected {estimated.shape[:3]}.")
    if not mask.any():
        raise ValueError("registration_error_mm: the mask is empty.")
    dist = np.linalg.norm(estimated[mask].astype(np.float64) - true[mask].astype(np.float64), axis=1)
    return {"mean": float(dist.mean()), "median": float(np.median(dist)), "p95": float(np.percentile(dist, 95)),
            "max": float(dist.max()), "n": int(dist.size)}
