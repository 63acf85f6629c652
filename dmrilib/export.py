"""Anomaly maps a clinician can open: :func:`export_anomaly_maps`.

Every patient's anomaly map of every trained configuration (and of the
normative baseline), averaged over the profile's folds and put back on the
patient's own DWI grid with its affine, written as a BIDS derivative dataset
that any NIfTI viewer opens over the patient's scan::

    <R>/derivatives/anomaly/dataset_description.json
    <R>/derivatives/anomaly/sub-<label>/[ses-<s>/]dwi/
        sub-<label>[_ses-<s>]_space-dwi_desc-<desc>_anomaly.nii.gz   float32, the DWI's grid and affine
        sub-<label>[_ses-<s>]_space-dwi_desc-<desc>_anomaly.json     what the values mean, thresholds, provenance
    <R>/figures/overlays/<subject>.png     best DAE, best RecDiscNet and baseline over the mean b0
    <R>/figures/export.csv, export.json    the files written, with a record of what made them

``<desc>`` is the model and variant with everything but letters and digits
removed (BIDS allows nothing else): ``daelsd512sigmoid``,
``recdiscmixmixhalf``, ``baseline``. Voxels of the DWI grid outside the
network-grid window hold 0.
"""
from __future__ import annotations

import gzip
import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from dmrilib._atomic import atomic_path, write_json_atomic
from dmrilib.config import Profile, config_hash, provenance
from dmrilib.integrity import load_npy
from dmrilib.layout import ResultsLayout
from dmrilib.records import EvalRecord, MapsRecord, read_record
from dmrilib.variants import BASELINE, BASELINE_VARIANT, DISPLAY_NAMES, MODELS

__all__ = ["export_anomaly_maps"]

#: What the values of every exported map mean (written into each sidecar).
MEANING = "anomaly score, higher = more anomalous; not calibrated across models"
_BASELINE = (BASELINE, BASELINE_VARIANT)


def _desc(model: str, variant: str) -> str:
    """BIDS ``desc-`` label of a configuration: letters and digits only."""
    if (model, variant) == _BASELINE:
        return "baseline"
    return re.sub(r"[^A-Za-z0-9]", "", model + variant)


def _sessions(layout: ResultsLayout, prepared) -> dict[str, str | None]:
    """Subject -> ``ses-<label>`` or None: from ``cohort/study.json`` (BIDS mode), else the prepared cohort."""
    study_path = layout.study_file
    if study_path.is_file():
        study = json.loads(study_path.read_text())
        found = {s["subject"]: s.get("session") for s in study.get("subjects", [])}
    else:
        found = dict(zip(prepared.subjects, prepared.meta.get("sessions") or [None] * len(prepared.subjects)))
    out = {}
    for subject in prepared.subjects:
        session = found.get(subject)
        out[subject] = None if not session else session if str(session).startswith("ses-") else f"ses-{session}"
    return out


def _sources(layout: ResultsLayout, prepared) -> tuple[str | None, dict[str, str]]:
    """The source dataset's root and each subject's DWI relative to it.

    BIDS mode: the user's dataset (``cohort/study.json``), not the staged
    view of it the cohort was prepared from; otherwise the prepared cohort's.
    """
    study_path = layout.study_file
    if study_path.is_file():
        study = json.loads(study_path.read_text())
        return ((study.get("dataset") or {}).get("root"),
                {s["subject"]: s["dwi"] for s in study.get("subjects", []) if s.get("dwi")})
    return prepared.meta.get("bids_root"), dict(prepared.meta.get("sources") or {})


def _job(model: str, variant: str, fold: int) -> str:
    """The job that writes a fold's maps, for error messages."""
    if (model, variant) == _BASELINE:
        return f"the baseline job of fold {fold} (make book, or snakemake's baseline rule)"
    return f"the train and evaluate jobs of {model}/{variant} fold {fold} (make book, or snakemake's rules)"


