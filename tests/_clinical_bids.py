"""A BIDS dataset with a clinical layout, made from a simulated cohort, for the BIDS-mode tests.

The simulator writes a dataset in this package's own layout (``sub-H01``,
``ses-pre``, DWI-grid ground truth under ``derivatives/simulation``). A
user's study looks different: its own subject labels, a ``ses-preop``
session, an ``acq-`` entity on the DWI, several shells with a subset of
directions each, tumour masks drawn on the T1w only, and no trace of a
simulation. :func:`make_clinical_dataset` rewrites a simulated cohort into
that shape, so the BIDS mode is tested on what it will meet, with voxels
whose anatomy and tumours are known.

The bad-case builders (:func:`drop_group_column`, :func:`add_second_dwi_run`,
:func:`drop_patient_mask`, :func:`mask_on_other_grid`) change a dataset IN
PLACE and return the file that the resulting error must name; pass them a
copy (:func:`copy_dataset`) of a shared dataset.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "PIPELINE",
    "simulated_source",
    "make_clinical_dataset",
    "copy_dataset",
    "drop_group_column",
    "add_second_dwi_run",
    "drop_patient_mask",
    "mask_on_other_grid",
    "tumour_mask_path",
]

#: derivatives/<PIPELINE>/ holds the tumour masks of the clinical dataset
PIPELINE = "manual_segmentation"
SESSION = "ses-preop"
POSTOP = "ses-postop"
ACQ = "acq-AP"
#: The subjects of a dataset made from the smoke cohort (7 controls, 3 patients).
CONTROLS = [f"sub-CON{i:02d}" for i in range(1, 8)]
PATIENTS = [f"sub-PAT{i:02d}" for i in range(1, 4)]
MULTISHELL_BVALUES = (700.0, 1200.0, 2800.0)

_SUBJECT = re.compile(r"sub-(H|P)(\d+)")
_PREFIX = {"H": "CON", "P": "PAT"}
_GROUP = {"H": "control", "P": "patient"}
_B0_MAX = 50.0
# acquisition keys of a plausible 3 T clinical DWI sidecar (the simulator's
# own keys are removed; these keep the sidecar from being empty)
_SIMULATOR_KEYS = ("Seed", "GradientScheme", "NoiseSigma", "SNR_b0_WhiteMatter")
_DWI_SIDECAR = {
    "Manufacturer": "Siemens",
    "MagneticFieldStrength": 3,
    "PhaseEncodingDirection": "j-",
    "EchoTime": 0.089,
    "RepetitionTime": 7.2,
    "TotalReadoutTime": 0.0583,
}


def simulated_source(tmp_dir: str | Path, *, multishell: bool = False) -> Path:
    """Simulate the smoke profile's cohort (7 healthy, 3 patients) under ``tmp_dir``.

    Parameters
    ----------
    tmp_dir : path-like
        Parent folder; the cohort goes to ``<tmp_dir>/source-single`` or
        ``<tmp_dir>/source-multishell``.
    multishell : bool
        Simulate b = 700, 1200 and 2800 s/mm^2 (64 directions each) instead
        of the profile's single shell.

    Returns
    -------
    pathlib.Path
        The simulated BIDS root. Caching across tests is the caller's business.
    """
    import dataclasses

    from dmrilib.config import load_profile
    from dmrilib.simulate import simulate_cohort

    config = load_profile("smoke").cohort
    if multishell:
        config = dataclasses.replace(config, bvalue=MULTISHELL_BVALUES)
    out = Path(tmp_dir) / ("source-multishell" if multishell else "source-single")
    return simulate_cohort(config, out, progress=False)


def _rename(text: str, *, postop: bool = True) -> str:
    """sub-H01 -> sub-CON01, sub-P01 -> sub-PAT01, ses-pre -> ses-preop, ses-followup -> ses-postop."""
    text = _SUBJECT.sub(lambda m: f"sub-{_PREFIX[m.group(1)]}{m.group(2)}", text)
    text = re.sub(r"ses-pre(?![a-z])", SESSION, text)
    return text.replace("ses-followup", POSTOP) if postop else text


def _mentions_simulation(value) -> bool:
    if isinstance(value, dict):
        return any(_mentions_simulation(k) or _mentions_simulation(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_mentions_simulation(v) for v in value)
    return isinstance(value, str) and "simul" in value.lower()


def _write_nifti(src: Path, dst: Path, volumes: np.ndarray | None = None) -> Path:
    """Rewrite ``src`` at ``dst`` (optionally only some volumes) with blank header text fields.

    Rewriting, rather than copying, also gives a file that shares nothing with
    the source (tests may change it) and headers that say nothing of its origin.
    """
    img = nib.load(str(src))
    header = img.header.copy()
    slope, inter = header.get_slope_inter()
    if slope not in (None, 1.0) or inter not in (None, 0.0):
        raise ValueError(f"{src}: scaled NIfTI (slope {slope}, inter {inter}); the copy would not be lossless.")
    data = np.asanyarray(img.dataobj)
    if volumes is not None:
        data = data[..., volumes]
    for key in ("descrip", "intent_name", "db_name", "aux_file"):
        header[key] = b""
    out = nib.Nifti1Image(data, img.affine, header)
    del out.header.extensions[:]
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, str(dst))
    return dst


def _read_bval(path: Path) -> list[str]:
    return path.read_text().split()


def _read_bvec(path: Path) -> list[list[str]]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if len(rows) != 3:
        raise ValueError(f"{path}: expected the FSL layout (3 rows), got {len(rows)} rows.")
    return rows


def _nominal(bvals: np.ndarray) -> np.ndarray:
    # as dmrilib.io.shells: scanner b-values scatter around the nominal one
    return np.where(bvals <= _B0_MAX, 0.0, np.round(bvals / 100.0) * 100.0)


def _choose_volumes(bvals: np.ndarray, directions_per_shell: int, seed: int) -> np.ndarray:
    """Indices of the b0 volumes and a seeded subset of each shell's directions, in acquisition order."""
    nominal = _nominal(bvals)
    shells = sorted(set(nominal.tolist()) - {0.0})
    rng = np.random.default_rng(seed)
    keep = [np.flatnonzero(nominal == 0.0)]
    for b in shells:  # one draw per shell: each shell gets its own directions, as in a real scheme
        idx = np.flatnonzero(nominal == b)
        if directions_per_shell > len(idx):
            raise ValueError(f"shell b={b:g} has {len(idx)} directions, "
                             f"fewer than directions_per_shell={directions_per_shell}.")
        keep.append(np.sort(rng.choice(idx, size=directions_per_shell, replace=False)))
    return np.sort(np.concatenate(keep))


