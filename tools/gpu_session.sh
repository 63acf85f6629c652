#!/usr/bin/env bash
# Both GPU measurements of issue 18 in one device call (benchmarks/GPU_BOOK.md): the book, then the
# training-step rows in whatever time the book leaves.
#
#   bash tools/gpu_session.sh [LIMIT_S]      # the whole call within LIMIT_S (default 570)
#
# A lease is 15 minutes of device time, a cold start included, and one call runs at most 10: two
# separate calls (book, then steps) fit only when the book is quick. Here the book runs first
# (tools/gpu_book.sh, resumable: a second call finishes what the first left), and the step rows
# (tools/gpu_step.sh, the most important first) get the time left, if at least STEP_MIN seconds.
# Between the two, tests/test_cuda.py (the CUDA paths, stacked folds included) within CUDA_TESTS_LIMIT
# seconds, when that leaves STEP_MIN for the rows.
# Call it again at once on the still-warm machine with the device time left: a finished book then
# costs only its rebuild (~30 s) and the rows get the rest.
#
# $OUT gets gpu_book.sh's six files and gpu_step.sh's two: the eight a call brings back. The
# verdict is printed last (the call's output tail), nothing more is written to $OUT.
#
# Environment: PROFILE (gpu), STEP_MIN (90), CUDA_TESTS_LIMIT (90; 0: no tests), BOOK_RESERVE (45:
# seconds of LIMIT_S kept back from the book for its wheel install and checks, which come before
# gpu_book.sh's own clock), PYTHON (python3), DMRI_SITE (/tmp/site), OUT; the
# variables of tools/gpu_book.sh (CORES, JOB_THREADS, WHEELS, PYTHON, ...) and tools/gpu_step.sh
# (SIZE, STACKS, ROW_LIMIT, MODES, ...) pass through.
# A CPU rehearsal: PROFILE=smoke SIZE=smoke STEPS=1 MIN_TIME=0 CUDA_VISIBLE_DEVICES= bash tools/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)

LIMIT=${1:-570}
PROFILE=${PROFILE:-gpu}
STEP_MIN=${STEP_MIN:-90}
BOOK_RESERVE=${BOOK_RESERVE:-45}
CUDA_TESTS_LIMIT=${CUDA_TESTS_LIMIT:-90}
PYTHON=$(command -v "${PYTHON:-python3}")
SITE=${DMRI_SITE:-/tmp/site}
PYTEST_LOG=$(mktemp /tmp/gpu-session-pytest.XXXX)
trap 'rm -f "$PYTEST_LOG"' EXIT
export OUT=${OUT:-$PWD/gpu-session-out}
mkdir -p "$OUT"

say() { echo "gpu_session: $*"; }
elapsed() { echo $(( $(date +%s) - T0 )); }

[ "$LIMIT" -gt "$BOOK_RESERVE" ] || { say "LIMIT_S $LIMIT leaves nothing after the book's reserve ($BOOK_RESERVE s)"; exit 2; }

bash tools/gpu_book.sh "$PROFILE" $(( LIMIT - BOOK_RESERVE ))
book=$?
book_s=$(elapsed)

# The CUDA paths' tests (tests/test_cuda.py: fast path, stacked folds eager and with CUDA graphs) before
# the rows time them; they import nibabel, which gpu_book.sh installed into DMRI_SITE.
left=$(( LIMIT - $(elapsed) ))
if [ "$CUDA_TESTS_LIMIT" -gt 0 ] && [ "$left" -ge $(( CUDA_TESTS_LIMIT + STEP_MIN )) ]; then
  t0=$(elapsed)
  PYTHONPATH=$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH} timeout -k 5 "$CUDA_TESTS_LIMIT" \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$PYTEST_LOG"
  cuda_note="exit ${PIPESTATUS[0]} after $(( $(elapsed) - t0 )) s: $(grep -E '(passed|failed|skipped|error)' "$PYTEST_LOG" | tail -1)"
else
  cuda_note="skipped: $left s left"
fi

left=$(( LIMIT - $(elapsed) ))
t0=$(elapsed)
if [ "$left" -ge "$STEP_MIN" ]; then
  # paper size needs no carried wheels; smoke and quick sizes read their profile, which imports nibabel
  PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} bash tools/gpu_step.sh "$left"
  step=$?
  step_note="exit $step after $(( $(elapsed) - t0 )) s"
else
  step=skipped
  step_note="skipped: $left s left, fewer than STEP_MIN=$STEP_MIN"
fi

say "book: exit $book after $book_s s ($([ "$book" = 0 ] && echo built || echo 'not finished: call again to resume'))"
say "CUDA tests: $cuda_note"
say "steps: $step_note"
say "total $(elapsed) s of $LIMIT; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
# The book decides: a finished book with cut-short rows still succeeded (the JSON holds every row run).
exit "$book"
