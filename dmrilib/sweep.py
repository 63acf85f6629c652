"""Difficulty sweep: the same methods on simulated cohorts of rising realism.

The simulator's realism (:mod:`dmrilib.simulate.realism`) switches groups of
effects on: levels ``L0`` (the original simulator) to ``L4`` add the
population, acquisition, tumour and scanner groups one after the other. The
sweep asks how much each method loses as the cohort gets harder, and which
group of effects alone costs it most.

Conditions (:data:`CONDITIONS`): the cumulative levels L0-L4, and each group
alone on top of L0 (``L0+acquisition``, ``L0+tumour``, ``L0+scanner``; the
population group alone is L1). Each condition is simulated with several
cohort seeds: seed ``k`` is the profile's cohort seed + ``k`` (default
``k`` = 0, 1, 2). Because every effect group draws from its own random
stream, a patient of seed ``k`` is the same subject (anatomy, tumour) under
every condition, only with the effects of that condition: changes against
L0 are paired per (seed, patient).

For every (condition, seed) the sweep

1. simulates and prepares the cohort (:func:`dmrilib.pipeline.run_cohort`)
   with the profile's cohort settings, that realism and that seed, and the
   sweep's reductions of the profile (:data:`REDUCTIONS`);
2. trains and evaluates one DAE and one RecDiscNet configuration
   (:data:`NETWORKS`, fixed before any sweep result: the paper's best of each
   by mean AUROC, Tables 1 and 2) on the profile's first fold
   (:func:`~dmrilib.pipeline.run_train`, :func:`~dmrilib.pipeline.run_evaluate`);
3. evaluates the normative FA/MD z-score baseline
   (:func:`~dmrilib.pipeline.run_baseline`) and the raw MD map as a single
   feature (no model: high MD is scored as anomalous);
4. keeps, per patient and method, the lesion AUROC and the Dice (after the
   opening) of the method's threshold rule (:data:`RULES`, also fixed
   beforehand).

The true simulated lesion masks are the reference (the ground-truth U-Net and
registration stage is skipped), so the sweep measures the methods, not the
masks.

Results go to ``<results>/<profile>/sweep/``: one folder per (condition, seed)
(a derived profile named e.g. ``L0_acquisition-seed1``, whose ``rows.csv``
marks it finished; its cohort and prepared arrays are deleted once it is,
unless ``keep_data``), ``sweep.csv`` (one row per condition, seed, method and
patient) and ``sweep.json`` (config hashes, seeds, versions, timings). The
sweep is resumable: a finished (condition, seed) of the same settings is
skipped, an interrupted one resumes (the simulation per subject, training
from its last checkpoint), and every file is written atomically.

Budget (2 CPU cores, quick profile). One (condition, seed) at the full quick
size (28 controls + 32 patients), measured once on the shared 2-core machine
while other jobs ran (load 4-7): simulate + prepare 56 s, DAE 50 s (28 s of
training), RecDiscNet 227 s (192 s of training: 38 s per epoch, where an idle
machine takes ~4 s, ``benchmarks/RESULTS.md`` session 5), baseline and raw MD
1 s. On an idle machine that is ~68 s for the cohort (55 s + 13 s) and ~30 s
per network: ~2.3 min per (condition, seed), ~56 min for the 24, before the
realism effects add their own simulation cost: too tight for 60 min.
:data:`REDUCTIONS` therefore halves the quick cohort (14 controls, 16
patients; the grade mix and follow-ups scale with it) and images T1w/FLAIR on
the diffusion grid (the ground-truth stage that reads them is skipped). Both
the simulation and the training scale with the subjects (12 instead of 24
training controls), so the estimate is ~35 s + 2 x ~18 s + ~5 s, about 75 s
per (condition, seed) and ~30 min for the sweep (an estimate scaled from the
measurement above, not measured at the reduced size), which leaves the
effects room to double the simulation cost within 60 min. 16 patients x 3
seeds give 48 patients per condition. On smoke (CI) a (condition, seed) takes
~10 s on an idle machine.

Run it with ``make sweep`` (then the book again, whose page "Difficulty
sweep" shows it) or ``python -m dmrilib.sweep --profile quick``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from dmrilib._atomic import atomic_path, write_json_atomic
from dmrilib.config import Profile, config_hash, load_profile, provenance
from dmrilib.layout import ResultsLayout, RunFiles
from dmrilib.variants import BASELINE, BASELINE_VARIANT, DAE, RECDISC

__all__ = [
    "CONDITIONS",
    "LEVEL_CONDITIONS",
    "GROUP_CONDITIONS",
    "SEEDS",
    "NETWORKS",
    "METHODS",
    "RULES",
    "REDUCTIONS",
    "COLUMNS",
    "SweepItem",
    "sweep_dir",
    "plan_sweep",
    "run_sweep",
    "load_sweep",
    "sweep_table",
    "group_costs",
]

#: The cumulative realism levels, in order.
LEVEL_CONDITIONS = ("L0", "L1", "L2", "L3", "L4")
#: Each effect group alone on top of L0 -> the condition that measures it
#: (the population group alone is level L1).
GROUP_CONDITIONS = {"population": "L1", "acquisition": "L0+acquisition", "tumour": "L0+tumour",
                    "scanner": "L0+scanner"}
#: Every condition of the sweep, in the order the sweep runs them.
CONDITIONS = (*LEVEL_CONDITIONS, *(c for c in GROUP_CONDITIONS.values() if c not in LEVEL_CONDITIONS))
#: Cohort seed offsets: seed ``k`` simulates with the profile's cohort seed + ``k``.
SEEDS = (0, 1, 2)

#: The two networks, fixed before any sweep result: the configuration with the
#: highest mean lesion AUROC in the paper (Table 1: DAE lsd512-sigmoid, 0.820;
#: Table 2: RecDiscNet mix-mix-half, 0.772). Chosen from the paper, not from
#: this package's results, so that the sweep cannot pick a favourite per level.
NETWORKS = ((DAE, "lsd512-sigmoid"), (RECDISC, "mix-mix-half"))
#: Methods (the ``method`` column of ``sweep.csv``), in the order figures show them.
METHODS = (DAE, RECDISC, BASELINE, "md")
#: The threshold rule whose Dice (after the opening) the sweep keeps, per method,
#: fixed beforehand. ``fixed`` is the paper's unsupervised per-model constant
#: (Table 3: DAE 0.3, RecDiscNet 0.5; the normative baseline's z of 3). Raw MD
#: has no published constant (and an absolute MD threshold would not transfer
#: between scanners), so it is thresholded at the value that flags 5% of the
#: fold's healthy validation voxels (``healthy_fpr_05``), unsupervised as well.
RULES = {DAE: "fixed", RECDISC: "fixed", BASELINE: "fixed", "md": "healthy_fpr_05"}
#: What each method is called in tables and figures.
METHOD_NAMES = {DAE: "DAE", RECDISC: "RecDiscNet", BASELINE: "normative baseline", "md": "raw MD"}

#: Settings the sweep changes in a profile, by profile name: section -> key ->
#: value (profiles not listed run as they are). Quick (the budget in the module
#: docstring): a smaller cohort (the grade mix and follow-ups of the paper's
#: cohort scale with it; ``dmrilib.simulate.CohortConfig``) and T1w/FLAIR
#: imaged on the diffusion grid, since only the skipped ground-truth stage
#: reads them; training and evaluation settings are the profile's own.
REDUCTIONS: Mapping[str, Mapping[str, Mapping[str, Any]]] = {
    "quick": {"cohort": {"n_healthy": 14, "n_patients": 16, "structural_voxel_size": None}},
    # CI: one epoch and one validation copy (smoke checks that the sweep runs; its numbers mean nothing)
    "smoke": {"cohort": {"structural_voxel_size": None}, "train": {"epochs": 1, "val_copies": 1}},
}

#: Columns of ``sweep.csv``.
COLUMNS = ("condition", "groups", "seed", "cohort_seed", "method", "variant", "rule", "patient", "auroc", "dice",
           "config_hash")
# Marks a finished (condition, seed): its per-patient rows.
_ROWS = "rows.csv"
_RECORD = "item.json"


@dataclass(frozen=True)
class SweepItem:
    """One (condition, seed) of the sweep and the derived profile that runs it.

    Attributes
    ----------
    condition : str
        A realism (``"L2"``, ``"L0+tumour"``).
    seed : int
        The seed offset ``k``; the cohort is simulated with the profile's
        cohort seed + ``k``.
    profile : Profile
        The derived profile (its cohort section with that realism and seed
        and the sweep's reductions; variants :data:`NETWORKS`; one fold).
    """

    condition: str
    seed: int
    profile: Profile

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def groups(self) -> str:
        """The effect groups switched on, in level order, joined by ``+`` (``"none"`` for L0)."""
        from dmrilib.simulate.realism import GROUPS, parse_realism

        on = parse_realism(self.condition)
        return "+".join(g for g in GROUPS if g in on) or "none"


def sweep_dir(profile: Profile, results: str | Path = "results") -> Path:
    """``<results>/<profile>/sweep`` (:attr:`dmrilib.layout.ResultsLayout.sweep`)."""
    return ResultsLayout.of(profile, results).sweep


def _item_name(condition: str, seed: int) -> str:
    # a profile name becomes a folder: '+' is not allowed there
    return f"{condition.replace('+', '_')}-seed{int(seed)}"


def _check_condition(condition: str) -> str:
    from dmrilib.simulate.realism import parse_realism

    try:
        parse_realism(condition)
    except ValueError as exc:  # names the accepted levels and groups
        raise ValueError(f"sweep condition {condition!r}: {exc}") from None
    return condition.replace(" ", "")


def plan_sweep(profile: Profile, conditions: Sequence[str] | None = None,
               seeds: Sequence[int] | None = None) -> list[SweepItem]:
    """The derived profiles of the sweep (nothing is run).

    Parameters
    ----------
    profile : Profile
    conditions : sequence of str, optional
        Realisms to run (default :data:`CONDITIONS`); any realism
        :func:`dmrilib.simulate.realism.parse_realism` accepts.
    seeds : sequence of int, optional
        Seed offsets ``k`` (default :data:`SEEDS`).

    Returns
    -------
    list of SweepItem
        Conditions in the given order, seeds within each.

    Raises
    ------
    ValueError
        An unknown condition or a negative seed offset.
    """
    from dmrilib.simulate.realism import EFFECTS

    conditions = [_check_condition(c) for c in (CONDITIONS if conditions is None else conditions)]
    seeds = [int(k) for k in (SEEDS if seeds is None else seeds)]
    if any(k < 0 for k in seeds):
        raise ValueError(f"seed offsets must be >= 0, got {seeds}.")
    effect_fields = {e.field for e in EFFECTS}
    reductions = REDUCTIONS.get(profile.name, {})
    base_seed = int(profile.cohort.seed)
    fold = profile.folds[0]
    items = []
    for condition in dict.fromkeys(conditions):
        for k in dict.fromkeys(seeds):
            sections = {s: copy.deepcopy(dict(v)) for s, v in profile.sections.items()}
            for section, values in reductions.items():
                sections.setdefault(section, {}).update(copy.deepcopy(dict(values)))
            cohort = sections.setdefault("cohort", {})
            # The condition decides every effect: an effect the profile writes
            # itself would otherwise hold in every condition, L0 included.
            for name in effect_fields & set(cohort):
                del cohort[name]
            cohort["realism"] = condition
            cohort["seed"] = base_seed + k
            data: dict[str, Any] = {
                "name": _item_name(condition, k),
                "seed": profile.seed,
                "fidelity": profile.fidelity,
                "description": f"{profile.name}, sweep: realism {condition}, cohort seed {base_seed + k}",
                "folds": [fold],
                "variants": {m: [v] for m, v in NETWORKS},
                **sections,
            }
            items.append(SweepItem(condition, k, Profile.from_dict(
                data, source=f"{profile.source} (sweep {condition}, seed offset {k})")))
    return items


def _raw_md_rows(item: SweepItem, root: Path, fold: int) -> pd.DataFrame:
    """Per-patient AUROC and rule Dice of the prepared MD map itself (higher MD = more anomalous).

    Scored exactly like the models' maps (:func:`dmrilib.metrics.evaluation_regions`,
    :func:`~dmrilib.metrics.detection_scores`, :func:`~dmrilib.metrics.evaluate_map`);
    the healthy-FPR threshold comes from the fold's validation controls.
    """
    from dmrilib import metrics
    from dmrilib.crossval import read_folds
    from dmrilib.dataset import load_prepared

    profile, cfg = item.profile, item.profile.evaluate
    layout = ResultsLayout.of(profile, root)
    prepared = load_prepared(layout.prepared)
    # written by the training job of this fold (dmrilib.pipeline.run_train)
    val_ids = list(read_folds(layout.folds_file)[fold].val)

    def regions(j):
        return metrics.evaluation_regions(prepared.brain_mask[j], prepared.eval_mask[j], cfg.threshold_region)

    val_idx = prepared.index(val_ids)
    healthy = metrics.healthy_fpr_thresholds(np.asarray(prepared.md[val_idx], np.float32),
                                             np.stack([regions(j)[0] for j in val_idx]), cfg.healthy_fprs)
    rule = RULES["md"]
    if rule not in healthy:
        raise ValueError(f"{profile.source}: the raw-MD rule {rule!r} needs evaluate.healthy_fprs to hold "
                         f"{rule.rsplit('_', 1)[1]}%; it holds {list(cfg.healthy_fprs)}.")
    rows = []
    for subject in prepared.patient_ids():
        j = int(prepared.index([subject])[0])
        score = np.asarray(prepared.md[j], np.float32)
        truth = np.asarray(prepared.lesion[j], bool)
        mask, region = regions(j)
        det = metrics.detection_scores(score, truth, mask)
        dice = metrics.evaluate_map(score, truth, mask, model=BASELINE_VARIANT, config=cfg,
                                    healthy_thresholds={rule: healthy[rule]}, brain_mask=region, rules=())
        rows.append({"patient": subject, "auroc": det["auroc"], "dice": dice[0]["dice_post"]})
    return pd.DataFrame(rows)


def _run_rows(run: Path, method: str) -> pd.DataFrame:
    """Per-patient AUROC and the method's rule Dice (after the opening) of an evaluated run."""
    files = RunFiles(run)
    det = pd.read_csv(files.eval_auroc)[["subject", "auroc"]]
    dice = pd.read_csv(files.eval_dice)
    dice = dice[dice["rule"] == RULES[method]][["subject", "dice_post"]]
    out = det.merge(dice, on="subject", how="left")
    return out.rename(columns={"subject": "patient", "dice_post": "dice"})


