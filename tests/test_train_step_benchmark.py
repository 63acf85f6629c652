"""The training-step benchmark (``benchmarks/train_step.py``) on the CPU at smoke size.

The GPU numbers it exists for come from ``tools/gpu_step.sh`` on a lent
machine (benchmarks/GPU_BOOK.md); here its rows, their arithmetic (a stack
of K networks trains K batches per step, with K networks' FLOP) and its
JSON are checked in process, in a few seconds.
"""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_step_benchmark", ROOT / "benchmarks" / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_reference_fast_and_a_stack_of_two_daes_give_consistent_rows_and_json(bench, tmp_path, capsys):
    out = tmp_path / "step.json"
    rows = bench.main(["--size", "smoke", "--model", "dae", "--steps", "1", "--device", "cpu", "--threads", "2",
                       "--modes", "reference,fast,stack", "--stack", "2", "--json", str(out)])
    assert [r["mode"] for r in rows] == ["reference", "fast", "stack-2"]
    ref, fast, stack = rows
    for r in rows:
        assert r["status"] == "ok" and r["model"] == "dae" and r["size"] == "smoke"
        assert math.isfinite(r["step_s"]) and r["step_s"] > 0 and r["timed_steps"] == 1
        assert r["samples_per_s"] == pytest.approx(r["stack"] * bench.BATCH / r["step_s"])
        assert r["tflops"] == pytest.approx(r["flop_per_step"] / r["step_s"] / 1e12)
        assert r["speedup_vs_reference"] == pytest.approx(r["samples_per_s"] / ref["samples_per_s"])
        assert r["paper_grid_device_hours"] is None  # paper size only
        # every row records its settings; on a CPU the fast path is fp32, default layout, unfused Adam
        assert (r["precision"], r["channels_last"], r["fused_adam"], r["compile"], r["cudnn_benchmark"]) == (
            "fp32", False, False, False, False)
    # one network's FLOP is counted once (the reference); a stack of 2 does twice the work per step
    assert ref["flop_counted"] > 0 and fast["flop_counted"] is None and stack["flop_counted"] is None
    assert fast["flop_per_step"] == ref["flop_per_step"]
    assert stack["flop_per_step"] == 2 * ref["flop_per_step"] and stack["stack"] == 2
    assert stack["parameters"] == ref["parameters"]
    record = json.loads(out.read_text())
    assert record["peak_kind"] == "fp32" and record["matmul_peak_tflops"] > 0
    assert record["results"] == json.loads(json.dumps(rows))
    printed = capsys.readouterr().out
    assert "stack-2" in printed and "| dae | code | stack-2 |" in printed


def test_rows_past_the_time_limit_are_recorded_as_skipped_and_summarized(bench, tmp_path, capsys):
    out = tmp_path / "step.json"
    rows = bench.main(["--size", "smoke", "--model", "both", "--device", "cpu", "--time-limit", "0",
                       "--modes", "dae:reference,recdisc:fast+cudnn+compile=reduce-overhead", "--json", str(out)])
    assert [(r["model"], r["mode"], r["status"]) for r in rows] == [
        ("dae", "reference", "skipped: time limit reached"),
        ("recdisc", "fast+cudnn+compile=reduce-overhead", "skipped: time limit reached")]
    assert rows[1]["compile_mode"] == "reduce-overhead" and rows[1]["cudnn_benchmark"] is True
    capsys.readouterr()
    assert bench.main(["--summarize", str(out)]) == json.loads(out.read_text())["results"]
    assert "| recdisc | code | fast+cudnn+compile=reduce-overhead | - |" in capsys.readouterr().out


def test_modes_expand_in_order_and_bad_modes_say_what_to_write(bench):
    modes = bench.parse_modes("reference,fast-compile,stack+cudnn", stacks=(4, 7), compile_mode="reduce-overhead")
    assert [m.name for _, m in modes] == ["reference", "fast+compile=reduce-overhead", "stack-4+cudnn", "stack-7+cudnn"]
    # without model prefixes rows go model by model (stack modes for the DAE only) ...
    plan = bench._plan(modes, ("dae", "recdisc"), ("code",))
    assert [(m, x.name) for _, m, x in plan] == [
        ("dae", "reference"), ("dae", "fast+compile=reduce-overhead"), ("dae", "stack-4+cudnn"),
        ("dae", "stack-7+cudnn"), ("recdisc", "reference"), ("recdisc", "fast+compile=reduce-overhead")]
    # ... with them, in the order given
    plan = bench._plan(bench.parse_modes("dae:reference,recdisc:reference,fast"), ("dae", "recdisc"), ("code",))
    assert [(m, x.name) for _, m, x in plan] == [("dae", "reference"), ("recdisc", "reference"),
                                                 ("dae", "fast"), ("recdisc", "fast")]
    for text, message in (("reference+cudnn", "takes no options"), ("recdisc:stack-2", "only the DAE"),
                          ("stack", "--stack K"), ("fast+compile=fastest", "unknown option"),
                          ("dae:quick", "unknown mode"), ("vae:fast", "unknown model")):
        with pytest.raises(ValueError, match=message):
            bench.parse_modes(text)


def test_stacked_paper_grid_hours_count_stacks_of_folds(bench):
    one = bench._paper_hours("dae", 0.01, "code")
    assert bench._paper_hours("dae", 0.01, "code", stack=7) == pytest.approx(one / 7)
    assert bench._paper_hours("dae", 0.01, "code", stack=4) == pytest.approx(one * 2 / 7)  # 7 folds: 4 + 3


def test_a_failed_row_fails_the_run_but_timed_out_and_skipped_rows_do_not(bench):
    ok = {"status": "ok"}
    assert bench.exit_status([ok, {"status": "timed out after 100 s"}, {"status": "skipped: time limit reached"}]) == 0
    assert bench.exit_status([ok, {"status": "failed: ModuleNotFoundError: No module named 'nibabel'"}]) == 3
    assert bench.exit_status([]) == 0
