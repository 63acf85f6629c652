"""tools/gpu_session.sh: the book first, the training-step rows in the time it leaves (benchmarks/GPU_BOOK.md).

The two scripts it runs are replaced by stand-ins that record their arguments
and take a given time, so the tests check only the wrapper's arithmetic and
verdict; tools/gpu_book.sh and tools/gpu_step.sh have their own CPU rehearsals.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

STAND_IN = """#!/usr/bin/env bash
echo "$0 $*" >> "$OUT/calls.txt"
sleep "${SLEEP:-0}"
exit "${EXIT:-0}"
"""


@pytest.fixture
def repo(tmp_path):
    """A folder with the wrapper and stand-ins for the two scripts it runs."""
    tools = tmp_path / "repo" / "tools"
    tools.mkdir(parents=True)
    shutil.copy(ROOT / "tools" / "gpu_session.sh", tools)
    for name, env in (("gpu_book.sh", "BOOK"), ("gpu_step.sh", "STEP")):
        (tools / name).write_text(STAND_IN.replace("${SLEEP", "${" + env + "_SLEEP").replace("${EXIT", "${" + env + "_EXIT"))
    return tools.parent


def _session(repo: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    out = repo / "out"
    proc = subprocess.run(["bash", "tools/gpu_session.sh", *args], cwd=repo, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "OUT": str(out), **env})
    calls = (out / "calls.txt").read_text().splitlines() if (out / "calls.txt").exists() else []
    return proc, [c.split("/")[-1] for c in calls]


def test_the_rows_get_the_time_the_book_leaves(repo):
    proc, calls = _session(repo, "200", PROFILE="smoke", BOOK_RESERVE="30")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    book, step = calls
    assert book == "gpu_book.sh smoke 170"  # LIMIT_S less the reserve for installing and checking
    assert step.startswith("gpu_step.sh ") and 195 <= int(step.split()[1]) <= 200
    assert "book: exit 0" in proc.stdout and "built" in proc.stdout


def test_a_long_book_leaves_no_rows_and_its_exit_status_is_the_verdict(repo):
    proc, calls = _session(repo, "100", BOOK_SLEEP="2", BOOK_EXIT="124", STEP_MIN="99")
    assert proc.returncode == 124
    assert calls == ["gpu_book.sh gpu 55"]
    assert "skipped" in proc.stdout and "call again to resume" in proc.stdout


def test_cut_short_rows_do_not_fail_a_built_book(repo):
    proc, calls = _session(repo, "120", STEP_EXIT="130")
    assert proc.returncode == 0 and len(calls) == 2
    assert "steps: exit 130" in proc.stdout


def test_a_limit_within_the_reserve_is_refused_before_anything_runs(repo):
    proc, calls = _session(repo, "40")
    assert proc.returncode == 2 and calls == []
    assert "reserve" in proc.stdout
