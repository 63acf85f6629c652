"""Reading diffusion MRI: 4D NIfTI + FSL ``.bval``/``.bvec`` files and BIDS folders.

This is the entry point for every dMRI input, simulated or real. All reading
goes through :func:`inspect_dwi` (header and gradients) and :func:`load_dwi`
(voxel data), which validate the input once and raise :class:`DwiInputError`
with a message naming the file, the problem and what to do.

Shell selection keeps the b0 volumes (``b <= b0_threshold``) and one target
shell (``|b - target_bvalue| <= bvalue_tolerance``), so multi-shell data such
as OpenNeuro ds001226 (b = 700/1200/2800) can be reduced to the single-shell
input the models expect.

BIDS file names are taken apart by one parser (:func:`parse_bids_name`),
built by one function (:func:`bids_name`, also used by the simulator's
writer) and looked up by one lister (:func:`bids_files`), which every BIDS
reader of the package uses.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Mapping, Sequence

import nibabel as nib
import numpy as np

__all__ = [
    "DwiInputError",
    "DwiHeader",
    "DwiVolume",
    "BidsDwi",
    "BidsName",
    "DERIVATIVE_KEYS",
    "inspect_dwi",
    "load_dwi",
    "select_shell",
    "shells",
    "load_mask",
    "load_labels",
    "find_bids_dwi",
    "parse_bids_name",
    "bids_name",
    "bids_files",
    "read_participants",
    "describe",
    "check_input",
    "InputReport",
]

#: Derivative images looked up per subject, keyed by the name used in
#: :class:`BidsDwi.derivatives`, with the BIDS ``desc-``/suffix they carry.
DERIVATIVE_KEYS: Mapping[str, str] = {
    "brain": "desc-brain_mask",
    "wmgm": "desc-wmgm_mask",
    "dseg": "dseg",
    "lesion": "desc-lesion_mask",
    "infiltration": "desc-infiltration_mask",
    "tumour_dseg": "desc-tumour_dseg",
    "followup_lesion": "desc-lesion_mask",
}

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Affines of a mask and its DWI must agree to this many millimetres.
_AFFINE_ATOL = 1e-3


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


# --------------------------------------------------------------------- BIDS names

#: What a filter of :func:`bids_files` may be: None (any value), a label (that
#: value), a collection of labels (one of them; None in it admits files without
#: the entity) or a predicate on the value (None when the file lacks the entity).
EntityFilter = str | Collection[str | None] | Callable[[str | None], bool] | None


@dataclass(frozen=True)
class BidsName:
    """A BIDS file name taken apart, as :func:`parse_bids_name` reads it.

    Attributes
    ----------
    entities : mapping of str to str
        The ``key-label`` pairs in file order, keyed without the dash:
        ``sub-01_ses-pre_desc-brain_mask.nii.gz`` has ``{"sub": "01", "ses":
        "pre", "desc": "brain"}``.
    suffix : str
        The last ``_``-separated part before the extension (``"mask"``,
        ``"dwi"``, ``"T1w"``).
    extension : str
        Everything from the first ``.`` of that part (``".nii.gz"``,
        ``".bval"``); empty when there is none.
    """

    entities: Mapping[str, str]
    suffix: str
    extension: str

    def get(self, key: str) -> str | None:
        """The label of entity ``key``, or None when the name lacks it."""
        return self.entities.get(key)


def parse_bids_name(path: str | os.PathLike) -> BidsName:
    """Take a BIDS file name apart into entities, suffix and extension.

    Like nilearn's ``parse_bids_filename``: the name is split at ``_``; every
    part but the last that holds a ``-`` is an entity (key before the first
    ``-``, label after it; a repeated key keeps its first label); the last
    part is the suffix, up to its first ``.``, and the extension. Parts
    without a ``-`` are not entities and are left out.

    Parameters
    ----------
    path : path-like
        A file path or bare name (``"sub-01_dwi.nii.gz"``, or a fragment
        such as ``"desc-brain_mask"``).

    Returns
    -------
    BidsName

    See Also
    --------
    bids_name, bids_files
    """
    *parts, last = Path(path).name.split("_")
    suffix, dot, rest = last.partition(".")
    entities: dict[str, str] = {}
    for part in parts:
        key, dash, label = part.partition("-")
        if dash:
            entities.setdefault(key, label)
    return BidsName(entities=entities, suffix=suffix, extension=dot + rest)


def _label(key: str, value: str) -> str:
    """``value`` without its ``<key>-`` prefix (``"sub-01"`` and ``"01"`` both give ``"01"``)."""
    return value[len(key) + 1:] if value.startswith(f"{key}-") else value


def bids_name(entities: Mapping[str, str | None], suffix: str, extension: str = "") -> str:
    """Build a BIDS file name: ``<key>-<label>_..._<suffix><extension>``.

    The one place where the package spells a BIDS file name, so the simulated
    dataset's writer and every reader agree (:func:`parse_bids_name` takes it
    apart again).

    Parameters
    ----------
    entities : mapping of str to str or None
        Entities in the order they are written (BIDS fixes it: ``sub``,
        ``ses``, ..., ``space``, ..., ``desc``). A label may carry its
        ``<key>-`` prefix already (``"sub-01"``, as in :class:`BidsDwi`); a
        None label leaves the entity out (a dataset without sessions).
    suffix : str
        ``"dwi"``, ``"mask"``, ...
    extension : str
        ``".nii.gz"``, ``".json"``, ... (default: none).

    Returns
    -------
    str

    Examples
    --------
    >>> bids_name({"sub": "01", "ses": None, "space": "dwi", "desc": "brain"}, "mask", ".nii.gz")
    'sub-01_space-dwi_desc-brain_mask.nii.gz'
    """
    parts = [f"{key}-{_label(key, label)}" for key, label in entities.items() if label is not None]
    return "_".join([*parts, suffix]) + extension


def _entity_test(key: str, wanted: EntityFilter) -> Callable[[str | None], bool] | None:
    """The predicate on an entity's label (None: absent) that an :data:`EntityFilter` stands for."""
    if wanted is None:
        return None
    if callable(wanted):
        return wanted
    if isinstance(wanted, str):
        label = _label(key, wanted)
        return lambda value: value == label
    labels = {None if w is None else _label(key, w) for w in wanted}
    return lambda value: value in labels


