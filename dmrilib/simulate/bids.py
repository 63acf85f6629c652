"""Writing simulated subjects as BIDS, and sha256 manifests of a dataset.

Files are reproducible byte for byte: NIfTI images are serialised in memory
and gzip-compressed with a zero timestamp and no embedded file name, JSON is
key-sorted, and nothing time- or machine-dependent is written.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from dmrilib._atomic import atomic_path, write_text_atomic
from dmrilib.integrity import sha256_file
from dmrilib.io import DERIVATIVE_KEYS, bids_name, parse_bids_name
from dmrilib.simulate.subject import SimulatedSubject

__all__ = ["write_nifti", "write_subject", "subject_files", "points_xfm_sidecar", "artefacts_sidecar",
           "write_manifest", "verify_manifest", "PIPELINE"]

#: Derivatives pipeline name of simulated ground truth.
PIPELINE = "simulation"


def write_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray, *, dtype=None,
                compresslevel: int = 1) -> Path:
    """Write a NIfTI-1 image reproducibly (``.nii`` or ``.nii.gz``), atomically.

    Parameters
    ----------
    dtype : numpy dtype, optional
        On-disk type. Float data written as ``int16`` are rounded to integer
        intensities with ``scl_slope = 1``, as scanners store magnitude images
        (the simulated intensities are scaled so white matter b0 is 1000, so
        rounding is far below the noise).
    compresslevel : int
        gzip level (1 is fast; the noise in diffusion images barely compresses).
    """
    path = Path(path)
    if dtype is not None and np.dtype(dtype) == np.int16 and np.issubdtype(data.dtype, np.floating):
        data = np.rint(data)
        if data.size and (data.max() > 32767 or data.min() < -32768):
            data = np.clip(data, -32768, 32767)
        data = data.astype(np.int16)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if dtype is not None:
        img.set_data_dtype(dtype)
    if data.dtype == np.int16:
        img.header.set_slope_inter(1.0, 0.0)
    raw = img.to_bytes()
    payload = gzip.compress(raw, compresslevel=compresslevel, mtime=0) if path.name.endswith(".gz") else raw
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return path


def _json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


#: Ground truth on the DWI grid, in the order :func:`subject_files` lists it (keys of
#: :data:`dmrilib.io.DERIVATIVE_KEYS`, whose names the reader looks for).
_DWI_TRUTH = ("brain", "wmgm", "dseg", "lesion", "infiltration", "tumour_dseg")
#: Ground truth on the T1w grid, in the order :func:`subject_files` lists it.
_ANAT_TRUTH = ("desc-lesion_mask", "desc-tumour_dseg", "desc-brain_mask")
#: The true DWI-to-T1w point map (:func:`points_xfm_sidecar`).
_POINTS_XFM = {"from": "dwi", "to": "T1w", "desc": "points"}


def _file_name(label: str, session: str, name: str, extension: str, **entities: str) -> str:
    """``sub-<label>_ses-<session>_<entities>_<name><extension>``, ``name`` a suffix or ``desc-<d>_<suffix>``."""
    tail = parse_bids_name(name)
    return bids_name({"sub": label, "ses": session, **entities, **tail.entities}, tail.suffix, extension)


def subject_files(root: str | os.PathLike, label: str, *, followup: bool) -> list[Path]:
    """Every file :func:`write_subject` writes for ``sub-<label>`` (for checks).

    Order: raw DWI (image, .bval, .bvec, .json), T1w, FLAIR; the DWI-grid
    truth (brain, WM+GM, tissue dseg, lesion, infiltration, tumour dseg); the
    T1w-grid truth (lesion, tumour dseg, brain); the DWI-to-T1w point map and
    its sidecar; then, with a follow-up, its FLAIR and lesion. Names are built
    by :func:`dmrilib.io.bids_name`, so :func:`dmrilib.io.find_bids_dwi` reads
    what is written here.
    """
    root = Path(root)
    sub = f"sub-{label}"
    pre = root / sub / "ses-pre"
    deriv = root / "derivatives" / PIPELINE / sub / "ses-pre" / "dwi"
    anat = root / "derivatives" / PIPELINE / sub / "ses-pre" / "anat"
    files = [pre / "dwi" / _file_name(label, "pre", "dwi", ext) for ext in (".nii.gz", ".bval", ".bvec", ".json")]
    files += [pre / "anat" / _file_name(label, "pre", suffix, ".nii.gz") for suffix in ("T1w", "FLAIR")]
    files += [deriv / _file_name(label, "pre", DERIVATIVE_KEYS[key], ".nii.gz", space="dwi") for key in _DWI_TRUTH]
    files += [anat / _file_name(label, "pre", name, ".nii.gz", space="T1w") for name in _ANAT_TRUTH]
    files += [deriv / _file_name(label, "pre", "xfm", ext, **_POINTS_XFM) for ext in (".nii.gz", ".json")]
    if followup:
        files.append(root / sub / "ses-followup" / "anat" / _file_name(label, "followup", "FLAIR", ".nii.gz"))
        files.append(root / "derivatives" / PIPELINE / sub / "ses-followup" / "dwi"
                     / _file_name(label, "followup", DERIVATIVE_KEYS["followup_lesion"], ".nii.gz", space="dwi"))
    return files


def write_subject(root: str | os.PathLike, label: str, subject: SimulatedSubject) -> list[Path]:
    """Write one simulated subject into the BIDS dataset at ``root``.

    Layout (see ARCHITECTURE.md): raw DWI (int16 with scale factor), T1w and
    FLAIR in ``sub-<label>/ses-pre``; the follow-up FLAIR in
    ``ses-followup``; masks and ground truth in ``derivatives/simulation``:
    on the DWI grid under ``dwi/``, on the T1w grid under ``anat/``, and the
    true DWI-to-T1w mapping (``_from-dwi_to-T1w_desc-points_xfm``, see
    :func:`points_xfm_sidecar`) under ``dwi/``.
    """
    followup = subject.flair_followup is not None
    files = subject_files(root, label, followup=followup)
    it = iter(files)
    dwi_path, bval_path, bvec_path, json_path, t1_path, flair_path = (next(it) for _ in range(6))
    write_nifti(dwi_path, subject.dwi, subject.affine, dtype=np.int16)
    write_text_atomic(bval_path, " ".join(f"{b:g}" for b in subject.bvals) + "\n")
    write_text_atomic(bvec_path, "\n".join(" ".join(f"{v:.6f}" for v in row) for row in subject.bvecs.T) + "\n")
    sidecar = {
        "Simulated": True,
        "Manufacturer": "dmrilib.simulate",
        "SNR_b0_WhiteMatter": round(subject.snr, 4),
        "NoiseSigma": round(subject.sigma, 4),
        "GradientScheme": "dipy small_64D (real 64-direction scheme)",
        "Seed": subject.info["seed"],
    }
    if subject.info.get("simulated_artefacts"):
        sidecar["SimulatedArtefacts"] = artefacts_sidecar(subject.info["simulated_artefacts"])
    _json(json_path, sidecar)
    if subject.t1w is not None:
        write_nifti(t1_path, subject.t1w, subject.structural_affine, dtype=np.int16)
        write_nifti(flair_path, subject.flair, subject.structural_affine, dtype=np.int16)
    masks = (subject.brain_mask, subject.wmgm_mask, subject.dseg, subject.lesion, subject.infiltration,
             subject.tumour_dseg)
    for data in masks:
        write_nifti(next(it), np.asarray(data, dtype=np.uint8), subject.affine, compresslevel=6)
    anat_truth = (subject.structural_lesion, subject.structural_tumour_dseg, subject.structural_brain_mask)
    for data in anat_truth:
        path = next(it)
        if data is not None:
            write_nifti(path, np.asarray(data, dtype=np.uint8), subject.structural_affine, compresslevel=6)
    xfm_path, xfm_json = next(it), next(it)
    write_nifti(xfm_path, np.asarray(subject.dwi_to_structural, dtype=np.float32), subject.affine)
    _json(xfm_json, points_xfm_sidecar(subject, label))
    if followup:
        write_nifti(next(it), subject.flair_followup, subject.structural_affine, dtype=np.int16)
        write_nifti(next(it), subject.followup_lesion.astype(np.uint8), subject.affine, compresslevel=6)
    return files


def _rounded(values, digits: int = 6):
    return np.round(np.asarray(values, dtype=float), digits).tolist()


def artefacts_sidecar(record: dict) -> dict:
    """The ``SimulatedArtefacts`` entry of a DWI sidecar: the true acquisition and scanner effects.

    ``record`` is ``SimulatedSubject.info["simulated_artefacts"]``
    (:func:`dmrilib.simulate.acquisition.sidecar_record`); volumes and slices
    count from 0, numbers are rounded to 6 decimals. Only the effects that
    were on appear.
    """
    out: dict = {}
    if "motion" in record:
        m = record["motion"]
        out["Motion"] = {
            "Description": "Residual rigid motion per volume (volume 0 is the reference): rotation about x, y, z "
                           "(degrees, Rz Ry Rx) about the brain's centre, translation (mm), and rms displacement "
                           "over the brain (mm).",
            "RotationDeg": _rounded(m["rotation_deg"]), "TranslationMM": _rounded(m["translation_mm"]),
            "RmsDisplacementMM": _rounded(m["rms_mm"]), "RmsOverVolumesMM": round(m["rms_over_volumes_mm"], 6)}
    if "outlier_slices" in record:
        out["OutlierSlices"] = {
            "Description": "Axial slices of diffusion-weighted volumes whose signal was multiplied by Factor "
                           "(signal dropout): [volume, slice, factor].",
            "Slices": [[v, z, round(f, 6)] for v, z, f in record["outlier_slices"]],
            "FractionOfBrainSlices": round(record["outlier_slice_fraction"], 6)}
    if "vibration" in record:
        v = record["vibration"]
        out["Vibration"] = {
            "Description": "Table vibration: posterior-parietal signal loss in the listed volumes (gradient "
                           "mostly left-right), at most Severity of the signal.",
            "Affected": v["affected"], "Severity": round(v["severity"], 6), "Volumes": v["volumes"]}
    if "noise_map_sd" in record:
        out["NoiseMapSD"] = record["noise_map_sd"]
    if "gibbs_kspace_fraction" in record:
        out["GibbsKspaceFraction"] = record["gibbs_kspace_fraction"]
    if "snr_b0" in record:
        out["SNR_b0"] = round(record["snr_b0"], 6)
    if "distortion_spread" in record:
        out["DistortionSpread"] = record["distortion_spread"]
    if "scanner" in record:
        s = record["scanner"]
        out["Scanner"] = {"Index": s["index"], "DiffusivityOffset": s["diffusivity_offset"],
                          "SNRReduction": s["snr_reduction"]}
    return out


def points_xfm_sidecar(subject: SimulatedSubject, label: str) -> dict:
    """JSON sidecar of the true DWI-to-T1w point map of ``sub-<label>``.

    Says what the 4D image holds (for each DWI voxel, the T1w scanner mm of
    the anatomy it shows) and the parameters that made it: the between-session
    head movement, its rigid part as a 4x4 matrix, and the EPI distortion
    (axis, peak, range).
    """
    info = subject.info
    return {
        "Description": (
            "Ground-truth DWI-to-T1w mapping of a simulated subject: volume k (k = 0, 1, 2) holds, for "
            "every voxel of the DWI grid, the x, y, z (k) scanner coordinate in mm (RAS) in the T1w "
            "image's space of the anatomical point that DWI voxel shows. It includes the head movement "
            "between the sessions and the DWI's susceptibility distortion."
        ),
        "Simulated": True,
        "SourceImage": f"sub-{label}/ses-pre/dwi/{_file_name(label, 'pre', 'dwi', '.nii.gz')}",
        "TargetImage": f"sub-{label}/ses-pre/anat/{_file_name(label, 'pre', 'T1w', '.nii.gz')}",
        "Units": "mm",
        "FromSpace": "dwi",
        "ToSpace": "T1w",
        "HeadMotion": {
            "Description": (
                "Head movement from the diffusion scan to the T1w session: rotation about x, y, z (degrees, "
                "applied as Rz Ry Rx) about CentreMM, then translation (mm). RigidDwiToT1w is the same "
                "map as a 4x4 matrix from undistorted DWI scanner mm to T1w scanner mm."
            ),
            "RotationDeg": _rounded(info["structural_motion_deg"]),
            "TranslationMM": _rounded(info["structural_motion_mm"]),
            "CentreMM": _rounded(info["head_pose_centre_mm"]),
            "RigidDwiToT1w": _rounded(info["dwi_to_structural_rigid"]),
        },
        "EpiDistortion": {
            "Description": (
                "Susceptibility distortion of the DWI along the phase-encode axis: the DWI voxel at "
                "scanner position x shows the tissue that an undistorted scan places at x + d(x) along y. "
                "PeakInBrainMM is the largest |d| and RangeMM the smallest and largest d in the DWI brain mask."
            ),
            "PhaseEncodingAxis": info["phase_encoding_axis"],
            "PeakInBrainMM": round(info["epi_distortion_peak_mm"], 6),
            "RangeMM": _rounded(info["epi_distortion_range_mm"]),
        },
    }


def _dataset_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def write_manifest(cohort_dir: str | os.PathLike, out_file: str | os.PathLike) -> Path:
    """Write ``sha256  relative/path`` lines (``sha256sum -c`` format) for every file.

    Hidden files and folders are skipped.
    """
    root = Path(cohort_dir)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder; pass the root of a simulated cohort.")
    lines = [f"{sha256_file(p)}  {p.relative_to(root).as_posix()}" for p in _dataset_files(root)]
    return write_text_atomic(out_file, "\n".join(lines) + "\n")


def verify_manifest(cohort_dir: str | os.PathLike, manifest: str | os.PathLike) -> list[str]:
    """Compare a dataset with a manifest.

    Returns
    -------
    list of str
        One line per problem (``missing``, ``changed`` or ``extra`` file); empty
        when the dataset matches the manifest exactly.
    """
    root = Path(cohort_dir)
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ValueError(f"{manifest}: no such manifest file.")
    expected = {}
    for line in manifest.read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            expected[rel.strip()] = digest
    problems = []
    present = {p.relative_to(root).as_posix(): p for p in _dataset_files(root)} if root.is_dir() else {}
    for rel, digest in sorted(expected.items()):
        if rel not in present:
            problems.append(f"missing: {rel}")
        elif sha256_file(present[rel]) != digest:
            problems.append(f"changed: {rel}")
    problems += [f"extra: {rel}" for rel in sorted(set(present) - set(expected))]
    return problems
