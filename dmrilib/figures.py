"""Render every figure of the book from result files (the ``figures`` job).

This module decides *what* each figure shows (which configuration is the
best, which patients are the large / medium / small examples); the drawing
itself is in :mod:`dmrilib.plotting`. Each figure is written as a PNG under
``results/<profile>/figures/`` and described by a record
``{name, file, caption}``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dmrilib._atomic import atomic_path
from dmrilib.config import Profile
from dmrilib.integrity import load_npy
from dmrilib.layout import ResultsLayout
from dmrilib.variants import BASELINE, BASELINE_VARIANT, DAE, MODELS, RECDISC

__all__ = ["render_all", "FIGURES", "COHORT_QC_FILE", "qualitative_cases"]

#: name -> caption of every figure the book embeds.
FIGURES = {
    "cohort_slices": "Colour FA and MD of a healthy subject and of large, medium and small tumours.",
    "cohort_histograms": "FA and MD of simulated healthy tissue against literature ranges.",
    "cohort_spread": "Between-subject spread of WM FA and MD, brain and ventricle volume and b0 SNR "
                     "against literature bands.",
    "cohort_artefacts": "Acquisition artefacts of one subject (with table vibration when one has it).",
    "fig3_noise": "JOOD noise distributions (paper Fig. 3).",
    "roc_curves": "Mean ROC curves of the best and worst configuration of each model and the baseline.",
    "fig4_densities": "Score densities of the best/worst RecDiscNet for half and full mean (paper Fig. 4).",
    "dice_by_rule": "Dice of each model's best configuration under every threshold rule.",
    "fig5_dae_unsupervised": "Best DAE, Otsu threshold (paper Fig. 5).",
    "fig6_dae_optimal": "Best DAE, Dice-optimal threshold (paper Fig. 6).",
    "fig7_recdisc_unsupervised": "Best RecDiscNet, pooled-maximum threshold (paper Fig. 7).",
    "fig8_recdisc_optimal": "Best RecDiscNet, Dice-optimal threshold (paper Fig. 8).",
    "fig9_followup": "Follow-up colocalisation of one patient (paper Fig. 9).",
    "groundtruth": "Ground-truth pipeline masks against the simulated lesions, and its errors per patient.",
}

_QUALITATIVE = {
    "fig5_dae_unsupervised": (DAE, "otsu"),
    "fig6_dae_optimal": (DAE, "dice_optimal"),
    "fig7_recdisc_unsupervised": (RECDISC, "pool_max"),
    "fig8_recdisc_optimal": (RECDISC, "dice_optimal"),
}


class _Results:
    """Lazy access to one profile's prepared cohort, tables and maps."""

    def __init__(self, profile: Profile, root: Path):
        from dmrilib.dataset import load_prepared

        self.profile = profile
        self.root = root
        self.layout = ResultsLayout(root)
        self.prepared = load_prepared(self.layout.prepared)
        self.dice = pd.read_csv(self.layout.table("dice_all"))
        self.auroc = pd.read_csv(self.layout.table("auroc_all"))
        self.patients = self.prepared.patient_ids()
        self._maps: dict[tuple[str, str, int], np.ndarray] = {}

    def maps(self, model: str, variant: str, fold: int | None = None) -> np.ndarray:
        """The stored test maps of a run, float32; sha256 sidecar and finiteness checked.

        Raises
        ------
        dmrilib.integrity.IntegrityError
            If ``maps-test.npy`` has no sidecar, does not match it or holds NaN/inf.
        """
        fold = self.profile.folds[0] if fold is None else fold
        key = (model, variant, fold)
        if key not in self._maps:
            files = self.layout.run_files(model, variant, fold)
            job = "baseline" if model == BASELINE else "evaluate"
            self._maps[key] = load_npy(files.maps_test, what_to_do=(
                f"Delete {files.folder / 'maps*'} and run the {job} job of {model}/{variant} fold {fold} again."
            )).astype(np.float32)
        return self._maps[key]

    def arrays(self, name: str, ids: list[str]) -> np.ndarray:
        return np.asarray(getattr(self.prepared, name)[self.prepared.index(ids)])

    def regions(self, ids: list[str], which: int = 0) -> np.ndarray:
        """The evaluation masks (``which=0``) or rule regions (1) the evaluate jobs used.

        :func:`dmrilib.metrics.evaluation_regions` of ``evaluate.threshold_region``, so
        figures count the voxels the tables count.
        """
        from dmrilib import metrics

        region = self.profile.evaluate.threshold_region
        return np.stack([metrics.evaluation_regions(self.prepared.brain_mask[j], self.prepared.eval_mask[j],
                                                    region)[which] for j in self.prepared.index(ids)])

    def ranked(self, model: str) -> list[str]:
        """Variants of ``model`` from highest to lowest mean AUROC."""
        sub = self.auroc[self.auroc["model"] == model]
        return list(sub.groupby("variant")["auroc"].mean().sort_values(ascending=False).index)

    def threshold(self, model: str, variant: str, rule: str, subject: str, fold: int | None = None) -> float:
        fold = self.profile.folds[0] if fold is None else fold
        d = self.dice
        row = d[(d["model"] == model) & (d["variant"] == variant) & (d["rule"] == rule)
                & (d["subject"] == subject) & (d["fold"] == fold)]
        return float(row["threshold"].iloc[0])


