"""4D NIfTI + FSL ``.bval``/``.bvec`` reading, validated once: headers, gradients, shells, masks."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np


_NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Affines of a mask and its DWI must agree to this many millimetres.
_AFFINE_ATOL = 1e-3


def _shell_text(counts) -> str:
    return ", ".join(f"b={b} x{n}" for b, n in counts)


def _size_text(voxel_size) -> str:
    return " x ".join(f"{v:.3g}" for v in voxel_size)


class DwiInputError(ValueError):
    """A diffusion MRI input file or folder is missing, malformed or inconsistent.

    The message names the file first, then says what is wrong and what to do.
    """


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _sidecar(path: Path, ext: str) -> Path:
    return path.with_name(_stem(path) + ext)


@dataclass(frozen=True, eq=False)
class DwiHeader:
    """Geometry and gradients of a DWI file, validated, without the voxel data.

    Attributes
    ----------
    path, bval_path, bvec_path : Path
        The image and its FSL gradient files.
    shape : tuple of int
        Full 4D shape ``(X, Y, Z, N)`` of the file.
    affine : ndarray, shape (4, 4)
        Voxel-to-world (RAS+ mm) transform.
    bvals : ndarray, shape (N,)
        b-values in s/mm^2 of every volume in the file.
    bvecs : ndarray, shape (N, 3)
        Unit gradient directions; rows of b0 volumes are zero.
    selected : ndarray of int
        Indices of the volumes kept by shell selection (b0 volumes first in
        file order, then the target shell in file order).
    b0_threshold : float
        b-values at or below this count as b0.
    """

    path: Path
    bval_path: Path
    bvec_path: Path
    shape: tuple[int, int, int, int]
    affine: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    selected: np.ndarray
    b0_threshold: float

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm, from the affine."""
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


@dataclass(frozen=True, eq=False)
class DwiVolume:
    """A validated diffusion-weighted image with its gradient table.

    Attributes
    ----------
    data : ndarray of float32, shape (X, Y, Z, N)
        Signal of the selected volumes (b0 volumes first, then the shell).
    affine : ndarray, shape (4, 4)
        Voxel-to-world transform of the file.
    bvals : ndarray, shape (N,)
        b-values of the selected volumes in s/mm^2.
    bvecs : ndarray, shape (N, 3)
        Unit gradient directions; zero rows for b0 volumes.
    path, bval_path, bvec_path : Path
        Source files.
    b0_threshold : float
        b-values at or below this count as b0.
    """

    data: np.ndarray
    affine: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    path: Path
    bval_path: Path
    bvec_path: Path
    b0_threshold: float = 50.0

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of ``data``."""
        return tuple(self.data.shape)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """``(X, Y, Z)``."""
        return tuple(self.data.shape[:3])

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm, from the affine."""
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def is_b0(self) -> np.ndarray:
        """Boolean per volume: b-value at or below ``b0_threshold``."""
        return self.bvals <= self.b0_threshold

    @property
    def gtab(self):
        """The :class:`dipy.core.gradients.GradientTable` of the selected volumes."""
        from dipy.core.gradients import gradient_table

        return gradient_table(self.bvals, bvecs=self.bvecs, b0_threshold=self.b0_threshold)

    def __repr__(self) -> str:
        # One line, like `dmri info`: the dataclass default printed the whole voxel array.
        counts = shells(self.bvals, self.b0_threshold)
        return (f"DwiVolume({self.path.name}: {'x'.join(map(str, self.spatial_shape))} voxels of "
                f"{_size_text(self.voxel_size)} mm, {self.data.shape[3]} volumes ({_shell_text(counts.items())}), "
                f"{self.data.dtype})")


def shells(bvals: np.ndarray, b0_threshold: float = 50.0, *, rounding: float = 100.0) -> dict[int, int]:
    """Count volumes per nominal shell.

    Parameters
    ----------
    bvals : array-like, shape (N,)
        b-values in s/mm^2.
    b0_threshold : float
        b-values at or below this are counted under shell ``0``.
    rounding : float
        Other b-values are rounded to the nearest multiple of this (scanners
        report e.g. 990-1005 for a nominal b=1000).

    Returns
    -------
    dict of int to int
        Nominal b-value -> number of volumes, sorted by b-value.
    """
    bvals = np.asarray(bvals, dtype=float)
    nominal = np.where(bvals <= b0_threshold, 0.0, np.round(bvals / rounding) * rounding)
    return dict(sorted(Counter(int(v) for v in nominal).items()))


