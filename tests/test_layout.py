"""dmrilib.layout: one owner for every path under results/<profile>/."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dmrilib import pipeline
from dmrilib.config import load_profile
from dmrilib.integrity import save_npy
from dmrilib.layout import ResultsLayout, RunFiles

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dmrilib"


# --------------------------------------------------------------------------- the layout's paths

def test_paths_of_a_profile_are_those_the_jobs_have_always_written(tmp_path):
    layout = ResultsLayout.of(load_profile("smoke"), tmp_path)
    assert layout.root == tmp_path / "smoke"
    assert ResultsLayout.of("smoke", tmp_path) == layout  # a name or a Profile

    def rel(path):
        return layout.relative(path).as_posix()

    expected = {
        layout.cohort: "cohort",
        layout.cohort_description: "cohort/dataset_description.json",
        layout.study_file: "cohort/study.json",
        layout.prepared: "prepared",
        layout.prepared_meta: "prepared/meta.json",
        layout.folds_file: "folds.json",
        layout.notebook("aggregate"): "notebooks/aggregate.ipynb",
        layout.groundtruth_record: "groundtruth/groundtruth.json",
        layout.groundtruth_masks: "groundtruth/lesion-pipeline.npy",
        layout.groundtruth_subjects: "groundtruth/subjects.csv",
        layout.groundtruth_timings: "groundtruth/timings.csv",
        layout.segmentation: "groundtruth/segmentation",
        layout.run("dae", "lsd16-linear", 0): "runs/dae/lsd16-linear/fold-0",
        layout.table("table1"): "tables/table1.csv",
        layout.summary: "tables/summary.json",
        layout.figure("roc_curves"): "figures/roc_curves.png",
        layout.figures_record: "figures/figures.json",
        layout.cohort_qc: "figures/cohort_qc.csv",
        layout.export_table: "figures/export.csv",
        layout.export_record: "figures/export.json",
        layout.overlay("sub-P01"): "figures/overlays/sub-P01.png",
        layout.anomaly_derivatives: "derivatives/anomaly",
        layout.ablation: "ablation",
        layout.sweep: "sweep",
    }
    assert {rel(path): want for path, want in expected.items()} == {want: want for want in expected.values()}

    run = layout.run_files("recdisc", "mix-mix-half", 2)
    assert run == RunFiles(layout.run("recdisc", "mix-mix-half", 2))
    names = {"checkpoint_best": "checkpoint-best.pt", "checkpoint_last": "checkpoint-last.pt",
             "run_record": "run.json", "train_log": "log.csv", "maps_test": "maps-test.npy",
             "maps_val": "maps-val.npy", "maps_record": "maps.json", "eval_record": "eval.json",
             "eval_dice": "eval-dice.csv", "eval_auroc": "eval-auroc.csv",
             "eval_dice_pipeline": "eval-dice-pipeline.csv", "eval_auroc_pipeline": "eval-auroc-pipeline.csv"}
    for attribute, name in names.items():
        assert rel(getattr(run, attribute)) == f"runs/recdisc/mix-mix-half/fold-2/{name}"
    assert rel(run.notebook("evaluate")) == "runs/recdisc/mix-mix-half/fold-2/evaluate.ipynb"


def test_fold_is_an_integer_or_a_snakemake_wildcard():
    layout = ResultsLayout.of("quick", "results")
    assert layout.run("dae", "lsd16-linear", np.int64(3)) == layout.run("dae", "lsd16-linear", "3")
    assert layout.run("dae", "lsd16-linear", "3").name == "fold-3"
    pattern = layout.run_files("{model}", "{variant}", "{fold}").eval_record
    assert pattern.as_posix() == "results/quick/runs/{model}/{variant}/fold-{fold}/eval.json"


def test_pipeline_wrappers_agree_with_the_layout(tmp_path):
    profile = load_profile("smoke")
    layout = ResultsLayout.of(profile, tmp_path)
    assert pipeline.results_root(profile, tmp_path) == layout.root
    for model, variant, fold in [*profile.runs(), ("baseline", "normative", 0)]:
        assert pipeline.run_dir(profile, model, variant, fold, tmp_path) == layout.run(model, variant, fold)


def test_pipeline_masks_are_none_before_the_groundtruth_job_and_in_record_order(tmp_path):
    layout = ResultsLayout(tmp_path / "tiny")
    assert layout.read_groundtruth_record() is None and layout.read_pipeline_masks(["sub-P01"]) is None
    layout.groundtruth.mkdir(parents=True)
    layout.groundtruth_record.write_text('{"subjects": ["sub-P02", "sub-P01"]}')
    assert layout.read_groundtruth_record() is None  # no masks yet
    masks = np.zeros((2, 3, 3, 3), np.uint8)
    masks[0, 0, 0, 0] = 1
    save_npy(layout.groundtruth_masks, masks)
    got = layout.read_pipeline_masks(["sub-P01", "sub-P02"])
    assert got.dtype == bool and not got[0].any() and got[1, 0, 0, 0]
    with pytest.raises(ValueError, match="no pipeline mask for"):
        layout.read_pipeline_masks(["sub-P03"])


def test_layout_imports_neither_numpy_nor_pandas_nor_torch():
    # the Snakefile imports it when Snakemake reads the workflow
    code = ("import sys, dmrilib.layout; "
            "print(sorted(m for m in ('numpy', 'pandas', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- no other module spells the layout

#: Folders of the results layout (and the run folder's prefix) that only dmrilib.layout may join to a path.
_FOLDERS = ("tables", "runs", "figures", "prepared", "groundtruth", "notebooks", "cohort", "segmentation",
            "overlays", "ablation", "sweep")
#: Modules allowed to spell them: the layout itself, and the simulator (it writes BIDS datasets, not results).
_ALLOWED = {"dmrilib/layout.py"}
_ALLOWED_PACKAGES = ("dmrilib/simulate/",)


def _names_a_folder(node, *, joined: bool = False) -> bool:
    """A string constant that is a layout folder, or an f-string holding ``/<folder>/``.

    ``joined``: the string is joined to a path, so a run folder ``f"fold-{k}"`` counts too (not a
    record's key ``f"fold-{k}"``).
    """
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value in _FOLDERS
    if isinstance(node, ast.JoinedStr):
        text = "{}".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
        return (joined and text.startswith("fold-")) or any(f"/{folder}/" in text or text.startswith(f"{folder}/")
                                                            for folder in _FOLDERS)
    return False


def _path_spellings(tree) -> list[int]:
    """Lines that join a layout folder to a path: ``x / "tables"``, ``"runs" / x``, ``x.joinpath("figures")``,
    ``f"{root}/prepared/meta.json"``, ``x / f"fold-{k}"``."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and (
                _names_a_folder(node.left, joined=True) or _names_a_folder(node.right, joined=True)):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "joinpath" and any(
                _names_a_folder(a) for a in node.args):
            lines.append(node.lineno)
        elif isinstance(node, ast.JoinedStr) and _names_a_folder(node):
            lines.append(node.lineno)
    return sorted(set(lines))