def qualitative_cases(participants: pd.DataFrame, patient_ids: list[str]) -> list[tuple[str, str]]:
    """One (size class, subject) per class large / medium / small, first patient of each."""
    table = participants.copy()
    table.index = [str(s) if str(s).startswith("sub-") else f"sub-{s}" for s in table.index]
    cases = []
    for size in ("large", "medium", "small"):
        match = [s for s in patient_ids if str(table.loc[s].get("size_class", "")) == size] if len(table) else []
        if match:
            cases.append((size, match[0]))
    if not cases:  # real data without size classes: the first three patients
        cases = [(s, s) for s in patient_ids[:3]]
    return cases


def _fig_noise(r: _Results) -> Figure:
    from dmrilib.noise import JoodConfig
    from dmrilib.plotting.noise import plot_noise_distributions

    # the profile's uniform width and isotropic mode (dmrilib.fidelity rows 3 and 6)
    config = JoodConfig.from_train_config("mix-mix-full", r.profile.train)
    return plot_noise_distributions(config=config, seed=r.profile.seed)


def _fig_roc(r: _Results) -> Figure:
    from dmrilib import metrics
    from dmrilib.plotting.results import plot_roc_curves

    truth = r.arrays("lesion", r.patients).astype(bool)
    mask = r.regions(r.patients)
    curves, aurocs = {}, {}
    picks = []
    for model in MODELS:
        ranked = r.ranked(model)
        if ranked:
            picks += [(model, ranked[0], "best"), (model, ranked[-1], "worst")]
    picks += [(BASELINE, BASELINE_VARIANT, "")]
    for model, variant, tag in dict.fromkeys(picks):
        maps = r.maps(model, variant)
        label = f"{model} {variant}" + (f" ({tag})" if tag else "")
        curves[label] = [metrics.roc_curve(maps[i], truth[i], mask[i])[:2] for i in range(len(maps))]
        aurocs[label] = float(r.auroc[(r.auroc["model"] == model) & (r.auroc["variant"] == variant)]["auroc"].mean())
    return plot_roc_curves(curves, aurocs=aurocs, title="mean ROC over test patients")


def _fig_densities(r: _Results) -> Figure:
    from dmrilib import metrics
    from dmrilib.plotting.results import plot_score_densities

    truth = r.arrays("lesion", r.patients).astype(bool)
    mask = r.regions(r.patients)
    ranked = r.ranked(RECDISC)
    panels = {}
    for rank, pick in (("best", 0), ("worst", -1)):
        for mean in ("half", "full"):
            group = [v for v in ranked if v.endswith(f"-{mean}")]
            if not group:
                continue
            variant = group[pick]
            panels[f"{rank} μ{mean.title()}: {variant}"] = metrics.score_densities(
                r.maps(RECDISC, variant), truth, mask, bins=60, value_range=(0.0, 1.0))
    return plot_score_densities(panels, ncols=2, log_density=True)


def _fig_dice_by_rule(r: _Results) -> Figure:
    from dmrilib import metrics
    from dmrilib.plotting.results import plot_dice_by_rule

    cfg = r.profile.evaluate
    frames = []
    for rule in dict.fromkeys(r.dice["rule"]):
        best = metrics.best_variants(r.dice, rule, cfg)
        for model, variant in best.items():
            g = r.dice[(r.dice["rule"] == rule) & (r.dice["model"] == model) & (r.dice["variant"] == variant)]
            s = metrics.summarise(g, [], ["dice", "dice_post"], cfg)
            s["model"], s["rule"] = model, rule
            frames.append(s)
    return plot_dice_by_rule(pd.concat(frames, ignore_index=True), title="best configuration per rule")