def _load_image(path: Path, what: str) -> nib.Nifti1Image:
    if not path.is_file():
        raise DwiInputError(f"{path}: no such file. Check the path to the {what}.")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for a non-image file
        raise DwiInputError(
            f"{path.name}: cannot be read as a NIfTI image ({type(exc).__name__}: {exc}). "
            f"Check that the {what} is a .nii or .nii.gz file and that it was copied completely."
        ) from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DwiInputError(
            f"{path.name}: is a {type(img).__name__}, not NIfTI. Convert the {what} to NIfTI "
            "(e.g. with dcm2niix or mri_convert)."
        )
    return img


def _read_data(img: nib.Nifti1Image, path: Path, what: str) -> np.ndarray:
    try:
        return np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # truncated gzip: EOFError, zlib.error, OSError, ValueError
        raise DwiInputError(
            f"{path.name}: the voxel data cannot be read ({type(exc).__name__}: {exc}). "
            f"The {what} is probably truncated or corrupt; copy or download it again."
        ) from exc


def _read_table(path: Path, image_name: str, what: str) -> np.ndarray:
    if not path.is_file():
        raise DwiInputError(
            f"{path}: no such file, but {image_name} needs its {what}. Put the FSL-style "
            f"{path.suffix} file beside the image with the same name, or pass it explicitly."
        )
    try:
        table = np.loadtxt(path, dtype=float, ndmin=2)
    except ValueError as exc:
        raise DwiInputError(
            f"{path.name}: not a table of numbers ({exc}). Expected the FSL layout "
            "(whitespace-separated numbers, one row per axis)."
        ) from exc
    return table


