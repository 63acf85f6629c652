"""The whole simulated cohort: who is who, and writing it as a BIDS dataset."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmrilib._atomic import atomic_dir, remove_stale_temp, write_json_atomic, write_text_atomic
from dmrilib._workers import process_pool
from dmrilib.simulate.anatomy import load_template
from dmrilib.simulate.bids import PIPELINE, subject_files, write_subject
from dmrilib.simulate.config import GRADES, CohortConfig
from dmrilib.simulate.fibres import fibre_field
from dmrilib.simulate.signal import small64d_scheme
from dmrilib.simulate.subject import simulate_subject

__all__ = ["SubjectPlan", "cohort_plan", "simulate_cohort"]

_SIZES = ("large", "medium", "small")
_DONE = ".done"
_RECORD = ".dmrilib-simulation.json"


@dataclass(frozen=True)
class SubjectPlan:
    """One row of ``participants.tsv``.

    ``age`` (years, one decimal) is None unless the cohort draws ages
    (``age_range``); ``scanner`` (0 or 1) is None unless the cohort is split
    between two scanners (``scanner_share``). Their columns are written only then.
    """

    label: str
    group: str
    grade: str | None
    size_class: str | None
    followup: bool
    seed: int
    age: float | None = None
    scanner: int | None = None

    def row(self) -> str:
        cells = [f"sub-{self.label}", self.group, self.grade or "n/a", self.size_class or "n/a",
                 "yes" if self.followup else "no", str(self.seed)]
        if self.age is not None:
            cells.append(f"{self.age:.1f}")
        if self.scanner is not None:
            cells.append(str(self.scanner))
        return "\t".join(cells)


def cohort_plan(config: CohortConfig) -> list[SubjectPlan]:
    """Subjects of the cohort with their group, grade, size class, follow-up and seed.

    Healthy controls are ``H01..``, patients ``P01..``. Grades are shuffled
    over patient labels; within each grade the size classes cycle through
    large/medium/small from a random start, so sizes are balanced per grade.
    With ``age_range`` set, ages are drawn uniformly in it (rounded to 0.1
    year); with ``scanner_share`` = (controls, patients) set, exactly
    ``round(share * n)`` controls and patients, chosen at random, are on
    scanner 1. Each uses a random stream of its own, so a cohort without
    them plans exactly as before. Deterministic in ``config.seed``.
    """
    n = config.n_healthy + config.n_patients
    children = np.random.SeedSequence(config.seed).spawn(n + 1)
    seeds = [int(c.generate_state(1)[0]) for c in children[:n]]
    rng = np.random.default_rng(children[n])
    grades = [g for g in GRADES for _ in range(config.patient_grades.get(g, 0))]
    sizes = []
    for g in GRADES:
        start = int(rng.integers(3))
        sizes += [_SIZES[(start + i) % 3] for i in range(config.patient_grades.get(g, 0))]
    order = rng.permutation(len(grades))
    grades = [grades[i] for i in order]
    sizes = [sizes[i] for i in order]
    with_followup = set(rng.choice(config.n_patients, size=config.followup_count, replace=False).tolist())
    width = max(2, len(str(max(config.n_healthy, config.n_patients))))
    plan = [SubjectPlan(f"H{i + 1:0{width}d}", "healthy", None, None, False, seeds[i]) for i in range(config.n_healthy)]
    plan += [
        SubjectPlan(f"P{i + 1:0{width}d}", "patient", grades[i], sizes[i], i in with_followup, seeds[config.n_healthy + i])
        for i in range(config.n_patients)
    ]
    # Streams n + 1 and n + 2 of the cohort seed: spawning more children
    # leaves the first n + 1 (seeds and the plan above) as they were.
    extra = np.random.SeedSequence(config.seed).spawn(n + 3)
    if config.age_range is not None:
        lo, hi = config.age_range
        ages = np.round(np.random.default_rng(extra[n + 1]).uniform(lo, hi, size=n), 1)
        plan = [dataclasses.replace(p, age=float(a)) for p, a in zip(plan, ages)]
    if max(config.scanner_share) > 0:
        rng = np.random.default_rng(extra[n + 2])
        scanner = np.zeros(n, dtype=int)
        for share, first, count in ((config.scanner_share[0], 0, config.n_healthy),
                                    (config.scanner_share[1], config.n_healthy, config.n_patients)):
            chosen = rng.choice(count, size=int(round(share * count)), replace=False)
            scanner[first + chosen] = 1
        plan = [dataclasses.replace(p, scanner=int(k)) for p, k in zip(plan, scanner)]
    return plan


def _simulate_one(config: CohortConfig, plan: SubjectPlan, root: str) -> str:
    subject = simulate_subject(config, plan.seed, grade=plan.grade, size_class=plan.size_class,
                               followup=plan.followup, age=plan.age, scanner=plan.scanner or 0)
    write_subject(root, plan.label, subject)
    # The marker is written last: a subject without it is redone on resume.
    write_text_atomic(Path(root) / _DONE / plan.label, "")
    return plan.label


def _description(config: CohortConfig) -> dict:
    from dmrilib import __version__
    from dmrilib.config import config_hash

    return {
        "Name": "dmri-anomaly simulated glioma diffusion MRI cohort",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Simulated": True,
        "HowToAcknowledge": "Simulated data: anatomy from the MNI152 2009 templates (nilearn), "
                            "gradient scheme from dipy's small_64D; not patient data.",
        "GeneratedBy": [{"Name": "dmrilib.simulate", "Version": __version__,
                         "Description": "Simulated by dmrilib.simulate.simulate_cohort"}],
        "SimulationConfig": {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(config), default=list)).items()
                             if not k.startswith("_")},
        "ConfigHash": config_hash(config),
    }


def _recorded_hash(root: Path) -> str | None:
    """Config hash of the simulated cohort in ``root`` from its description or, when a workflow
    deleted that (Snakemake removes a job's outputs before re-running it), from the hidden copy."""
    for name in ("dataset_description.json", _RECORD):
        try:
            value = json.loads((root / name).read_text()).get("ConfigHash")
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            return str(value)
    return None


def _is_complete(root: Path, config: CohortConfig) -> bool:
    desc = root / "dataset_description.json"
    try:
        return json.loads(desc.read_text()).get("ConfigHash") == _description(config)["ConfigHash"]
    except (OSError, ValueError, AttributeError):
        return False


def _looks_simulated(root: Path) -> bool:
    """Whether ``root`` was written by :func:`simulate_cohort` (a hidden record, or the ground-truth
    derivatives' description naming dmrilib.simulate)."""
    if (root / _RECORD).is_file():
        return True
    try:
        desc = json.loads((root / "derivatives" / PIPELINE / "dataset_description.json").read_text())
        return any(g.get("Name") == "dmrilib.simulate" for g in desc.get("GeneratedBy", []))
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def simulate_cohort(config: CohortConfig, out_dir: str | os.PathLike, *, progress: bool = True,
                    n_jobs: int | None = None, replace: bool = False) -> Path:
    """Simulate the cohort and write it as a BIDS dataset at ``out_dir``.

    The dataset is assembled in ``<out_dir>.partial`` and renamed onto
    ``out_dir`` only when every subject is written, so an interrupted run never
    leaves a cohort that looks complete. Calling again resumes: subjects
    already finished in the partial folder (same config) are kept. The same
    config gives bit-identical files, whatever ``n_jobs``.

    A cohort of this config that lost its ``dataset_description.json`` (a
    workflow manager deletes a job's outputs before re-running it) or some
    subjects is completed in place of being refused: its hidden record
    ``.dmrilib-simulation.json`` names the config it was simulated with.

    Parameters
    ----------
    config : CohortConfig
    out_dir : path-like
        Destination folder; must not exist unless it holds this very cohort
        (then it is returned as is, completed if needed), or ``replace`` is set.
    progress : bool
        Show a tqdm progress bar.
    n_jobs : int, optional
        Worker processes (default: up to 2, the CPU count permitting).
    replace : bool
        Replace a cohort that ``simulate_cohort`` wrote with another config.
        For folders that a pipeline owns (``results/<profile>/cohort``); a
        folder that does not look like a simulated cohort is never deleted.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    ValueError
        If ``out_dir`` holds something else (see ``replace``); nothing is changed then.
    """
    folders = _Folders.of(out_dir)
    description = _description(config)
    if _settle_existing(folders, config, description, replace=replace):
        return folders.out
    _open_partial(folders, description)
    plan = cohort_plan(config)
    _simulate_missing(config, plan, folders.partial, n_jobs=n_jobs, progress=progress)
    _finish_partial(folders.partial, plan, description)
    os.replace(folders.partial, folders.out)
    return folders.out


@dataclass(frozen=True)
class _Folders:
    """Where a cohort ends up (``out``), where it is assembled (``partial``) and the partial's config record."""

    out: Path
    partial: Path
    marker: Path

    @classmethod
    def of(cls, out_dir: str | os.PathLike) -> "_Folders":
        """The folders of a cohort written to ``out_dir``."""
        out = Path(out_dir)
        partial = out.with_name(out.name + ".partial")
        return cls(out, partial, partial / _DONE / "config.json")


def _settle_existing(folders: _Folders, config: CohortConfig, description: dict, *, replace: bool) -> bool:
    """Deal with what ``out`` already holds; True when it is this very cohort, complete (nothing left to do)."""
    out = folders.out
    if out.is_dir() and not any(out.iterdir()):
        # Workflow managers create output folders before the job runs; an
        # empty one is not a previous result.
        out.rmdir()
    if not out.exists():
        return False
    if _is_complete(out, config):
        if not (out / _RECORD).is_file():  # a cohort of an older version: record it for later re-runs
            write_json_atomic(out / _RECORD, description)
        return True
    recorded = _recorded_hash(out)
    if recorded == description["ConfigHash"]:
        _reopen_incomplete(folders, config, description)
    elif replace and _looks_simulated(out):
        trash = atomic_dir(out, "old")
        os.replace(out, trash / out.name)
        shutil.rmtree(trash)
    elif _looks_simulated(out):
        raise ValueError(
            f"{out}: holds a simulated cohort of another config (hash {recorded or 'unknown'}; this config "
            f"has {description['ConfigHash']}). Remove it or choose another output folder; nothing was changed."
        )
    else:
        raise ValueError(
            f"{out}: exists and is not a cohort simulated by dmrilib (hash {description['ConfigHash']}). "
            "Remove it or choose another output folder; nothing was changed."
        )
    return False


def _reopen_incomplete(folders: _Folders, config: CohortConfig, description: dict) -> None:
    """Move this very cohort, incomplete, back to the partial folder and mark its finished subjects done.

    A subject is finished when its every file is there (each was written
    atomically); the rest is simulated as after an interruption.
    """
    partial = folders.partial
    if partial.exists():
        shutil.rmtree(partial)
    os.replace(folders.out, partial)
    (partial / "dataset_description.json").unlink(missing_ok=True)
    write_json_atomic(folders.marker, description)
    for p in cohort_plan(config):
        if all(f.is_file() for f in subject_files(partial, p.label, followup=p.followup)):
            write_text_atomic(partial / _DONE / p.label, "")


def _open_partial(folders: _Folders, description: dict) -> None:
    """Create the partial folder, or keep the one a run of this config left, and record the config in it."""
    partial, marker = folders.partial, folders.marker
    if partial.exists() and (not marker.is_file() or json.loads(marker.read_text()) != description):
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    # Files that killed workers were writing (their pid is gone) are not results.
    remove_stale_temp(partial)
    write_json_atomic(marker, description)


def _simulate_missing(config: CohortConfig, plan: list[SubjectPlan], partial: Path, *, n_jobs: int | None,
                      progress: bool) -> None:
    """Simulate and write the subjects of ``plan`` not yet marked done in ``partial``, on ``n_jobs`` processes."""
    todo = [p for p in plan if not (partial / _DONE / p.label).is_file()]
    n_jobs = max(1, min(n_jobs or min(2, os.cpu_count() or 1), len(todo) or 1))
    # Build the cached template, fibre field and gradient scheme once in this
    # process; forked workers inherit them instead of rebuilding.
    load_template(config.voxel_size)
    load_template(config.structural_spacing)
    fibre_field(config.voxel_size)
    small64d_scheme(config.bvalues, config.n_b0)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="simulate cohort", unit="subject",
               disable=not progress)
    if n_jobs == 1:
        for p in todo:
            _simulate_one(config, p, str(partial))
            bar.update()
    else:
        with process_pool(n_jobs, "fork") as pool:
            futures = [pool.submit(_simulate_one, config, p, str(partial)) for p in todo]
            for fut in as_completed(futures):
                fut.result()
                bar.update()
    bar.close()


