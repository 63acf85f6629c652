"""The shipped cohort manifests hold on any x86-64 CPU (tools/cohort_manifest.py).

Each profile's cohort is simulated twice, in parallel child processes with
empty template caches: once with this CPU's own code paths (AVX2 or AVX-512
loops in numpy, the CPU's OpenBLAS kernels, glibc with FMA) and once with the
oldest ones (SSE3 loops, Sandybridge kernels, no FMA; see
``dmrilib.simulate._portable.BASELINE_CPU_ENV``). Both must reproduce the
manifest byte for byte. Before the simulator used ``_portable``, the
baseline run changed 40 of the smoke cohort's files.
"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow]


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_cohort_matches_its_manifest_natively_and_on_baseline_x86_64(profile):
    tool = [sys.executable, str(ROOT / "tools" / "cohort_manifest.py"), "--profile", profile]
    runs = {name: subprocess.Popen(tool + extra, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
            for name, extra in (("native", []), ("baseline", ["--baseline"]))}
    for name, proc in runs.items():
        out, _ = proc.communicate(timeout=1200)
        assert proc.returncode == 0, f"{name} code paths:\n{out[-3000:]}"
        assert "matches" in out.splitlines()[-1]