def _fig_qualitative(r: _Results, model: str, rule: str) -> Figure:
    from dmrilib import metrics
    from dmrilib.plotting.results import plot_qualitative

    variant = metrics.best_variants(r.dice, rule, r.profile.evaluate)[model]
    maps = r.maps(model, variant)
    cases, thresholds = [], []
    for label, subject in qualitative_cases(r.prepared.participants, r.patients):
        i = r.patients.index(subject)
        j = r.prepared.index([subject])[0]
        cases.append({"label": f"{label} ({subject})", "score_map": maps[i], "md": np.asarray(r.prepared.md[j]),
                      "truth": np.asarray(r.prepared.lesion[j]), "mask": r.regions([subject], 1)[0]})
        thresholds.append(r.threshold(model, variant, rule, subject))
    return plot_qualitative(cases, thresholds, opening_size=r.profile.evaluate.opening_size,
                            title=f"{model} {variant}, {rule} threshold")


def _fig_followup(r: _Results) -> Figure:
    from dmrilib.plotting.results import plot_followup

    fu = pd.read_csv(r.layout.table("followup"))
    if fu.empty:
        raise ValueError("no patient with a follow-up in this cohort")
    row = fu.sort_values(["mismatch_in_followup", "flagged_outside"], ascending=False).iloc[0]
    subject, variant = row["subject"], row["variant"]
    i = r.patients.index(subject)
    j = r.prepared.index([subject])[0]
    thr = r.threshold(row["model"], variant, row["rule"], subject, int(row["fold"]))
    p = r.prepared
    return plot_followup(np.asarray(p.md[j]), r.maps(row["model"], variant, int(row["fold"]))[i],
                         np.asarray(p.lesion[j]), np.asarray(p.followup_lesion[j]), r.regions([subject], 1)[0],
                         threshold=thr, opening_size=r.profile.evaluate.opening_size,
                         title=f"{subject} (grade {row['grade']}), {row['model']} {variant}")


def _fig_groundtruth(r: _Results) -> Figure:
    from dmrilib.plotting.results import plot_groundtruth

    cases = []
    for label, subject in qualitative_cases(r.prepared.participants, r.patients):
        j = r.prepared.index([subject])[0]
        piped = r.layout.read_pipeline_masks([subject])[0]
        cases.append({"label": f"{label} ({subject})", "md": np.asarray(r.prepared.md[j]),
                      "exact": np.asarray(r.prepared.lesion[j]), "pipeline": piped})
    return plot_groundtruth(cases, pd.read_csv(r.layout.groundtruth_subjects))


def _drawn(plan) -> dict[str, Any]:
    """``age``/``scanner`` keywords of ``simulate_subject`` for a plan row that carries them."""
    out = {}
    if getattr(plan, "age", None) is not None:
        out["age"] = plan.age
    if getattr(plan, "scanner", None) is not None:
        out["scanner"] = int(plan.scanner)
    return out


def _cohort_subjects(profile: Profile) -> tuple[dict[str, Any], list[Any]]:
    """Re-simulate (from their seeds) a healthy subject and one patient per size class.

    The figures need the simulator's full-resolution arrays (tissue fractions,
    tumour compartments), which the BIDS files do not all carry; the same seed
    gives the same subject as in the cohort (with its age and scanner when the
    cohort plan draws them).
    """
    from dmrilib.simulate import cohort_plan, simulate_subject

    plan = cohort_plan(profile.cohort)
    healthy = [p for p in plan if p.group == "healthy"]
    shown: dict[str, Any] = {}
    if healthy:
        h = healthy[0]
        shown[f"healthy ({h.label})"] = simulate_subject(profile.cohort, h.seed, structural=False, **_drawn(h))
    for size in ("large", "medium", "small"):
        match = [p for p in plan if p.group == "patient" and p.size_class == size]
        if match:
            p = match[0]
            shown[f"{size}, WHO {p.grade} ({p.label})"] = simulate_subject(
                profile.cohort, p.seed, grade=p.grade, size_class=p.size_class, followup=p.followup, structural=False,
                **_drawn(p))
    extra = [simulate_subject(profile.cohort, h.seed, structural=False, **_drawn(h)) for h in healthy[1:3]]
    return shown, [s for k, s in shown.items() if k.startswith("healthy")] + extra


#: File name of the cohort QC table (:func:`dmrilib.simulate.qc.cohort_qc`) the figures stage writes
#: beside the figures (:attr:`dmrilib.layout.ResultsLayout.cohort_qc`).
COHORT_QC_FILE = ResultsLayout(Path()).cohort_qc.name


