"""Training across torch's CPU code paths: identical where the code path is, within tolerance elsewhere.

Runs ``benchmarks/isa_drift.py`` on the smoke profile (one DAE, 2 epochs):
natively, pinned to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``)
and on older code (``AVX``/``default``), each in its own process. The
README's policy is checked: the same code path gives the same bytes, and
another one moves the maps by far less than the noise of training, which is
why no other test compares training bytes across machines.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow]


def test_training_drift_between_cpu_code_paths_is_within_the_stated_tolerance(tmp_path):
    out = tmp_path / "drift.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "isa_drift.py"), "--profile", "smoke", "--runs", "dae:lsd16-linear",
         "--settings", "native", "avx2", "avx", "--out", str(tmp_path / "work"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(out.read_text())
    rows = {r["setting"]: r for r in record["rows"]}
    assert rows["native"]["weights_max_rel"] == 0.0
    if record["cpu"].get("torch_cpu_capability") == "AVX2":
        # Pinning what this CPU does anyway changes nothing, byte for byte.
        assert rows["avx2"]["weights_max_rel"] == 0.0 and rows["avx2"]["maps_rel_l2"] == 0.0
    for setting in ("avx2", "avx"):
        assert rows[setting]["maps_rel_l2"] < 1e-2, rows[setting]
        assert abs(rows[setting]["auroc"] - rows["native"]["auroc"]) < 0.05, rows[setting]
