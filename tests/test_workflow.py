"""The Snakemake workflow: DAG of the paper profile (dry run) and the SLURM profile, jobs' commands, re-runs."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
    # The kernel's transport warning was printed by every job (61 lines per make book).
    assert "without encryption" not in run.stdout + run.stderr + failed.stdout + failed.stderr


def _run_notebook_module():
    sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
    try:
        import run_notebook
    finally:
        sys.path.pop(0)
    return run_notebook


def test_resumable_stage_resumes_only_from_the_same_settings(tmp_path):
    reset_stage = _run_notebook_module().reset_stage
    run = tmp_path / "fold-0"
    assert not reset_stage(run, "aaa")  # a new folder
    (run / "checkpoint-last.pt").write_bytes(b"weights")
    assert not reset_stage(run, "aaa") and (run / "checkpoint-last.pt").is_file()  # an interrupted run resumes
    (run / "sub").mkdir()
    assert reset_stage(run, "bbb")  # edited settings: retrain, do not resume another configuration
    assert sorted(p.name for p in run.iterdir()) == [".workflow-stage"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "checkpoint-last.pt").write_bytes(b"weights")
    assert reset_stage(tmp_path / "old", "aaa")  # no record: its settings are unknown


@pytest.fixture(scope="module")
def file_profile_commands(tmp_path_factory):
    """Shell commands of a dry run with a profile file named like a shipped profile (quick.yaml)."""
    work = tmp_path_factory.mktemp("file-profile")
    data = yaml.safe_load((ROOT / "configs" / "quick.yaml").read_text())
    data["variants"] = {"dae": ["lsd16-linear"], "recdisc": ["mix-mix-half"]}
    path = work / "quick.yaml"
    path.write_text(yaml.safe_dump(data))
    out = subprocess.run(
        [str(SNAKEMAKE), "-s", "workflow/Snakefile", "--profile", "workflow/profiles/local", "-n", "-p",
         "--config", f"profile={path}", f"results={work / 'results'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    commands = [line for line in out.stdout.splitlines() if "run_notebook.py" in line]
    return path, commands


def test_load_profile_reads_a_file_named_like_a_shipped_profile(file_profile_commands):
    from dmrilib.config import load_profile

    path, _ = file_profile_commands
    profile = load_profile(path)
    assert profile.name == "quick" and profile.variants["dae"] == ("lsd16-linear",)
    assert load_profile("quick").variants["dae"] != profile.variants["dae"]


def test_file_profile_reaches_every_job_as_its_path(file_profile_commands):
    path, commands = file_profile_commands
    folds = len(yaml.safe_load(path.read_text())["folds"])
    assert sum("notebooks/train.ipynb" in c for c in commands) == 2 * folds
    assert len(commands) > 2 * folds
    # Not `-p profile quick`: that loaded configs/quick.yaml and ignored the file's settings.
    assert all(f" -p profile {path.resolve()} " in c for c in commands), commands[0]


def test_jobs_use_the_interpreter_that_runs_snakemake(file_profile_commands):
    # `snakemake` called without .venv/bin on PATH: a bare `python` would be another interpreter or none.
    _, commands = file_profile_commands
    venv_python = rf"'?{re.escape(str(SNAKEMAKE.parent))}/python[\d.]*'? workflow/scripts/run_notebook.py "
    assert all(re.search(venv_python, c) for c in commands), commands[0]


def test_make_unlock_runs_snakemake_unlock_for_the_profile():
    out = subprocess.run(["make", "-n", "--no-print-directory", "unlock", "PROFILE=smoke", "RESULTS=/tmp/r"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if "snakemake" in l)
    assert "--unlock" in line and "profile=smoke" in line and "results=/tmp/r" in line


@pytest.mark.slow
def test_forced_rerun_of_the_cohort_job_works_without_venv_on_path(tmp_path):
    """`snakemake --forcerun cohort` over a finished cohort: Snakemake first deletes the job's outputs
    (cohort/dataset_description.json, prepared/meta.json), then the job completes the same cohort."""
    from dmrilib import pipeline
    from dmrilib._atomic import _HOST
    from dmrilib.config import load_profile
    from dmrilib.simulate import verify_manifest, write_manifest

    results = tmp_path / "results"
    root = results / "smoke"
    pipeline.run_cohort(load_profile("smoke"), results, progress=False)
    write_manifest(root / "cohort", tmp_path / "cohort.sha256")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = root / f".folds.json.{dead.pid}@{_HOST}.a1b2c3d4.tmp.json"  # left by a killed job
    live = root / f".folds.json.{os.getpid()}@{_HOST}.e5f6g7h8.tmp.json"  # being written by a live process
    stale.write_text("{}")
    live.write_text("{}")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if Path(p).resolve() != SNAKEMAKE.parent.resolve())
    assert shutil.which("papermill", path=env["PATH"]) != str(SNAKEMAKE.parent / "papermill")
    out = subprocess.run(
        [str(SNAKEMAKE), "-s", "workflow/Snakefile", "--profile", "workflow/profiles/local", "--cores", "2",
         "--forcerun", "cohort", "--config", "profile=smoke", f"results={results}", "--",
         str(root / "prepared" / "meta.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**env, "DMRI_PROGRESS": "0"},
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert verify_manifest(root / "cohort", tmp_path / "cohort.sha256") == []
    assert json.loads((root / "prepared" / "meta.json").read_text())["subjects"]
    assert not stale.exists() and live.exists()
    assert "without encryption" not in out.stderr
