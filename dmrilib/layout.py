"""Every path under ``<results>/<profile>/``: :class:`ResultsLayout`.

One owner for the results layout (as showyourwork's ``paths.py`` is for a
paper): the jobs (:mod:`dmrilib.pipeline`), the figures, the export, the
book (:mod:`dmrilib.report`), the ablation, the sweep and the workflow
(``workflow/Snakefile``) all ask this module where a file is, and none of
them spells a folder or file name of the layout itself::

    <results>/<profile>/
        cohort/                 simulated cohort or staged BIDS view (study.json in BIDS mode)
        prepared/               network-grid arrays + meta.json
        folds.json
        notebooks/<job>.ipynb   executed notebooks of the profile-wide jobs
        groundtruth/            groundtruth.json, lesion-pipeline.npy, subjects.csv, timings.csv,
                                segmentation/ (the U-Net run)
        runs/<model>/<variant>/fold-<k>/   one run (see RunFiles)
        tables/<name>.csv, tables/summary.json
        figures/<name>.png, figures.json, cohort_qc.csv, export.csv, export.json, overlays/<subject>.png
        derivatives/anomaly/    exported maps (a BIDS derivative)
        ablation/, sweep/       `make ablation`, `make sweep`

Torch-, numpy- and pandas-free at import (the Snakefile imports it when it
is read); the two readers of the ground-truth record import what they need
when called.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ResultsLayout", "RunFiles", "RESULTS"]

#: The default results folder (relative to the working directory).
RESULTS = "results"


@dataclass(frozen=True)
class RunFiles:
    """The files of one run folder ``runs/<model>/<variant>/fold-<k>/``.

    Written by the train job (:func:`dmrilib.train.train_run`: checkpoints,
    ``log.csv``, ``run.json``), the map prediction
    (:func:`dmrilib.pipeline.predict_run`: ``maps-*.npy`` + ``.sha256``
    sidecars, ``maps.json``) and the evaluate or baseline job (``eval*``).

    Attributes
    ----------
    folder : Path
        The run folder.
    """

    folder: Path

    @property
    def checkpoint_best(self) -> Path:
        """``checkpoint-best.pt``: weights of the selected epoch."""
        return self.folder / "checkpoint-best.pt"

    @property
    def checkpoint_last(self) -> Path:
        """``checkpoint-last.pt``: the resume point."""
        return self.folder / "checkpoint-last.pt"

    @property
    def run_record(self) -> Path:
        """``run.json``: the training record (config hash, seed, provenance, times)."""
        return self.folder / "run.json"

    @property
    def train_log(self) -> Path:
        """``log.csv``: losses per epoch."""
        return self.folder / "log.csv"

    @property
    def maps_test(self) -> Path:
        """``maps-test.npy``: the patients' anomaly maps (float16, network grid)."""
        return self.folder / "maps-test.npy"

    @property
    def maps_val(self) -> Path:
        """``maps-val.npy``: the fold's validation healthy subjects' maps."""
        return self.folder / "maps-val.npy"

    @property
    def maps_record(self) -> Path:
        """``maps.json``: what made the maps (run identity, checkpoint sha256, map sha256)."""
        return self.folder / "maps.json"

    @property
    def eval_record(self) -> Path:
        """``eval.json``: the evaluation summary."""
        return self.folder / "eval.json"

    @property
    def eval_dice(self) -> Path:
        """``eval-dice.csv``: Dice per patient and threshold rule (against the exact lesions)."""
        return self.folder / "eval-dice.csv"

    @property
    def eval_auroc(self) -> Path:
        """``eval-auroc.csv``: AUROC and AP per patient (against the exact lesions)."""
        return self.folder / "eval-auroc.csv"

    @property
    def eval_dice_pipeline(self) -> Path:
        """``eval-dice-pipeline.csv``: as :attr:`eval_dice`, against the ground-truth pipeline's masks."""
        return self.folder / "eval-dice-pipeline.csv"

    @property
    def eval_auroc_pipeline(self) -> Path:
        """``eval-auroc-pipeline.csv``: as :attr:`eval_auroc`, against the ground-truth pipeline's masks."""
        return self.folder / "eval-auroc-pipeline.csv"

    def notebook(self, job: str) -> Path:
        """``<job>.ipynb``: the executed notebook of a job of this run (train, evaluate, baseline)."""
        return self.folder / f"{job}.ipynb"


def _fold_part(fold: int | str) -> str:
    # An int (or numpy integer, or "3") is written as an integer; any other
    # string is kept as written, so a Snakemake wildcard "{fold}" stays a pattern.
    if isinstance(fold, str) and not fold.isdigit():
        return f"fold-{fold}"
    return f"fold-{int(fold)}"