def test_the_path_check_finds_what_it_should():
    code = 'a = root / "tables"\nb = "runs" / x\nc = root.joinpath("figures", n)\nd = f"{R}/prepared/meta.json"\n' \
           'e = run / f"fold-{k}"\nf = "tables"\ng = root / "derivatives"\nh = {"tables": 1, f"fold-{k}": 2}\n'
    assert _path_spellings(ast.parse(code)) == [1, 2, 3, 4, 5]


def test_no_module_but_layout_builds_results_paths_by_string():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in _ALLOWED or rel.startswith(_ALLOWED_PACKAGES):
            continue
        lines = path.read_text().splitlines()
        found += [f"{rel}:{n}: {lines[n - 1].strip()}" for n in _path_spellings(ast.parse(path.read_text()))]
    assert not found, "use dmrilib.layout.ResultsLayout instead:\n" + "\n".join(found)


def test_snakefile_takes_its_paths_from_the_layout():
    text = (ROOT / "workflow" / "Snakefile").read_text()
    assert "from dmrilib.layout import ResultsLayout" in text
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())  # no "#" inside its strings
    folders = "|".join(_FOLDERS)
    spelled = re.findall(rf"""(?:/\s*["'](?:{folders})["']|["'](?:{folders})["']\s*/|/(?:{folders})/|fold-\{{)""", code)
    assert not spelled, f"results paths spelled in the Snakefile: {spelled}"
