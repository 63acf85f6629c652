"""Ablation of the paper-vs-code differences: flip one row, measure the change.

For every row of :data:`dmrilib.fidelity.DIFFERENCES` marked ``ablate``, the
best DAE and the best RecDiscNet configuration of a built profile (highest
mean lesion AUROC, as for the follow-up; rows that cannot change it use the
best configuration they can change, and the DAE map row adds the best
linear-output DAE) are trained and evaluated again with
that row's keys set to the other side's value, everything else unchanged.
The change against the profile's own run is reported per patient (paired), as
mean difference with a bootstrap interval over patients, for the lesion AUROC
and the Dice of the paper's four threshold rules.

Rules of the flip:

* a key the profile leaves unset takes the other side's value
  (``fidelity: code`` -> the paper's);
* a key the profile sets itself is one of its reductions and stays, except
  for rows marked ``scale`` (the learning rate), which are multiplied by the
  ratio of the two sides' values;
* rows that only change the evaluation reuse the profile's trained run and
  its maps; the others train anew (resuming an interrupted run).

Results go to ``<results>/<profile>/ablation/``: one folder per row (its
prepared cohort and ground truth are links to the profile's) and
``ablation.csv``. Run it with ``make ablation`` after ``make book``, or
``python -m dmrilib.ablation --profile quick``.
"""
from __future__ import annotations

import argparse
import copy
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
from dmrilib.fidelity import DIFFERENCES, Difference, ablation_rows
from dmrilib.layout import ResultsLayout, RunFiles
from dmrilib.variants import MODELS

__all__ = ["AblationRun", "plan_ablation", "run_ablation", "ablation_table", "ablation_dir", "RULES", "METRICS"]

#: The paper's four threshold rules (Tables 3-6) whose Dice the ablation reports.
RULES = ("fixed", "otsu", "pool_max", "dice_optimal")
#: Metric columns of ``ablation.csv``: the lesion AUROC, then Dice (after the opening) per rule.
METRICS = ("auroc", *(f"dice_{r}" for r in RULES))


def _reused_files(run: RunFiles) -> list[Path]:
    """Files of a trained run that an evaluation-only row reuses."""
    from dmrilib.integrity import sidecar_path

    return [run.checkpoint_best, run.run_record, run.train_log, run.maps_record, run.maps_test, run.maps_val,
            sidecar_path(run.maps_test), sidecar_path(run.maps_val)]


@dataclass(frozen=True)
class AblationRun:
    """One row of the ablation: the flipped profile and what it runs.

    Attributes
    ----------
    row : Difference
        The row (its first key); ``changes`` holds every key flipped.
    changes : mapping of str to (Any, Any)
        ``<section>.<key>`` -> (profile's value, flipped value).
    kept : tuple of str
        Keys of the row the profile sets itself (its reductions), not flipped.
    runs : tuple of (str, str)
        (model, variant) pairs trained and evaluated.
    profile : Profile
        The flipped profile (named ``row<NN>-<key>``).
    evaluate_only : bool
        Only evaluation settings change: the profile's trained runs are reused.
    """

    row: Difference
    changes: Mapping[str, tuple[Any, Any]]
    kept: tuple[str, ...]
    runs: tuple[tuple[str, str], ...]
    profile: Profile
    evaluate_only: bool

    @property
    def name(self) -> str:
        return self.profile.name


def ablation_dir(profile: Profile, results: str | Path = "results") -> Path:
    """``<results>/<profile>/ablation`` (:attr:`dmrilib.layout.ResultsLayout.ablation`)."""
    return ResultsLayout.of(profile, results).ablation


def _mean_auroc(profile: Profile, results: str | Path) -> pd.Series:
    """Mean lesion AUROC of every (model, variant) the profile's build evaluated."""
    path = ResultsLayout.of(profile, results).table("auroc_all")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing. The ablation compares against the profile's own runs: "
                                f"run `make book PROFILE={profile.name}` (or its results) first.")
    return pd.read_csv(path).groupby(["model", "variant"])["auroc"].mean()


def _best_among(means: pd.Series, model: str, candidates: Sequence[str] | None = None) -> str | None:
    """The variant of ``model`` with the highest mean AUROC, among ``candidates`` (default: all)."""
    if model not in means.index.get_level_values(0):
        return None
    scores = means.loc[model]
    if candidates is not None:
        scores = scores[scores.index.isin(list(candidates))]
    return str(scores.idxmax()) if len(scores) else None


def _variants_for(row: Difference, model: str, profile: Profile, means: pd.Series) -> list[str]:
    """The variants a row is measured on: the best one, unless the row cannot change it.

    Only some JOOD variants use isotropic, Mix or uniform noise: those rows
    take the best variant that does. The DAE's map row also measures the best
    linear-output DAE, whose reconstruction the authors' normalisation by its
    maximum rescales most.
    """
    best = _best_among(means, model)
    if model not in row.models or best is None:
        return []
    if row.key in ("jood_isotropic", "jood_mix", "jood_uniform_width"):
        from dmrilib.variants import parse_recdisc_variant

        uses = {"jood_isotropic": lambda d, a: a in ("isotropic", "mix"),
                "jood_mix": lambda d, a: "mix" in (d, a),
                "jood_uniform_width": lambda d, a: d in ("uniform", "mix")}[row.key]
        chosen = _best_among(means, model, [v for v in profile.variants.get(model, ())
                                            if uses(*parse_recdisc_variant(v)[:2])])
        return [chosen] if chosen else []
    variants = [best]
    if row.key == "dae_map":
        linear = _best_among(means, model, [v for v in profile.variants.get(model, ()) if v.endswith("-linear")])
        if linear and linear not in variants:
            variants.append(linear)
    return variants


