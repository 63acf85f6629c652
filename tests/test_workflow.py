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


def _profile_file(folder: Path, shipped: str, **changes) -> Path:
    """A copy of a shipped profile, with some top-level keys and `train` settings changed, as <shipped>.yaml."""
    data = yaml.safe_load((ROOT / "configs" / f"{shipped}.yaml").read_text())
    data["train"].update(changes.pop("train", {}))
    data.update(changes)
    path = folder / f"{shipped}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("stack_folds, stacks", [
    (7, ["train_stack_0_1_2_3_4_5_6"]),
    (3, ["train_stack_0_1_2", "train_stack_3_4_5", "train_stack_6"]),  # the last group is smaller
])
def test_stack_folds_trains_the_dae_folds_of_each_variant_in_groups(tmp_path, stack_folds, stacks):
    counts = _dry_run(str(_profile_file(tmp_path, "paper", train={"stack_folds": stack_folds})),
                      "workflow/profiles/local", tmp_path / "results")
    assert {rule: n for rule, n in counts.items() if rule.startswith("train_stack_")} == {s: 12 for s in stacks}
    assert counts["train"] == 12 * 7  # RecDiscNet: one job per run
    assert counts["evaluate"] == 24 * 7 and counts["baseline"] == 7


def test_stacks_hold_only_folds_of_one_size_when_the_controls_do_not_split_evenly(tmp_path):
    # 30 controls in 7 contiguous folds (the paper profile's split): folds 1 and 2 validate on 5
    # subjects, the others on 4 (crossval.fold_sizes)
    data = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    data["cohort"]["n_healthy"] = 30
    data["train"]["stack_folds"] = 7
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(data))
    counts = _dry_run(str(path), "workflow/profiles/local", tmp_path / "results")
    assert {rule: n for rule, n in counts.items() if rule.startswith("train_stack_")} == {
        "train_stack_0_3_4_5_6": 12, "train_stack_1_2": 12}


