"""The Snakemake workflow: DAG of the paper profile (dry run) and the SLURM profile."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def _dry_run(profile: str, snakemake_profile: str, tmp_path) -> dict[str, int]:
    out = subprocess.run(
        [str(SNAKEMAKE), "-s", "workflow/Snakefile", "--profile", snakemake_profile, "-n", "--quiet", "rules",
         "--config", f"profile={profile}", f"results={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout, flags=re.M))
    return {k: int(v) for k, v in counts.items()}


@pytest.mark.parametrize("snakemake_profile", ["workflow/profiles/local", "workflow/profiles/slurm"])
def test_paper_profile_dag_has_168_training_jobs(tmp_path, snakemake_profile):
    counts = _dry_run("paper", snakemake_profile, tmp_path)
    assert counts["train"] == 24 * 7
    assert counts["evaluate"] == 24 * 7
    assert counts["baseline"] == 7
    assert counts["cohort"] == 1 and counts["aggregate"] == 1 and counts["figures"] == 1
    assert counts["groundtruth"] == 1


def test_quick_profile_dag_runs_every_configuration_once(tmp_path):
    counts = _dry_run("quick", "workflow/profiles/local", tmp_path)
    assert counts["train"] == 24 and counts["baseline"] == 1


def test_notebooks_have_parameters_kernelspec_and_no_outputs():
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata.get("kernelspec", {}).get("name") == "python3", path
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path


def test_run_notebook_types_parameters_like_papermill_and_runs_a_notebook(tmp_path):
    import nbformat

    sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
    try:
        from run_notebook import parse_value
    finally:
        sys.path.pop(0)
    assert [parse_value(v) for v in ("0", "2.5", "True", "None", "quick", "/tmp/x", "lsd512-sigmoid")] == \
        [0, 2.5, True, None, "quick", "/tmp/x", "lsd512-sigmoid"]

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("fold = 0\nname = ''", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("assert fold == 3 and name == 'dae'\nprint(fold * 2)")]
    nbformat.write(nb, tmp_path / "in.ipynb")
    run = subprocess.run([sys.executable, "workflow/scripts/run_notebook.py", str(tmp_path / "in.ipynb"),
                          str(tmp_path / "out.ipynb"), "-p", "fold", "3", "-p", "name", "dae"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert executed.cells[-1].outputs[0]["text"] == "6\n"
    # A failing cell fails the job.
    failed = subprocess.run([sys.executable, "workflow/scripts/run_notebook.py", str(tmp_path / "in.ipynb"),
                             str(tmp_path / "bad.ipynb"), "-p", "fold", "4"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert failed.returncode != 0 and "AssertionError" in failed.stderr + failed.stdout