def bids_files(
    folder: str | os.PathLike,
    *,
    subject: EntityFilter = None,
    session: EntityFilter = None,
    suffix: str | None = None,
    extensions: Sequence[str] = _NIFTI_SUFFIXES,
    recursive: bool = False,
    **entities: EntityFilter,
) -> list[Path]:
    """Files of a BIDS folder whose name has the given entities, suffix and extension.

    Every name is parsed once (:func:`parse_bids_name`) and compared entity
    by entity, as nilearn's ``get_bids_files`` does; the package's BIDS
    readers (:func:`find_bids_dwi`, :mod:`dmrilib.study`,
    :mod:`dmrilib.groundtruth.bids`, :mod:`dmrilib.evaluation`) all look up
    files here.

    Parameters
    ----------
    folder : path-like
        Folder to list; a missing folder has no files.
    subject, session : EntityFilter
        Filters on the ``sub`` and ``ses`` entities (a label may carry its
        ``sub-``/``ses-`` prefix). None (default) admits any value or none.
    suffix : str, optional
        The suffix the name must end with (``"dwi"``, ``"mask"``).
    extensions : sequence of str
        Extensions admitted (default ``.nii.gz`` and ``.nii``).
    recursive : bool
        Also list the files of every folder below ``folder``.
    **entities : EntityFilter
        Filters on other entities by key (``desc="brain"``, ``acq="AP"``,
        ``space=("dwi", None)``; ``**{"from": "dwi"}`` for a Python keyword).
        A label admits that value only, a collection any of its values (None
        in it admits names without the entity, ``(None,)`` only those), a
        callable is given the label (None when absent) and decides.

    Returns
    -------
    list of Path
        Sorted by path.

    See Also
    --------
    parse_bids_name, bids_name
    """
    folder = Path(folder)
    tests = {key: _entity_test(key, wanted)
             for key, wanted in {"sub": subject, "ses": session, **entities}.items()}
    tests = {key: test for key, test in tests.items() if test is not None}
    found = []
    for path in folder.glob("**/*" if recursive else "*"):
        name = parse_bids_name(path)
        if name.extension not in extensions or (suffix is not None and name.suffix != suffix):
            continue
        if all(test(name.get(key)) for key, test in tests.items()):
            found.append(path)
    return sorted(found)


# --------------------------------------------------------------------- BIDS datasets


