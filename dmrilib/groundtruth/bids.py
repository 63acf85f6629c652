"""Read the ground-truth pipeline's inputs from a BIDS dataset.

For each subject with a DWI (found by :func:`dmrilib.io.find_bids_dwi`):
the session's ``anat/*_T1w`` and ``anat/*_FLAIR`` images, the mean b0 of the
DWI, and, when a derivatives pipeline holds them (the simulated cohort's
``derivatives/simulation``), the truth: the lesion on the T1w grid
(``*_space-T1w_desc-lesion_mask``), the lesion and brain mask on the DWI grid
and the true DWI-to-T1w point map (``*_from-dwi_to-T1w_desc-points_xfm``).
Real datasets have no truth; the pipeline then produces masks without
scoring them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import nibabel as nib
import numpy as np

from dmrilib.groundtruth.cohort import GroundTruthInput
from dmrilib.io import BidsDwi, DwiInputError, bids_files, bids_name, find_bids_dwi, load_dwi

__all__ = ["structural_files", "inputs_from_bids"]


def _one(files: list[Path], folder: Path, pattern: str, what: str, *, required: bool) -> Path | None:
    """The one image of ``files`` (found in ``folder``, named like ``pattern``); several are an error, none too if ``required``."""
    if len(files) > 1:
        raise DwiInputError(f"{folder}: several {what} images {[p.name for p in files]}; keep one per session.")
    if not files and required:
        raise DwiInputError(f"{folder}: no {what} image ({pattern}). The ground-truth pipeline needs T1w and "
                            "FLAIR in the subject's anat/ folder.")
    return files[0] if files else None


def _anat_image(anat: Path, entry: BidsDwi, prefix: str, suffix: str) -> Path:
    """The subject's ``anat/<prefix>*_<suffix>.nii[.gz]`` image of its DWI's session (required)."""
    files = bids_files(anat, subject=entry.subject, session=entry.session, suffix=suffix)
    return _one(files, anat, f"{prefix}*_{suffix}.nii*", suffix, required=True)


def _truth_images(deriv: Path, entry: BidsDwi, prefix: str) -> dict[str, Path]:
    """The simulated truth the derivatives hold: the T1w-grid lesion and the DWI-to-T1w point map."""
    files = {}
    for key, folder, suffix, entities in (
        ("structural_lesion", deriv / "anat", "mask", {"space": "T1w", "desc": "lesion"}),
        ("dwi_to_structural", deriv / "dwi", "xfm", {"from": "dwi", "to": "T1w", "desc": "points"}),
    ):
        hits = bids_files(folder, subject=entry.subject, session=entry.session, suffix=suffix, **entities)
        pattern = f"{prefix}*_{bids_name(entities, suffix)}.nii*"
        path = _one(hits, folder, pattern, key, required=False)
        if path is not None:
            files[key] = path
    return files


def structural_files(root: str | Path, entry: BidsDwi, *, pipeline: str | None = "simulation") -> dict[str, Path]:
    """Paths of one subject's structural images and, when present, its ground truth.

    Keys: ``t1w``, ``flair`` (always; an error names the folder when one is
    missing) and, if the derivatives hold them, ``structural_lesion``,
    ``dwi_to_structural``. Files are looked up with
    :func:`dmrilib.io.bids_files` (subject and, when the DWI has one, its session).
    """
    root = Path(root)
    session_parts = (entry.session,) if entry.session else ()
    anat = root.joinpath(entry.subject, *session_parts, "anat")
    prefix = f"{entry.subject}_{entry.session}" if entry.session else entry.subject
    files = {
        "t1w": _anat_image(anat, entry, prefix, "T1w"),
        "flair": _anat_image(anat, entry, prefix, "FLAIR"),
    }
    if pipeline is not None:
        files.update(_truth_images(root.joinpath("derivatives", pipeline, entry.subject, *session_parts), entry, prefix))
    return files


def _volume(path: Path, what: str, shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An image's voxels (float32, finite, of ``shape`` when given) and affine; a DwiInputError names the file."""
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises several types for broken files
        raise DwiInputError(f"{path}: cannot read the {what} image ({exc}).") from exc
    if shape is not None and data.shape[:len(shape)] != shape:
        raise DwiInputError(f"{path}: {what} has shape {data.shape}, expected {shape} (its reference grid).")
    if not np.all(np.isfinite(data)):
        raise DwiInputError(f"{path}: {what} contains NaN or infinite values.")
    return data, img.affine


def inputs_from_bids(root: str | Path, subjects: Sequence[str] | None = None, *,
                     pipeline: str | None = "simulation", b0_threshold: float = 50.0,
                     target_bvalue: float | None = 1000.0,
                     bvalue_tolerance: float = 100.0) -> Iterator[GroundTruthInput]:
    """Yield a :class:`GroundTruthInput` per subject of a BIDS dataset, one at a time.

    Every subject's files are located (and missing ones reported) before the
    first is read, so a bad dataset fails before any work starts.

    Parameters
    ----------
    root : path-like
        BIDS dataset root.
    subjects : sequence of str, optional
        ``"sub-<label>"`` ids to read, in this order (default: all with a DWI).
    pipeline : str or None
        Derivatives pipeline with the truth (``"simulation"``); None reads none.
    b0_threshold, target_bvalue, bvalue_tolerance : float
        Shell selection of the DWI, as in :func:`dmrilib.io.load_dwi`.
    """
    root = Path(root)
    entries = {e.subject: e for e in find_bids_dwi(root, pipeline=pipeline)}
    wanted = list(entries) if subjects is None else list(subjects)
    missing = [s for s in wanted if s not in entries]
    if missing:
        raise DwiInputError(f"{root}: no DWI for {missing}; subjects with one: {sorted(entries)[:10]}...")
    plan = [(entries[s], structural_files(root, entries[s], pipeline=pipeline)) for s in wanted]
    for entry, files in plan:
        dwi = load_dwi(entry.dwi, bval=entry.bval, bvec=entry.bvec, b0_threshold=b0_threshold,
                       target_bvalue=target_bvalue, bvalue_tolerance=bvalue_tolerance)
        b0 = dwi.data[..., dwi.is_b0].mean(axis=3, dtype=np.float32)
        grid = b0.shape
        t1w, s_affine = _volume(files["t1w"], "T1w")
        flair, flair_affine = _volume(files["flair"], "FLAIR", t1w.shape)
        if not np.allclose(flair_affine, s_affine, atol=1e-3):
            raise DwiInputError(f"{files['flair']}: FLAIR is not on the T1w grid (affines differ); resample it "
                                "onto the T1w first.")
        truth = {}
        if "structural_lesion" in files:
            truth["structural_lesion"] = _volume(files["structural_lesion"], "T1w-space lesion", t1w.shape)[0] > 0.5
        if "dwi_to_structural" in files:
            truth["dwi_to_structural"] = _volume(files["dwi_to_structural"], "DWI-to-T1w point map", grid)[0]
        for key, name in (("lesion", "lesion"), ("brain", "brain_mask")):
            if key in entry.derivatives:
                truth[name] = _volume(entry.derivatives[key], f"DWI-grid {key} mask", grid)[0] > 0.5
        yield GroundTruthInput(subject=entry.subject, t1w=t1w, flair=flair, structural_affine=s_affine,
                               b0=b0, dwi_affine=dwi.affine, **truth)