def _read_gradients(
    bval_path: Path, bvec_path: Path, n_volumes: int, image_name: str, b0_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    bvals_table = _read_table(bval_path, image_name, "b-values")
    if 1 not in bvals_table.shape:
        raise DwiInputError(
            f"{bval_path.name}: has shape {bvals_table.shape}; expected one row of b-values "
            "(FSL layout). Check that this is a .bval file."
        )
    bvals = bvals_table.ravel()
    if bvals.size != n_volumes:
        raise DwiInputError(
            f"{bval_path.name}: {bvals.size} b-values but {image_name} has {n_volumes} volumes. "
            "Check that the .bval/.bvec files belong to this image (FSL layout: one row of b-values)."
        )
    if not np.isfinite(bvals).all() or (bvals < 0).any():
        raise DwiInputError(
            f"{bval_path.name}: b-values must be finite and >= 0; found "
            f"{bvals[~np.isfinite(bvals) | (bvals < 0)][:5].tolist()}. Fix the .bval file."
        )

    table = _read_table(bvec_path, image_name, "gradient directions")
    if table.shape == (3, n_volumes):
        bvecs = table.T.copy()
    elif table.shape == (n_volumes, 3):
        bvecs = table.copy()
    else:
        raise DwiInputError(
            f"{bvec_path.name}: has shape {table.shape} but {image_name} has {n_volumes} volumes; "
            f"expected 3x{n_volumes} (FSL layout) or {n_volumes}x3. Check that the .bvec file "
            "belongs to this image."
        )
    is_b0 = bvals <= b0_threshold
    # The direction of a b0 volume is meaningless (dipy's small_64D stores NaN there).
    bvecs[is_b0] = 0.0
    norms = np.linalg.norm(bvecs, axis=1)
    bad = ~is_b0 & (~np.isfinite(norms) | (norms < 1e-6))
    if bad.any():
        idx = np.flatnonzero(bad)
        raise DwiInputError(
            f"{bvec_path.name}: volume(s) {idx[:10].tolist()} have b > {b0_threshold:g} but a zero or "
            "non-finite gradient direction. Fix the .bvec file, or raise b0_threshold if these "
            "volumes are meant as b0."
        )
    bvecs[~is_b0] /= norms[~is_b0, None]
    return bvals, bvecs


def select_shell(
    bvals: np.ndarray,
    *,
    b0_threshold: float = 50.0,
    target_bvalue: float | None = 1000.0,
    bvalue_tolerance: float = 100.0,
    source: str = "<bvals>",
) -> np.ndarray:
    """Indices of the b0 volumes and of one diffusion-weighted shell.

    Parameters
    ----------
    bvals : array-like, shape (N,)
        b-values in s/mm^2.
    b0_threshold : float
        Volumes with ``b <= b0_threshold`` are b0 volumes.
    target_bvalue : float or None
        Shell to keep; ``None`` keeps every volume.
    bvalue_tolerance : float
        Volumes with ``|b - target_bvalue| <= bvalue_tolerance`` form the shell.
    source : str
        File name used in error messages.

    Returns
    -------
    ndarray of int
        b0 indices first, then the shell's, each in file order.

    Raises
    ------
    DwiInputError
        If there is no b0 volume or no volume in the requested shell.
    """
    bvals = np.asarray(bvals, dtype=float)
    is_b0 = bvals <= b0_threshold
    if not is_b0.any():
        raise DwiInputError(
            f"{source}: no b0 volume (b <= {b0_threshold:g}); the smallest b-value is "
            f"{bvals.min():g}. Attenuation needs a b0 image: add one, or raise b0_threshold."
        )
    if target_bvalue is None:
        return np.concatenate([np.flatnonzero(is_b0), np.flatnonzero(~is_b0)])
    in_shell = ~is_b0 & (np.abs(bvals - target_bvalue) <= bvalue_tolerance)
    if not in_shell.any():
        found = {k: v for k, v in shells(bvals, b0_threshold).items() if k}
        raise DwiInputError(
            f"{source}: no volume in the shell b={target_bvalue:g}+-{bvalue_tolerance:g}; shells "
            f"present (b: count) are {found}. Set target_bvalue to one of them "
            "(prepare.target_bvalue in the profile)."
        )
    return np.concatenate([np.flatnonzero(is_b0), np.flatnonzero(in_shell)])


def inspect_dwi(
    path: str | Path,
    *,
    bval: str | Path | None = None,
    bvec: str | Path | None = None,
    b0_threshold: float = 50.0,
    target_bvalue: float | None = 1000.0,
    bvalue_tolerance: float = 100.0,
) -> DwiHeader:
    """Validate a DWI file's header and gradient files without reading voxels.

    Cheap enough to check a whole cohort before any processing. Parameters
    are those of :func:`load_dwi`.

    Returns
    -------
    DwiHeader

    Raises
    ------
    DwiInputError
        If the image is not a 4D NIfTI, the gradient files are missing or do
        not match it, or the shell selection finds no b0 or no target volume.
    """
    path = Path(path)
    img = _load_image(path, "DWI")
    if len(img.shape) != 4 or img.shape[3] < 2:
        raise DwiInputError(
            f"{path.name}: has shape {img.shape}; a DWI must be 4D (X, Y, Z, volumes) with at "
            "least a b0 and one diffusion-weighted volume. Check that this is the dwi image, "
            "not a mask or a single volume."
        )
    bval_path = Path(bval) if bval is not None else _sidecar(path, ".bval")
    bvec_path = Path(bvec) if bvec is not None else _sidecar(path, ".bvec")
    bvals, bvecs = _read_gradients(bval_path, bvec_path, img.shape[3], path.name, b0_threshold)
    selected = select_shell(
        bvals,
        b0_threshold=b0_threshold,
        target_bvalue=target_bvalue,
        bvalue_tolerance=bvalue_tolerance,
        source=bval_path.name,
    )
    affine = np.asarray(img.affine, dtype=float)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DwiInputError(
            f"{path.name}: the affine (voxel-to-world transform) is singular or not finite. "
            "Fix the header's qform/sform (e.g. fslorient) before using this image."
        )
    return DwiHeader(
        path=path,
        bval_path=bval_path,
        bvec_path=bvec_path,
        shape=tuple(int(s) for s in img.shape),
        affine=affine,
        bvals=bvals,
        bvecs=bvecs,
        selected=selected,
        b0_threshold=float(b0_threshold),
    )


def load_dwi(
    path: str | Path,
    *,
    bval: str | Path | None = None,
    bvec: str | Path | None = None,
    b0_threshold: float = 50.0,
    target_bvalue: float | None = 1000.0,
    bvalue_tolerance: float = 100.0,
    clip_negative: bool = False,
) -> DwiVolume:
    """Read a 4D DWI with its FSL ``.bval``/``.bvec`` files and select a shell.

    Parameters
    ----------
    path : path-like
        4D NIfTI (``.nii`` or ``.nii.gz``).
    bval, bvec : path-like, optional
        Gradient files; default: beside the image with the same name
        (``x_dwi.nii.gz`` -> ``x_dwi.bval``, ``x_dwi.bvec``). The ``.bvec`` may
        be 3xN (FSL) or Nx3; directions are normalised to unit length and set
        to zero for b0 volumes.
    b0_threshold : float
        Volumes with ``b <= b0_threshold`` count as b0 (default 50 s/mm^2).
    target_bvalue : float or None
        Diffusion-weighted shell to keep (default 1000); ``None`` keeps all volumes.
    bvalue_tolerance : float
        Half-width of the shell window in s/mm^2 (default 100).
    clip_negative : bool
        Negative signal is an error by default; set True to clip it to zero
        (some interpolating corrections produce small negative values).

    Returns
    -------
    DwiVolume
        float32 data of the selected volumes, b0 volumes first.

    Raises
    ------
    DwiInputError
        For every malformed input; see :func:`inspect_dwi`, plus NaN/Inf or
        negative voxels.

    See Also
    --------
    inspect_dwi, find_bids_dwi
    """
    header = inspect_dwi(
        path,
        bval=bval,
        bvec=bvec,
        b0_threshold=b0_threshold,
        target_bvalue=target_bvalue,
        bvalue_tolerance=bvalue_tolerance,
    )
    img = _load_image(header.path, "DWI")
    data = _read_data(img, header.path, "DWI")
    sel = header.selected
    if len(sel) != data.shape[3] or not np.array_equal(sel, np.arange(data.shape[3])):
        data = data[..., sel]
    finite = np.isfinite(data)
    if not finite.all():
        n_bad = int((~finite).sum())
        raise DwiInputError(
            f"{header.path.name}: {n_bad} voxel value(s) are NaN or infinite. Replace them "
            "(e.g. with 0 outside the brain) before loading; the networks cannot use them."
        )
    if (data < 0).any():
        if not clip_negative:
            raise DwiInputError(
                f"{header.path.name}: {int((data < 0).sum())} voxel value(s) are negative (minimum "
                f"{float(data.min()):g}); a magnitude signal is >= 0. Check the scaling "
                "(scl_slope/scl_inter), or pass clip_negative=True to set them to 0."
            )
        np.maximum(data, 0.0, out=data)
    return DwiVolume(
        data=np.ascontiguousarray(data, dtype=np.float32),
        affine=header.affine,
        bvals=header.bvals[sel],
        bvecs=header.bvecs[sel],
        path=header.path,
        bval_path=header.bval_path,
        bvec_path=header.bvec_path,
        b0_threshold=header.b0_threshold,
    )


def _reference_geometry(reference) -> tuple[tuple[int, int, int], np.ndarray, str]:
    if isinstance(reference, (DwiVolume, DwiHeader)):
        return tuple(reference.shape[:3]), reference.affine, reference.path.name
    shape, affine = reference
    return tuple(shape[:3]), np.asarray(affine), "the DWI"


def _load_aligned(path: str | Path, reference, what: str) -> np.ndarray:
    path = Path(path)
    shape, affine, ref_name = _reference_geometry(reference)
    img = _load_image(path, what)
    img_shape = tuple(img.shape)
    if len(img_shape) == 4 and img_shape[3] == 1:
        img_shape = img_shape[:3]
    if img_shape != shape:
        raise DwiInputError(
            f"{path.name}: shape {tuple(img.shape)} does not match {ref_name} {shape}. The {what} "
            "must be in the DWI grid (BIDS space-dwi); resample it onto the DWI first."
        )
    if not np.allclose(img.affine, affine, atol=_AFFINE_ATOL):
        raise DwiInputError(
            f"{path.name}: affine does not match {ref_name} (largest difference "
            f"{float(np.abs(img.affine - affine).max()):.3g} mm). The {what} must be in the DWI "
            "grid; resample it onto the DWI or fix its header."
        )
    data = _read_data(img, path, what).reshape(shape)
    if not np.isfinite(data).all():
        raise DwiInputError(f"{path.name}: contains NaN or infinite values. Fix the {what}.")
    return data


def load_mask(path: str | Path, reference) -> np.ndarray:
    """Read a mask that must lie on the grid of a DWI.

    Parameters
    ----------
    path : path-like
        3D NIfTI; nonzero voxels are in the mask.
    reference : DwiVolume, DwiHeader or (shape, affine)
        The DWI whose grid the mask must share.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)

    Raises
    ------
    DwiInputError
        If the file is unreadable, or its shape or affine differ from the DWI's.
    """
    return _load_aligned(path, reference, "mask") != 0


def load_labels(path: str | Path, reference) -> np.ndarray:
    """Read an integer label image (e.g. a ``dseg``) on the grid of a DWI.

    Same checks as :func:`load_mask`; returns ``int16`` labels.
    """
    return np.rint(_load_aligned(path, reference, "label image")).astype(np.int16)
