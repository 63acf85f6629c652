#!/usr/bin/env bash
# `make book` on the lent GPU machine in one call (benchmarks/GPU_BOOK.md).
#
#   tools/gpu_book.sh [PROFILE] [LIMIT_S]      # PROFILE: gpu (default); LIMIT_S: 480 (workflow + book)
#
# That machine has no network, so `make setup` (a .venv from PyPI) cannot run
# there. Instead: the wheels that tools/gpu_wheels.sh packed into .whl/ are
# installed into $DMRI_SITE (the device README's pip line), the machine's own
# python3 (torch with CUDA) runs everything with PYTHONPATH=$DMRI_SITE, and a
# stand-in environment folder with python, snakemake and jupyter-book takes
# the place of .venv: `make -o setup results` then `make -o setup book-only`
# (make book's two steps, without its setup) with VENV=<that folder>.
# Writes to $OUT (at most 8 files): summary.json and summary.md (wall time per
# step, per Snakemake job and per notebook, the book's headline numbers),
# environment.txt, book-html.zip, tables.zip, logs.zip.
#
# Environment: OUT (./gpu-book-out), PYTHON (python3: the machine's torch
# Python), DMRI_SITE (/tmp/site), WHEELS (.whl), CORES (all processors),
# RESULTS (results). A CPU rehearsal: CUDA_VISIBLE_DEVICES= with PROFILE=smoke.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

PROFILE=${1:-gpu}
LIMIT_S=${2:-480}
OUT=${OUT:-$REPO/gpu-book-out}
PYTHON=$(command -v "${PYTHON:-python3}")
SITE=${DMRI_SITE:-/tmp/site}
WHEELS=${WHEELS:-.whl}
CORES=${CORES:-$(nproc)}
# Threads per job (the Makefile's default: CORES, so one job at a time); CORES/2 lets the ground
# truth's registrations (CPU) run beside a training job (GPU).
JOB_THREADS=${JOB_THREADS:-$CORES}
RESULTS=${RESULTS:-results}
SHIM=$(mktemp -d /tmp/dmri-gpu-env.XXXX)
LOGS=$SHIM/logs
START=$(date +%s%N)
STEPS=$SHIM/steps.tsv          # step, seconds, exit status (summary.json reads it)
mkdir -p "$OUT" "$LOGS"
: > "$STEPS"

say() { echo "gpu_book: $*"; }