def _run_item(item: SweepItem, root: Path, *, threads: int, progress: bool) -> tuple[pd.DataFrame, dict]:
    """Simulate, prepare, train and evaluate one (condition, seed); its rows and stage seconds."""
    from dmrilib import pipeline

    profile, fold = item.profile, item.profile.folds[0]
    layout = ResultsLayout.of(profile, root)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    pipeline.run_cohort(profile, root, progress=progress, n_jobs=int(threads) or None)
    seconds["cohort"] = time.perf_counter() - t0
    frames = []
    for model, variant in NETWORKS:
        t0 = time.perf_counter()
        pipeline.run_train(profile, model, variant, fold, root, threads=threads, progress=progress)
        pipeline.run_evaluate(profile, model, variant, fold, root, threads=threads)
        seconds[model] = time.perf_counter() - t0
        frames.append(_run_rows(layout.run(model, variant, fold), model)
                      .assign(method=model, variant=variant))
    t0 = time.perf_counter()
    pipeline.run_baseline(profile, fold, root)
    frames.append(_run_rows(layout.run(BASELINE, BASELINE_VARIANT, fold), BASELINE)
                  .assign(method=BASELINE, variant=BASELINE_VARIANT))
    frames.append(_raw_md_rows(item, root, fold).assign(method="md", variant="md"))
    seconds["baseline_md"] = time.perf_counter() - t0
    rows = pd.concat(frames, ignore_index=True).assign(
        condition=item.condition, groups=item.groups, seed=item.seed, cohort_seed=int(profile.cohort.seed),
        rule=lambda d: d["method"].map(RULES), config_hash=profile.hash())
    return rows[list(COLUMNS)], {k: round(v, 1) for k, v in seconds.items()}


