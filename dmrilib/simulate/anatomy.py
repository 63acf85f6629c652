"""Template anatomy: MNI152 tissue maps and the acquisition grid.

The simulated subjects are built on nilearn's MNI152 2009 templates (1 mm T1,
grey- and white-matter probabilities, brain mask), which ship with nilearn and
load offline. CSF is not shipped: it is the remainder ``1 - GM - WM`` inside the
brain mask, reinforced where the T1 template is dark so that the (narrow)
ventricles of the 2009 template come out as clear CSF.

Maps are smoothed once per voxel size (a Gaussian approximating the
acquisition's point-spread function, so coarse voxels carry partial volume)
and cached; subjects sample them at arbitrary millimetre coordinates.
"""
from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from dmrilib._atomic import atomic_path
from dmrilib.simulate import _portable as pmath

__all__ = ["Template", "load_template", "cache_dir", "grid_affine", "grid_coordinates", "sample_template"]

#: MNI z (mm) of the top of the brain; the grid keeps a margin above it and
#: cuts the lower cerebellum when the field of view is short, as real
#: axial acquisitions do.
_BRAIN_TOP_MM = 82.0
_TOP_MARGIN_MM = 8.0


@dataclass(frozen=True)
class Template:
    """Tissue maps on the 1 mm MNI152 grid, smoothed for one voxel size.

    Attributes
    ----------
    maps : ndarray, shape (3, X, Y, Z), float32
        CSF, GM, WM probabilities (summing to the brain mask), on the 1 mm
        MNI grid cropped to the brain.
    affine : ndarray, shape (4, 4)
        Voxel -> MNI millimetres.
    """

    maps: np.ndarray
    affine: np.ndarray


def _load_mni() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from nilearn import datasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t1_img = datasets.load_mni152_template(resolution=1)
        gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
        wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
        mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    return t1, gm, wm, mask, np.asarray(t1_img.affine, dtype=float)


_CACHE_VERSION = 1


def cache_dir() -> Path:
    """Folder of the on-disk cache of derived template data (``$DMRILIB_CACHE``)."""
    return Path(os.environ.get("DMRILIB_CACHE", Path.home() / ".cache" / "dmrilib"))


def _build_template(voxel_size: float) -> Template:
    t1, gm, wm, mask, affine = _load_mni()
    # Crop to the brain (plus a margin for the smoothing) to halve the work.
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - 12, 0)
    hi = np.minimum(idx.max(0) + 13, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    t1, gm, wm, mask = t1[box], gm[box], wm[box], mask[box]
    affine = affine.copy()
    affine[:3, 3] = pmath.matmul(affine[:3, :3], lo) + affine[:3, 3]
    maskf = mask.astype(np.float32)
    gm = gm * maskf
    wm = wm * maskf
    remainder = np.clip(1.0 - gm - wm, 0.0, 1.0) * maskf
    # Dark T1 inside the brain is fluid; the GM/WM maps alone leave parts of
    # the ventricles as partial GM.
    dark = np.clip((0.5 - t1) / 0.2, 0.0, 1.0) * maskf
    csf = np.maximum(remainder, dark)
    tissue = gm + wm
    scale = np.where(tissue > 0, (maskf - csf) / np.maximum(tissue, 1e-6), 0.0)
    gm, wm = gm * scale, wm * scale
    sigma = max(float(voxel_size) - 1.0, 0.0) / 2.355
    maps = np.stack([csf, gm, wm]).astype(np.float32)
    if sigma > 0.2:
        for k in range(maps.shape[0]):
            maps[k] = ndimage.gaussian_filter(maps[k], sigma, mode="constant")
    return Template(maps=maps, affine=affine)


@functools.lru_cache(maxsize=4)
def load_template(voxel_size: float) -> Template:
    """Tissue maps smoothed for ``voxel_size`` (mm), cached per voxel size.

    The maps are blurred with a Gaussian of FWHM ``voxel_size`` so that
    sampling them at voxel centres gives partial-volume fractions. They are
    cached in memory and on disk (``$DMRILIB_CACHE``, default
    ``~/.cache/dmrilib``): building them from nilearn's files takes seconds.

    Parameters
    ----------
    voxel_size : float
        Isotropic voxel size of the acquisition grid in mm.
    """
    path = cache_dir() / f"mni152-tissue-v{_CACHE_VERSION}-{float(voxel_size):g}mm.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                return Template(maps=data["maps"], affine=data["affine"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is rebuilt below
    template = _build_template(voxel_size)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, maps=template.maps, affine=template.affine)
    except OSError:
        pass  # read-only home: work without the disk cache
    return template


def grid_affine(shape: tuple[int, int, int], voxel_size: float) -> np.ndarray:
    """Affine of an axial RAS grid centred left-right and front-back on the MNI brain.

    The grid is placed so the top of the brain sits a few mm below the top
    slice; the bottom of the cerebellum falls outside short fields of view.
    """
    shape_arr = np.asarray(shape, dtype=float)
    vs = float(voxel_size)
    centre = np.array([0.0, -17.0, 0.0])
    extent = shape_arr * vs
    top = _BRAIN_TOP_MM + _TOP_MARGIN_MM
    centre[2] = max(top - extent[2] / 2.0, 5.0)
    origin = centre - (shape_arr - 1) / 2.0 * vs
    affine = np.diag([vs, vs, vs, 1.0])
    affine[:3, 3] = origin
    return affine


def grid_coordinates(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """Millimetre coordinates of every voxel centre, shape ``(X, Y, Z, 3)`` float32."""
    idx = np.indices(shape, dtype=np.float32)
    return pmath.affine_apply(np.moveaxis(idx, 0, -1), affine[:3, :3], affine[:3, 3])


def sample_template(template: Template, points_mm: np.ndarray, *, order: int = 1) -> np.ndarray:
    """Sample the template maps at MNI millimetre points.

    Parameters
    ----------
    points_mm : ndarray, shape (..., 3)
    order : int
        Spline order (1: trilinear).

    Returns
    -------
    ndarray, shape (3, ...)
        CSF, GM, WM at the points; zero outside the template.
    """
    inv = pmath.inv_affine(template.affine)
    flat = points_mm.reshape(-1, 3)
    vox = pmath.affine_apply(flat.astype(np.float64), inv[:3, :3], inv[:3, 3]).T
    out = np.empty((template.maps.shape[0], flat.shape[0]), dtype=np.float32)
    for k in range(template.maps.shape[0]):
        out[k] = ndimage.map_coordinates(template.maps[k], vox, order=order, mode="constant", cval=0.0)
    return out.reshape((template.maps.shape[0],) + points_mm.shape[:-1])
