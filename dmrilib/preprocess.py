"""From a loaded DWI to network input: attenuation, brain mask, grid crop, DTI maps.

The networks see the diffusion *attenuation* ``S / mean(S_b0)`` of each
diffusion-weighted volume, clipped to [0, 1], with the b0 volumes dropped and
zero outside the brain. Every subject is then cropped or zero-padded to one
fixed network grid (64x80x64 in the paper), centred on its brain mask;
:class:`GridCrop` records the window so that any map computed on the network
grid can be put back on the subject's own grid and saved as NIfTI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np

from dmrilib.io import DwiVolume

__all__ = [
    "attenuation",
    "mean_b0",
    "brain_mask_from_b0",
    "NetworkGrid",
    "GridCrop",
    "DtiMaps",
    "dti_maps",
]


def mean_b0(dwi: DwiVolume) -> np.ndarray:
    """Mean of the b0 volumes, float32, shape (X, Y, Z)."""
    return dwi.data[..., dwi.is_b0].mean(axis=3, dtype=np.float32)


def attenuation(dwi: DwiVolume, mask: np.ndarray | None = None) -> np.ndarray:
    """Diffusion attenuation of every diffusion-weighted volume.

    Parameters
    ----------
    dwi : DwiVolume
        Loaded DWI (see :func:`dmrilib.io.load_dwi`); needs at least one b0.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Brain mask; attenuation is set to zero outside it.

    Returns
    -------
    ndarray of float32, shape (X, Y, Z, N_dw)
        ``S / mean(S_b0)`` for the non-b0 volumes in their file order,
        clipped to [0, 1]. Zero where the mean b0 is not positive (background,
        signal dropout), so the result is always finite.
    """
    if mask is not None and mask.shape != dwi.spatial_shape:
        raise ValueError(
            f"mask has shape {mask.shape} but the DWI {dwi.path.name} has grid {dwi.spatial_shape}; "
            "pass a mask on the DWI grid."
        )
    b0 = mean_b0(dwi)
    valid = b0 > 0
    if mask is not None:
        valid &= mask.astype(bool)
    inv = np.zeros_like(b0)
    np.divide(1.0, b0, out=inv, where=valid)
    out = dwi.data[..., ~dwi.is_b0] * inv[..., None]
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


def brain_mask_from_b0(dwi: DwiVolume, *, median_radius: int = 2, numpass: int = 1) -> np.ndarray:
    """A simple brain mask from the mean b0 (dipy's ``median_otsu``).

    Used when a dataset ships no brain mask. Good enough to centre the crop
    and zero the background; a proper skull strip (e.g. FSL BET) is better
    for real data.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
    """
    from dipy.segment.mask import median_otsu

    b0 = mean_b0(dwi)
    if not (b0 > 0).any():
        return np.zeros(b0.shape, dtype=bool)
    _, mask = median_otsu(b0, median_radius=median_radius, numpass=numpass)
    return np.asarray(mask, dtype=bool)


@dataclass(frozen=True)
class GridCrop:
    """A window of the network grid placed on a subject's input grid.

    ``start[i]`` is the input-grid index of network voxel 0 along axis ``i``;
    it may be negative or the window may run past the input, in which case
    the network grid is zero-padded there.

    Attributes
    ----------
    input_shape : tuple of int
        ``(X, Y, Z)`` of the subject's DWI.
    grid_shape : tuple of int
        ``(X, Y, Z)`` of the network grid.
    start : tuple of int
        Offset of the network grid in input voxels.
    """

    input_shape: tuple[int, int, int]
    grid_shape: tuple[int, int, int]
    start: tuple[int, int, int]

    def __post_init__(self) -> None:
        for name in ("input_shape", "grid_shape", "start"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"GridCrop.{name} must have 3 entries, got {value}.")
            object.__setattr__(self, name, value)

    def _slices(self) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        src, dst = [], []
        for n_in, n_grid, s in zip(self.input_shape, self.grid_shape, self.start):
            lo, hi = max(s, 0), min(s + n_grid, n_in)
            hi = max(hi, lo)
            src.append(slice(lo, hi))
            dst.append(slice(lo - s, hi - s))
        return tuple(src), tuple(dst)

    def to_grid(self, array: np.ndarray, fill: float = 0) -> np.ndarray:
        """Crop/pad an input-grid array ``(X, Y, Z, ...)`` to the network grid."""
        array = np.asarray(array)
        if tuple(array.shape[:3]) != self.input_shape:
            raise ValueError(
                f"array has spatial shape {array.shape[:3]}, expected the input grid {self.input_shape}."
            )
        out = np.full(self.grid_shape + array.shape[3:], fill, dtype=array.dtype)
        src, dst = self._slices()
        out[dst] = array[src]
        return out

    def to_input(self, array: np.ndarray, fill: float = 0) -> np.ndarray:
        """Inverse of :meth:`to_grid`: network-grid array ``(X, Y, Z, ...)`` back on the input grid.

        Input voxels outside the window get ``fill``; network voxels that
        were padding are dropped.
        """
        array = np.asarray(array)
        if tuple(array.shape[:3]) != self.grid_shape:
            raise ValueError(
                f"array has spatial shape {array.shape[:3]}, expected the network grid {self.grid_shape}."
            )
        out = np.full(self.input_shape + array.shape[3:], fill, dtype=array.dtype)
        src, dst = self._slices()
        out[src] = array[dst]
        return out

    def grid_affine(self, affine: np.ndarray) -> np.ndarray:
        """Voxel-to-world transform of the network grid, given the input grid's."""
        shift = np.eye(4)
        shift[:3, 3] = self.start
        return np.asarray(affine, dtype=float) @ shift

    def to_nifti(self, grid_map: np.ndarray, affine: np.ndarray, fill: float = 0) -> nib.Nifti1Image:
        """Put a network-grid map back on the input grid as a NIfTI image with ``affine``."""
        data = self.to_input(grid_map, fill=fill)
        if data.dtype == bool:
            data = data.astype(np.uint8)
        elif data.dtype == np.float16:  # NIfTI-1 has no half-precision type
            data = data.astype(np.float32)
        return nib.Nifti1Image(data, np.asarray(affine, dtype=float))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (see :meth:`from_dict`)."""
        return {"input_shape": list(self.input_shape), "grid_shape": list(self.grid_shape), "start": list(self.start)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[int]]) -> "GridCrop":
        """Rebuild a crop written by :meth:`to_dict`."""
        return cls(tuple(data["input_shape"]), tuple(data["grid_shape"]), tuple(data["start"]))


@dataclass(frozen=True)
class NetworkGrid:
    """The fixed grid the networks run on.

    Parameters
    ----------
    shape : tuple of int
        ``(X, Y, Z)``; the paper uses 64x80x64. Sizes divisible by 16 avoid
        cropping in the networks' four stride-2 stages.
    """

    shape: tuple[int, int, int] = (64, 80, 64)

    def __post_init__(self) -> None:
        shape = tuple(int(v) for v in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"NetworkGrid.shape must be 3 positive sizes, got {self.shape}.")
        object.__setattr__(self, "shape", shape)

    def crop_for(self, mask: np.ndarray) -> GridCrop:
        """The window centred on the bounding box of ``mask`` (on the input grid).

        An empty mask centres the window on the volume.
        """
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 3:
            raise ValueError(f"mask must be 3D, got shape {mask.shape}.")
        if mask.any():
            occupied = [np.flatnonzero(mask.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
            lo = np.array([o[0] for o in occupied])
            hi = np.array([o[-1] + 1 for o in occupied])
        else:
            lo, hi = np.zeros(3, int), np.array(mask.shape)
        start = (lo + hi - np.array(self.shape)) // 2
        return GridCrop(tuple(mask.shape), self.shape, tuple(int(s) for s in start))


@dataclass(frozen=True, eq=False)
class DtiMaps:
    """Diffusion tensor maps on the DWI grid.

    Attributes
    ----------
    fa : ndarray of float32, shape (X, Y, Z)
        Fractional anisotropy in [0, 1]; 0 outside the mask.
    md : ndarray of float32, shape (X, Y, Z)
        Mean diffusivity in mm^2/s (b-values in s/mm^2); 0 outside the mask.
    color_fa : ndarray of float32, shape (X, Y, Z, 3)
        FA-weighted absolute principal direction (RGB in [0, 1]).
    """

    fa: np.ndarray
    md: np.ndarray
    color_fa: np.ndarray


def dti_maps(dwi: DwiVolume, mask: np.ndarray | None = None, *, fit_method: str = "OLS") -> DtiMaps:
    """Fit a diffusion tensor per voxel with dipy and return FA, MD and colour FA.

    Parameters
    ----------
    dwi : DwiVolume
        DWI with b0 volumes and (ideally) one shell.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels to fit; default: where the mean b0 is positive.
    fit_method : str
        dipy's tensor fit; ``"OLS"`` (default, about 1 s per 90x90x54
        subject) or ``"WLS"`` (about 10x slower).

    Returns
    -------
    DtiMaps
    """
    from dipy.reconst.dti import TensorModel, color_fa

    if mask is None:
        mask = mean_b0(dwi) > 0
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != dwi.spatial_shape:
        raise ValueError(f"mask has shape {mask.shape}, expected the DWI grid {dwi.spatial_shape}.")
    fit = TensorModel(dwi.gtab, fit_method=fit_method).fit(dwi.data, mask=mask)
    fa = np.nan_to_num(np.asarray(fit.fa, dtype=np.float32), nan=0.0)
    np.clip(fa, 0.0, 1.0, out=fa)
    md = np.nan_to_num(np.asarray(fit.md, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    md[~mask] = 0.0
    fa[~mask] = 0.0
    rgb = np.nan_to_num(np.asarray(color_fa(fa, fit.evecs), dtype=np.float32), nan=0.0)
    return DtiMaps(fa=fa, md=md, color_fa=np.clip(rgb, 0.0, 1.0))
