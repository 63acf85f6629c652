"""How far training drifts between CPU instruction sets, and what pinning one costs.

Usage::

    python benchmarks/isa_drift.py [--profile quick] [--runs dae:lsd128-sigmoid recdisc:mix-mix-half]
                                   [--settings native avx2 avx] [--threads 2] [--out DIR]

The profile's cohort is simulated and prepared once (its bytes are the same
on every CPU: ``tools/cohort_manifest.py``). Each (setting, run) then trains
and evaluates fold 0 in its own process, with environment variables that
choose the code paths of torch's CPU kernels:

- ``native``: what this CPU selects (oneDNN and ATen take AVX-512 where the
  CPU has it);
- ``avx2``: ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` (what an AVX2
  machine computes; on an AVX2 machine identical to ``native``);
- ``avx``: ``ONEDNN_MAX_CPU_ISA=AVX ATEN_CPU_CAPABILITY=default`` (older code
  paths; on an AVX2 machine this stands in for the AVX-512/AVX2 difference);
- ``native-1t``: this CPU's code paths on one thread instead of ``--threads``.

For every setting against the first one it prints the largest weight
difference (relative to the layer's largest weight), the relative L2
difference of the stored anomaly maps, the change of the mean per-patient
AUROC, and the wall time of the training job (ratio to the first setting).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "native": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "avx": {"ONEDNN_MAX_CPU_ISA": "AVX", "ATEN_CPU_CAPABILITY": "default"},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx512"},
    # Same code paths, one thread: oneDNN splits its reductions by thread.
    "native-1t": {"_threads": "1"},
}

_JOB = """
import json, sys, time
from dmrilib.config import load_profile
from dmrilib.pipeline import run_train, run_evaluate
profile = load_profile(sys.argv[1])
t0 = time.perf_counter()
run_train(profile, sys.argv[2], sys.argv[3], 0, sys.argv[4], threads=int(sys.argv[5]), progress=False)
train_s = time.perf_counter() - t0
run_evaluate(profile, sys.argv[2], sys.argv[3], 0, sys.argv[4], threads=int(sys.argv[5]))
print(json.dumps({"train_s": train_s}))
"""


def _run_dir(results: Path, profile: str, model: str, variant: str) -> Path:
    return results / profile / "runs" / model / variant / "fold-0"


def _compare(ref: Path, other: Path) -> dict[str, float]:
    import numpy as np
    import pandas as pd
    import torch

    w_ref = torch.load(ref / "checkpoint-last.pt", weights_only=True)["state_dict"]
    w_other = torch.load(other / "checkpoint-last.pt", weights_only=True)["state_dict"]
    worst = 0.0
    for name, tensor in w_ref.items():
        if tensor.is_floating_point() and tensor.numel():
            scale = float(tensor.abs().max()) or 1.0
            worst = max(worst, float((tensor - w_other[name]).abs().max()) / scale)
    m_ref = np.load(ref / "maps-test.npy").astype(np.float64)
    m_other = np.load(other / "maps-test.npy").astype(np.float64)
    auroc = [pd.read_csv(d / "eval-auroc.csv")["auroc"].mean() for d in (ref, other)]
    return {
        "weights_max_rel": worst,
        "maps_rel_l2": float(np.linalg.norm(m_other - m_ref) / np.linalg.norm(m_ref)),
        "auroc_ref": float(auroc[0]),
        "auroc": float(auroc[1]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--runs", nargs="+", default=["dae:lsd128-sigmoid", "recdisc:mix-mix-half"])
    parser.add_argument("--settings", nargs="+", default=["native", "avx2", "avx", "native-1t"], choices=sorted(SETTINGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="work folder (default: a temp folder)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    from dmrilib.config import load_profile, provenance
    from dmrilib.pipeline import run_cohort

    work = Path(args.out or tempfile.mkdtemp(prefix="isa-drift-"))
    profile = load_profile(args.profile)
    base = work / args.settings[0]
    t0 = time.perf_counter()
    run_cohort(profile, base, progress=False)
    print(f"cohort: {time.perf_counter() - t0:.0f} s; CPU: {provenance()['cpu']}", flush=True)
    for setting in args.settings[1:]:
        target = work / setting / args.profile
        target.mkdir(parents=True, exist_ok=True)
        for name in ("cohort", "prepared"):
            link = target / name
            if not link.exists():
                link.symlink_to(base / args.profile / name)

    timings: dict[tuple[str, str], float] = {}
    rows = []
    for run in args.runs:
        model, variant = run.split(":")
        for setting in args.settings:
            env = {**os.environ, "DMRI_PROGRESS": "0"}
            env.update({k: v for k, v in SETTINGS[setting].items() if not k.startswith("_")})
            threads = SETTINGS[setting].get("_threads", str(args.threads))
            out = subprocess.run([sys.executable, "-c", _JOB, args.profile, model, variant, str(work / setting),
                                  threads], env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{setting} {run} failed:\n{out.stderr[-3000:]}")
            timings[run, setting] = json.loads(out.stdout.strip().splitlines()[-1])["train_s"]
        ref = _run_dir(work / args.settings[0], args.profile, model, variant)
        print(f"\n{run} ({args.profile}, fold 0, {args.threads} threads)")
        print(f"{'setting':8s} {'train s':>8s} {'ratio':>6s} {'max dw/|w|':>11s} {'maps rel L2':>12s} "
              f"{'AUROC':>7s} {'dAUROC':>8s}")
        for setting in args.settings:
            d = _compare(ref, _run_dir(work / setting, args.profile, model, variant))
            t = timings[run, setting]
            rows.append({"run": run, "setting": setting, "train_s": t, **d})
            print(f"{setting:8s} {t:8.1f} {t / timings[run, args.settings[0]]:6.2f} {d['weights_max_rel']:11.2e} "
                  f"{d['maps_rel_l2']:12.2e} {d['auroc']:7.4f} {d['auroc'] - d['auroc_ref']:+8.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": provenance()["cpu"], "rows": rows}, indent=1))
    print(f"\nwork folder: {work}")


if __name__ == "__main__":
    main()