@pytest.fixture(scope="module")
def stacked_commands(tmp_path_factory):
    """A dry run through the SLURM profile of three folds stacked two at a time: rule -> (resources, commands)."""
    work = tmp_path_factory.mktemp("stacked")
    path = _profile_file(work, "quick", train={"stack_folds": 2}, folds=[0, 1, 2],
                         variants={"dae": ["lsd16-linear"], "recdisc": ["mix-mix-half"]})
    out = subprocess.run(
        [str(SNAKEMAKE), "-s", "workflow/Snakefile", "--profile", "workflow/profiles/slurm", "-n", "-p",
         "--config", f"profile={path}", f"results={work / 'results'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    jobs: dict[str, list[tuple[str, str, str]]] = {}
    rule = resources = threads = None
    for line in out.stdout.splitlines():
        if line.startswith("rule "):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:"):
            resources = line.strip()
        elif line.strip().startswith("threads:"):
            threads = line.strip()
        elif "run_notebook.py" in line and "notebooks/train.ipynb" in line:
            jobs.setdefault(rule, []).append((resources, threads, line))
    return work / "results" / "quick" / "runs", jobs


def _copies(command: str, first: Path) -> list[str]:
    """Where a stacked train job's command copies the executed notebook of the first fold's folder."""
    found = re.search(rf' && for copy in (.*); do cp {re.escape(str(first))}/train.ipynb "\$copy"; done$', command)
    return found.group(1).replace("'", "").split()


def test_a_stacked_train_job_trains_its_folds_in_their_run_folders(stacked_commands):
    runs, jobs = stacked_commands
    assert sorted(jobs) == ["train", "train_stack_0_1", "train_stack_2"]
    assert all("-p model recdisc" in command for *_, command in jobs["train"]) and len(jobs["train"]) == 3
    ((_, _, pair),) = jobs["train_stack_0_1"]
    folders = [runs / "dae" / "lsd16-linear" / f"fold-{k}" for k in (0, 1)]
    assert " -p model dae -p variant lsd16-linear -p folds 0,1 " in pair and " -p fold " not in pair
    for folder in folders:  # each run folder is the job's own, resumable with the train settings
        assert f"--clean-temp '{folder}'" in pair and f"--stage-dir '{folder}'" in pair
    # the executed notebook goes to the first fold's folder, then is copied to the others
    assert f"notebooks/train.ipynb {folders[0]}/train.ipynb " in pair
    assert _copies(pair, folders[0]) == [f"{folders[1]}/train.ipynb"]
    ((_, _, single),) = jobs["train_stack_2"]
    assert " -p folds 2 " in single and _copies(single, runs / "dae" / "lsd16-linear" / "fold-2") == []


def test_stacked_train_jobs_get_the_train_rule_resources_of_the_slurm_profile(stacked_commands):
    # set-resources/set-threads name rules; the stack rules' names depend on the folds
    _, jobs = stacked_commands
    train = {(resources, threads) for resources, threads, _ in jobs["train"]}
    assert len(train) == 1 and "mem_mb=32000" in next(iter(train))[0] and ("threads: 8" in next(iter(train)))
    for rule in ("train_stack_0_1", "train_stack_2"):
        assert {(resources, threads) for resources, threads, _ in jobs[rule]} == train


def test_run_notebook_passes_stacked_folds_as_text_and_one_fold_as_a_number():
    # the train notebook reads `folds` with str(): "-p folds 3" arrives as 3
    parse_value = _run_notebook_module().parse_value
    assert parse_value("0,1,2") == "0,1,2" and parse_value("3") == 3


@pytest.mark.slow
def test_a_stacked_train_job_trains_resumable_run_folders_that_keep_their_notebook(tmp_path):
    """Snakemake runs a stack of two folds on a tiny prepared cohort: both run folders are complete.

    Every run folder of the job is a resumable stage (`--stage-dir`, once per folder): a stale
    checkpoint in the first one is emptied, not resumed.
    """
    import nbformat

    from _io_fixtures import make_bids
    from dmrilib.config import load_profile
    from dmrilib.dataset import prepare_cohort
    from dmrilib.layout import ResultsLayout

    profile_file = tmp_path / "tiny.yaml"
    profile_file.write_text(yaml.safe_dump({
        "name": "tiny", "seed": 0, "cohort": {}, "prepare": {"grid": [16, 16, 16]}, "model": {"dae_widths": [4, 8, 16]},
        "train": {"n_folds": 2, "epochs": 2, "device": "cpu", "copies_per_subject": 1, "stack_folds": 2},
        "evaluate": {}, "folds": [0, 1], "variants": {"dae": ["lsd16-linear"], "recdisc": []}}))
    layout = ResultsLayout.of(load_profile(profile_file), tmp_path / "results")
    subjects = (("H01", "healthy"), ("H02", "healthy"), ("P01", "patient"))
    prepare_cohort(make_bids(tmp_path / "bids", subjects), load_profile(profile_file).prepare, layout.prepared,
                   progress=False)
    layout.cohort_description.parent.mkdir(parents=True)
    layout.cohort_description.write_text("{}")  # the cohort job's other output: the job is done
    runs = [layout.run("dae", "lsd16-linear", f) for f in (0, 1)]
    runs[0].mkdir(parents=True)
    (runs[0] / "checkpoint-last.pt").write_bytes(b"another configuration's")  # no settings record: emptied
    out = subprocess.run(
        [str(SNAKEMAKE), "-s", "workflow/Snakefile", "--profile", "workflow/profiles/local", "--cores", "2",
         "--config", f"profile={profile_file}", f"results={tmp_path / 'results'}", "--",
         *(str(run / "run.json") for run in runs)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "train_stack_0_1" in out.stdout + out.stderr and "emptied" in out.stdout + out.stderr
    stamps = set()
    for run in runs:
        assert all((run / name).is_file() for name in ("run.json", "checkpoint-last.pt", "maps.json", "log.csv"))
        stamps.add((run / ".workflow-stage").read_text())  # each folder resumable with the train settings
        notebook = nbformat.read(run / "train.ipynb", as_version=4)
        assert any('folds = "0,1"' in cell.source for cell in notebook.cells)  # the job's executed notebook
    assert len(stamps) == 1