def _finished(folder: Path, item: SweepItem) -> bool:
    """A (condition, seed) of these very settings has its rows."""
    if not (folder / _ROWS).is_file() or not (folder / _RECORD).is_file():
        return False
    try:
        record = json.loads((folder / _RECORD).read_text())
    except (OSError, ValueError):
        return False
    return record.get("config_hash") == item.profile.hash()


def _forget(folder: Path, item: SweepItem) -> None:
    """Delete a folder left by another version of this (condition, seed) (the sweep's own folder)."""
    record = folder / _RECORD
    if not record.is_file():
        return
    try:
        old = json.loads(record.read_text()).get("config_hash")
    except (OSError, ValueError):
        old = None
    if old != item.profile.hash():
        shutil.rmtree(folder)


def _start_record(folder: Path, item: SweepItem) -> None:
    write_json_atomic(folder / _RECORD, {"condition": item.condition, "seed": item.seed,
                                         "cohort_seed": int(item.profile.cohort.seed),
                                         "config_hash": item.profile.hash(), "finished": False})


def run_sweep(profile: Profile, results: str | Path = "results", *, conditions: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None, threads: int = 0, keep_data: bool = False,
              progress: bool = True) -> pd.DataFrame:
    """Run every (condition, seed) not finished yet, then write ``sweep.csv`` and ``sweep.json``.

    Parameters
    ----------
    profile : Profile
        The profile whose cohort, training and evaluation settings the sweep
        uses (with :data:`REDUCTIONS`); its own results are not needed.
    results : path-like
        Results root; the sweep writes to ``<results>/<profile>/sweep/``.
    conditions, seeds : sequence, optional
        See :func:`plan_sweep`.
    threads : int
        Torch threads and simulation worker processes (0: defaults).
    keep_data : bool
        Keep each finished (condition, seed)'s cohort and prepared arrays
        (about 0.5 GB each on quick); by default they are deleted.
    progress : bool
        Progress bars.

    Returns
    -------
    DataFrame
        ``sweep.csv``: :data:`COLUMNS`, one row per (condition, seed, method,
        patient) of every finished (condition, seed) of these settings, the
        ones run now and earlier ones (of the default plan or of this call).
    """
    items = plan_sweep(profile, conditions, seeds)
    root = sweep_dir(profile, results)
    root.mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(items, 1):
        folder = root / item.name
        head = f"[{i}/{len(items)}] sweep {item.condition} seed +{item.seed} ({folder})"
        if _finished(folder, item):
            print(f"{head}: finished, skipped", flush=True)
            continue
        print(f"{head}: running", flush=True)
        if folder.is_dir():
            _forget(folder, item)
        _start_record(folder, item)
        t0 = time.perf_counter()
        rows, seconds = _run_item(item, root, threads=threads, progress=progress)
        with atomic_path(folder / _ROWS) as tmp:
            rows.to_csv(tmp, index=False)
        write_json_atomic(folder / _RECORD, {
            "condition": item.condition, "groups": item.groups, "seed": item.seed,
            "cohort_seed": int(item.profile.cohort.seed), "config_hash": item.profile.hash(),
            "cohort_hash": item.profile.stage_hash("cohort"), "finished": True,
            "time_s": {**seconds, "total": round(time.perf_counter() - t0, 1)},
            "provenance": provenance(),
        })
        if not keep_data:
            data = ResultsLayout.of(item.profile, root)  # == folder
            for bulky in (data.cohort, data.prepared):
                shutil.rmtree(bulky, ignore_errors=True)
        print(f"{head}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    return _write_sweep(profile, results, items)


def _write_sweep(profile: Profile, results: str | Path, items: Sequence[SweepItem]) -> pd.DataFrame:
    """Gather the rows of every finished (condition, seed) of these settings into ``sweep.csv``."""
    root = sweep_dir(profile, results)
    every = {it.name: it for it in (*plan_sweep(profile), *items)}
    frames, records = [], []
    for name, item in every.items():
        folder = root / name
        if _finished(folder, item):
            frames.append(pd.read_csv(folder / _ROWS))
            record = json.loads((folder / _RECORD).read_text())
            records.append({k: record.get(k) for k in ("condition", "seed", "cohort_seed", "config_hash",
                                                       "cohort_hash", "time_s")})
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))
    with atomic_path(root / "sweep.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_json_atomic(root / "sweep.json", {
        "profile": profile.name, "profile_hash": profile.hash(), "seed": profile.seed,
        "cohort_seed": int(profile.cohort.seed), "networks": [list(n) for n in NETWORKS], "rules": dict(RULES),
        "reductions": REDUCTIONS.get(profile.name, {}), "fold": profile.folds[0],
        "sweep_hash": config_hash(sorted(r["config_hash"] for r in records), dict(RULES)),
        "items": records, "provenance": provenance(),
    })
    return table