def _subjects(source: Path) -> list[str]:
    return sorted(p.name for p in source.glob("sub-*") if p.is_dir() and _SUBJECT.fullmatch(p.name))


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def _write_participants(source: Path, dest: Path, subjects: list[str], seed: int) -> None:
    import pandas as pd

    table = pd.read_csv(source / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    ages = dict(zip(table["participant_id"], table["age"])) if "age" in table.columns else {}
    rng = np.random.default_rng([seed, 1])
    rows = ["participant_id\tgroup\tage\tsex"]
    for sub in subjects:
        kind = _SUBJECT.fullmatch(sub).group(1)
        # the simulator's age shaped the diffusivities: keep it (rounded, as a clinic reports it)
        age = int(round(float(ages[sub]))) if sub in ages else int(rng.integers(25, 81))
        sex = str(rng.choice(["F", "M"]))
        rows.append(f"{_rename(sub)}\t{_GROUP[kind]}\t{age}\t{sex}")
    (dest / "participants.tsv").write_text("\n".join(rows) + "\n")
    _write_json(dest / "participants.json", {
        "group": {"Description": "study arm",
                  "Levels": {"control": "healthy volunteer", "patient": "glioma patient"}},
        "age": {"Description": "age at the pre-operative scan", "Units": "year"},
        "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
    })


def make_clinical_dataset(
    source: str | Path,
    dest: str | Path,
    *,
    name: str = "Glioma DWI study (test)",
    multishell: bool = False,
    directions_per_shell: int = 30,
    seed: int = 0,
    postop: bool = True,
) -> Path:
    """Rewrite a simulated cohort as a clinical BIDS dataset at ``dest``.

    Parameters
    ----------
    source : path-like
        A cohort written by :func:`dmrilib.simulate.simulate_cohort`
        (e.g. :func:`simulated_source`).
    dest : path-like
        New folder (must not exist or be empty). Every file is written anew
        (no links to ``source``), so tests may change it.
    name : str
        ``Name`` in ``dataset_description.json``.
    multishell : bool
        ``source`` has several shells: keep its b0 volume(s) and
        ``directions_per_shell`` directions of each shell (a different seeded
        subset per shell, the same for every subject), rewriting the image,
        ``.bval`` and ``.bvec`` alike.
    directions_per_shell : int
        Directions kept per shell when ``multishell``.
    seed : int
        Seeds the direction subsets and the invented ``sex`` column.
    postop : bool
        Keep the follow-up FLAIR as ``ses-postop`` (else drop it).

    Returns
    -------
    pathlib.Path
        ``dest``, holding::

            dataset_description.json, README, participants.tsv (participant_id, group control|patient,
            age, sex), participants.json
            sub-CON01/ses-preop/dwi/sub-CON01_ses-preop_acq-AP_dwi.nii.gz (+ .bval, .bvec, .json)
            sub-CON01/ses-preop/anat/sub-CON01_ses-preop_T1w.nii.gz, ..._FLAIR.nii.gz
            sub-PAT01/ses-postop/anat/sub-PAT01_ses-postop_FLAIR.nii.gz          (postop)
            derivatives/manual_segmentation/dataset_description.json
            derivatives/manual_segmentation/sub-PAT01/ses-preop/anat/
                sub-PAT01_ses-preop_space-T1w_desc-tumor_mask.nii.gz

        and no DWI-grid derivative. No file name, JSON, TSV or NIfTI header
        text field mentions a simulation.
    """
    source, dest = Path(source), Path(dest)
    subjects = _subjects(source)
    if not subjects:
        raise ValueError(f"{source}: no sub-H*/sub-P* folders; pass a cohort written by simulate_cohort.")
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest}: exists and is not empty.")
    dest.mkdir(parents=True, exist_ok=True)

    volumes = None
    if multishell:
        first = next((source / subjects[0]).glob("ses-pre/dwi/*_dwi.bval"))
        bvals = np.array(_read_bval(first), dtype=float)
        if len(set(_nominal(bvals).tolist()) - {0.0}) < 2:
            raise ValueError(f"{first}: one shell only; simulate with simulated_source(..., multishell=True).")
        volumes = _choose_volumes(bvals, directions_per_shell, seed)

    for sub in subjects:
        for src in sorted((source / sub).rglob("*")):
            if not src.is_file():
                continue
            session = src.parent.parent.name
            if session == "ses-followup" and not postop:
                continue
            dst = dest / _rename(str(src.relative_to(source)), postop=postop)
            if src.parent.name == "dwi":
                dst = dst.with_name(dst.name.replace("_dwi.", f"_{ACQ}_dwi."))
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.name.endswith(".nii.gz"):
                _write_nifti(src, dst, volumes if src.parent.name == "dwi" else None)
            elif src.suffix == ".bval":
                tokens = _read_bval(src)
                keep = range(len(tokens)) if volumes is None else volumes
                dst.write_text(" ".join(tokens[i] for i in keep) + "\n")
            elif src.suffix == ".bvec":
                rows = _read_bvec(src)
                keep = range(len(rows[0])) if volumes is None else volumes
                dst.write_text("".join(" ".join(row[i] for i in keep) + "\n" for row in rows))
            elif src.suffix == ".json":
                meta = json.loads(src.read_text())
                # the simulator's bookkeeping (a scanner reports none of it), and anything naming it
                meta = {k: v for k, v in meta.items()
                        if k not in _SIMULATOR_KEYS
                        and not _mentions_simulation(k) and not _mentions_simulation(v)}
                _write_json(dst, {**meta, **(_DWI_SIDECAR if src.parent.name == "dwi" else {})})
            else:
                raise ValueError(f"{src}: unexpected file in a simulated cohort.")

    # tumour masks: the T1w-space ones only, as a rater would draw them
    deriv = dest / "derivatives" / PIPELINE
    truth = source / "derivatives" / "simulation"
    for sub in subjects:
        if _SUBJECT.fullmatch(sub).group(1) != "P":
            continue  # the simulator writes empty lesion masks for controls; a rater would not
        for src in sorted((truth / sub).glob("ses-pre/anat/*_space-T1w_desc-lesion_mask.nii.gz")):
            dst = deriv / _rename(str(src.relative_to(truth)))
            _write_nifti(src, dst.with_name(dst.name.replace("desc-lesion_mask", "desc-tumor_mask")))
    _write_json(deriv / "dataset_description.json", {
        "Name": "Manual tumour segmentations",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "manual", "Description": "tumour outlined on the pre-operative T1w and FLAIR"}],
    })

    _write_participants(source, dest, subjects, seed)
    _write_json(dest / "dataset_description.json", {
        "Name": name,
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "Authors": ["A. Radiologist", "B. Physicist"],
        "License": "CC0",
    })
    (dest / "README").write_text(
        f"{name}\n\nPre-operative diffusion MRI (acq-AP), T1w and FLAIR of glioma patients and "
        "healthy controls; post-operative FLAIR where available. Tumour masks in "
        f"derivatives/{PIPELINE}, drawn on the T1w.\n"
    )
    return dest