seconds_since() {
  # Seconds (one decimal) since a `date +%s%N` reading; bash arithmetic (the machine may lack bc).
  local ms=$(( ($(date +%s%N) - $1) / 1000000 ))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

timed() {
  # Run a step, record its wall time and exit status; its output goes to the log and the terminal.
  local name=$1 t0 rc; shift
  say "$name: $*"
  t0=$(date +%s%N)
  "$@" 2>&1 | tee "$LOGS/$name.log"
  rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\n' "$name" "$(seconds_since "$t0")" "$rc" >> "$STEPS"
  say "$name: exit $rc after $(tail -1 "$STEPS" | cut -f2) s"
  return "$rc"
}

install_wheels() {
  # The README's install line, from the tarball of uncompressed wheels (tools/gpu_wheels.sh).
  local unpacked=$SHIM/wheels stamp
  # A second call on the same (still warm) machine finds them installed: the workflow resumes at once.
  stamp=$(sha256sum "$WHEELS/wheels.tar.xz" | cut -c1-16)
  if [ "$(cat "$SITE/.gpu-wheels" 2>/dev/null)" = "$stamp" ]; then say "wheels already in $SITE"; return 0; fi
  mkdir -p "$unpacked"
  "$PYTHON" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
    "$WHEELS/wheels.tar.xz" "$unpacked" || return 1
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$unpacked"/*.whl || return 1
  # dmrilib runs from this checkout (PYTHONPATH); a dist-info gives provenance() its version, as an
  # editable install would. No entry points: the workflow and the book never call `dmri`.
  local version
  version=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
  mkdir -p "$SITE/dmrilib-$version.dist-info"
  printf 'Metadata-Version: 2.1\nName: dmrilib\nVersion: %s\n' "$version" > "$SITE/dmrilib-$version.dist-info/METADATA"
  rm -rf "$unpacked"
  echo "$stamp" > "$SITE/.gpu-wheels"
}

make_env_folder() {
  # The stand-in for .venv that the Makefile calls: $(VENV)/bin/{snakemake,jupyter-book,python};
  # and the local Snakemake profile with the greedy scheduler: without PuLP (not carried) Snakemake
  # still defaults to its ILP scheduler and fails importing it. Only the order of jobs can differ.
  mkdir -p "$SHIM/bin" "$SHIM/profile"
  { cat workflow/profiles/local/config.yaml; echo "scheduler: greedy"; } > "$SHIM/profile/config.yaml"
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$PYTHON" > "$SHIM/bin/python"
  for tool in snakemake jupyter-book; do
    [ -x "$SITE/bin/$tool" ] || { say "$SITE/bin/$tool missing: are .whl/ and the wheels complete?"; return 1; }
    printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$PYTHON" "$SITE/bin/$tool" > "$SHIM/bin/$tool"
  done
  chmod +x "$SHIM"/bin/*
  # As tools/setup.sh does for .venv: kernels log at ERROR (not one TCP warning per job and page).
  mkdir -p "$SHIM/ipython/profile_default"
  echo 'c.IPKernelApp.log_level = "ERROR"' > "$SHIM/ipython/profile_default/ipython_kernel_config.py"
}

check_environment() {
  # Imports, the accelerator, and where the machine's packages differ from constraints.txt.
  {
    echo "python: $PYTHON ($("$PYTHON" --version 2>&1)); site: $SITE; cores: $CORES, $JOB_THREADS per job"
    if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "no nvidia-smi"; fi
    command -v make >/dev/null || echo "no make: the Makefile's two commands run directly"
    "$PYTHON" - "$PROFILE" <<'EOF'
import importlib, importlib.metadata as md, re, sys
mods = ["dmrilib", "torch", "numpy", "scipy", "pandas", "snakemake", "papermill", "ipykernel", "jupyter_book",
        "nibabel", "nilearn", "dipy", "ants", "sklearn", "skimage", "matplotlib"]
for m in mods:
    importlib.import_module(m)
import torch
from dmrilib.config import load_profile
device = load_profile(sys.argv[1]).train.device
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; profile trains on {device}")
pins = dict(line.strip().split("==", 1) for line in open("constraints.txt") if "==" in line)
pins = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pins.items()}
for dist in sorted(md.distributions(), key=lambda d: str(d.metadata["Name"]).lower()):
    name = re.sub(r"[-_.]+", "-", str(dist.metadata["Name"])).lower()
    if name in pins and pins[name] != dist.version:
        print(f"differs from constraints.txt: {name} {dist.version} (pinned {pins[name]})")
if device == "cuda" and not torch.cuda.is_available():
    sys.exit("the profile trains on cuda but torch sees no GPU")
EOF
  } 2>&1 | tee "$OUT/environment.txt"
  return "${PIPESTATUS[0]}"
}

make_step() {
  # One of make book's two steps (results, book-only) without `make setup`; the Makefile's commands if no make.
  local target=$1 remaining
  remaining=$(( LIMIT_S - ($(date +%s%N) - WORK_START) / 1000000000 ))
  [ "$remaining" -gt 0 ] || { say "no time left for $target"; return 124; }
  local vars=(PROFILE="$PROFILE" CORES="$CORES" JOB_THREADS="$JOB_THREADS" RESULTS="$RESULTS" VENV="$SHIM"
              SNAKEMAKE_PROFILE="$SHIM/profile")
  # A run cut short by the time limit (or killed) may leave Snakemake's lock; this machine runs no other.
  if [ "$target" = results ] && [ -n "$(ls -A .snakemake/locks 2>/dev/null)" ]; then
    say "clearing the lock of an earlier, interrupted run"
    "$SHIM/bin/snakemake" --snakefile workflow/Snakefile --unlock --config profile="$PROFILE" \
      results="$REPO/$RESULTS" >/dev/null 2>&1
  fi
  if command -v make >/dev/null; then
    timeout -s INT -k 20 "$remaining" make --no-print-directory -o setup "$target" "${vars[@]}"
  elif [ "$target" = results ]; then
    timeout -s INT -k 20 "$remaining" "$SHIM/bin/snakemake" --snakefile workflow/Snakefile \
      --profile "$SHIM/profile" --config profile="$PROFILE" results="$REPO/$RESULTS" \
      job_threads="$JOB_THREADS" --cores "$CORES"
  else
    DMRI_PROFILE=$PROFILE DMRI_RESULTS=$REPO/$RESULTS timeout -s INT -k 20 "$remaining" \
      "$SHIM/bin/jupyter-book" build book --all --path-output "$REPO/book" --quiet
  fi
}

summarize() {
  # summary.json / summary.md: step times, Snakemake jobs, notebooks, headline numbers.
  "$PYTHON" - "$STEPS" "$LOGS/workflow.log" "$REPO/$RESULTS" "$PROFILE" "$OUT" "$START" <<'EOF'
import json, re, sys, time
from datetime import datetime
from pathlib import Path
import pandas as pd
from dmrilib.config import load_profile
steps_file, wf_log, results, profile, out, start_ns = sys.argv[1:]
root = Path(results) / load_profile(profile).name
steps = [dict(zip(("step", "seconds", "exit"), l.split("\t"))) for l in Path(steps_file).read_text().splitlines()]
for s in steps:
    s["seconds"], s["exit"] = float(s["seconds"]), int(s["exit"])
# Snakemake's log: "[date]" then "localrule NAME:" ... "jobid: N" ... "wildcards: ..."; "[date]" "Finished jobid: N".
jobs, stamp, current = {}, None, None
log = Path(wf_log).read_text(errors="replace").splitlines() if Path(wf_log).is_file() else []
for line in log:
    line = line.strip()
    if m := re.fullmatch(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", line):
        stamp = datetime.strptime(m[1], "%a %b %d %H:%M:%S %Y").timestamp()
    elif m := re.fullmatch(r"(?:local)?rule (\w+):", line):
        current = {"rule": m[1], "start": stamp}
    elif current is not None and (m := re.fullmatch(r"jobid: (\d+)", line)):
        jobs[m[1]] = current
    elif current is not None and line.startswith("wildcards: "):
        current["wildcards"] = line[len("wildcards: "):]
    elif m := re.match(r"Finished jobid: (\d+)", line):
        if m[1] in jobs and stamp is not None and jobs[m[1]]["start"] is not None:
            jobs[m[1]]["seconds"] = stamp - jobs[m[1]].pop("start")
jobs = [j for j in jobs.values() if "seconds" in j]
notebooks = []
for nb in sorted(root.rglob("*.ipynb")):
    pm = json.loads(nb.read_text()).get("metadata", {}).get("papermill", {})
    if pm.get("duration") is not None:
        notebooks.append({"notebook": str(nb.relative_to(root)), "seconds": round(pm["duration"], 1)})
headline = {}
tables = root / "tables"
for name, column in (("table1", "AUC"), ("table2", "AUC"), ("auroc_baseline", "AUC"), ("table3", "Dice")):
    if (tables / f"{name}.csv").is_file():
        t = pd.read_csv(tables / f"{name}.csv")
        key = (t["model"] + " " if "model" in t else "") + t["variant"]
        headline[name] = dict(zip(key, t[column]))
if (tables / "groundtruth.csv").is_file():
    gt = pd.read_csv(tables / "groundtruth.csv")
    headline["groundtruth_mean"] = {c: round(float(gt[c].mean()), 3) for c in
                                    ("dice_segmentation", "reg_error_mean_mm", "dice_pipeline") if c in gt}
summary = {"profile": profile, "total_seconds": round(time.time() - int(start_ns) / 1e9, 1), "steps": steps,
           "jobs": jobs, "notebooks": notebooks, "headline": headline}
Path(out, "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
md = [f"# GPU book, profile {profile}: {summary['total_seconds']:.0f} s in all", "",
      "| step | s | exit |", "|---|---:|---:|"] + [f"| {s['step']} | {s['seconds']:.1f} | {s['exit']} |" for s in steps]
by_rule = {}
for j in jobs:
    by_rule.setdefault(j["rule"], []).append(j["seconds"])
md += ["", "| Snakemake rule | jobs | s in all | longest |", "|---|---:|---:|---:|"]
md += [f"| {r} | {len(v)} | {sum(v):.0f} | {max(v):.0f} |" for r, v in by_rule.items()]
md += ["", "| notebook (papermill) | s |", "|---|---:|"] + [f"| {n['notebook']} | {n['seconds']} |" for n in notebooks]
md += ["", "## Headline numbers", ""] + [f"- {k}: {v}" for k, v in headline.items()]
Path(out, "summary.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF
}

pack() {
  # book-html.zip (< 16 MiB: the device returns no bigger file), tables.zip, logs.zip.
  local root
  root=$RESULTS/$("$PYTHON" -c 'import sys; from dmrilib.config import load_profile; print(load_profile(sys.argv[1]).name)' "$PROFILE")
  "$PYTHON" - "$OUT" "$root" "$LOGS" <<'EOF'
import sys, zipfile
from pathlib import Path
out, root, logs = map(Path, sys.argv[1:])
def zip_up(name, files, base):
    files = [f for f in dict.fromkeys(files) if f.is_file()]
    if files:
        with zipfile.ZipFile(out / name, "w", zipfile.ZIP_DEFLATED) as z:
            for f in files:
                z.write(f, f.relative_to(base) if base else f.name)
    return len(files)
html = Path("book/_build/html")
# _sources (the pages' sources again) are not needed to read the book.
zip_up("book-html.zip", [f for f in html.rglob("*") if "_sources" not in f.parts], html.parent)
zip_up("tables.zip", [*root.glob("tables/*"), *root.glob("*/*.json"), *root.glob("groundtruth/*.csv"),
                      *root.glob("runs/*/*/*/*.json"), *root.glob("runs/*/*/*/*.csv"), *root.glob("figures/*.png")],
       root.parent)
zip_up("logs.zip", [*logs.glob("*"), *sorted(Path(".snakemake/log").glob("*.log"))[-1:]], None)
limit = 16 * 2**20
for f in out.iterdir():
    print(f"{f.name}: {f.stat().st_size / 2**20:.1f} MiB" + ("  OVER 16 MiB: will not come back" if f.stat().st_size > limit else ""))
EOF
}

main() {
  export PYTHONPATH=$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}
  export PATH=$SHIM/bin:$SITE/bin:$PATH IPYTHONDIR=$SHIM/ipython
  # The kernels write bytecode of the carried packages once (installed with --no-compile).
  unset PYTHONDONTWRITEBYTECODE
  say "profile $PROFILE, limit ${LIMIT_S} s, $CORES cores, results in $OUT"
  timed install install_wheels && timed env-folder make_env_folder && timed check check_environment || {
    summarize; pack; return 1; }
  WORK_START=$(date +%s%N)
  local rc=0
  timed workflow make_step results || rc=$?
  [ "$rc" = 0 ] && { timed book make_step book-only || rc=$?; }
  summarize
  pack
  say "done (exit $rc): $OUT"
  return "$rc"
}

main