def _participants(plan: list[SubjectPlan]) -> tuple[str, dict]:
    """``participants.tsv`` (text) and its ``participants.json`` sidecar; age and scanner columns only when planned."""
    columns = ["participant_id", "group", "grade", "size_class", "followup", "seed"]
    sidecar = {
        "group": {"Description": "healthy control or glioma patient",
                  "Levels": {"healthy": "control", "patient": "glioma"}},
        "grade": {"Description": "WHO grade of the simulated glioma"},
        "size_class": {"Description": "size class of the visible tumour (large/medium/small)"},
        "followup": {"Description": "whether a follow-up session (FLAIR) exists"},
        "seed": {"Description": "seed of dmrilib.simulate.simulate_subject for this subject"},
    }
    if plan and plan[0].age is not None:
        columns.append("age")
        sidecar["age"] = {"Description": "age at the scan", "Units": "year"}
    if plan and plan[0].scanner is not None:
        columns.append("scanner")
        sidecar["scanner"] = {"Description": "scanner of the two-scanner split (0: reference, 1: second scanner, "
                                             "with a diffusivity offset and a lower SNR)"}
    return "\n".join(["\t".join(columns)] + [p.row() for p in plan]) + "\n", sidecar


def _finish_partial(partial: Path, plan: list[SubjectPlan], description: dict) -> None:
    """Check every subject's files, then write the dataset-level files; the description last, as completion mark."""
    missing = [f for p in plan for f in subject_files(partial, p.label, followup=p.followup) if not f.is_file()]
    if missing:
        raise RuntimeError(f"{partial}: {len(missing)} expected files missing after simulation, e.g. {missing[0]}.")
    table, sidecar = _participants(plan)
    write_text_atomic(partial / "participants.tsv", table)
    write_json_atomic(partial / "participants.json", sidecar)
    deriv = partial / "derivatives" / PIPELINE
    write_json_atomic(deriv / "dataset_description.json", {
        "Name": "Ground truth of the simulated cohort",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": description["GeneratedBy"],
    })
    shutil.rmtree(partial / _DONE)
    # Hidden (skipped by BIDS tools and manifests): survives the deletion of
    # dataset_description.json, so a re-run can tell this cohort's config.
    write_json_atomic(partial / _RECORD, description)
    # Written last: its presence (with the config hash) marks a complete cohort.
    write_json_atomic(partial / "dataset_description.json", description)
