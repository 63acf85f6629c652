"""Run a profile's pipeline stages in one process and time each one.

What the workflow does job by job (cohort, training runs, evaluation,
normative baseline, ground-truth pipeline), here in one Python process and
without papermill or Snakemake, so the numbers are the work itself: this is
how the ``gpu`` profile was timed on a lent GPU machine that has no
Snakemake, papermill or Jupyter Book. The book is not built.

Stages run in an order that puts the GPU work first (one training run of
each model before the others), and each stage's timing is written to the
JSON file as soon as it ends (a run stopped by a time limit still reports
what it finished). ``--skip-after SECONDS`` skips the optional stages (further
training runs, baseline, ground truth) that would start after that many
seconds.

Usage::

    python benchmarks/profile_stages.py --profile gpu --workers 16 --results /tmp/results \
        --json stages.json [--skip-after 420]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from dmrilib._atomic import write_json_atomic
import yaml

from dmrilib.config import Profile, load_profile
from dmrilib.pipeline import results_root, run_baseline, run_cohort, run_evaluate, run_groundtruth, run_train


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--results", default="results")
    parser.add_argument("--workers", type=int, default=2, help="processes for simulation and registration")
    parser.add_argument("--json", default=None, help="write the stage timings here")
    parser.add_argument("--only", default="cohort,train,evaluate,baseline,groundtruth",
                        help="comma-separated stages to run (the cohort always is)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one profile setting (YAML value), e.g. groundtruth.epochs=100")
    parser.add_argument("--skip-after", type=float, default=None,
                        help="skip optional stages (further runs, baseline, ground truth) starting after this many seconds")
    args = parser.parse_args()
    only = set(args.only.split(","))

    profile = load_profile(args.profile)
    if args.set:
        data = yaml.safe_load(Path(profile.source).read_text())
        for item in args.set:
            key, _, value = item.partition("=")
            section, _, name = key.partition(".")
            data.setdefault(section, {})[name] = yaml.safe_load(value)
        profile = Profile.from_dict(data, source=f"{profile.source} with {' '.join(args.set)}")
    record: dict = {"profile": profile.name, "overrides": args.set, "device": _device_name(), "workers": args.workers, "stages": []}
    start = time.perf_counter()

    def stage(name: str, fn, *fn_args, **fn_kwargs):
        t0 = time.perf_counter()
        result = fn(*fn_args, **fn_kwargs)
        seconds = time.perf_counter() - t0
        record["stages"].append({"stage": name, "seconds": round(seconds, 2)})
        record["total_seconds"] = round(time.perf_counter() - start, 2)
        print(f"[{record['total_seconds']:8.1f} s] {name}: {seconds:.1f} s", flush=True)
        if args.json:
            write_json_atomic(Path(args.json), record)
        return result

    root = results_root(profile, args.results)
    if not (root / "cohort" / "dataset_description.json").is_file():
        from dmrilib.simulate import simulate_cohort

        stage("simulate cohort", simulate_cohort, profile.cohort, root / "cohort", n_jobs=args.workers,
              progress=False)
    stage("prepare cohort", run_cohort, profile, args.results, progress=False, n_jobs=args.workers)
    def late(name: str) -> bool:
        """Past --skip-after: record the optional stage as skipped."""
        if args.skip_after is None or time.perf_counter() - start <= args.skip_after:
            return False
        record["stages"].append({"stage": name, "skipped": True})
        return True

    runs = [(model, variant, fold) for model, variants in profile.variants.items()
            for variant in variants for fold in profile.folds] if "train" in only else []
    # One run of each model first: the rest are optional under --skip-after.
    firsts = [next(r for r in runs if r[0] == model) for model in profile.variants] if runs else []
    trained = []
    for model, variant, fold in firsts + [r for r in runs if r not in firsts]:
        name = f"train {model}/{variant}/fold{fold}"
        if (model, variant, fold) not in firsts and late(name):
            continue
        rec = stage(name, run_train, profile, model, variant, fold, args.results, threads=args.workers,
                    progress=False)
        record["stages"][-1]["epochs"] = rec.get("epochs")
        trained.append((model, variant, fold))
    for model, variant, fold in trained if "evaluate" in only else []:
        summary = stage(f"evaluate {model}/{variant}/fold{fold}", run_evaluate, profile, model, variant, fold,
                        args.results, threads=args.workers)
        record["stages"][-1]["auroc_mean"] = round(summary["auroc_mean"], 4)
    if "baseline" in only and not late("baseline"):
        stage("baseline", run_baseline, profile, profile.folds[0], args.results)
    if "groundtruth" in only and not late("ground truth"):
        table = stage("ground truth", run_groundtruth, profile, args.results, threads=args.workers, progress=False)
        record["stages"][-1]["mean"] = table.drop(columns=["subject"]).mean(numeric_only=True).round(4).to_dict()
    if args.json:
        write_json_atomic(Path(args.json), record)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