@dataclass(frozen=True)
class BidsDwi:
    """One subject's DWI found in a BIDS dataset.

    Attributes
    ----------
    subject : str
        ``"sub-<label>"``.
    session : str or None
        ``"ses-<label>"``, or None for datasets without sessions.
    dwi, bval, bvec : Path
        The image and its gradient files.
    sidecar : Path or None
        The JSON sidecar when present.
    derivatives : dict of str to Path
        Derivative images found (keys from :data:`DERIVATIVE_KEYS`).
    """

    subject: str
    session: str | None
    dwi: Path
    bval: Path
    bvec: Path
    sidecar: Path | None = None
    derivatives: Mapping[str, Path] = field(default_factory=dict)

    def metadata(self) -> dict:
        """The JSON sidecar's content (empty when there is none)."""
        if self.sidecar is None:
            return {}
        try:
            return json.loads(self.sidecar.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DwiInputError(f"{self.sidecar.name}: not valid JSON ({exc}). Fix or remove the sidecar.") from exc


def _sessions(subject_dir: Path) -> list[str]:
    """The subject's ``ses-*`` folders that hold a ``dwi/`` folder, sorted."""
    return sorted(p.name for p in subject_dir.glob("ses-*") if p.is_dir() and (p / "dwi").is_dir())


def _choose_session(sessions: Sequence[str]) -> str:
    """The default session of a subject: the first whose name contains "pre", else the first."""
    # Pre-operative scans are what the method needs: prefer a name with "pre".
    preferred = [s for s in sessions if "pre" in s.lower()]
    return (preferred or list(sessions))[0]


def read_participants(root: str | Path):
    """Read ``participants.tsv`` of a BIDS dataset.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``participant_id`` (``"sub-<label>"``); empty when the
        file does not exist.

    Raises
    ------
    DwiInputError
        If the table lacks ``participant_id`` or lists a subject twice.
    """
    import pandas as pd

    path = Path(root) / "participants.tsv"
    if not path.is_file():
        return pd.DataFrame(index=pd.Index([], name="participant_id"))
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DwiInputError(f"{path.name}: cannot be read as a tab-separated table ({exc}).") from exc
    if "participant_id" not in table.columns:
        raise DwiInputError(
            f"{path.name}: no 'participant_id' column (columns: {list(table.columns)}). "
            "BIDS requires it as the first column, tab-separated."
        )
    for column in table.columns.drop("participant_id"):
        try:  # numeric columns (age, seed) become numbers; "n/a" keeps a column as text
            table[column] = pd.to_numeric(table[column])
        except ValueError:
            pass
    ids = table["participant_id"].map(lambda s: s if s.startswith("sub-") else f"sub-{s}")
    dup = sorted(ids[ids.duplicated()].unique())
    if dup:
        raise DwiInputError(
            f"{path.name}: subject(s) {dup} are listed more than once. Keep one row per subject."
        )
    return table.assign(participant_id=ids).set_index("participant_id")


def _is_followup(session: str | None) -> bool:
    """Whether a ``ses`` label names a follow-up session (``followup``, ``followup2``, ...)."""
    return session is not None and session.startswith("followup")


def _derivative_files(base: Path, subject: str, session: str | None, key: str) -> list[Path]:
    """The images of one :data:`DERIVATIVE_KEYS` entry of a subject under ``derivatives/<pipeline>/<subject>``."""
    wanted = parse_bids_name(DERIVATIVE_KEYS[key])
    # the desc must be the key's own; none at all for the tissue dseg, so desc-tumour_dseg is not it
    desc = wanted.get("desc") or (None,)
    if key == "followup_lesion":
        # drawn on the follow-up scan but stored in the pre-op DWI grid, in any session folder
        return bids_files(base, subject=subject, session=_is_followup, suffix=wanted.suffix, desc=desc,
                          recursive=True)
    folder = base / session / "dwi" if session else base / "dwi"
    label = _label("ses", session) if session else None

    def own_session(ses: str | None) -> bool:
        """The session's own files (any, without sessions); never a follow-up's, those are ``followup_lesion``."""
        return (label is None or ses == label) and not _is_followup(ses)

    return bids_files(folder, subject=subject, suffix=wanted.suffix, desc=desc, session=own_session)


def _find_derivatives(
    root: Path, pipeline: str | None, subject: str, session: str | None
) -> dict[str, Path]:
    """The derivative images of one subject and session, keyed as :data:`DERIVATIVE_KEYS`."""
    if pipeline is None:
        return {}
    base = root / "derivatives" / pipeline / subject
    if not base.is_dir():
        return {}
    prefix = f"{subject}_{session}" if session else subject
    found: dict[str, Path] = {}
    for key, suffix in DERIVATIVE_KEYS.items():
        hits = _derivative_files(base, subject, session, key)
        if len(hits) > 1:
            raise DwiInputError(
                f"{base}: several '{suffix}' images for {prefix}: {[p.name for p in hits]}. "
                "Keep one per subject and session."
            )
        if hits:
            found[key] = hits[0]
    return found


def _dwi_folder(subject_dir: Path, sessions: Sequence[str], session: str | None) -> tuple[str | None, Path] | None:
    """The session a subject is read from and its ``dwi/`` folder; None when ``session`` is not among its sessions."""
    if not sessions:
        return None if session is not None else (None, subject_dir / "dwi")
    if session is None:
        session = _choose_session(sessions)
    elif session not in sessions:
        return None
    return session, subject_dir / session / "dwi"


def _dwi_image(dwi_dir: Path, subject: str, acq: str | None) -> Path | None:
    """The one ``*_dwi.nii[.gz]`` of a dwi/ folder (with ``acq``), None without; several are an error."""
    images = bids_files(dwi_dir, suffix="dwi", acq=acq)
    if len(images) > 1:
        raise DwiInputError(
            f"{dwi_dir}: {len(images)} DWI series for {subject}: {[p.name for p in images]}. "
            "Choose one with acquisition='<label>' (the acq- entity; prepare.acquisition in a profile), "
            "or remove the others."
        )
    return images[0] if images else None


def _bids_dwi(root: Path, pipeline: str | None, subject: str, session: str | None, dwi: Path) -> BidsDwi:
    """A found DWI with its gradient files (required), sidecar and derivatives."""
    bval, bvec = _sidecar(dwi, ".bval"), _sidecar(dwi, ".bvec")
    for grad in (bval, bvec):
        if not grad.is_file():
            raise DwiInputError(
                f"{grad}: missing; {dwi.name} needs its {grad.suffix} file beside it with the "
                "same name (BIDS inheritance from the dataset root is not supported)."
            )
    sidecar = _sidecar(dwi, ".json")
    return BidsDwi(
        subject=subject,
        session=session,
        dwi=dwi,
        bval=bval,
        bvec=bvec,
        sidecar=sidecar if sidecar.is_file() else None,
        derivatives=_find_derivatives(root, pipeline, subject, session),
    )


def _check_found(root: Path, session: str | None, acq: str | None, found: Sequence[BidsDwi],
                 missing_session: Sequence[str]) -> None:
    """Raise for subjects without the requested session, or for a dataset where no DWI was found."""
    if missing_session:
        raise DwiInputError(
            f"{root.name}: session '{session}' not found for {list(missing_session)}. Pick a session all "
            "subjects have, or leave session unset to take each subject's pre-operative one."
        )
    if not found:
        raise DwiInputError(
            f"{root}: no diffusion data found (expected sub-*/[ses-*/]dwi/*_dwi.nii[.gz]"
            + (f" with {acq}" if acq else "")
            + "). Check that this is the root of a BIDS dataset with a dwi/ folder per subject."
        )


def find_bids_dwi(
    root: str | Path,
    *,
    session: str | None = None,
    pipeline: str | None = "simulation",
    acquisition: str | None = None,
) -> list[BidsDwi]:
    """Find one DWI per subject in a BIDS dataset.

    Looks for ``sub-*/[ses-*/]dwi/*_dwi.nii[.gz]`` with ``.bval``/``.bvec``
    (and optional ``.json``) beside each image, and derivative masks under
    ``derivatives/<pipeline>/``.

    Parameters
    ----------
    root : path-like
        Dataset root (holds ``dataset_description.json``).
    session : str, optional
        Session to use, with or without the ``ses-`` prefix. Default: per
        subject, the first session (sorted) whose name contains "pre", else
        the first session. Datasets without sessions are supported.
    pipeline : str or None
        Derivatives pipeline folder to search for masks (default
        ``"simulation"``); None skips derivatives.
    acquisition : str, optional
        Keep only files with this ``acq-`` entity, for datasets with several
        DWI series per session.

    Returns
    -------
    list of BidsDwi
        Sorted by subject.

    Raises
    ------
    DwiInputError
        If the folder holds no DWI, a subject has several DWI series that
        ``acquisition`` does not separate, a requested session is missing, a
        gradient file is missing, or ``participants.tsv`` repeats a subject.
    """
    root = Path(root)
    if not root.is_dir():
        raise DwiInputError(f"{root}: no such folder. Pass the root of a BIDS dataset.")
    read_participants(root)  # validates participants.tsv (duplicates) early
    if session is not None and not session.startswith("ses-"):
        session = f"ses-{session}"
    acq = None if acquisition is None else (acquisition if acquisition.startswith("acq-") else f"acq-{acquisition}")
    found: list[BidsDwi] = []
    missing_session: list[str] = []
    for subject_dir in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        sessions = _sessions(subject_dir)
        if not sessions and not (subject_dir / "dwi").is_dir():
            continue  # no diffusion data at all (e.g. anat only)
        chosen = _dwi_folder(subject_dir, sessions, session)
        if chosen is None:
            missing_session.append(subject_dir.name)
            continue
        ses, dwi_dir = chosen
        dwi = _dwi_image(dwi_dir, subject_dir.name, acq)
        if dwi is not None:
            found.append(_bids_dwi(root, pipeline, subject_dir.name, ses, dwi))
    _check_found(root, session, acq, found, missing_session)
    return found


# ----------------------------------------------------------------- describe


@dataclass(frozen=True)
class InputReport:
    """What :func:`check_input` found: a readable summary and the problems in it.

    Attributes
    ----------
    text : str
        The summary printed by ``dmri info`` (problems included, one per line).
    problems : tuple of str
        One message per unusable subject (or "no diffusion data found");
        empty when every DWI loads.
    """

    text: str
    problems: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.text


def _shell_text(counts) -> str:
    return ", ".join(f"b={b} x{n}" for b, n in counts)


def _size_text(voxel_size) -> str:
    return " x ".join(f"{v:.3g}" for v in voxel_size)


def _check_dwi(path: Path, bval: Path | None, bvec: Path | None, header_only: bool) -> DwiHeader:
    """Header and gradients of a DWI, and unless ``header_only`` its voxels, checked as :func:`load_dwi` does."""
    if not header_only:
        # load_dwi's own checks (readable to the end, finite, non-negative), not a copy of them
        load_dwi(path, bval=bval, bvec=bvec, target_bvalue=None)
    return inspect_dwi(path, bval=bval, bvec=bvec, target_bvalue=None)


def _describe_file(path: Path, header_only: bool) -> str:
    header = _check_dwi(path, None, None, header_only)
    counts = shells(header.bvals, header.b0_threshold)
    dw = header.bvals > header.b0_threshold
    n_dirs = len(np.unique(np.round(header.bvecs[dw], 3), axis=0)) if dw.any() else 0
    img = nib.load(str(path))
    lines = [
        f"DWI file: {path}",
        f"  grid: {'x'.join(map(str, header.shape[:3]))} voxels, {header.shape[3]} volumes",
        f"  voxel size: {_size_text(header.voxel_size)} mm, "
        f"orientation {''.join(nib.aff2axcodes(header.affine))}, dtype {img.get_data_dtype()}",
        f"  shells: {_shell_text(counts.items())}",
        f"  diffusion directions: {n_dirs}",
        f"  gradients: {header.bval_path.name}, {header.bvec_path.name}",
    ]
    if header_only:
        lines.append("  voxel data: not read (--header-only)")
    return "\n".join(lines)


def _describe_bids(root: Path, header_only: bool) -> InputReport:
    participants = read_participants(root)
    subject_dirs = sorted(p for p in root.glob("sub-*") if p.is_dir())
    lines = [f"BIDS dataset: {root}"]
    problems: list[str] = []
    desc = root / "dataset_description.json"
    if desc.is_file():
        try:
            name = json.loads(desc.read_text()).get("Name")
        except (OSError, json.JSONDecodeError):
            name = None
        if name:
            lines.append(f"  name: {name}")
    sessions = Counter(s for d in subject_dirs for s in (_sessions(d) or ["(no session)"]))
    lines.append(f"  subjects: {len(subject_dirs)}; sessions with dwi: "
                 + (", ".join(f"{s} ({n})" for s, n in sorted(sessions.items())) or "none"))
    if len(participants) and "group" in participants.columns:
        groups = Counter(participants["group"])
        lines.append("  groups (participants.tsv): " + ", ".join(f"{g}: {n}" for g, n in sorted(groups.items())))
    elif len(participants):
        lines.append(f"  participants.tsv: {len(participants)} rows, columns {list(participants.columns)}")
    else:
        lines.append("  participants.tsv: absent")
    pipelines = sorted(p.name for p in (root / "derivatives").glob("*") if p.is_dir())
    try:
        dwis = find_bids_dwi(root, pipeline=None)
    except DwiInputError as exc:
        problems.append(str(exc))
        lines.append(f"  problem: {exc}")
        dwis = []
    if dwis:
        lines.append(f"  dwi series used (one per subject): {len(dwis)}, "
                     f"e.g. {dwis[0].dwi.relative_to(root)}"
                     + (" (headers only)" if header_only else ""))
        grids: Counter = Counter()
        schemes: Counter = Counter()
        subject_problems = []
        for item in dwis:
            try:
                header = _check_dwi(item.dwi, item.bval, item.bvec, header_only)
            except DwiInputError as exc:
                subject_problems.append(str(exc))
                continue
            zooms = tuple(round(v, 2) for v in header.voxel_size)
            grids[(header.shape, zooms)] += 1
            schemes[tuple(shells(header.bvals, header.b0_threshold).items())] += 1
        for (shape, zooms), n in grids.most_common():
            lines.append(
                f"  grid {'x'.join(map(str, shape[:3]))} ({shape[3] if len(shape) > 3 else 1} volumes) "
                f"at {' x '.join(f'{z:g}' for z in zooms)} mm: {n} subject(s)"
            )
        for scheme, n in schemes.most_common():
            lines.append(f"  shells {_shell_text(scheme)}: {n} subject(s)")
        for problem in subject_problems:
            lines.append(f"  problem: {problem}")
        problems += subject_problems
    for pipeline in pipelines:
        counts: Counter = Counter()
        for item in dwis:
            counts.update(_find_derivatives(root, pipeline, item.subject, item.session).keys())
        summary = ", ".join(f"{k}: {counts[k]}" for k in DERIVATIVE_KEYS if counts[k]) or "no DWI-space masks for these sessions"
        lines.append(f"  derivatives/{pipeline}: {summary}")
    if not pipelines:
        lines.append("  derivatives: none")
    return InputReport("\n".join(lines), tuple(problems))


def check_input(path: str | Path, *, header_only: bool = False) -> InputReport:
    """Check a DWI file or a BIDS dataset as the pipeline will read it, and summarise it.

    What ``dmri info`` runs. Every DWI is read as :func:`load_dwi` reads it
    (all volumes), so a truncated file or a NaN voxel is found here rather
    than hours later.

    Parameters
    ----------
    path : path-like
        A 4D NIfTI (with ``.bval``/``.bvec`` beside it) or a BIDS dataset root.
    header_only : bool
        Check headers and gradient files only (:func:`inspect_dwi`), without
        reading the voxels: much faster on a large dataset, but blind to
        truncated files and bad voxel values.

    Returns
    -------
    InputReport
        The summary and, for a BIDS dataset, the problems found per subject
        (a dataset with unusable subjects is still summarised).

    Raises
    ------
    DwiInputError
        If the path does not exist, a single file is not a valid DWI, or
        ``participants.tsv`` cannot be used.
    """
    path = Path(path)
    if path.is_dir():
        return _describe_bids(path, header_only)
    if path.is_file():
        return InputReport(_describe_file(path, header_only))
    raise DwiInputError(f"{path}: no such file or folder. Pass a DWI .nii[.gz] or a BIDS dataset root.")


def describe(path: str | Path, *, header_only: bool = False) -> str:
    """A readable summary of a DWI file or a BIDS dataset.

    For a file: grid, voxel size, orientation, shells with volume counts and
    number of directions. For a BIDS folder: subjects and sessions, groups
    from ``participants.tsv``, grids and shells across subjects, derivative
    masks found, and a ``problem:`` line per subject whose DWI does not load.
    The text of :func:`check_input`, which says whether problems were found.

    Raises
    ------
    DwiInputError
        If the path does not exist or the file is not a valid DWI.
    """
    return check_input(path, header_only=header_only).text