def _flip(row: Difference, profile: Profile) -> tuple[Any, Any] | None:
    """(current, flipped) value of one key, or None when the profile sets it itself."""
    current = getattr(profile.section(row.section), row.key)
    explicit = row.key in (profile.sections.get(row.section) or {})
    this, other = (row.code, row.paper) if profile.fidelity == "code" else (row.paper, row.code)
    if explicit:
        if not row.scale:
            return None
        return current, type(current)(current * other / this)
    return current, other


def plan_ablation(profile: Profile, results: str | Path = "results",
                  rows: Sequence[int] | None = None) -> list[AblationRun]:
    """The flipped profiles of the ablation (nothing is run).

    Parameters
    ----------
    profile : Profile
        A profile whose results exist (its tables pick the best variants).
    results : path-like
    rows : sequence of int, optional
        Row numbers to ablate (default: every row marked ``ablate``).

    Raises
    ------
    FileNotFoundError
        The profile's tables do not exist yet.
    ValueError
        A requested row is not one the ablation measures.
    """
    measured = {r.number for r in ablation_rows()}
    wanted = sorted(measured if rows is None else set(int(n) for n in rows))
    unknown = sorted(set(wanted) - measured)
    if unknown:
        raise ValueError(f"rows {unknown} are not ablated; choose from {sorted(measured)}.")
    means = _mean_auroc(profile, results)
    plans = []
    for number in wanted:
        keys = [r for r in DIFFERENCES if r.number == number]
        first = keys[0]
        changes, kept = {}, []
        for r in keys:
            flip = _flip(r, profile)
            if flip is None:
                kept.append(r.setting)
            else:
                changes[r.setting] = flip
        runs = tuple((m, v) for m in MODELS for v in _variants_for(first, m, profile, means))
        if not changes or not runs:
            continue
        data: dict[str, Any] = {
            "name": f"row{number:02d}-{first.key.replace('_', '-')}",
            "seed": profile.seed,
            "fidelity": profile.fidelity,
            "description": f"{profile.name} with row {number} ({first.item}) flipped: "
                           + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()),
            "folds": list(profile.folds),
            "variants": {m: [v for mm, v in runs if mm == m] for m in MODELS},
        }
        for section, values in profile.sections.items():
            data[section] = copy.deepcopy(dict(values))
        for setting, (_, value) in changes.items():
            section, key = setting.split(".", 1)
            data.setdefault(section, {})[key] = value
        flipped = Profile.from_dict(data, source=f"{profile.source} (ablation of row {number})")
        evaluate_only = all(s.startswith("evaluate.") for s in changes)
        plans.append(AblationRun(first, changes, tuple(kept), runs, flipped, evaluate_only))
    return plans


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.is_symlink() and link.resolve() == target.resolve():
            return
        raise FileExistsError(f"{link}: exists and is not a link to {target}; delete {link.parent} and run again.")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)