def load_sweep(profile: Profile, results: str | Path = "results") -> pd.DataFrame | None:
    """``sweep.csv`` of a profile, or None when ``make sweep`` has not run (or finished nothing)."""
    path = sweep_dir(profile, results) / "sweep.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    return None if table.empty else table


def _ci(values: np.ndarray, n_boot: int, ci: float, seed: int) -> tuple[float, float]:
    from dmrilib.metrics import bootstrap_ci

    return bootstrap_ci(values, n_boot=n_boot, ci=ci, seed=seed)


def sweep_table(table: pd.DataFrame, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Mean AUROC and Dice per (condition, method) with bootstrap intervals.

    The intervals resample the (seed, patient) rows of a condition and method
    (:func:`dmrilib.metrics.bootstrap_ci`): they show the spread of patients
    and cohorts together.

    Parameters
    ----------
    table : DataFrame
        ``sweep.csv`` (:func:`run_sweep`).
    n_boot, ci, seed : int, float, int
        Bootstrap resamples, confidence level and seed.

    Returns
    -------
    DataFrame
        ``condition, groups, method, rule, n_seeds, n, auroc, auroc_low, auroc_high, dice, dice_low,
        dice_high``; conditions in sweep order (:data:`CONDITIONS` first), methods as :data:`METHODS`.
    """
    rows = []
    for (condition, method), group in _ordered_groups(table):
        out = {"condition": condition, "groups": group["groups"].iloc[0], "method": method,
               "rule": group["rule"].iloc[0], "n_seeds": int(group["seed"].nunique()), "n": len(group)}
        for metric in ("auroc", "dice"):
            values = group[metric].to_numpy(float)
            low, high = _ci(values, n_boot, ci, seed)
            out.update({metric: float(np.nanmean(values)) if np.isfinite(values).any() else np.nan,
                        f"{metric}_low": low, f"{metric}_high": high})
        rows.append(out)
    return pd.DataFrame(rows)


def _condition_order(conditions) -> list[str]:
    known = [c for c in CONDITIONS if c in set(conditions)]
    return known + sorted(set(conditions) - set(known))


def _ordered_groups(table: pd.DataFrame):
    methods = [m for m in METHODS if m in set(table["method"])] + sorted(set(table["method"]) - set(METHODS))
    for condition in _condition_order(table["condition"].unique()):
        for method in methods:
            group = table[(table["condition"] == condition) & (table["method"] == method)]
            if len(group):
                yield (condition, method), group


def group_costs(table: pd.DataFrame, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """What each effect group alone costs each method: change against L0, paired per (seed, patient).

    Each group's condition (:data:`GROUP_CONDITIONS`) is compared with L0 on
    the (seed, patient) rows both have: a patient of one seed is the same
    subject in both cohorts, only the group's effects differ.

    Returns
    -------
    DataFrame
        ``group, condition, method, n, auroc_delta, auroc_low, auroc_high, dice_delta, dice_low,
        dice_high, costliest``: deltas are condition - L0 (negative: the group makes the task harder);
        ``costliest`` marks, per method, the group with the most negative AUROC change (none when no
        group lowers it). Empty when ``table`` holds no L0 rows.
    """
    rows = []
    base = table[table["condition"] == "L0"]
    if base.empty:
        return pd.DataFrame(rows)
    key = ["method", "seed", "patient"]
    for group, condition in GROUP_CONDITIONS.items():
        other = table[table["condition"] == condition]
        if other.empty:
            continue
        both = base.merge(other, on=key, suffixes=("_l0", "_on"))
        for method in [m for m in METHODS if m in set(both["method"])]:
            pair = both[both["method"] == method]
            out = {"group": group, "condition": condition, "method": method, "n": len(pair)}
            for metric in ("auroc", "dice"):
                diff = (pair[f"{metric}_on"] - pair[f"{metric}_l0"]).to_numpy(float)
                low, high = _ci(diff, n_boot, ci, seed)
                out.update({f"{metric}_delta": float(np.nanmean(diff)) if np.isfinite(diff).any() else np.nan,
                            f"{metric}_low": low, f"{metric}_high": high})
            rows.append(out)
    costs = pd.DataFrame(rows)
    if costs.empty:
        return costs
    worst = costs.dropna(subset=["auroc_delta"]).groupby("method")["auroc_delta"].idxmin()
    costs["costliest"] = costs.index.isin(worst.to_numpy()) & (costs["auroc_delta"] < 0)
    return costs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmrilib.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", help="shipped profile name or YAML file (default quick)")
    parser.add_argument("--results", default="results", help="results folder (default results)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads and simulation workers (0: defaults)")
    parser.add_argument("--conditions", nargs="*", help=f"realisms to run (default: {' '.join(CONDITIONS)})")
    parser.add_argument("--seeds", type=int, nargs="*",
                        help="cohort seed offsets k: seed = the profile's cohort seed + k (default 0 1 2)")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep each finished cohort and its prepared arrays (default: deleted)")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.profile)
        table = run_sweep(profile, args.results, conditions=args.conditions, seeds=args.seeds,
                          threads=args.threads, keep_data=args.keep_data,
                          progress=os.environ.get("DMRI_PROGRESS", "1") != "0")
    except (FileNotFoundError, ValueError) as exc:
        print(f"dmrilib.sweep: {exc}", file=sys.stderr)
        return 2
    print(f"{len(table)} rows -> {sweep_dir(profile, args.results) / 'sweep.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
