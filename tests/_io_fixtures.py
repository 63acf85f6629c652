"""Tiny DWI files and BIDS trees for the io, preprocess and dataset tests."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = [-10.0, -12.0, -8.0]


def directions(n: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors, reproducible."""
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def ellipsoid_mask(shape: Sequence[int], shrink: float = 0.8) -> np.ndarray:
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    return sum(g**2 for g in grid) <= shrink**2


def synthetic_dwi(
    shape: Sequence[int] = (8, 10, 8),
    bvals: Sequence[float] = (0,) + (1000,) * 6,
    seed: int = 0,
    s0: float = 1000.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(data float32 X,Y,Z,N, bvals, bvecs N x 3, brain mask) with a tensor-like signal inside an ellipsoid."""
    rng = np.random.default_rng(seed)
    bvals = np.asarray(bvals, dtype=float)
    bvecs = directions(len(bvals), seed)
    bvecs[bvals <= 50] = 0.0
    mask = ellipsoid_mask(shape)
    md = rng.uniform(0.6e-3, 0.9e-3, size=tuple(shape))
    fibre = directions(1, seed + 1)[0]
    cos2 = (bvecs @ fibre) ** 2
    # prolate tensor: faster along the fibre, slower across
    adc = md[..., None] * (0.6 + 1.2 * cos2)
    data = s0 * np.exp(-bvals * adc) * mask[..., None]
    data += rng.uniform(0, 5, size=data.shape)
    return data.astype(np.float32), bvals, bvecs, mask


def write_dwi(
    folder: Path,
    name: str,
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    affine: np.ndarray = AFFINE,
    *,
    bvec_layout: str = "fsl",
) -> Path:
    """Write ``<name>.nii.gz`` + ``.bval`` + ``.bvec`` (3xN or Nx3) and return the image path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    np.savetxt(folder / f"{name}.bval", np.asarray(bvals)[None, :], fmt="%g")
    table = np.asarray(bvecs).T if bvec_layout == "fsl" else np.asarray(bvecs)
    np.savetxt(folder / f"{name}.bvec", table, fmt="%.8f")
    return path


def write_mask(path: Path, mask: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(mask).astype(np.uint8), affine), str(path))
    return path


def small_64d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """dipy's real 64-direction b=1000 acquisition: (data int16, affine, bvals, bvecs N x 3 with NaN b0)."""
    from dipy.data import get_fnames

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img_path, bval_path, bvec_path = get_fnames(name="small_64D")
    img = nib.load(str(img_path))
    return (
        np.asarray(img.dataobj),
        img.affine,
        np.loadtxt(bval_path),
        np.loadtxt(bvec_path),
    )


def make_bids(
    root: Path,
    subjects: Sequence[tuple[str, str]] = (("H01", "healthy"), ("H02", "healthy"), ("P01", "patient")),
    *,
    shape: Sequence[int] = (8, 10, 8),
    bvals: Sequence[float] = (0,) + (1000,) * 6,
    session: str | None = "ses-pre",
    pipeline: str | None = "simulation",
    lesion_for_patients: bool = True,
) -> Path:
    """A tiny BIDS cohort with participants.tsv and (optionally) derivative masks."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    rows = ["participant_id\tgroup\tgrade"]
    for i, (label, group) in enumerate(subjects):
        sub = f"sub-{label}"
        rows.append(f"{sub}\t{group}\t{'IV' if group == 'patient' else 'n/a'}")
        data, bv, bvec, mask = synthetic_dwi(shape, bvals, seed=i)
        prefix = f"{sub}_{session}" if session else sub
        dwi_dir = root / sub / session / "dwi" if session else root / sub / "dwi"
        write_dwi(dwi_dir, f"{prefix}_dwi", data, bv, bvec)
        (dwi_dir / f"{prefix}_dwi.json").write_text(json.dumps({"PhaseEncodingDirection": "j-"}))
        if pipeline is None:
            continue
        deriv = root / "derivatives" / pipeline / sub / (session or "") / "dwi"
        write_mask(deriv / f"{prefix}_space-dwi_desc-brain_mask.nii.gz", mask)
        wmgm = mask.copy()
        wmgm[: shape[0] // 4] = False
        write_mask(deriv / f"{prefix}_space-dwi_desc-wmgm_mask.nii.gz", wmgm)
        if group == "patient" and lesion_for_patients:
            lesion = np.zeros(shape, bool)
            lesion[3:5, 4:6, 3:5] = True
            write_mask(deriv / f"{prefix}_space-dwi_desc-lesion_mask.nii.gz", lesion)
            follow = np.zeros(shape, bool)
            follow[3:6, 4:7, 3:6] = True
            followup_dir = root / "derivatives" / pipeline / sub / "ses-followup" / "dwi"
            write_mask(followup_dir / f"{sub}_ses-followup_space-dwi_desc-lesion_mask.nii.gz", follow)
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root