def _reuse_run(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for path in _reused_files(RunFiles(source)):
        target = dest / path.name
        if path.is_file() and not target.is_file():
            with atomic_path(target) as tmp:
                shutil.copyfile(path, tmp)


def _per_patient(runs: Sequence[Path]) -> pd.DataFrame:
    """AUROC and Dice (after the opening) per rule, one row per (patient, fold) of the runs' folds."""
    det = pd.concat([pd.read_csv(RunFiles(run).eval_auroc) for run in runs])[["subject", "fold", "auroc"]]
    dice = pd.concat([pd.read_csv(RunFiles(run).eval_dice) for run in runs])
    dice = dice[dice["rule"].isin(RULES)].pivot_table(index=["subject", "fold"], columns="rule",
                                                      values="dice_post")
    dice.columns = [f"dice_{c}" for c in dice.columns]
    return det.set_index(["subject", "fold"]).join(dice, how="left")


def _deltas(base_runs: Sequence[Path], flipped_runs: Sequence[Path], *, n_boot: int, ci: float,
            seed: int) -> list[dict[str, Any]]:
    """Paired change (flipped - base) per metric over the (patient, fold) rows both have.

    The interval resamples those rows (patients, pooled over folds).
    """
    from dmrilib.metrics import bootstrap_ci

    base, flipped = _per_patient(base_runs), _per_patient(flipped_runs)
    both = base.join(flipped, lsuffix="_base", rsuffix="_flipped", how="inner")
    rows = []
    for metric in METRICS:
        if f"{metric}_base" not in both or f"{metric}_flipped" not in both:
            continue
        diff = (both[f"{metric}_flipped"] - both[f"{metric}_base"]).to_numpy(float)
        low, high = bootstrap_ci(diff, n_boot=n_boot, ci=ci, seed=seed)
        rows.append({"metric": metric, "base": float(np.nanmean(both[f"{metric}_base"])),
                     "flipped": float(np.nanmean(both[f"{metric}_flipped"])),
                     "delta": float(np.nanmean(diff)), "low": low, "high": high,
                     "n": int(np.isfinite(diff).sum())})
    return rows


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_ablation(profile: Profile, results: str | Path = "results", *, rows: Sequence[int] | None = None,
                 threads: int = 0, progress: bool = True) -> pd.DataFrame:
    """Train and evaluate every flipped profile, then write ``ablation.csv``.

    Resumable: finished training runs are not repeated (their checkpoints
    resume at the last epoch) and stored maps are reused.

    Returns
    -------
    DataFrame
        One row per (difference, model, variant, metric): the profile's
        mean, the flipped mean, their paired difference over (patient,
        fold) rows and its bootstrap interval.
    """
    from dmrilib import pipeline

    plans = plan_ablation(profile, results, rows)
    root = ablation_dir(profile, results)
    base = ResultsLayout.of(profile, results)
    for folder in (base.prepared, base.groundtruth):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: missing; run `make book PROFILE={profile.name}` first.")
    cfg = profile.evaluate
    records, timings = [], []
    total = sum(len(p.runs) * len(profile.folds) for p in plans)
    done = 0
    for plan in plans:
        flipped = ResultsLayout.of(plan.profile, root)
        # the flipped profile reads the profile's own prepared cohort and ground truth
        _link(base.prepared, flipped.prepared)
        _link(base.groundtruth, flipped.groundtruth)
        for model, variant in plan.runs:
            base_runs, flipped_runs = [], []
            for fold in profile.folds:
                done += 1
                # one line per run, also without progress bars
                change = "; ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in plan.changes.items())
                print(f"[{done}/{total}] row {plan.row.number} ({plan.row.item}): {model} {variant} "
                      f"fold {fold}: {change}", flush=True)
                t0 = time.perf_counter()
                base_run = base.run(model, variant, fold)
                if not RunFiles(base_run).eval_record.is_file():
                    raise FileNotFoundError(f"{RunFiles(base_run).eval_record}: missing; the ablation compares against "
                                            f"the profile's own run: run `make book PROFILE={profile.name}` first.")
                if plan.evaluate_only:
                    _reuse_run(base_run, flipped.run(model, variant, fold))
                else:
                    pipeline.run_train(plan.profile, model, variant, fold, root, threads=threads, progress=progress)
                pipeline.run_evaluate(plan.profile, model, variant, fold, root, threads=threads)
                base_runs.append(base_run)
                flipped_runs.append(flipped.run(model, variant, fold))
                timings.append({"row": plan.row.number, "model": model, "variant": variant, "fold": fold,
                                "time_s": round(time.perf_counter() - t0, 1)})
            for rec in _deltas(base_runs, flipped_runs, n_boot=cfg.n_bootstrap, ci=cfg.ci, seed=cfg.seed):
                records.append({
                    "row": plan.row.number, "item": plan.row.item, "model": model, "variant": variant,
                    "folds": " ".join(map(str, profile.folds)), "settings": ", ".join(plan.changes),
                    "change": "; ".join(f"{_show(a)} -> {_show(b)}" for a, b in plan.changes.values()),
                    "kept": ", ".join(plan.kept), "evaluate_only": plan.evaluate_only, **rec})
    table = pd.DataFrame.from_records(records)
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(root / "ablation.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_json_atomic(root / "ablation.json", {
        "profile": profile.name, "config_hash": profile.hash(), "seed": profile.seed,
        "rows": [p.row.number for p in plans], "runs": timings,
        "bootstrap": {"n": cfg.n_bootstrap, "ci": cfg.ci, "seed": cfg.seed},
        "provenance": provenance(ablation_hash=config_hash([p.profile.hash() for p in plans])),
    })
    return table


def ablation_table(profile: Profile, results: str | Path = "results") -> pd.DataFrame | None:
    """``ablation.csv`` of a profile, or None when ``make ablation`` has not run."""
    path = ablation_dir(profile, results) / "ablation.csv"
    if not path.is_file():
        return None
    return pd.read_csv(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmrilib.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", help="shipped profile name or YAML file (default quick)")
    parser.add_argument("--results", default="results", help="results folder (default results)")
    parser.add_argument("--rows", type=int, nargs="*", help="row numbers to ablate (default: all measured rows)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per job (0: torch's default)")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.profile)
        table = run_ablation(profile, args.results, rows=args.rows, threads=args.threads,
                             progress=os.environ.get("DMRI_PROGRESS", "1") != "0")
    except (FileNotFoundError, ValueError) as exc:
        print(f"dmrilib.ablation: {exc}", file=sys.stderr)
        return 2
    print(f"{len(table)} rows -> {ablation_dir(profile, args.results) / 'ablation.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