def _cohort_qc(profile: Profile, layout: ResultsLayout) -> pd.DataFrame:
    """QC of the written cohort (:func:`dmrilib.simulate.qc.cohort_qc`), saved as ``figures/cohort_qc.csv``.

    About 0.4 s of CPU per subject at 4.8 mm (dipy WLS tensor fit), two
    subjects at a time: ~10 s for the quick profile's 60 subjects on 2 cores.
    """
    from dmrilib.simulate.qc import cohort_qc

    qc = cohort_qc(layout.cohort, n_jobs=None)
    with atomic_path(layout.cohort_qc) as tmp:
        qc.to_csv(tmp, index=False)
    return qc


def _fig_artefacts(profile: Profile, layout: ResultsLayout, qc: pd.DataFrame) -> Figure:
    """Artefacts of one subject, from its written DWI.

    The subject is one the simulator recorded with table vibration, when any
    has it, and among those the one with the largest detected outlier-slice
    fraction: the figure then shows every kind of artefact.
    """
    from dmrilib.io import find_bids_dwi, load_dwi, load_mask
    from dmrilib.plotting.cohort import plot_artefact_examples

    vibration = qc["vibration_recorded"].astype(float).fillna(0) if "vibration_recorded" in qc else 0.0
    row = (qc.assign(_vibration=vibration)
           .sort_values(["_vibration", "outlier_slice_fraction", "subject"], ascending=[False, False, True]).iloc[0])
    entry = next(e for e in find_bids_dwi(layout.cohort) if e.subject == row["subject"])
    dwi = load_dwi(entry.dwi, bval=entry.bval, bvec=entry.bvec)
    mask = load_mask(entry.derivatives["brain"], dwi)
    return plot_artefact_examples(dwi.data, dwi.bvals, dwi.bvecs, mask, sigma=float(row["noise_sigma"]),
                                  title=f"{row['subject']} ({row.get('group', '')}), realism {profile.cohort.realism}")


def _cohort_figures(r: _Results) -> dict[str, Callable[[], Figure]]:
    from dmrilib.plotting import cohort

    layout = ResultsLayout(r.root)
    if not layout.participants.is_file() or "simulat" not in layout.cohort_description.read_text().lower():
        return {}  # a real dataset: nothing simulated to show
    cache: dict[str, Any] = {}

    def subjects():
        if "shown" not in cache:
            cache["shown"], cache["healthy"] = _cohort_subjects(r.profile)
        return cache["shown"], cache["healthy"]

    def qc() -> pd.DataFrame:
        if "qc" not in cache:
            cache["qc"] = _cohort_qc(r.profile, layout)
        return cache["qc"]

    makers = {
        "cohort_slices": lambda: cohort.plot_cohort_slices(subjects()[0]),
        "cohort_histograms": lambda: cohort.plot_tissue_histograms(subjects()[1]),
        "cohort_spread": lambda: cohort.plot_cohort_spread(qc(), groups=r.profile.cohort.groups),
    }
    if "acquisition" in r.profile.cohort.groups:
        makers["cohort_artefacts"] = lambda: _fig_artefacts(r.profile, layout, qc())
    return makers


def render_all(profile: Profile, root: Path, *, dpi: int = 110) -> list[dict[str, Any]]:
    """Render every figure of :data:`FIGURES` for the results under ``root``.

    Returns
    -------
    list of dict
        ``{name, file, caption}`` per figure written.
    """
    r = _Results(profile, Path(root))
    makers: dict[str, Callable[[], Figure]] = {
        **_cohort_figures(r),
        "fig3_noise": lambda: _fig_noise(r),
        "roc_curves": lambda: _fig_roc(r),
        "fig4_densities": lambda: _fig_densities(r),
        "dice_by_rule": lambda: _fig_dice_by_rule(r),
        **{name: (lambda m=m, rule=rule: _fig_qualitative(r, m, rule)) for name, (m, rule) in _QUALITATIVE.items()},
        "fig9_followup": lambda: _fig_followup(r),
    }
    if r.layout.groundtruth_record.is_file():
        makers["groundtruth"] = lambda: _fig_groundtruth(r)
    records = []
    for name in FIGURES:
        if name not in makers:
            continue
        fig = makers[name]()
        path = r.layout.figure(name)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
        records.append({"name": name, "file": path.name, "caption": FIGURES[name]})
    return records
