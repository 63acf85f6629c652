"""Time and memory of simulating a whole cohort (default: paper geometry).

Usage::

    python benchmarks/simulate_cohort.py [--profile paper] [--out DIR] [--jobs 2] [--keep]

Prints wall time (cold template cache and warm), per-subject time, peak RSS
of the main process and of the worker processes, and the dataset size. The
target for the paper profile (60 subjects at 90x90x54, with follow-ups and
structural images) is at most 3 minutes and under 4 GB on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--out", default=None, help="output folder (default: a temp folder, removed)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the simulated cohort")
    args = parser.parse_args()

    from dmrilib.config import load_profile
    from dmrilib.simulate import simulate_cohort
    from dmrilib.simulate.anatomy import load_template
    from dmrilib.simulate.fibres import fibre_field

    config = load_profile(args.profile).cohort
    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="simbench-"))
    out = out_root / f"cohort-{args.profile}"
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    load_template(config.voxel_size)
    fibre_field(config.voxel_size)
    t_cache = time.perf_counter() - t0
    t1 = time.perf_counter()
    simulate_cohort(config, out, progress=False, n_jobs=args.jobs)
    t_sim = time.perf_counter() - t1
    n = config.n_healthy + config.n_patients
    size = subprocess.run(["du", "-sh", str(out)], capture_output=True, text=True).stdout.split()[0]
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)
    load = open("/proc/loadavg").read().split()[0] if Path("/proc/loadavg").exists() else "?"
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    print(f"profile={args.profile} grid={config.shape} voxel={config.voxel_size} mm subjects={n} "
          f"followups={config.followup_count} jobs={args.jobs}")
    print(f"template+fibre cache (cold or disk): {t_cache:.1f} s")
    print(f"cohort simulation + writing: {t_sim:.1f} s ({t_sim / n:.2f} s/subject wall)")
    print(f"total: {t_cache + t_sim:.1f} s (target for paper: <= 180 s)")
    print(f"CPU time (all processes): {cpu:.1f} s -> {cpu / args.jobs:.1f} s wall on {args.jobs} idle cores; "
          f"load average at the end: {load} (other users of the machine slow the wall time)")
    print(f"peak RSS: main {self_rss:.2f} GB, largest worker {child_rss:.2f} GB (target < 4 GB)")
    print(f"dataset size: {size}")
    if not args.keep:
        shutil.rmtree(out_root if not args.out else out)


if __name__ == "__main__":
    main()
