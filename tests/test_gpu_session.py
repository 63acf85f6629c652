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
        own = STAND_IN.replace("${SLEEP", "${" + env + "_SLEEP").replace("${EXIT", "${" + env + "_EXIT")
        (tools / name).write_text(own)
    # the Python that would run tests/test_cuda.py
    python = tools / "python"
    python.write_text(STAND_IN.replace('exit "${EXIT:-0}"', 'echo "5 passed in 9.1s"; exit "${PYTEST_EXIT:-0}"'))
    python.chmod(0o755)
    return tools.parent


def _session(repo: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    out = repo / "out"
    (out / "calls.txt").unlink(missing_ok=True)
    env = {"CUDA_TESTS_LIMIT": "0", "PYTHON": str(repo / "tools" / "python"), **env}
    proc = subprocess.run(["bash", "tools/gpu_session.sh", *args], cwd=repo, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "OUT": str(out), **env})
    calls = (out / "calls.txt").read_text().splitlines() if (out / "calls.txt").exists() else []
    # each call as "<script name> <arguments>"
    return proc, [" ".join([Path(c.split()[0]).name, *c.split()[1:]]) for c in calls]


def test_the_rows_get_the_time_the_book_leaves(repo):
    proc, calls = _session(repo, "200", PROFILE="smoke", BOOK_RESERVE="30")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    book, step = calls
    assert book == "gpu_book.sh smoke 170"  # LIMIT_S less the reserve for installing and checking
    assert step.startswith("gpu_step.sh ") and 195 <= int(step.split()[1]) <= 200
    assert "book: exit 0" in proc.stdout and "built" in proc.stdout


def test_the_cuda_tests_run_between_the_book_and_the_rows_when_time_allows(repo):
    proc, calls = _session(repo, "300", CUDA_TESTS_LIMIT="60", STEP_MIN="90")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert calls[0].startswith("gpu_book.sh") and calls[2].startswith("gpu_step.sh")
    assert calls[1] == "python -m pytest -q -p no:cacheprovider tests/test_cuda.py"
    assert "CUDA tests: exit 0" in proc.stdout and "5 passed" in proc.stdout
    # too little time for both: the rows come first
    proc, calls = _session(repo, "140", CUDA_TESTS_LIMIT="60", STEP_MIN="90")
    assert [c.split()[0] for c in calls] == ["gpu_book.sh", "gpu_step.sh"]
    assert "CUDA tests: skipped" in proc.stdout


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
