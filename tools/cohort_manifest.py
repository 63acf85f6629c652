"""Simulate a profile's cohort and check it against (or write) its shipped manifest.

Usage::

    python tools/cohort_manifest.py --profile smoke            # check, this CPU's code paths
    python tools/cohort_manifest.py --profile smoke --baseline # check, oldest x86-64 code paths
    python tools/cohort_manifest.py --profile quick --write    # regenerate the manifest

The cohort is simulated into a temporary folder with an empty template cache
(``DMRILIB_CACHE``), so nothing computed earlier on this or another machine
hides a difference. ``--baseline`` runs the simulation in a child process
with :data:`dmrilib.simulate._portable.BASELINE_CPU_ENV`: numpy's SSE3 loops,
OpenBLAS's Sandybridge kernels and glibc without FMA, i.e. what a CPU
without AVX2 or AVX-512 computes. Exit status 1 when the cohort does not
match the manifest.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def manifest_path(profile: str) -> Path:
    return ROOT / "data_manifest" / f"simulated_cohort_{profile}.sha256"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (the bytes do not depend on it)")
    parser.add_argument("--baseline", action="store_true", help="simulate with the oldest x86-64 code paths")
    parser.add_argument("--write", action="store_true", help="write the manifest instead of checking it")
    args = parser.parse_args(argv)

    if args.baseline:
        from dmrilib.simulate._portable import BASELINE_CPU_ENV

        child = [sys.executable, __file__, "--profile", args.profile, "--jobs", str(args.jobs)]
        if args.write:
            child.append("--write")
        return subprocess.run(child, env={**os.environ, **BASELINE_CPU_ENV}).returncode

    with tempfile.TemporaryDirectory(prefix="cohort-manifest-") as tmp:
        os.environ["DMRILIB_CACHE"] = str(Path(tmp) / "cache")
        from dmrilib.config import load_profile
        from dmrilib.simulate import simulate_cohort, verify_manifest, write_manifest

        start = time.perf_counter()
        cohort = simulate_cohort(load_profile(args.profile).cohort, Path(tmp) / "cohort", progress=False,
                                 n_jobs=args.jobs)
        seconds = time.perf_counter() - start
        if args.write:
            write_manifest(cohort, manifest_path(args.profile))
            print(f"{args.profile}: wrote {manifest_path(args.profile)} ({seconds:.0f} s)")
            return 0
        problems = verify_manifest(cohort, manifest_path(args.profile))
    for line in problems:
        print(line)
    print(f"{args.profile}: {'matches' if not problems else 'does NOT match'} {manifest_path(args.profile).name} "
          f"({len(problems)} problems, {seconds:.0f} s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
