"""Re-running the pipeline's jobs: after Snakemake deleted their outputs, after a kill, after a change.

Snakemake deletes a job's declared outputs before it runs the job again (a
forced re-run, edited settings, an interrupted run), so every job must work
over what the previous run left. The jobs are called here as the notebooks
call them, on a reduced smoke profile (one configuration per model).
"""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dmrilib import pipeline
from dmrilib._atomic import _HOST, atomic_path, remove_stale_temp
from dmrilib.config import PROFILES_DIR, load_profile
from dmrilib.simulate import simulate_cohort, verify_manifest, write_manifest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.xdist_group("pipeline_reruns")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke profile with one configuration per model, as a file, and its cohort + ground truth."""
    work = tmp_path_factory.mktemp("reruns")
    data = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    data["variants"] = {"dae": ["lsd16-linear"], "recdisc": ["normal-directional-full"]}
    (work / "smoke.yaml").write_text(yaml.safe_dump(data))
    profile = load_profile(work / "smoke.yaml")
    results = work / "results"
    pipeline.run_cohort(profile, results, progress=False)
    write_manifest(results / "smoke" / "cohort", work / "cohort.sha256")
    return profile, results, work


# --------------------------------------------------------------------------- cohort

def test_cohort_job_reruns_after_snakemake_deleted_its_outputs(smoke):
    profile, results, work = smoke
    root = results / "smoke"
    meta = json.loads((root / "prepared" / "meta.json").read_text())
    # What Snakemake does before a forced re-run: delete the declared outputs.
    (root / "cohort" / "dataset_description.json").unlink()
    (root / "prepared" / "meta.json").unlink()
    pipeline.run_cohort(profile, results, progress=False)
    assert verify_manifest(root / "cohort", work / "cohort.sha256") == []
    again = json.loads((root / "prepared" / "meta.json").read_text())
    assert again["config_hash"] == meta["config_hash"] and again["subjects"] == meta["subjects"]


def test_partly_written_cohort_is_completed_bit_identically(smoke):
    profile, results, work = smoke
    cohort = work / "partial-copy"
    shutil.copytree(results / "smoke" / "cohort", cohort)
    (cohort / "dataset_description.json").unlink()
    (cohort / "sub-P01" / "ses-pre" / "dwi" / "sub-P01_ses-pre_dwi.nii.gz").unlink()
    shutil.rmtree(cohort / "sub-H02")
    # Not a pipeline folder (no replace): completing this very cohort is still safe.
    simulate_cohort(profile.cohort, cohort, progress=False, n_jobs=1)
    assert verify_manifest(cohort, work / "cohort.sha256") == []


TINY = dict(n_healthy=1, n_patients=0)


def test_cohort_of_another_config_is_replaced_only_when_asked(smoke, tmp_path):
    profile, _, _ = smoke
    config = dataclasses.replace(profile.cohort, **TINY)
    out = simulate_cohort(config, tmp_path / "cohort", progress=False)
    other = dataclasses.replace(config, seed=config.seed + 1)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(ValueError, match="another config .* Remove it or choose another output folder"):
        simulate_cohort(other, out, progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    # After an edit of the cohort section, the workflow replaces its own cohort
    # (and Snakemake has deleted dataset_description.json already).
    (out / "dataset_description.json").unlink()
    simulate_cohort(other, out, progress=False, replace=True)
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["SimulationConfig"]["seed"] == other.seed
    assert not list(tmp_path.glob(".cohort.old-*")) and not (tmp_path / "cohort.partial").exists()


def test_a_folder_that_is_no_simulated_cohort_is_never_deleted(smoke, tmp_path):
    profile, _, _ = smoke
    mine = tmp_path / "cohort"
    (mine / "sub-01" / "dwi").mkdir(parents=True)
    (mine / "sub-01" / "dwi" / "sub-01_dwi.nii.gz").write_bytes(b"my data")
    (mine / "dataset_description.json").write_text('{"Name": "my study"}')
    config = dataclasses.replace(profile.cohort, **TINY)
    for replace in (False, True):
        with pytest.raises(ValueError, match="is not a cohort simulated by dmrilib.*nothing was changed"):
            simulate_cohort(config, mine, progress=False, replace=replace)
    assert (mine / "sub-01" / "dwi" / "sub-01_dwi.nii.gz").read_bytes() == b"my data"


def test_prepared_folder_has_ordinary_permissions(smoke):
    _, results, _ = smoke
    umask = os.umask(0)
    os.umask(umask)
    assert (results / "smoke" / "prepared").stat().st_mode & 0o777 == 0o777 & ~umask


def test_prepare_removes_the_folder_a_killed_run_was_building(smoke):
    profile, results, _ = smoke
    root = results / "smoke"
    dead = root / f".prepared.tmp-{_dead_pid()}@{_HOST}.abcd1234"
    live = root / f".prepared.tmp-{os.getpid()}@{_HOST}.efgh5678"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "attenuation.npy").write_bytes(b"half written")
    (root / "prepared" / "meta.json").unlink()
    try:
        pipeline.run_cohort(profile, results, progress=False)
        assert not dead.exists() and live.is_dir()
    finally:
        shutil.rmtree(live)


# --------------------------------------------------------------------------- later stages

@pytest.fixture(scope="module")
def trained(smoke):
    """Every later stage of the reduced smoke profile (about a minute on two cores)."""
    profile, results, _ = smoke
    # In the workflow's order: evaluation scores against the ground-truth job's masks too.
    pipeline.run_groundtruth(profile, results, threads=2, progress=False)
    for model, variant, fold in profile.runs():
        pipeline.run_train(profile, model, variant, fold, results, threads=2, progress=False)
        pipeline.run_evaluate(profile, model, variant, fold, results, threads=2)
    pipeline.run_baseline(profile, 0, results)
    pipeline.run_aggregate(profile, results)
    return smoke


@pytest.mark.slow
def test_runs_table_has_training_time_parameters_and_epochs(trained):
    profile, results, work = trained
    runs = pd.read_csv(results / "smoke" / "tables" / "runs.csv")
    assert len(runs) == 2
    assert (runs["train_time_s"] > 0).all() and (runs["parameters"] > 0).all()
    assert (runs["epochs"] == profile.train.epochs).all()
    # A file profile is re-run from its file, not from the shipped profile of the same name.
    assert runs["command"].str.contains(f"-p profile {(work / 'smoke.yaml').resolve()} ", regex=False).all()


@pytest.mark.slow
def test_every_stage_reruns_after_snakemake_deleted_its_outputs(trained):
    profile, results, _ = trained
    root = results / "smoke"
    tables = {p.name: p.read_bytes() for p in (root / "tables").glob("*.csv") if p.name != "runs.csv"}
    for model, variant, fold in profile.runs():
        run = pipeline.run_dir(profile, model, variant, fold, results)
        (run / "run.json").unlink()
        pipeline.run_train(profile, model, variant, fold, results, threads=2, progress=False)
        (run / "eval.json").unlink()
        pipeline.run_evaluate(profile, model, variant, fold, results, threads=2)
    (pipeline.run_dir(profile, "baseline", "normative", 0, results) / "eval.json").unlink()
    pipeline.run_baseline(profile, 0, results)
    # A configuration removed from the profile keeps its old folder; it must not reach the tables.
    shutil.copytree(pipeline.run_dir(profile, "dae", "lsd16-linear", 0, results),
                    pipeline.run_dir(profile, "dae", "lsd32-linear", 0, results))
    (root / "tables" / "summary.json").unlink()
    pipeline.run_aggregate(profile, results)
    # Same settings, same seed: the same tables (runs.csv holds wall times).
    assert {p.name: p.read_bytes() for p in (root / "tables").glob("*.csv") if p.name != "runs.csv"} == tables


@pytest.mark.slow
def test_groundtruth_tables_hold_no_timings_and_are_identical_between_runs(trained):
    profile, results, _ = trained
    out = results / "smoke" / "groundtruth"
    first = (out / "subjects.csv").read_bytes()
    assert not [c for c in pd.read_csv(out / "subjects.csv").columns if "time_s" in c or "seconds" in c]
    assert not [c for c in pd.read_csv(results / "smoke" / "tables" / "groundtruth.csv").columns
                if "time_s" in c or "seconds" in c]
    timings = pd.read_csv(out / "timings.csv")
    assert list(timings.columns) == ["subject", "segment_time_s", "register_time_s"] and len(timings) == 3
    (out / "groundtruth.json").unlink()  # a forced re-run
    pipeline.run_groundtruth(profile, results, threads=2, progress=False)
    assert (out / "subjects.csv").read_bytes() == first


# --------------------------------------------------------------------------- killed runs

def test_stale_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead, live = _dead_pid(), os.getpid()
    stale = [run / f".checkpoint-last.pt.{dead}@{_HOST}.k2j4h5x9.tmp.pt",
             run / f".log.csv.{dead}@{_HOST}.a1b2c3d4.tmp.csv"]
    kept = [run / f".checkpoint-best.pt.{live}@{_HOST}.k2j4h5x9.tmp.pt",   # a live writer
            run / ".log.csv.a1b2c3d4.tmp.csv",                              # writer unknown
            run / f".log.csv.{dead}@other-node.a1b2c3d4.tmp.csv",           # another host
            run / "checkpoint-last.pt", run / ".hidden.json"]               # results
    for path in stale + kept:
        path.write_bytes(b"x")
    assert sorted(remove_stale_temp(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept)
    # The job that owns the folder also removes what it cannot check, never a live writer's file.
    assert sorted(remove_stale_temp(tmp_path, owned=True)) == sorted(kept[1:3])
    assert kept[0].exists() and kept[3].exists() and kept[4].exists()


def test_atomic_writes_name_their_writer_and_a_killed_write_is_cleaned(tmp_path):
    code = textwrap.dedent(f"""
        import os, signal
        from dmrilib._atomic import atomic_path
        with atomic_path({str(tmp_path / 'log.csv')!r}) as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", code], timeout=60)
    left = list(tmp_path.glob(".log.csv.*.tmp.csv"))
    assert len(left) == 1 and f"@{_HOST}." in left[0].name
    assert remove_stale_temp(tmp_path) == left and not any(tmp_path.iterdir())
    with atomic_path(tmp_path / "log.csv") as tmp:  # an ordinary write leaves nothing behind
        tmp.write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


_POOL_SCRIPT = """
import os, sys, time
from pathlib import Path
from dmrilib._workers import process_pool

def work(folder):
    Path(folder, str(os.getpid())).touch()
    time.sleep(600)

if __name__ == "__main__":
    pool = process_pool(2, sys.argv[2])
    for _ in range(2):
        pool.submit(work, sys.argv[1])
    time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_pool_workers_die_with_a_killed_parent(tmp_path, context):
    script, started = tmp_path / "job.py", tmp_path / "started"
    script.write_text(_POOL_SCRIPT)
    started.mkdir()
    parent = subprocess.Popen([sys.executable, str(script), str(started), context])
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            workers = [int(p.name) for p in started.iterdir()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        parent.kill()  # SIGKILL: no finally block, no pool shutdown runs in the parent
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers), "worker processes outlived their killed parent"
    finally:
        parent.kill()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