def _fold_mean(layout: ResultsLayout, profile: Profile, model: str, variant: str, patients: list[str],
               grid: tuple[int, ...]) -> tuple[np.ndarray, dict[str, Any]]:
    """Mean over the profile's folds of a configuration's patient maps (float32), and each fold's thresholds."""
    total = np.zeros((len(patients), *grid), dtype=np.float32)
    thresholds: dict[str, Any] = {}
    for fold in profile.folds:
        files = layout.run_files(model, variant, int(fold))
        folder, path = files.folder, files.maps_test
        job = _job(model, variant, fold)
        record = files.maps_record
        if record.is_file():
            # the pipeline keeps the subjects in the record's identity (MapsRecord.test_ids)
            test_ids = read_record(record, MapsRecord).test_ids
            if test_ids is not None and list(test_ids) != patients:
                raise ValueError(f"{record}: test_ids ({len(test_ids)} subjects) are not the prepared cohort's "
                                 f"patients in order ({len(patients)}): the maps were made from another "
                                 f"cohort. Delete {folder / 'maps*'} and run {job}.")
        maps = load_npy(path, what_to_do=f"Run {job}.")
        if maps.shape != (len(patients), *grid):
            raise ValueError(f"{path}: shape {maps.shape}, expected {(len(patients), *grid)} (the prepared "
                             f"cohort's patients on its network grid). Delete it and run {job}.")
        total += maps.astype(np.float32)
        eval_path = files.eval_record
        if eval_path.is_file():
            thresholds[f"fold-{int(fold)}"] = read_record(eval_path, EvalRecord).healthy_fpr_thresholds
    return total / np.float32(len(profile.folds)), thresholds


def _nifti_bytes(image) -> bytes:
    """The image as .nii.gz bytes without a time stamp, so a re-run writes identical files."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32), image.affine)
    image.set_data_dtype(np.float32)
    # scanner-anatomical code for both transforms: viewers place the map on the DWI it came from
    image.set_sform(image.affine, code=1)
    image.set_qform(image.affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = b"dmrilib anomaly map"
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` atomically, unless the file already holds exactly it."""
    if path.is_file() and path.read_bytes() == data:
        return  # unchanged: leave the file (and its time stamp) alone
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON through :func:`_write_bytes`."""
    _write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def _overlay_rows(profile: Profile, results: str | Path) -> list[tuple[str, str]]:
    """(model, variant) of the overlay rows: the best DAE and RecDiscNet variants, then the baseline."""
    from dmrilib.metrics import best_auroc_variant

    auroc_all = ResultsLayout.of(profile, results).table("auroc_all")
    rows = []
    for model in MODELS:
        variants = list(profile.variants.get(model, ()))
        if not variants:
            continue
        chosen = variants[0]
        # auroc_all.csv is written with table1/table2 by the aggregate job
        if auroc_all.is_file():
            try:
                best = best_auroc_variant(pd.read_csv(auroc_all), model)
            except (KeyError, ValueError):  # no rows of this model yet
                best = chosen
            chosen = best if best in variants else chosen
        rows.append((model, chosen))
    return [*rows, _BASELINE]


def _background(prepared, j: int, subject: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """Mean b0 of the patient's DWI on its grid, or (when unreadable) the FA on the network grid.

    Returns the image, its affine and whether it lies on the DWI grid.
    """
    from dmrilib.io import DwiInputError, load_dwi

    crop, affine = prepared.crops[j], np.asarray(prepared.affines[j], dtype=float)
    reason = None
    try:
        source = Path(prepared.meta["bids_root"]) / prepared.meta["sources"][subject]
        threshold = float((prepared.meta.get("config") or {}).get("b0_threshold", 50.0))
        dwi = load_dwi(source, b0_threshold=threshold, target_bvalue=None, clip_negative=True)
        if dwi.spatial_shape != tuple(prepared.input_shapes[j]) or not np.allclose(dwi.affine, affine, atol=1e-4):
            reason = f"{source.name} is no longer on the grid the cohort was prepared from"
        elif not dwi.is_b0.any():
            reason = f"{source.name} has no b0 volume"
        else:
            return dwi.data[..., dwi.is_b0].mean(axis=-1), affine, True
    except (KeyError, OSError, DwiInputError) as exc:
        reason = str(exc)
    # stacklevel: past _write_overlays and export_anomaly_maps, to the line that called the export
    warnings.warn(f"overlay of {subject}: the DWI could not be read ({reason}); drawing over the FA on the "
                  "network grid instead.", stacklevel=4)
    return np.asarray(prepared.fa[j], dtype=np.float32), crop.grid_affine(affine), False


def _native_grids(layout: ResultsLayout, source: str | None, dwi_files: dict[str, str]) -> dict[str, tuple]:
    """Subject -> (shape, affine) of its acquired DWI, for the subjects a BIDS run resampled (else empty)."""
    study_path = layout.study_file
    if source is None or not study_path.is_file():
        return {}
    study = json.loads(study_path.read_text())
    grids = {}
    for s in study.get("subjects", []):
        if s.get("staged_shape") and s["subject"] in dwi_files:
            header = nib.load(str(Path(source) / dwi_files[s["subject"]]))
            grids[s["subject"]] = (tuple(header.shape[:3]), header.affine)
    return grids


def _to_native(image, shape: tuple[int, ...], affine: np.ndarray):
    """Trilinear resampling of a map onto the subject's acquired DWI grid (0 outside the map's field of view)."""
    from nibabel.processing import resample_from_to

    out = resample_from_to(nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32), image.affine),
                           (shape, affine), order=1, mode="constant", cval=0.0)
    return nib.Nifti1Image(np.asarray(out.dataobj, dtype=np.float32), affine)


def _label(model: str, variant: str) -> str:
    """Row label of a configuration in the overlays and the sidecars' description."""
    return "normative baseline" if (model, variant) == _BASELINE else f"{DISPLAY_NAMES[model]} {variant}"