# ----------------------------------------------------------------- bad cases


def copy_dataset(root: str | Path, dest: str | Path) -> Path:
    """A full copy of ``root`` at ``dest`` (for the bad-case builders, which change it in place)."""
    return Path(shutil.copytree(root, dest, symlinks=False))


def tumour_mask_path(root: str | Path, subject: str) -> Path:
    """Where :func:`make_clinical_dataset` writes ``subject``'s T1w-space tumour mask."""
    return (Path(root) / "derivatives" / PIPELINE / subject / SESSION / "anat"
            / f"{subject}_{SESSION}_space-T1w_desc-tumor_mask.nii.gz")


def _dwi_path(root: Path, subject: str, acq: str = ACQ) -> Path:
    return root / subject / SESSION / "dwi" / f"{subject}_{SESSION}_{acq}_dwi.nii.gz"


def _patients(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("sub-PAT*") if p.is_dir())


def drop_group_column(root: str | Path) -> Path:
    """Remove the ``group`` column from ``participants.tsv`` (and ``participants.json``).

    Returns
    -------
    pathlib.Path
        ``participants.tsv``.
    """
    root = Path(root)
    path = root / "participants.tsv"
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    col = rows[0].index("group")
    path.write_text("".join("\t".join(r[:col] + r[col + 1:]) + "\n" for r in rows))
    meta_path = root / "participants.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        meta.pop("group", None)
        _write_json(meta_path, meta)
    return path


