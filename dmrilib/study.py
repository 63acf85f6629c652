"""A study on the user's own BIDS dataset: what a run will use, checked before any work, and staged.

``make book BIDS=<root>`` runs the whole pipeline on a clinical BIDS dataset
instead of the simulated cohort. This module owns that input:

1. :func:`plan_bids` reads the dataset as the run will (subjects, the
   session, the DWI series, groups from ``participants.tsv``, the shell, and
   where each patient's lesion mask comes from) and raises a
   :class:`~dmrilib.io.DwiInputError` naming the file and the fix for
   anything unusable, before any work starts. ``dmri info <root>`` prints the
   plan (:meth:`StudyPlan.text`).
2. :func:`stage_bids` writes ``results/<...>/<profile>/cohort/``: a BIDS view
   of exactly what the run uses (symbolic links to the chosen DWI files, a
   ``participants.tsv`` whose ``group`` is ``healthy``/``patient``) and, under
   ``derivatives/dmrilib/``, every mask on each subject's DWI grid, plus
   ``study.json`` (the plan and where each mask came from). The rest of the
   pipeline reads this folder exactly as it reads a simulated cohort.

Masks on the DWI grid, when the dataset has none:

- **brain**: a DWI-space ``desc-brain_mask`` from any derivatives folder, else
  dipy's ``median_otsu`` on the mean b0.
- **evaluation region (WM+GM)**: the brain mask without free water, i.e.
  without voxels whose DTI mean diffusivity exceeds
  ``bids.csf_md_threshold`` (default 2.0e-3 mm^2/s: CSF is ~3e-3, white and
  grey matter 0.7-0.9e-3, oedema up to ~1.7e-3), with the lesion added back
  (the paper scores lesion voxels wherever they lie).
- **lesion**, in order (``bids.lesion_masks: auto``): a DWI-space mask
  (``space-dwi`` or no ``space-``, ``desc-lesion|tumor|tumour``, ``_mask``)
  from any ``derivatives/<name>/``; else a T1w-space mask
  (``space-T1w``, same descs) carried to the DWI by the package's ANTs
  registration (:func:`dmrilib.groundtruth.register_structural_to_dwi`, the
  subject's T1w against the mean b0); else, when the subject has T1w and
  FLAIR, the ground-truth U-Net's segmentation (trained on simulated
  subjects) carried over likewise; else none. Patients without a mask are an
  error (``bids.missing_lesion: error``) unless ``missing_lesion: maps_only``;
  when no patient has one, the run writes anomaly maps only and every page
  says that nothing is scored.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from dmrilib._atomic import atomic_dir, remove_stale_temp, write_json_atomic, write_text_atomic
from dmrilib.io import (BidsDwi, DwiInputError, bids_files, bids_name, find_bids_dwi, inspect_dwi,
                        read_participants, select_shell, shells)
from dmrilib.layout import ResultsLayout
from dmrilib.records import LEGACY_STUDY_KEYS, upgrade_keys

__all__ = [
    "BidsConfig",
    "StudyPlan",
    "SubjectPlan",
    "plan_bids",
    "stage_bids",
    "read_study",
    "is_bids_study",
    "STAGED_PIPELINE",
    "LESION_SOURCES",
]

#: Derivatives folder of the staged cohort that holds the DWI-grid masks.
STAGED_PIPELINE = "dmrilib"
#: Where a patient's lesion mask comes from, in the order ``lesion_masks: auto`` tries them.
LESION_SOURCES = ("dwi-derivative", "t1w-registered", "segmented", "none")
_LESION_DESCS = ("lesion", "tumor", "tumour")


@dataclass(frozen=True)
class BidsConfig:
    """Settings for a run on the user's BIDS dataset (the ``bids`` section of a profile).

    The session and DWI series are chosen by ``prepare.session`` and
    ``prepare.acquisition``, the shell by ``prepare.target_bvalue``, a fixed
    channel layout by ``prepare.directions``.

    Parameters
    ----------
    group_column : str
        Column of ``participants.tsv`` that says who is a control and who a patient.
    control_labels, patient_labels : tuple of str
        Values of that column (case-insensitive) for controls and for patients.
    lesion_masks : {"auto", "dwi", "t1w", "segment", "none"}
        Where lesion masks come from: ``auto`` tries a DWI-space derivative, a
        T1w-space derivative carried over by registration, then segmentation
        of T1w+FLAIR, in that order; the others use only that source.
    missing_lesion : {"error", "maps_only"}
        What to do when some patients have a mask and others do not: stop
        (naming them), or keep those without one for maps only (not scored).
    csf_md_threshold : float
        Mean diffusivity (mm^2/s) above which a voxel counts as free water and
        leaves the evaluation region, when the dataset ships no WM+GM mask.
    voxel_size : float, optional
        Resample every DWI (the b0 volumes and the chosen shell) to this
        isotropic voxel size in mm before anything else: a first look on a CPU
        with a small network grid (``quick``: 4.8, ``smoke``: 7.2). Each volume
        is smoothed against aliasing (Gaussian, FWHM of the size ratio) and
        sampled trilinearly over the same field of view; DWI-space masks are
        carried likewise (a voxel is in when at least half of it was). The
        exported anomaly maps are put back on each subject's own DWI grid.
        None (default): the acquired grid; a DWI already at this size is
        not resampled.
    """

    group_column: str = "group"
    control_labels: tuple[str, ...] = ("control", "healthy", "hc", "normal", "volunteer")
    patient_labels: tuple[str, ...] = ("patient", "tumor", "tumour", "glioma")
    lesion_masks: Literal["auto", "dwi", "t1w", "segment", "none"] = "auto"
    missing_lesion: Literal["error", "maps_only"] = "error"
    csf_md_threshold: float = 2.0e-3
    voxel_size: float | None = None

    def __post_init__(self) -> None:
        for name in ("control_labels", "patient_labels"):
            labels = tuple(str(v).lower() for v in getattr(self, name))
            if not labels:
                raise ValueError(f"bids.{name} must list at least one label.")
            object.__setattr__(self, name, labels)
        both = set(self.control_labels) & set(self.patient_labels)
        if both:
            raise ValueError(f"bids: labels {sorted(both)} are both control and patient labels.")
        if not self.group_column:
            raise ValueError("bids.group_column must be a column name.")
        if self.lesion_masks not in ("auto", "dwi", "t1w", "segment", "none"):
            raise ValueError(f"bids.lesion_masks must be auto, dwi, t1w, segment or none, got {self.lesion_masks!r}.")
        if self.missing_lesion not in ("error", "maps_only"):
            raise ValueError(f"bids.missing_lesion must be error or maps_only, got {self.missing_lesion!r}.")
        if self.voxel_size is not None and not 0.5 <= self.voxel_size <= 20:
            raise ValueError(f"bids.voxel_size must be between 0.5 and 20 mm (or null: the acquired grid), "
                             f"got {self.voxel_size}.")
        if not 0.5e-3 < self.csf_md_threshold < 5e-3:
            raise ValueError(f"bids.csf_md_threshold must be between 5e-4 and 5e-3 mm^2/s, got {self.csf_md_threshold}.")


@dataclass(frozen=True)
class SubjectPlan:
    """What the run uses of one subject (see :func:`plan_bids`)."""

    subject: str
    session: str | None
    group: str  # "healthy" or "patient"
    group_source: str
    dwi: BidsDwi
    shells: Mapping[int, int]
    n_directions: int
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    lesion_source: str = "none"
    lesion_file: Path | None = None
    t1w: Path | None = None
    flair: Path | None = None
    brain_file: Path | None = None


@dataclass(frozen=True)
class StudyPlan:
    """Everything a run on a BIDS dataset will use, checked (see :func:`plan_bids`)."""

    root: Path
    name: str
    bids_version: str | None
    subjects: tuple[SubjectPlan, ...]
    session_rule: str
    acquisition: str | None
    target_bvalue: float
    directions: str | None
    config: BidsConfig
    n_folds: int
    folds_run: tuple[int, ...] = (0,)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def controls(self) -> list[SubjectPlan]:
        return [s for s in self.subjects if s.group == "healthy"]

    @property
    def patients(self) -> list[SubjectPlan]:
        return [s for s in self.subjects if s.group == "patient"]

    @property
    def scored(self) -> bool:
        """Whether at least one patient has a lesion mask (otherwise the run writes maps only)."""
        return any(s.lesion_source != "none" for s in self.patients)

    def text(self) -> str:
        """What ``dmri info <root>`` prints: the run's input, one subject per line."""
        lines = [
            f"What a run on this dataset uses ({self.name}):",
            f"  session: {self.session_rule}; DWI series: {self.acquisition or 'the only one per session'}",
            f"  shell: b={self.target_bvalue:g}; channels: "
            + (f"resampled to {self.directions} (64 directions)" if self.directions
               else "the acquired directions (every subject needs the same number)"),
            "  grid: " + (f"every DWI resampled to {self.config.voxel_size:g} mm isotropic (bids.voxel_size); "
                          "the anomaly maps go back to each subject's own grid" if self.config.voxel_size
                          else "each subject's acquired DWI grid"),
            f"  controls: {len(self.controls)}, patients: {len(self.patients)}; cross-validation: "
            + (f"leave-one-out ({self.n_folds} folds)" if self.n_folds == len(self.controls)
               else f"{self.n_folds} folds") + f" over the controls (folds run: {list(self.folds_run)}); "
            "patients are never trained on",
            f"  scored: {'yes' if self.scored else 'no: no patient has a lesion mask, the run writes anomaly maps only'}",
            "  subject      group    session      dirs  grid         lesion mask",
        ]
        for s in self.subjects:
            lesion = "" if s.group != "patient" else (
                s.lesion_source + (f" ({s.lesion_file.relative_to(self.root)})" if s.lesion_file else ""))
            lines.append(f"  {s.subject:<12} {s.group:<8} {str(s.session or '-'):<12} {s.n_directions:>4}  "
                         f"{'x'.join(map(str, s.shape)):<12} {lesion}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def record(self) -> dict[str, Any]:
        """``study.json``'s content (paths relative to the dataset root)."""
        def rel(p: Path | None) -> str | None:
            return None if p is None else str(p.relative_to(self.root))

        return {
            "mode": "bids",
            "dataset": {"name": self.name, "root": str(self.root.resolve()), "bids_version": self.bids_version},
            "session_rule": self.session_rule,
            "acquisition": self.acquisition,
            "target_bvalue": self.target_bvalue,
            "directions": self.directions,
            "voxel_size": self.config.voxel_size,
            "n_folds": self.n_folds,
            "folds_run": list(self.folds_run),
            "scored": self.scored,
            "notes": list(self.notes),
            "subjects": [{
                "subject": s.subject, "session": s.session, "group": s.group, "group_source": s.group_source,
                "dwi": rel(s.dwi.dwi), "shells": {str(k): v for k, v in s.shells.items()},
                "n_directions": s.n_directions, "shape": list(s.shape), "voxel_size": list(s.voxel_size),
                "lesion_source": s.lesion_source if s.group == "patient" else None,
                "lesion_file": rel(s.lesion_file),
            } for s in self.subjects],
        }


# --------------------------------------------------------------------- discovery

def _session_parts(entry: BidsDwi | SubjectPlan) -> tuple[str, ...]:
    """The session folder of a subject as path parts: ``("ses-<label>",)``, or none without sessions."""
    return (entry.session,) if entry.session else ()


def _pipelines(root: Path) -> list[Path]:
    """Every ``derivatives/<name>/`` folder of the dataset, sorted."""
    return sorted(p for p in (root / "derivatives").glob("*") if p.is_dir())


def _in_space(space: str) -> Callable[[str | None], bool]:
    """The test of a mask's ``space-`` label: ``dwi`` (or none, case-insensitive) or exactly ``T1w``."""
    if space == "dwi":
        return lambda found: found is None or found.lower() == "dwi"
    return lambda found: found == space


def _derivative_masks(root: Path, entry: BidsDwi, datatype: str, space: str) -> list[Path]:
    """Lesion masks of a subject in every ``derivatives/<name>/`` folder, in one space."""
    # a mask named for a session must be named for the subject's (a sessionless name is taken too)
    session = (None, entry.session) if entry.session else None
    return [path for pipeline in _pipelines(root)
            for path in bids_files(pipeline.joinpath(entry.subject, *_session_parts(entry), datatype),
                                   subject=entry.subject, session=session, suffix="mask", desc=_LESION_DESCS,
                                   space=_in_space(space))]


def _brain_masks(root: Path, entry: BidsDwi) -> list[Path]:
    """DWI-space brain masks (``desc-brain_mask``) of a subject in every ``derivatives/<name>/`` folder."""
    return [path for pipeline in _pipelines(root)
            for path in bids_files(pipeline.joinpath(entry.subject, *_session_parts(entry), "dwi"),
                                   subject=entry.subject, suffix="mask", desc="brain")]


def _anat(root: Path, entry: BidsDwi, suffix: str) -> Path | None:
    """The subject's ``anat/*_<suffix>`` image (T1w, FLAIR) in its DWI's session folder; several are an error."""
    hits = bids_files(root.joinpath(entry.subject, *_session_parts(entry), "anat"), subject=entry.subject,
                      suffix=suffix)
    if len(hits) > 1:
        raise DwiInputError(f"{hits[0].parent}: several {suffix} images {[p.name for p in hits]}; keep one per "
                            "session (or remove the others from the dataset the run reads).")
    return hits[0] if hits else None


def _check_grid(path: Path, shape: tuple[int, ...], affine: np.ndarray, what: str) -> None:
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise DwiInputError(f"{path}: cannot read the {what} ({exc}).") from exc
    if tuple(img.shape[:3]) != tuple(shape[:3]) or not np.allclose(img.affine, affine, atol=1e-3):
        problem = ("has the shape of its reference image but another affine (position or orientation)"
                   if tuple(img.shape[:3]) == tuple(shape[:3]) else
                   f"has shape {tuple(img.shape)} but its reference image has {tuple(shape[:3])}")
        raise DwiInputError(
            f"{path}: the {what} {problem}. A mask must lie on the grid of the image it was drawn on (resample it "
            "there, or move it to the space it belongs to and name that space with the space- entity)."
        )


def _groups(root: Path, entries: Sequence[BidsDwi], config: BidsConfig) -> dict[str, tuple[str, str]]:
    """Subject -> (healthy|patient, the label as written), or a DwiInputError naming participants.tsv."""
    path = root / "participants.tsv"
    column = config.group_column
    how = (f"Add a tab-separated column '{column}' to {path.name} with '{config.control_labels[0]}' or "
           f"'{config.patient_labels[0]}' for every subject (or name another column in the profile's "
           "bids.group_column).")
    if not path.is_file():
        raise DwiInputError(f"{path}: missing. The run needs to know who is a control and who a patient. {how}")
    table = read_participants(root)
    if column not in table.columns:
        raise DwiInputError(f"{path}: no '{column}' column (columns: {list(table.columns)}). {how}")
    out, unknown, missing = {}, {}, []
    for entry in entries:
        if entry.subject not in table.index:
            missing.append(entry.subject)
            continue
        label = str(table.loc[entry.subject, column])
        low = label.strip().lower()
        if low in config.control_labels:
            out[entry.subject] = ("healthy", label)
        elif low in config.patient_labels:
            out[entry.subject] = ("patient", label)
        else:
            unknown[entry.subject] = label
    if missing:
        raise DwiInputError(f"{path}: no row for {missing}, which have diffusion data. {how}")
    if unknown:
        raise DwiInputError(
            f"{path}: column '{column}' has labels the run does not know: {unknown}. Controls are "
            f"{list(config.control_labels)}, patients {list(config.patient_labels)} (profile keys "
            "bids.control_labels / bids.patient_labels); remove other subjects from the dataset the run reads.")
    return out


def _dataset_name(root: Path) -> tuple[str, str | None]:
    """The dataset's name and BIDS version from ``dataset_description.json`` (the folder's name without one)."""
    name, version = root.name, None
    desc = root / "dataset_description.json"
    if desc.is_file():
        try:
            info = json.loads(desc.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DwiInputError(f"{desc}: not valid JSON ({exc}).") from exc
        name, version = str(info.get("Name") or root.name), info.get("BIDSVersion")
    return name, version


def _brain_file(root: Path, entry: BidsDwi, header) -> Path | None:
    """The subject's DWI-space brain mask from the derivatives, its grid checked; None without one."""
    brains = _brain_masks(root, entry)
    if len(brains) > 1:
        raise DwiInputError(f"{brains[0].parent}: several brain masks {[p.name for p in brains]}; keep one.")
    brain = brains[0] if brains else None
    if brain is not None:
        _check_grid(brain, header.shape, header.affine, "DWI-space brain mask")
    return brain


def _subject_plan(root: Path, entry: BidsDwi, grouping: tuple[str, str], prep, config: BidsConfig) -> SubjectPlan:
    """What the run uses of one subject: its header and shell checked, its brain and lesion mask located.

    ``grouping`` is the subject's (healthy|patient, label as written) from :func:`_groups`.
    """
    header = inspect_dwi(entry.dwi, bval=entry.bval, bvec=entry.bvec, b0_threshold=prep.b0_threshold,
                         target_bvalue=None)
    chosen = select_shell(header.bvals, b0_threshold=prep.b0_threshold, target_bvalue=prep.target_bvalue,
                          bvalue_tolerance=prep.bvalue_tolerance, source=str(entry.bval))
    n_dirs = int((header.bvals[chosen] > prep.b0_threshold).sum())
    group, label = grouping
    source, lesion_file, t1w, flair = "none", None, None, None
    brain = _brain_file(root, entry, header)
    if group == "patient":
        source, lesion_file, t1w, flair = _lesion_source(root, entry, header, config)
    return SubjectPlan(
        subject=entry.subject, session=entry.session, group=group, group_source=label, dwi=entry,
        shells=shells(header.bvals, prep.b0_threshold), n_directions=n_dirs, shape=tuple(header.shape[:3]),
        voxel_size=tuple(round(float(v), 4) for v in header.voxel_size), lesion_source=source,
        lesion_file=lesion_file, t1w=t1w, flair=flair, brain_file=brain)


def _check_directions(root: Path, subjects: Sequence[SubjectPlan], prep) -> None:
    """Subjects must share the number of shell directions unless ``prepare.directions`` resamples them."""
    counts = Counter(s.n_directions for s in subjects)
    if len(counts) > 1 and prep.directions is None:
        detail = ", ".join(f"{n} directions: {c} subject(s)" for n, c in sorted(counts.items()))
        raise DwiInputError(
            f"{root}: subjects differ in the number of directions in the shell b={prep.target_bvalue:g} ({detail}). "
            "The networks need one channel layout: set prepare.directions: small_64D in the profile to resample "
            "every subject's shell to the same 64 directions.")


def _check_folds(root: Path, controls: Sequence[SubjectPlan], patients: Sequence[SubjectPlan], n_folds: int) -> None:
    """At least one patient, and enough controls for ``train.n_folds`` cross-validation folds."""
    if not patients:
        raise DwiInputError(f"{root / 'participants.tsv'}: no patient among the subjects with diffusion data; "
                            "the run scores patients against models of the controls.")
    if len(controls) < 2:
        raise DwiInputError(f"{root / 'participants.tsv'}: {len(controls)} control(s); cross-validation needs at "
                            "least 2 (one validates, the rest train).")
    if n_folds > len(controls):
        raise DwiInputError(
            f"{root / 'participants.tsv'}: {len(controls)} controls cannot make train.n_folds={n_folds} folds. Set "
            f"train.n_folds to at most {len(controls)} in the profile (train.n_folds: {len(controls)} and "
            f"folds: {list(range(len(controls)))} is leave-one-out).")


def _check_lesion_masks(root: Path, patients: Sequence[SubjectPlan], config: BidsConfig) -> list[str]:
    """Patients without a lesion mask: an error while others have one (``missing_lesion: error``)."""
    without = [s.subject for s in patients if s.lesion_source == "none"]
    if without and len(without) < len(patients) and config.missing_lesion == "error":
        # say what this lesion_masks setting looked for: with "t1w" a patient may well have T1w+FLAIR
        masks = "derivatives/<any>/sub-*/[ses-*/]{folder}/ (desc-lesion|tumor|tumour, _mask)"
        searched = {"auto": masks.format(folder="{dwi,anat}") + ", then T1w+FLAIR to segment",
                    "dwi": masks.format(folder="dwi"), "t1w": masks.format(folder="anat"),
                    "segment": "T1w+FLAIR to segment"}[config.lesion_masks]
        raise DwiInputError(
            f"{root}: patient(s) {without} have no lesion mask (bids.lesion_masks: {config.lesion_masks} looked "
            f"for {searched}), while the others have one. Add their masks, or set bids.missing_lesion: maps_only "
            "to keep them for anomaly maps without scores.")
    return without


def _plan_notes(patients: Sequence[SubjectPlan], without: Sequence[str], prep) -> list[str]:
    """The notes ``dmri info`` prints under the plan: unscored patients, maps only, resampled shells."""
    notes: list[str] = []
    if without and len(without) < len(patients):
        notes.append(f"patients without a lesion mask, mapped but not scored: {list(without)}")
    if not any(s.lesion_source != "none" for s in patients):
        notes.append("no patient has a lesion mask: the run writes anomaly maps only, no AUROC or Dice")
    if prep.directions:
        notes.append(f"each subject's shell is resampled to {prep.directions} by a spherical-harmonic fit")
    return notes


def plan_bids(root: str | os.PathLike, profile, *, header_only: bool = True) -> StudyPlan:
    """Check a BIDS dataset as a run with ``profile`` will read it, and say what it will use.

    Every file the run needs is located and its header read (the voxels are
    read later, by the cohort job, whose checks name the file too). Nothing
    is written.

    Parameters
    ----------
    root : path-like
        The dataset root (holds ``dataset_description.json`` and ``participants.tsv``).
    profile : dmrilib.config.Profile
        Its ``prepare`` section chooses session, DWI series and shell; its
        ``bids`` section groups and lesion masks; ``train`` the folds.
    header_only : bool
        Kept for symmetry with :func:`dmrilib.io.check_input`; only headers are read.

    Returns
    -------
    StudyPlan

    Raises
    ------
    DwiInputError
        For the first unusable thing found, naming the file and how to fix it:
        no diffusion data, several DWI series without ``prepare.acquisition``,
        no group column or unknown group labels, a missing shell, too few
        controls for the folds, a mask on another grid, a patient without a
        lesion mask (unless ``bids.missing_lesion: maps_only``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DwiInputError(f"{root}: no such folder. BIDS= must name the root of a BIDS dataset.")
    prep, config = profile.prepare, profile.bids
    name, version = _dataset_name(root)
    entries = find_bids_dwi(root, session=prep.session, pipeline=None, acquisition=prep.acquisition)
    groups = _groups(root, entries, config)
    subjects = [_subject_plan(root, entry, groups[entry.subject], prep, config) for entry in entries]
    _check_directions(root, subjects, prep)
    controls = [s for s in subjects if s.group == "healthy"]
    patients = [s for s in subjects if s.group == "patient"]
    n_folds = profile.train.n_folds
    _check_folds(root, controls, patients, n_folds)
    without = _check_lesion_masks(root, patients, config)
    notes = _plan_notes(patients, without, prep)
    session_rule = (prep.session or "each subject's first session whose name contains 'pre' (else its first)")
    return StudyPlan(root=root, name=name, bids_version=version, subjects=tuple(subjects), session_rule=session_rule,
                     acquisition=prep.acquisition, target_bvalue=prep.target_bvalue, directions=prep.directions,
                     config=config, n_folds=n_folds, folds_run=tuple(profile.folds), notes=tuple(notes))


def _lesion_source(root: Path, entry: BidsDwi, header, config: BidsConfig):
    """(source, mask file, T1w, FLAIR) of one patient, the masks' grids checked."""
    mode = config.lesion_masks
    t1w, flair = _anat(root, entry, "T1w"), _anat(root, entry, "FLAIR")

    def one(datatype: str, space: str) -> Path | None:
        hits = _derivative_masks(root, entry, datatype, space)
        if len(hits) > 1:
            raise DwiInputError(f"{entry.subject}: several {'DWI' if space == 'dwi' else space}-space lesion masks "
                                f"{[str(p.relative_to(root)) for p in hits]}; keep one (or remove the others from "
                                "the dataset the run reads).")
        return hits[0] if hits else None

    if mode in ("auto", "dwi"):
        mask = one("dwi", "dwi")
        if mask is not None:
            _check_grid(mask, header.shape, header.affine, "DWI-space lesion mask")
            return "dwi-derivative", mask, t1w, flair
    if mode in ("auto", "t1w"):
        mask = one("anat", "T1w")
        if mask is not None:
            if t1w is None:
                raise DwiInputError(f"{mask}: a T1w-space lesion mask, but {entry.subject} has no T1w image in "
                                    "its anat/ folder to register to the DWI. Add the T1w the mask was drawn on.")
            import nibabel as nib

            ref = nib.load(str(t1w))
            _check_grid(mask, ref.shape, ref.affine, "T1w-space lesion mask")
            return "t1w-registered", mask, t1w, flair
    if mode in ("auto", "segment") and t1w is not None and flair is not None:
        return "segmented", None, t1w, flair
    return "none", None, t1w, flair


# ----------------------------------------------------------------------- staging

def _plan_hash(plan: StudyPlan, profile) -> str:
    from dmrilib.config import config_hash

    files = []
    for s in plan.subjects:
        for p in (s.dwi.dwi, s.dwi.bval, s.dwi.bvec, s.lesion_file, s.t1w if s.lesion_source != "none" else None,
                  s.flair if s.lesion_source == "segmented" else None, s.brain_file):
            if p is not None:
                st = p.stat()
                files.append([str(p), st.st_size, st.st_mtime_ns])
    return config_hash(plan.record(), profile.bids, profile.registration,
                       profile.groundtruth if any(s.lesion_source == "segmented" for s in plan.subjects) else None,
                       profile.prepare.b0_threshold, profile.prepare.target_bvalue, profile.prepare.bvalue_tolerance,
                       files)


def read_study(cohort_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``cohort/study.json`` of a run on a BIDS dataset, or None for a simulated cohort."""
    path = Path(cohort_dir) / "study.json"
    if not path.is_file():
        return None
    study = upgrade_keys(json.loads(path.read_text()), LEGACY_STUDY_KEYS)  # a study staged by an older dmrilib
    study["subjects"] = [upgrade_keys(s, LEGACY_STUDY_KEYS) for s in study.get("subjects", [])]
    return study


def is_bids_study(cohort_dir: str | os.PathLike) -> bool:
    """Whether a results ``cohort/`` folder is a staged BIDS dataset (not a simulated cohort)."""
    return (Path(cohort_dir) / "study.json").is_file()


def _save_mask(path: Path, mask: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(mask, dtype=np.uint8), affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.abspath(target), link)


def _check_out_dir(out_dir: Path, existing: dict[str, Any] | None) -> None:
    """Refuse to replace a folder that is neither a staged study nor a simulated cohort of this pipeline."""
    if out_dir.exists() and existing is None and any(out_dir.iterdir()):
        # a simulated cohort of an earlier run of this profile: results are the pipeline's own
        if not (out_dir / ".dmrilib-simulation.json").is_file():
            raise FileExistsError(f"{out_dir}: exists and is not a staged BIDS study or simulated cohort; "
                                  "move it away or choose another RESULTS folder.")


def _write_dataset_files(plan: StudyPlan, tmp: Path) -> None:
    """The staged dataset's and its derivative's ``dataset_description.json``, and ``participants.tsv``."""
    write_json_atomic(tmp / "dataset_description.json", {
        "Name": plan.name, "BIDSVersion": plan.bids_version or "1.9.0", "DatasetType": "raw",
        "SourceDatasets": [{"URL": f"file://{plan.root.resolve()}"}],
    })
    write_json_atomic(tmp / "derivatives" / STAGED_PIPELINE / "dataset_description.json", {
        "Name": f"{plan.name}: DWI-grid masks for dmrilib", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "dmrilib"}], "SourceDatasets": [{"URL": f"file://{plan.root.resolve()}"}],
    })
    participants = read_participants(plan.root)
    rows = ["participant_id\tgroup\tgroup_source" + "".join(
        f"\t{c}" for c in participants.columns if c not in ("group", "group_source"))]
    for s in plan.subjects:
        extra = "".join(f"\t{participants.loc[s.subject, c]}" for c in participants.columns
                        if c not in ("group", "group_source"))
        rows.append(f"{s.subject}\t{s.group}\t{s.group_source}{extra}")
    write_text_atomic(tmp / "participants.tsv", "\n".join(rows) + "\n")


def _staged_mask(deriv: Path, s: SubjectPlan, desc: str) -> Path:
    """Where the staged cohort keeps a subject's DWI-grid ``desc-<desc>_mask``."""
    name = bids_name({"sub": s.subject, "ses": s.session, "space": "dwi", "desc": desc}, "mask", ".nii.gz")
    return deriv.joinpath(s.subject, *_session_parts(s), "dwi", name)


def _stage_dwi(s: SubjectPlan, profile, staged_dir: Path, rec: dict[str, Any]):
    """The subject's DWI as the run reads it: linked, or resampled to ``bids.voxel_size`` and written.

    Returns the loaded DWI and, when it was resampled, the acquired grid ``(shape, affine)``
    that the dataset's own DWI-space masks lie on (None otherwise).
    """
    from dmrilib.io import load_dwi

    prep = profile.prepare
    shell = dict(b0_threshold=prep.b0_threshold, target_bvalue=prep.target_bvalue,
                 bvalue_tolerance=prep.bvalue_tolerance, clip_negative=prep.clip_negative)
    dwi = load_dwi(s.dwi.dwi, bval=s.dwi.bval, bvec=s.dwi.bvec, **shell)
    size = profile.bids.voxel_size
    native = (tuple(dwi.spatial_shape), dwi.affine)
    if size is not None and not np.allclose(dwi.voxel_size, size, rtol=0.01):
        dwi = load_dwi(_write_resampled(dwi, size, staged_dir / s.dwi.dwi.name, s.dwi.sidecar), **shell)
        rec["staged_shape"], rec["staged_voxel_size"] = list(dwi.spatial_shape), [float(size)] * 3
        return dwi, native
    for f in (s.dwi.dwi, s.dwi.bval, s.dwi.bvec, s.dwi.sidecar):
        if f is not None:
            _link(f, staged_dir / f.name)
    return dwi, None


def _stage_subject(s: SubjectPlan, rec: dict[str, Any], plan: StudyPlan, profile, tmp: Path):
    """Stage one subject: its DWI and its brain, WM+GM and lesion masks on the DWI grid.

    Returns ``(subject plan, mean b0, affine)`` when its lesion is still to be
    segmented (:func:`_stage_segmented`), else None.
    """
    from dmrilib.preprocess import brain_mask_from_b0, dti_maps, mean_b0

    deriv = tmp / "derivatives" / STAGED_PIPELINE
    dwi, native = _stage_dwi(s, profile, tmp.joinpath(s.subject, *_session_parts(s), "dwi"), rec)
    brain = (_native_mask(s.brain_file, dwi, native) if s.brain_file is not None
             else brain_mask_from_b0(dwi))
    rec["brain_source"] = (str(s.brain_file.relative_to(plan.root)) if s.brain_file is not None
                           else "median_otsu(mean b0)")
    lesion, seconds, to_segment = None, None, None
    if s.lesion_source == "dwi-derivative":
        lesion = _native_mask(s.lesion_file, dwi, native)
    elif s.lesion_source == "t1w-registered":
        lesion, seconds = _carry_t1w_mask(s, dwi, profile)
    elif s.lesion_source == "segmented":
        # the mean b0 and its grid only: the 4D data of every patient would not fit in memory
        to_segment = (s, mean_b0(dwi), dwi.affine)
    md = dti_maps(dwi, brain, fit_method="OLS").md
    free_water = np.asarray(md) > profile.bids.csf_md_threshold
    rec["eval_region"] = f"brain mask without MD > {profile.bids.csf_md_threshold:g} mm^2/s, lesion added"
    region = brain & ~free_water
    if lesion is not None:
        lesion = lesion & brain if (lesion & brain).any() else lesion
        region |= lesion
        _save_mask(_staged_mask(deriv, s, "lesion"), lesion, dwi.affine)
        rec["lesion_voxels"] = int(lesion.sum())
    _save_mask(_staged_mask(deriv, s, "brain"), brain, dwi.affine)
    _save_mask(_staged_mask(deriv, s, "wmgm"), region, dwi.affine)
    rec["_region"] = region  # completed by _stage_segmented for segmented lesions
    if seconds is not None:
        rec["register_time_s"] = round(seconds, 1)
    return to_segment


def _stage_segmented(to_segment, profile, seg_dir: Path, tmp: Path, record: dict[str, Any], progress: bool) -> None:
    """Segment the patients left without a lesion mask and add their lesion and WM+GM masks."""
    carried = _segment(to_segment, profile, seg_dir, progress)
    deriv = tmp / "derivatives" / STAGED_PIPELINE
    by_subject = {r["subject"]: r for r in record["subjects"]}
    for s, _, affine in to_segment:
        lesion = carried[s.subject]
        rec = by_subject[s.subject]
        _save_mask(_staged_mask(deriv, s, "lesion"), lesion, affine)
        _save_mask(_staged_mask(deriv, s, "wmgm"), rec["_region"] | lesion, affine)
        rec["lesion_voxels"] = int(lesion.sum())


def _replace_folder(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` onto ``out_dir``, the old folder (if any) out of the way first."""
    if out_dir.exists():
        old = atomic_dir(out_dir, "old")
        os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def stage_bids(plan: StudyPlan, profile, out_dir: str | os.PathLike, *, segmentation_dir: str | os.PathLike | None = None,
               progress: bool = True) -> Path:
    """Write the staged cohort of a checked plan (see the module docstring).

    Built under a temporary name beside ``out_dir`` and renamed onto it at the
    end, so a failed run leaves no partial cohort. A folder staged from the
    same plan, files and settings is returned at once.

    Parameters
    ----------
    plan : StudyPlan
        From :func:`plan_bids`.
    profile : dmrilib.config.Profile
    out_dir : path-like
        ``results/<...>/<profile>/cohort``.
    segmentation_dir : path-like, optional
        Where the ground-truth U-Net is trained (resumable) when a patient's
        lesion is to be segmented; default ``<out_dir>/../groundtruth/segmentation``.
    progress : bool
        Show a tqdm progress bar over subjects.

    Returns
    -------
    Path
        ``out_dir``.
    """
    from tqdm.auto import tqdm

    from dmrilib.config import provenance

    out_dir = Path(out_dir)
    digest = _plan_hash(plan, profile)
    existing = read_study(out_dir)
    if existing is not None and existing.get("plan_hash") == digest:
        return out_dir
    _check_out_dir(out_dir, existing)
    remove_stale_temp(out_dir.parent, recursive=False)
    tmp = atomic_dir(out_dir, "tmp")
    t0 = time.perf_counter()
    try:
        record = plan.record()
        _write_dataset_files(plan, tmp)
        to_segment = []
        for s, rec in tqdm(list(zip(plan.subjects, record["subjects"])), desc="stage", unit="subject",
                           disable=not progress):
            item = _stage_subject(s, rec, plan, profile, tmp)
            if item is not None:
                to_segment.append(item)
        if to_segment:
            _stage_segmented(to_segment, profile, Path(segmentation_dir) if segmentation_dir else
                             ResultsLayout(out_dir.parent).segmentation, tmp, record, progress)
        for rec in record["subjects"]:
            rec.pop("_region", None)
        record.update(plan_hash=digest, config_hash=profile.hash(), seed=profile.seed,
                      stage_time_s=round(time.perf_counter() - t0, 1), provenance=provenance())
        write_json_atomic(tmp / "study.json", record)
        _replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _carry_t1w_mask(s: SubjectPlan, dwi, profile) -> tuple[np.ndarray, float]:
    """Register the subject's T1w to its mean b0 (ANTs) and carry the T1w-space lesion mask to the DWI grid."""
    import nibabel as nib

    from dmrilib.groundtruth import register_structural_to_dwi
    from dmrilib.preprocess import mean_b0

    t1 = nib.load(str(s.t1w))
    mask = nib.load(str(s.lesion_file))
    registration = register_structural_to_dwi(np.asarray(t1.dataobj, dtype=np.float32), mean_b0(dwi),
                                              t1w_affine=t1.affine, dwi_affine=dwi.affine, config=profile.registration)
    carried = registration.warp(np.asarray(mask.dataobj) > 0.5, profile.registration.interpolation)
    return np.asarray(carried, dtype=bool), registration.seconds


def _segment(items, profile, seg_dir: Path, progress: bool) -> dict[str, np.ndarray]:
    """Segment T1w+FLAIR with the ground-truth U-Net (trained on simulated subjects) and carry the masks over."""
    import nibabel as nib

    from dmrilib.groundtruth import (GroundTruthInput, run_groundtruth_cohort, simulate_training_set,
                                     train_segmentation)

    seg = profile.groundtruth
    training = simulate_training_set(profile.cohort, seg, n_jobs=1, progress=progress)
    train_segmentation(training.images, training.targets, config=seg, out_dir=seg_dir,
                       subject_ids=training.subject_ids, progress=progress)

    def inputs():
        for s, b0, affine in items:
            t1, flair = nib.load(str(s.t1w)), nib.load(str(s.flair))
            if tuple(flair.shape[:3]) != tuple(t1.shape[:3]) or not np.allclose(flair.affine, t1.affine, atol=1e-3):
                raise DwiInputError(f"{s.flair}: FLAIR is not on the T1w grid; resample it onto the T1w first.")
            yield GroundTruthInput(subject=s.subject, t1w=np.asarray(t1.dataobj, dtype=np.float32),
                                   flair=np.asarray(flair.dataobj, dtype=np.float32), structural_affine=t1.affine,
                                   b0=b0, dwi_affine=affine)

    result = run_groundtruth_cohort(inputs(), seg_dir, seg_config=seg, reg_config=profile.registration,
                                    progress=progress)
    return {k: np.asarray(v, dtype=bool) for k, v in result.masks.items()}


def resample_volume(data: np.ndarray, affine: np.ndarray, voxel_size: float, *,
                    order: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Resample a 3D or 4D image to an isotropic voxel size over the same field of view.

    Each volume is first smoothed against aliasing where it is made coarser
    (a Gaussian whose FWHM is the size ratio's ``sqrt(r^2 - 1)`` voxels),
    then sampled with spline ``order`` (1: trilinear). The new grid keeps the
    axes' orientation and covers the old field of view (its voxel centres
    start half a new voxel inside the old grid's edge).

    Returns
    -------
    (data, affine) : ndarray (float32), ndarray (4, 4)
    """
    from scipy import ndimage

    data = np.asarray(data, dtype=np.float32)
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    ratio = float(voxel_size) / zooms
    shape = tuple(max(1, int(np.ceil(n / r - 1e-6))) for n, r in zip(data.shape[:3], ratio))
    offset = (ratio - 1) / 2  # new voxel i covers old voxels [i r - 1/2, (i + 1) r - 1/2)
    new_affine = np.array(affine, dtype=float, copy=True)
    new_affine[:3, :3] = new_affine[:3, :3] @ np.diag(ratio)
    new_affine[:3, 3] = np.asarray(affine)[:3, :3] @ offset + np.asarray(affine)[:3, 3]
    sigma = np.sqrt(np.clip(ratio ** 2 - 1, 0, None)) / (2 * np.sqrt(2 * np.log(2)))
    volumes = data[..., None] if data.ndim == 3 else data
    out = np.empty((*shape, volumes.shape[3]), dtype=np.float32)
    for k in range(volumes.shape[3]):
        smooth = ndimage.gaussian_filter(volumes[..., k], sigma) if sigma.any() else volumes[..., k]
        out[..., k] = ndimage.affine_transform(smooth, np.diag(ratio), offset=offset, output_shape=shape, order=order,
                                               mode="nearest")
    return (out[..., 0] if data.ndim == 3 else out), new_affine


def _write_resampled(dwi, voxel_size: float, path: Path, sidecar: Path | None) -> Path:
    """Write a DWI (its b0 volumes and chosen shell) resampled to ``voxel_size`` with its .bval/.bvec."""
    import nibabel as nib

    data, affine = resample_volume(dwi.data, dwi.affine, voxel_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.clip(data, 0, None), affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
    write_text_atomic(path.with_name(stem + ".bval"), " ".join(f"{b:g}" for b in dwi.bvals) + "\n")
    write_text_atomic(path.with_name(stem + ".bvec"),
                      "\n".join(" ".join(f"{v:.6f}" for v in row) for row in np.asarray(dwi.bvecs).T) + "\n")
    if sidecar is not None:
        shutil.copyfile(sidecar, path.with_name(stem + ".json"))
    return path


def _native_mask(path: Path, dwi, native) -> np.ndarray:
    """A mask drawn on the subject's acquired DWI grid, on the (possibly resampled) staged grid."""
    from dmrilib.io import load_mask

    if native is None:
        return load_mask(path, dwi)
    import nibabel as nib

    img = nib.load(str(path))
    shape, affine = native
    _check_grid(path, shape, affine, "DWI-space mask")
    values, _ = resample_volume(np.asarray(img.dataobj) > 0.5, affine, float(np.sqrt((dwi.affine[:3, 0] ** 2).sum())))
    return values >= 0.5