@dataclass(frozen=True)
class _Patients:
    """The prepared cohort's patients, in order, and each one's session."""

    prepared: Any
    patients: list[str]
    positions: dict[str, int]  # subject -> row in the prepared arrays
    sessions: dict[str, str | None]

    @classmethod
    def load(cls, layout: ResultsLayout) -> _Patients:
        """The prepared cohort's patients, with the sessions of ``cohort/study.json`` in BIDS mode."""
        from dmrilib.dataset import load_prepared

        prepared = load_prepared(layout.prepared)
        patients = prepared.patient_ids()
        positions = dict(zip(patients, prepared.index(patients))) if patients else {}
        return cls(prepared, patients, positions, _sessions(layout, prepared))

    def title(self, subject: str) -> str:
        """``sub-<label>`` and, when it has one, its session."""
        return f"{subject}{' ' + self.sessions[subject] if self.sessions.get(subject) else ''}"


@dataclass(frozen=True)
class _Sources:
    """Each patient's DWI in the source dataset and, where a BIDS run resampled it, its acquired grid."""

    root: str | None  # None: no DWI for the sidecars to name
    dwi_files: dict[str, str]  # subject -> DWI relative to ``root``
    native_grids: dict[str, tuple]  # subject -> (shape, affine), see _native_grids


def _configurations(profile: Profile) -> tuple[list[tuple[str, str]], list[str]]:
    """Every (model, variant) of the profile then the baseline, and their BIDS ``desc-`` labels."""
    configurations = [(m, v) for m in MODELS for v in profile.variants.get(m, ())] + [_BASELINE]
    descs = [_desc(m, v) for m, v in configurations]
    if len(set(descs)) != len(descs):  # cannot happen with the variant grammar; guards the file names
        raise ValueError(f"two configurations of profile {profile.name!r} give the same BIDS desc label: {descs}.")
    return configurations, descs


def _write_description(out_root: Path, profile: Profile, source: str | None) -> Path:
    """Write the derivative's ``dataset_description.json`` (linked to the source dataset, if known)."""
    import dmrilib

    description = {
        "Name": f"dmrilib anomaly maps ({profile.name})",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "dmrilib", "Version": dmrilib.__version__,
                         "Description": "diffusion MRI anomaly detection (DAE, RecDiscNet, normative DTI z-score)"}],
    }
    if source:
        uri = Path(source).resolve().as_uri()
        description["SourceDatasets"] = [{"URL": uri}]
        description["DatasetLinks"] = {"raw": uri}  # resolves the sidecars' bids:raw:... Sources
    path = out_root / "dataset_description.json"
    _write_json(path, description)
    return path


def _sidecar(profile: Profile, cohort: _Patients, model: str, variant: str, thresholds: dict[str, Any],
             prov: dict[str, Any]) -> dict[str, Any]:
    """The JSON sidecar every patient's map of a configuration shares (without its ``Sources``)."""
    is_baseline = (model, variant) == _BASELINE
    return {
        "Description": f"{_label(model, variant)} anomaly map, mean over folds {list(profile.folds)}, "
                       "on the patient's DWI grid and affine (0 outside the network-grid window).",
        "Values": MEANING,
        "Model": model,
        "Variant": variant,
        "Folds": [int(k) for k in profile.folds],
        "FoldsAveraged": len(profile.folds),
        # thresholds of each fold's own map; the map written here is their mean
        "HealthyFprThresholds": thresholds,
        "ConfigHash": profile.hash() if is_baseline else config_hash(profile.model, profile.train),
        "ProfileHash": profile.hash(),
        "Profile": profile.name,
        "NetworkGrid": [int(g) for g in cohort.prepared.grid],
        "Provenance": prov,
    }


