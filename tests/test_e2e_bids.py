"""End to end on a user's BIDS dataset: `make book PROFILE=smoke BIDS=<root>` (issue 16).

The dataset has a clinical layout built from the simulator's output
(tests/_clinical_bids.py): renamed subjects, a `ses-preop` session, `acq-AP`
DWI, tumour masks only in T1w space under `derivatives/manual_segmentation/`,
and nothing that says "simulated". The run must find the groups, carry the
masks to each DWI by registration, train on the controls, score every
patient, write every patient's maps on its own DWI grid and build a book that
names the dataset. A multi-shell variant (b = 700/1200/2800, 30 directions
each) is prepared with the shell resampled to 64 directions, and a bad
dataset stops `make book` before any job runs.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clinical_bids import copy_dataset, drop_group_column, make_clinical_dataset, simulated_source  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e")]
NAME = "Glioma DWI study (test)"


def _make(*args, timeout=1500):
    env = {**os.environ, "DMRI_PROGRESS": "0"}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def clinical(tmp_path_factory):
    work = tmp_path_factory.mktemp("clinical")
    return make_clinical_dataset(simulated_source(work / "source"), work / "clinical", name=NAME)


@pytest.fixture(scope="module")
def bids_build(clinical, tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e-bids")
    results, book_out = work / "results", work / "book"
    proc = _make("book", "PROFILE=smoke", f"BIDS={clinical}", f"RESULTS={results}", f"BOOK_OUT={book_out}")
    (work / "make-book.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    return results / "smoke", book_out / "_build" / "html"


def test_the_run_reads_the_dataset_as_a_clinic_wrote_it(bids_build, clinical):
    root, _ = bids_build
    study = json.loads((root / "cohort" / "study.json").read_text())
    assert study["dataset"]["name"] == NAME and study["scored"]
    groups = {s["subject"]: s["group"] for s in study["subjects"]}
    assert sorted(s for s, g in groups.items() if g == "patient") == ["sub-PAT01", "sub-PAT02", "sub-PAT03"]
    assert sum(g == "healthy" for g in groups.values()) == 7
    for s in study["subjects"]:
        assert s["session"] == "ses-preop" and "acq-AP" in s["dwi"]
        if s["group"] == "patient":
            assert s["lesion_source"] == "t1w-registered" and "desc-tumor_mask" in s["lesion_file"]
            assert s["lesion_voxels"] > 0
    # the staged cohort links to the user's files, it does not copy them
    dwi = next((root / "cohort" / "sub-PAT01" / "ses-preop" / "dwi").glob("*_dwi.nii.gz"))
    assert dwi.is_symlink() and Path(os.readlink(dwi)).resolve() == (
        clinical / "sub-PAT01" / "ses-preop" / "dwi" / dwi.name).resolve()


def test_every_patient_is_scored_and_no_patient_is_trained_on(bids_build):
    root, _ = bids_build
    det = pd.read_csv(root / "tables" / "auroc_all.csv")
    patients = {"sub-PAT01", "sub-PAT02", "sub-PAT03"}
    for (model, variant), rows in det.groupby(["model", "variant"]):
        assert set(rows["subject"]) == patients, (model, variant)
        assert rows["auroc"].between(0, 1).all()
    folds = json.loads((root / "folds.json").read_text())
    trained = {s for f in folds["folds"] for s in (*f["train"], *f["val"])}
    assert trained and not trained & patients


def test_maps_lie_on_each_patients_dwi_grid(bids_build, clinical):
    root, _ = bids_build
    exported = pd.read_csv(root / "figures" / "export.csv")
    assert set(exported["subject"]) == {"sub-PAT01", "sub-PAT02", "sub-PAT03"}
    for _, row in exported.iterrows():
        img = nib.load(str(root / row["path"]))
        dwi = nib.load(str(next((clinical / row["subject"] / "ses-preop" / "dwi").glob("*_dwi.nii.gz"))))
        assert img.shape == dwi.shape[:3], row["path"]
        assert np.allclose(img.affine, dwi.affine, atol=1e-4), row["path"]
        assert np.isfinite(np.asarray(img.dataobj)).all()
        assert (root / "figures" / "overlays" / f"{row['subject']}.png").is_file()
    description = json.loads((root / "derivatives" / "anomaly" / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"


def test_the_book_names_the_dataset_and_says_the_data_are_not_simulated(bids_build):
    _, html = bids_build
    pages = {p: (html / f"{p}.html").read_text() for p in ("bids_index", "bids_data", "bids_results", "bids_maps")}
    for name, text in pages.items():
        assert NAME in text, name
        assert "Your data" in text and "Simulated data" not in text, name
    assert "not a replication" in pages["bids_results"]
    # the simulated build's pages are not part of this book
    assert not (html / "groundtruth.html").exists() and not (html / "sweep.html").exists()


def test_the_book_renders_in_chromium(bids_build):
    import shutil

    _, html = bids_build
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is installed by `make test`")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "bids-results.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1400,2000", f"--screenshot={shot}", (html / "bids_results.html").as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000


def test_a_multishell_dataset_is_resampled_to_one_channel_layout(tmp_path):
    """b = 700/1200/2800 with 30 directions each (as OpenNeuro ds001226): the 1200 shell becomes 64 channels."""
    import yaml

    from dmrilib import pipeline
    from dmrilib.config import PROFILES_DIR, Profile
    from dmrilib.dataset import load_prepared

    source = simulated_source(tmp_path / "source", multishell=True)
    root = make_clinical_dataset(source, tmp_path / "clinical", name=NAME, multishell=True, directions_per_shell=30)
    data = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    data["prepare"].update(target_bvalue=1200.0, directions="small_64D")
    profile = Profile.from_dict(data, source="multishell-test")
    _, prepared_dir = pipeline.run_cohort(profile, tmp_path / "results", bids_root=root, progress=False, n_jobs=1)
    prepared = load_prepared(prepared_dir)
    assert prepared.attenuation.shape[1] == 64
    study = json.loads((tmp_path / "results" / "smoke" / "cohort" / "study.json").read_text())
    assert {s["n_directions"] for s in study["subjects"]} == {30}
    assert study["directions"] == "small_64D"
    values = np.asarray(prepared.attenuation[0])
    assert np.isfinite(values).all() and values.max() <= 1.0 and values.max() > 0.1


def test_a_bad_dataset_stops_make_book_before_any_job(clinical, tmp_path):
    bad = copy_dataset(clinical, tmp_path / "bad")
    named = drop_group_column(bad)
    results = tmp_path / "results"
    proc = _make("results", "PROFILE=smoke", f"BIDS={bad}", f"RESULTS={results}", timeout=300)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert str(named) in text and "group" in text
    assert not (results / "smoke" / "cohort").exists()


def test_without_lesion_masks_the_run_writes_maps_only_and_says_so(clinical, tmp_path):
    import yaml

    from dmrilib.config import PROFILES_DIR

    bare = copy_dataset(clinical, tmp_path / "bare")
    import shutil

    shutil.rmtree(bare / "derivatives")
    data = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    data.update(name="smokemaps", bids={"lesion_masks": "none"})  # T1w+FLAIR are there: do not segment them
    profile = tmp_path / "smokemaps.yaml"
    profile.write_text(yaml.safe_dump(data))
    results, book_out = tmp_path / "results", tmp_path / "book"
    proc = _make("book", f"PROFILE={profile}", f"BIDS={bare}", f"RESULTS={results}", f"BOOK_OUT={book_out}")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    root = results / "smokemaps"
    assert not (root / "tables" / "summary.json").exists()
    exported = pd.read_csv(root / "figures" / "export.csv")
    assert set(exported["subject"]) == {"sub-PAT01", "sub-PAT02", "sub-PAT03"}
    for page in ("bids_index", "bids_results", "bids_maps"):
        assert "Nothing is scored" in (book_out / "_build" / "html" / f"{page}.html").read_text(), page


def test_stacked_dae_folds_are_grouped_by_the_datasets_number_of_controls(clinical, tmp_path):
    """`train.stack_folds` stacks only folds of equal size; with BIDS data the controls decide the sizes."""
    import re

    import yaml

    from dmrilib.config import PROFILES_DIR

    data = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    # The profile's simulated cohort (9 healthy: 3 equal folds) is not what the run reads: the
    # dataset's 7 controls in 3 contiguous folds validate on 2, 3 and 2 subjects.
    data["cohort"]["n_healthy"] = 9
    data.update(name="smokestack", folds=[0, 1, 2])
    data["train"].update(n_folds=3, stack_folds=3)
    profile = tmp_path / "smokestack.yaml"
    profile.write_text(yaml.safe_dump(data))
    snakemake = Path(sys.executable).parent / "snakemake"
    proc = subprocess.run([str(snakemake), "-s", "workflow/Snakefile", "-n", "--quiet", "rules", "--cores", "1",
                           "--config", f"profile={profile}", f"bids={clinical}", f"results={tmp_path / 'results'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    stacks = set(re.findall(r"^(train_stack_\w+)\s+\d+$", proc.stdout, flags=re.M))
    assert stacks == {"train_stack_0_2", "train_stack_1"}