@dataclass(frozen=True)
class ResultsLayout:
    """Where every output of one profile lies: ``root`` = ``<results>/<profile name>``.

    Build it with :meth:`of`; ``ResultsLayout(root)`` takes the profile's
    folder itself. Every property is a :class:`pathlib.Path` under ``root``;
    nothing is created or read (except by the ``read_*`` methods).

    Attributes
    ----------
    root : Path
        ``<results>/<profile name>``.

    Examples
    --------
    >>> layout = ResultsLayout.of("quick")
    >>> layout.run("dae", "lsd16-linear", 0).as_posix()
    'results/quick/runs/dae/lsd16-linear/fold-0'
    >>> layout.table("table1").as_posix()
    'results/quick/tables/table1.csv'
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, profile: Any, results: str | os.PathLike = RESULTS) -> "ResultsLayout":
        """The layout of a profile under a results folder.

        Parameters
        ----------
        profile : Profile or str
            A :class:`dmrilib.config.Profile` (its ``name``) or a profile name.
        results : path-like
            The results folder (default ``results``).
        """
        name = profile if isinstance(profile, str) else profile.name
        return cls(Path(results) / name)

    def relative(self, path: str | os.PathLike) -> Path:
        """``path`` relative to :attr:`root` (as records list the files a job wrote)."""
        return Path(path).relative_to(self.root)

    # ------------------------------------------------------------------ cohort

    @property
    def cohort(self) -> Path:
        """``cohort/``: the simulated BIDS cohort, or the staged view of the user's dataset."""
        return self.root / "cohort"

    @property
    def cohort_description(self) -> Path:
        """``cohort/dataset_description.json`` (the cohort job's output)."""
        return self.cohort / "dataset_description.json"

    @property
    def participants(self) -> Path:
        """``cohort/participants.tsv``."""
        return self.cohort / "participants.tsv"

    @property
    def study_file(self) -> Path:
        """``cohort/study.json``: the plan of a run on the user's BIDS dataset (absent when simulated)."""
        return self.cohort / "study.json"

    @property
    def prepared(self) -> Path:
        """``prepared/``: the cohort's arrays on the network grid (:func:`dmrilib.dataset.load_prepared`)."""
        return self.root / "prepared"

    @property
    def prepared_meta(self) -> Path:
        """``prepared/meta.json`` (the cohort job's output)."""
        return self.prepared / "meta.json"

    @property
    def folds_file(self) -> Path:
        """``folds.json``: the cross-validation folds (written by the train and baseline jobs)."""
        return self.root / "folds.json"

    # ------------------------------------------------------------------ notebooks

    @property
    def notebooks(self) -> Path:
        """``notebooks/``: executed notebooks of the profile-wide jobs."""
        return self.root / "notebooks"

    def notebook(self, job: str) -> Path:
        """``notebooks/<job>.ipynb`` (cohort, groundtruth, aggregate, followup, figures, export)."""
        return self.notebooks / f"{job}.ipynb"

    # ------------------------------------------------------------------ ground truth

    @property
    def groundtruth(self) -> Path:
        """``groundtruth/``: the ground-truth job's folder."""
        return self.root / "groundtruth"

    @property
    def groundtruth_record(self) -> Path:
        """``groundtruth/groundtruth.json``: subject order, config hash, seed, timings."""
        return self.groundtruth / "groundtruth.json"

    @property
    def groundtruth_masks(self) -> Path:
        """``groundtruth/lesion-pipeline.npy``: the pipeline's masks on the network grid (+ ``.sha256``)."""
        return self.groundtruth / "lesion-pipeline.npy"

    @property
    def groundtruth_subjects(self) -> Path:
        """``groundtruth/subjects.csv``: the pipeline's errors per patient (or mask sources, BIDS)."""
        return self.groundtruth / "subjects.csv"

    @property
    def groundtruth_timings(self) -> Path:
        """``groundtruth/timings.csv``: wall seconds per patient and step."""
        return self.groundtruth / "timings.csv"

    @property
    def segmentation(self) -> Path:
        """``groundtruth/segmentation/``: the segmentation U-Net's run folder."""
        return self.groundtruth / "segmentation"

    def read_groundtruth_record(self) -> dict[str, Any] | None:
        """``groundtruth.json``, or None before the ground-truth job has run (no record or no masks)."""
        if not (self.groundtruth_record.is_file() and self.groundtruth_masks.is_file()):
            return None
        return json.loads(self.groundtruth_record.read_text())

    def read_pipeline_masks(self, subjects: Sequence[str],
                            record: dict[str, Any] | None = None) -> "np.ndarray | None":
        """The ground-truth pipeline's masks (network grid, bool) of ``subjects``.

        Parameters
        ----------
        subjects : sequence of str
            Patients, in the order wanted.
        record : dict, optional
            ``groundtruth.json`` already read (:meth:`read_groundtruth_record`).

        Returns
        -------
        ndarray of bool, shape (len(subjects), X, Y, Z), or None
            None before the ground-truth job has run.

        Raises
        ------
        ValueError
            If a subject has no mask in the record.
        dmrilib.integrity.IntegrityError
            If ``lesion-pipeline.npy`` has no sha256 sidecar or does not match it.
        """
        import numpy as np

        from dmrilib.integrity import load_npy

        record = self.read_groundtruth_record() if record is None else record
        if record is None:
            return None
        order = record["subjects"]
        missing = sorted(set(subjects) - set(order))
        if missing:
            raise ValueError(f"{self.groundtruth_record}: no pipeline mask for {missing}; re-run the ground-truth job.")
        # Checked like every stored result (sha256 sidecar); the stack is small
        # (uint8 masks of the patients), so reading it whole costs nothing.
        stack = load_npy(self.groundtruth_masks, what_to_do="Delete it and run the ground-truth job again.")
        return np.stack([np.asarray(stack[order.index(s)], dtype=bool) for s in subjects])

    # ------------------------------------------------------------------ runs

    @property
    def runs(self) -> Path:
        """``runs/``: every (model, variant, fold) run."""
        return self.root / "runs"

    def run(self, model: str, variant: str, fold: int | str) -> Path:
        """``runs/<model>/<variant>/fold-<k>/``: the folder of one run.

        ``fold`` is an integer (or its digits); any other string is kept as
        written, so ``run("{model}", "{variant}", "{fold}")`` is a Snakemake
        pattern.
        """
        return self.runs / model / variant / _fold_part(fold)

    def run_files(self, model: str, variant: str, fold: int | str) -> RunFiles:
        """The files of one run (:class:`RunFiles`)."""
        return RunFiles(self.run(model, variant, fold))

    # ------------------------------------------------------------------ tables

    @property
    def tables(self) -> Path:
        """``tables/``: the aggregate and follow-up jobs' tables."""
        return self.root / "tables"

    def table(self, name: str) -> Path:
        """``tables/<name>.csv`` (``table1``, ``auroc_all``, ``followup``, ...)."""
        return self.tables / f"{name}.csv"

    @property
    def summary(self) -> Path:
        """``tables/summary.json``: the aggregate job's record."""
        return self.tables / "summary.json"

    # ------------------------------------------------------------------ figures and export

    @property
    def figures(self) -> Path:
        """``figures/``: the figures and export jobs' output."""
        return self.root / "figures"

    def figure(self, name: str) -> Path:
        """``figures/<name>.png``."""
        return self.figures / f"{name}.png"

    @property
    def figures_record(self) -> Path:
        """``figures/figures.json``: every figure with its caption."""
        return self.figures / "figures.json"

    @property
    def cohort_qc(self) -> Path:
        """``figures/cohort_qc.csv``: the written cohort's QC table (:func:`dmrilib.simulate.qc.cohort_qc`)."""
        return self.figures / "cohort_qc.csv"

    @property
    def export_table(self) -> Path:
        """``figures/export.csv``: one row per exported map."""
        return self.figures / "export.csv"

    @property
    def export_record(self) -> Path:
        """``figures/export.json``: the files the export wrote and what made them."""
        return self.figures / "export.json"

    @property
    def overlays(self) -> Path:
        """``figures/overlays/``: one overlay figure per patient."""
        return self.figures / "overlays"

    def overlay(self, subject: str) -> Path:
        """``figures/overlays/<subject>.png``."""
        return self.overlays / f"{subject}.png"

    @property
    def derivatives(self) -> Path:
        """``derivatives/``: BIDS derivatives the run writes."""
        return self.root / "derivatives"

    @property
    def anomaly_derivatives(self) -> Path:
        """``derivatives/anomaly/``: the exported anomaly maps (:func:`dmrilib.export.export_anomaly_maps`)."""
        return self.derivatives / "anomaly"

    # ------------------------------------------------------------------ studies beside the book

    @property
    def ablation(self) -> Path:
        """``ablation/``: ``make ablation`` (:mod:`dmrilib.ablation`); one results folder per flipped row."""
        return self.root / "ablation"

    @property
    def sweep(self) -> Path:
        """``sweep/``: ``make sweep`` (:mod:`dmrilib.sweep`); one results folder per (condition, seed)."""
        return self.root / "sweep"