def _write_configuration(layout: ResultsLayout, cohort: _Patients, sources: _Sources, model: str, variant: str,
                         desc: str, mean: np.ndarray, sidecar: dict[str, Any],
                         bar: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Write each patient's map of one configuration on its DWI grid, with its sidecar.

    Returns the export table's rows and the files written (relative to R).
    """
    from dmrilib.dataset import to_input_grid

    rows, files = [], []
    for i, subject in enumerate(cohort.patients):
        j = int(cohort.positions[subject])
        session = cohort.sessions.get(subject)
        folder = layout.anomaly_derivatives / subject / (session or "") / "dwi"
        stem = f"{subject}_{session}" if session else subject
        name = f"{stem}_space-dwi_desc-{desc}_anomaly"
        image = to_input_grid(cohort.prepared, subject, mean[i])
        if subject in sources.native_grids:  # the run resampled this DWI (bids.voxel_size): back to its own grid
            image = _to_native(image, *sources.native_grids[subject])
        _write_bytes(folder / f"{name}.nii.gz", _nifti_bytes(image))
        dwi = sources.dwi_files.get(subject) if sources.root else None
        _write_json(folder / f"{name}.json", {**({"Sources": [f"bids:raw:{dwi}"]} if dwi else {}), **sidecar})
        rel = layout.relative(folder / f"{name}.nii.gz")
        files += [str(rel), str(rel.with_name(f"{name}.json"))]
        rows.append({"subject": subject, "model": model, "variant": variant, "desc": desc, "path": str(rel),
                     "lesion_voxels": int(np.count_nonzero(cohort.prepared.lesion[j])),
                     "max_score": float(mean[i].max())})
        bar.update()
    return rows, files


def _write_overlays(layout: ResultsLayout, profile: Profile, cohort: _Patients,
                    kept: dict[tuple[str, str], np.ndarray], overlay_rows: list[tuple[str, str]],
                    progress: bool) -> list[str]:
    """Draw and write one overlay figure per patient; returns the files written (relative to R)."""
    from tqdm.auto import tqdm

    from dmrilib.plotting.overlay import patient_overlay

    prepared, files = cohort.prepared, []
    for i, subject in enumerate(tqdm(cohort.patients, desc="overlays", unit="patient", disable=not progress)):
        j = int(cohort.positions[subject])
        crop = prepared.crops[j]
        background, affine, on_dwi = _background(prepared, j, subject)
        place = crop.to_input if on_dwi else np.asarray
        lesion = np.asarray(prepared.lesion[j], bool)
        maps = {_label(m, v): place(kept[(m, v)][i]) for m, v in overlay_rows}
        fig = patient_overlay(background, maps, place(lesion) if lesion.any() else None, affine=affine,
                              brain_mask=place(np.asarray(prepared.brain_mask[j], bool)),
                              title=f"{cohort.title(subject)}: "
                                    f"anomaly maps ({profile.name}, mean over {len(profile.folds)} fold(s))")
        path = layout.overlay(subject)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight")
        files.append(str(layout.relative(path)))
    return files


def _previous_files(layout: ResultsLayout) -> list[str]:
    """The files the last export wrote (relative to R), from its ``export.json``; none before the first."""
    record_path = layout.export_record
    return json.loads(record_path.read_text()).get("files", []) if record_path.is_file() else []


def _remove_stale(layout: ResultsLayout, previous: list[str], files: list[str]) -> None:
    """Delete the files an earlier export wrote that this one does not (a variant dropped from the profile)."""
    # only under the derivative and the overlays: export.json is not trusted to name anything else
    removable = (f"{layout.relative(layout.anomaly_derivatives)}/", f"{layout.relative(layout.overlays)}/")
    for rel in sorted(set(previous) - set(files)):
        stale = layout.root / rel
        if stale.is_file() and rel.startswith(removable):
            stale.unlink()


def _write_record(layout: ResultsLayout, profile: Profile, rows: list[dict[str, Any]],
                  overlay_rows: list[tuple[str, str]], files: list[str], t0: float,
                  prov: dict[str, Any]) -> pd.DataFrame:
    """Write ``figures/export.csv`` and ``figures/export.json`` (seconds since ``t0``); returns the table."""
    table = pd.DataFrame(rows, columns=["subject", "model", "variant", "desc", "path", "lesion_voxels", "max_score"])
    with atomic_path(layout.export_table) as tmp:
        table.to_csv(tmp, index=False)
    write_json_atomic(layout.export_record, {
        "profile": profile.name,
        "profile_hash": profile.hash(),
        "config_hash": {"train": config_hash(profile.model, profile.train), "profile": profile.hash()},
        "overlay_rows": [{"model": m, "variant": v} for m, v in overlay_rows],
        "files": files,
        "export_time_s": round(time.perf_counter() - t0, 2),
        "provenance": prov,
    })
    return table


def export_anomaly_maps(profile: Profile, results: str | Path = "results", *, progress: bool = True) -> pd.DataFrame:
    """Write every patient's anomaly maps on their DWI grid as a BIDS derivative, and an overlay per patient.

    For each (model, variant) of the profile and the normative baseline, the
    patients' test maps of the profile's folds (``runs/<model>/<variant>/
    fold-<k>/maps-test.npy``, sha256-checked) are averaged and put back on
    each patient's DWI grid (:func:`dmrilib.dataset.to_input_grid`), then
    written under ``<R>/derivatives/anomaly/`` with a JSON sidecar (see the
    module docstring). One overlay figure per patient shows the best DAE and
    RecDiscNet variants (highest mean AUROC in ``tables/auroc_all.csv``,
    :func:`dmrilib.metrics.best_auroc_variant`, once the aggregate job has
    run, else the profile's first variant of each) and the
    baseline over the patient's mean b0. Re-running with the same inputs
    leaves every file as it is; files of an earlier export that this one no
    longer produces are removed.

    Parameters
    ----------
    profile : Profile
    results : path-like
        Results folder; the profile's outputs are under ``<results>/<profile name>`` (R).
    progress : bool
        Show a progress bar.

    Returns
    -------
    pandas.DataFrame
        One row per patient and configuration: ``subject``, ``model``,
        ``variant``, ``desc``, ``path`` (relative to R), ``lesion_voxels``
        (network grid), ``max_score``. Also written to
        ``<R>/figures/export.csv``, with ``<R>/figures/export.json`` (files,
        config hashes, provenance, seconds).

    Raises
    ------
    FileNotFoundError
        If the prepared cohort or a fold's ``maps-test.npy`` is missing (the
        message names the file and the job to run).
    dmrilib.integrity.IntegrityError
        If a map does not match its sha256 or holds NaN/inf.
    ValueError
        If a map's ``maps.json`` lists other patients, or its shape is not
        the patients on the network grid.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    layout = ResultsLayout.of(profile, results)
    cohort = _Patients.load(layout)
    previous = _previous_files(layout)
    prov = provenance()
    configurations, descs = _configurations(profile)
    source, dwi_files = _sources(layout, cohort.prepared)
    description = _write_description(layout.anomaly_derivatives, profile, source)
    sources = _Sources(source, dwi_files, _native_grids(layout, source, dwi_files))
    overlay_rows = _overlay_rows(profile, results)

    # the maps of every configuration, then the overlays of the ones they show (kept from the first pass)
    kept: dict[tuple[str, str], np.ndarray] = {}
    rows, files = [], [str(layout.relative(description))]
    bar = tqdm(total=len(configurations) * len(cohort.patients), desc="export maps", unit="map",
               disable=not progress)
    for (model, variant), desc in zip(configurations, descs):
        mean, thresholds = _fold_mean(layout, profile, model, variant, cohort.patients, cohort.prepared.grid)
        if (model, variant) in overlay_rows:
            kept[(model, variant)] = mean
        sidecar = _sidecar(profile, cohort, model, variant, thresholds, prov)
        new_rows, new_files = _write_configuration(layout, cohort, sources, model, variant, desc, mean, sidecar, bar)
        rows, files = rows + new_rows, files + new_files
    bar.close()
    files += _write_overlays(layout, profile, cohort, kept, overlay_rows, progress)

    _remove_stale(layout, previous, files)
    return _write_record(layout, profile, rows, overlay_rows, files, t0, prov)