def add_second_dwi_run(root: str | Path, subject: str | None = None) -> Path:
    """Add an ``acq-PA`` DWI series (a copy of ``acq-AP``, phase encoding reversed) beside ``acq-AP``.

    Parameters
    ----------
    root : path-like
    subject : str, optional
        Only this subject (``"sub-PAT02"``); default every subject.

    Returns
    -------
    pathlib.Path
        The new ``acq-PA`` image of ``subject`` (default: of the first subject, sorted).
    """
    root = Path(root)
    subjects = [subject] if subject else sorted(p.name for p in root.glob("sub-*") if p.is_dir())
    made = []
    for sub in subjects:
        ap = _dwi_path(root, sub)
        if not ap.is_file():
            raise FileNotFoundError(f"{ap}: no acq-AP DWI for {sub}.")
        pa = _dwi_path(root, sub, "acq-PA")
        shutil.copyfile(ap, pa)
        for ext in (".bval", ".bvec"):
            shutil.copyfile(ap.with_name(ap.name.replace(".nii.gz", ext)),
                            pa.with_name(pa.name.replace(".nii.gz", ext)))
        sidecar = json.loads(ap.with_name(ap.name.replace(".nii.gz", ".json")).read_text())
        _write_json(pa.with_name(pa.name.replace(".nii.gz", ".json")), {**sidecar, "PhaseEncodingDirection": "j"})
        made.append(pa)
    return made[0]


def drop_patient_mask(root: str | Path, subject: str | None = None) -> Path:
    """Delete one patient's T1w-space tumour mask (default: the first patient, sorted).

    Returns
    -------
    pathlib.Path
        The deleted mask (it no longer exists).
    """
    root = Path(root)
    subject = subject or _patients(root)[0]
    path = tumour_mask_path(root, subject)
    path.unlink()
    return path


def mask_on_other_grid(root: str | Path, subject: str | None = None) -> Path:
    """Add a DWI-space tumour mask that is not on the DWI's grid (default: the first patient, sorted).

    The mistake imitated: the T1w-space mask saved under ``dwi/`` with a
    ``space-dwi`` name, so its shape and affine are the T1w's, not the DWI's.

    Returns
    -------
    pathlib.Path
        ``derivatives/manual_segmentation/<sub>/ses-preop/dwi/<sub>_ses-preop_space-dwi_desc-tumor_mask.nii.gz``.
    """
    root = Path(root)
    subject = subject or _patients(root)[0]
    dwi = nib.load(str(_dwi_path(root, subject)))
    src = tumour_mask_path(root, subject)
    img = nib.load(str(src))
    if img.shape[:3] == dwi.shape[:3] and np.allclose(img.affine, dwi.affine):
        raise ValueError(f"{src}: already on the DWI grid; nothing to imitate.")
    path = (root / "derivatives" / PIPELINE / subject / SESSION / "dwi"
            / f"{subject}_{SESSION}_space-dwi_desc-tumor_mask.nii.gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, path)
    return path
