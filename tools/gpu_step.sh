#!/usr/bin/env bash
# The training-step benchmark on the lent GPU machine in one call (benchmarks/GPU_BOOK.md, "Training step").
#
#   bash tools/gpu_step.sh [SECONDS]      # the whole run within SECONDS (default 240)
#
# Runs benchmarks/train_step.py once, at paper size with the authors' code architectures, over a
# curated list of rows, the most important first: both models' reference and fast path (the
# same-run baseline), cuDNN's benchmark mode, DAE stacks of K folds (dmrilib.stack), then the
# torch.compile candidates (reduce-overhead = Inductor + CUDA graphs for RecDiscNet, the largest
# DAE stack and the single DAE; RecDiscNet max-autotune-no-cudagraphs last). The bf16 peak
# is measured once at the start. Each row has ROW_LIMIT seconds (warm-up and compilation
# included): one past it is recorded as timed out and the next starts; rows that would start
# after the time left are recorded as skipped, and the run is interrupted at SECONDS at the
# latest. train_step.json is rewritten after every row, so an interrupted run keeps its rows.
#
# At paper size (the default) it needs only torch, numpy, PyYAML and tqdm, all on the machine: no
# wheels to carry. dmrilib runs from this checkout (PYTHONPATH); none of the modules the benchmark
# imports there loads nibabel, nilearn or dipy. SIZE=smoke or quick reads that profile
# (dmrilib.config), which imports nibabel: put the carried wheels on PYTHONPATH (gpu_session.sh does).
# Exit status 3 when a row failed (the others are still run and recorded).
#
# Writes to $OUT two files (so that it fits beside tools/gpu_book.sh's six in one call's eight):
# train_step.json (rows and their settings; `train_step.py --summarize` prints its table) and
# train_step.log (the machine, the output, the summary table at the end).
#
# Environment: OUT (/tmp/gpu-step-out), PYTHON (python3), SIZE (paper), FIDELITY (code),
# STEPS (5: timed steps per row, at least), MIN_TIME (2: timed seconds per row, at least),
# ROW_LIMIT (100), STACKS ("4 7": the paper's 7 folds of a configuration train as stacks of 4+3
# or as one of 7), MODES (replaces the curated list; train_step.py --modes syntax), DEVICE (auto).
# A CPU rehearsal: SIZE=smoke STEPS=1 MIN_TIME=0 CUDA_VISIBLE_DEVICES= bash tools/gpu_step.sh
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
T0=$(date +%s)

LIMIT=${1:-240}
OUT=${OUT:-/tmp/gpu-step-out}
PYTHON=$(command -v "${PYTHON:-python3}")
SIZE=${SIZE:-paper}
FIDELITY=${FIDELITY:-code}
STEPS=${STEPS:-5}
MIN_TIME=${MIN_TIME:-2}
ROW_LIMIT=${ROW_LIMIT:-100}
STACKS=${STACKS:-4 7}
DEVICE=${DEVICE:-auto}
# Seconds kept back from the rows: starting Python and torch (before the benchmark's own clock
# starts) and the summary afterwards.
RESERVE=${RESERVE:-25}
mkdir -p "$OUT"

say() { echo "gpu_step: $*"; }

curated_modes() {
  # Most important first, so that a run cut short still holds the baseline and the cheap candidates.
  local k last="" stacks="" modes
  for k in $STACKS; do stacks+="dae:stack-$k,"; last=$k; done
  modes="dae:reference,dae:fast,recdisc:reference,recdisc:fast,dae:fast+cudnn,${stacks}recdisc:fast+cudnn"
  [ -n "$last" ] && modes+=",dae:stack-$last+cudnn"
  # Compilation last, the quicker compilers first: reduce-overhead (Inductor's fusions + CUDA graphs), then
  # max-autotune-no-cudagraphs, whose search of kernel configurations takes longest.
  modes+=",recdisc:fast+cudnn+compile=reduce-overhead"
  [ -n "$last" ] && modes+=",dae:stack-$last+cudnn+compile=reduce-overhead"
  modes+=",dae:fast+cudnn+compile=reduce-overhead,recdisc:fast+cudnn+compile=max-autotune-no-cudagraphs"
  echo "$modes"
}

main() {
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  local modes budget rc
  modes=${MODES:-$(curated_modes)}
  LOG=$OUT/train_step.log
  rm -f "$OUT/train_step.json"  # a JSON left by an earlier run must not pass for this one
  {
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi -L
      nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,memory.used --format=csv
    else
      echo "no nvidia-smi"
    fi
    echo "python: $PYTHON ($("$PYTHON" --version 2>&1)); $(nproc) cores"
    echo "size $SIZE, fidelity $FIDELITY, steps $STEPS, min time $MIN_TIME s, row limit $ROW_LIMIT s, limit $LIMIT s"
    echo "modes: $modes"
  } 2>&1 | tee "$LOG"
  budget=$(( LIMIT - RESERVE - ($(date +%s) - T0) ))
  [ "$budget" -gt 0 ] || { say "no time left for the rows (limit $LIMIT s, reserve $RESERVE s)" | tee -a "$LOG"; return 1; }
  say "rows within $budget s" | tee -a "$LOG"
  # SIGINT at the limit (the JSON holds every finished row), SIGKILL 10 s later.
  timeout -s INT -k 10 $(( LIMIT - 10 - ($(date +%s) - T0) )) \
    "$PYTHON" benchmarks/train_step.py --size "$SIZE" --fidelity "$FIDELITY" --model both --device "$DEVICE" \
      --modes "$modes" --steps "$STEPS" --min-time "$MIN_TIME" --row-limit "$ROW_LIMIT" --time-limit "$budget" \
      --keep-going --json "$OUT/train_step.json" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  [ -s "$OUT/train_step.json" ] || { say "no rows were written (exit $rc)" | tee -a "$LOG"; return 1; }
  if [ "$rc" != 0 ] && [ "$rc" != 3 ]; then  # cut short: the benchmark printed no table of its own
    { echo; "$PYTHON" benchmarks/train_step.py --summarize "$OUT/train_step.json"; } 2>&1 | tee -a "$LOG"
  fi
  say "done after $(( $(date +%s) - T0 )) s (benchmark exit $rc): $OUT" | tee -a "$LOG"
  # Interrupted at the limit (timeout's 124, or Python's 130 on SIGINT) still leaves a usable JSON.
  case $rc in 0|124|130) return 0 ;; *) return "$rc" ;; esac
}

main
