"""What the realism levels cost the simulator: time and memory per subject, L0 against others.

Usage::

    python benchmarks/simulate_realism.py [--profile paper] [--levels L0 L3] [--subjects 2]

For each level, simulates (and writes, as ``simulate_cohort`` does) the first
``--subjects`` controls and the first ``--subjects`` patients with a follow-up
of the profile's cohort plan, each in a fresh process (cold caches, so the
one-time template and lattice builds count), and prints CPU seconds and peak
RSS per subject, the ratio to the first level, and the whole cohort's
estimated wall time with 2 workers. Ratios are the figure to trust on a shared
machine; absolute times depend on the load.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

_CHILD = r"""
import dataclasses, json, resource, sys, time
from pathlib import Path
from dmrilib.config import load_profile
from dmrilib.simulate import cohort_plan, simulate_subject
from dmrilib.simulate.bids import write_subject
profile, level, index, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
config = dataclasses.replace(load_profile(profile).cohort, realism=level)
entry = cohort_plan(config)[index]
start = time.process_time()
subject = simulate_subject(config, entry.seed, grade=entry.grade, size_class=entry.size_class,
                           followup=entry.followup, age=entry.age, scanner=entry.scanner)
write_subject(out, entry.label, subject)
print(json.dumps({"cpu_s": time.process_time() - start,
                  "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--levels", nargs="+", default=["L0", "L3"])
    parser.add_argument("--subjects", type=int, default=2, help="controls and patients with follow-up, each")
    args = parser.parse_args()

    from dmrilib.config import load_profile
    from dmrilib.simulate import cohort_plan

    config = load_profile(args.profile).cohort
    plan = cohort_plan(config)
    controls = [i for i, p in enumerate(plan) if p.group == "healthy"][: args.subjects]
    patients = [i for i, p in enumerate(plan) if p.followup][: args.subjects]
    n_controls = sum(p.group == "healthy" for p in plan)
    n_patients = len(plan) - n_controls
    first = None
    for level in args.levels:
        rows = {"control": [], "patient": []}
        for kind, indices in (("control", controls), ("patient", patients)):
            for index in indices:
                with tempfile.TemporaryDirectory() as out:
                    done = subprocess.run([sys.executable, "-c", _CHILD, args.profile, level, str(index), out],
                                          capture_output=True, text=True, check=True)
                rows[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))
        cpu = {k: sum(r["cpu_s"] for r in v) / len(v) for k, v in rows.items()}
        rss = max(r["rss_gb"] for v in rows.values() for r in v)
        cohort_min = (cpu["control"] * n_controls + cpu["patient"] * n_patients) / 2 / 60
        first = first or cpu
        print(f"{args.profile} {level}: control {cpu['control']:.1f} s CPU (x{cpu['control'] / first['control']:.2f}),"
              f" patient with follow-up {cpu['patient']:.1f} s (x{cpu['patient'] / first['patient']:.2f}),"
              f" peak RSS {rss:.2f} GB; cohort of {len(plan)} with 2 workers ~{cohort_min:.1f} min"
              " (patients all counted with a follow-up: an upper bound)")


if __name__ == "__main__":
    main()
