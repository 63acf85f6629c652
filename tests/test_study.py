"""dmrilib.study: the plan of a run on a user's BIDS dataset, its checks, and the staged cohort.

Every test reads the clinical-layout dataset of tests/_clinical_bids.py (a
simulated smoke cohort rewritten as a user's study: sub-CON01..07 controls,
sub-PAT01..03 patients, ses-preop + a FLAIR-only ses-postop, acq-AP DWI,
T1w-space tumour masks under derivatives/manual_segmentation). The bad-case
tests change a copy.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

import dmrilib.study as study
from _clinical_bids import (
    CONTROLS,
    PATIENTS,
    PIPELINE,
    add_second_dwi_run,
    copy_dataset,
    drop_group_column,
    drop_patient_mask,
    make_clinical_dataset,
    mask_on_other_grid,
    simulated_source,
    tumour_mask_path,
)
from dmrilib.cli import main
from dmrilib.config import PROFILES_DIR, Profile, load_profile
from dmrilib.io import DwiInputError
from dmrilib.study import LESION_SOURCES, StudyPlan, plan_bids, read_study, stage_bids

SESSION = "ses-preop"


def _profile(*, bids: dict | None = None, prepare: dict | None = None, train: dict | None = None) -> Profile:
    """The smoke profile with some bids/prepare/train settings changed."""
    data = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    if bids is not None:
        data["bids"] = bids
    for key, value in (("prepare", prepare), ("train", train)):
        if value is not None:
            data[key] = {**data[key], **value}
    return Profile.from_dict(data, source="test")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return simulated_source(tmp_path_factory.mktemp("sources"))


@pytest.fixture(scope="module")
def clinical(source, tmp_path_factory):
    return make_clinical_dataset(source, tmp_path_factory.mktemp("clinical") / "study")


@pytest.fixture(scope="module")
def smoke():
    return load_profile("smoke")


@pytest.fixture(scope="module")
def staged(clinical, smoke, tmp_path_factory):
    """The clinical dataset staged once (ANTs registration of the 3 patients: a few seconds)."""
    plan = plan_bids(clinical, smoke)
    out = tmp_path_factory.mktemp("results") / "smoke" / "cohort"
    return plan, stage_bids(plan, smoke, out, progress=False)


@pytest.fixture
def copy(clinical, tmp_path):
    return copy_dataset(clinical, tmp_path / "copy")


def _dwi(root: Path, subject: str) -> Path:
    return root / subject / SESSION / "dwi" / f"{subject}_{SESSION}_acq-AP_dwi.nii.gz"


def _load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


# ------------------------------------------------------------------- the plan


def test_plan(clinical, smoke):
    plan = plan_bids(clinical, smoke)
    assert isinstance(plan, StudyPlan)
    assert plan.name == "Glioma DWI study (test)" and plan.bids_version == "1.9.0"
    assert [s.subject for s in plan.controls] == CONTROLS
    assert [s.subject for s in plan.patients] == PATIENTS
    assert {s.group_source for s in plan.controls} == {"control"}
    assert {s.group_source for s in plan.patients} == {"patient"}
    # the patients' FLAIR-only ses-postop has no DWI: ses-preop is everyone's session
    assert {s.session for s in plan.subjects} == {SESSION}
    assert all(s.dwi.dwi == _dwi(clinical, s.subject) for s in plan.subjects)
    assert all(s.n_directions == 64 and s.shells == {0: 1, 1000: 64} for s in plan.subjects)
    assert all(s.shape == (30, 30, 18) and s.voxel_size == (7.2, 7.2, 7.2) for s in plan.subjects)
    for s in plan.patients:
        assert s.lesion_source == "t1w-registered"
        assert s.lesion_file == tumour_mask_path(clinical, s.subject)
        assert s.t1w == clinical / s.subject / SESSION / "anat" / f"{s.subject}_{SESSION}_T1w.nii.gz"
    assert all(s.lesion_source == "none" and s.lesion_file is None for s in plan.controls)
    assert plan.scored
    assert plan.n_folds == 7 and plan.folds_run == (0,) and plan.notes == ()
    text = plan.text()
    for s in plan.subjects:
        assert s.subject in text
    for s in plan.patients:
        assert str(s.lesion_file.relative_to(clinical)) in text
    assert "leave-one-out" in text and "scored: yes" in text
    # the plan reads headers only and writes nothing
    assert not (clinical / "derivatives" / study.STAGED_PIPELINE).exists()


def test_record_is_json(clinical, smoke):
    record = json.loads(json.dumps(plan_bids(clinical, smoke).record()))
    assert record["mode"] == "bids" and record["scored"] is True
    assert record["dataset"]["root"] == str(clinical.resolve())
    by_subject = {r["subject"]: r for r in record["subjects"]}
    assert by_subject["sub-PAT02"]["lesion_file"] == str(tumour_mask_path(clinical, "sub-PAT02").relative_to(clinical))
    assert by_subject["sub-CON01"]["dwi"] == str(_dwi(clinical, "sub-CON01").relative_to(clinical))


# ------------------------------------------------------------------ bad cases


def test_no_group_column(copy, smoke):
    path = drop_group_column(copy)
    with pytest.raises(DwiInputError) as err:
        plan_bids(copy, smoke)
    message = str(err.value)
    assert str(path) in message and "no 'group' column" in message
    assert "Add a tab-separated column 'group'" in message


def test_second_dwi_run(copy, smoke):
    path = add_second_dwi_run(copy)
    with pytest.raises(DwiInputError) as err:
        plan_bids(copy, smoke)
    message = str(err.value)
    assert path.name in message and path.name.replace("acq-PA", "acq-AP") in message  # both runs named
    assert "acquisition" in message  # the fix: choose one series
    plan = plan_bids(copy, _profile(prepare={"acquisition": "AP"}))
    assert all("_acq-AP_" in s.dwi.dwi.name for s in plan.subjects) and len(plan.subjects) == 10
    assert plan.acquisition == "AP" and "AP" in plan.text()


def test_patient_without_mask(copy):
    path = drop_patient_mask(copy)  # sub-PAT01 (it still has T1w and FLAIR)
    with pytest.raises(DwiInputError) as err:
        plan_bids(copy, _profile(bids={"lesion_masks": "t1w"}))
    message = str(err.value)
    assert "sub-PAT01" in message and "sub-PAT02" not in message
    assert "missing_lesion: maps_only" in message and "Add their masks" in message
    # says what lesion_masks: t1w looked for (not segmentation: PAT01 has T1w+FLAIR)
    assert "lesion_masks: t1w" in message and "[ses-*/]anat/" in message and "segment" not in message
    # kept for maps only: the plan says so and still scores the other two
    plan = plan_bids(copy, _profile(bids={"lesion_masks": "t1w", "missing_lesion": "maps_only"}))
    by_subject = {s.subject: s for s in plan.patients}
    assert by_subject["sub-PAT01"].lesion_source == "none" and by_subject["sub-PAT01"].lesion_file is None
    assert by_subject["sub-PAT02"].lesion_source == "t1w-registered"
    assert plan.scored
    assert any("sub-PAT01" in n and "not scored" in n for n in plan.notes)
    assert "sub-PAT01" in plan.text() and "not scored" in plan.text()
    # auto falls back to segmenting its T1w+FLAIR
    plan = plan_bids(copy, _profile(bids={"lesion_masks": "auto"}))
    by_subject = {s.subject: s for s in plan.patients}
    assert by_subject["sub-PAT01"].lesion_source == "segmented" and by_subject["sub-PAT01"].lesion_file is None
    assert by_subject["sub-PAT01"].flair is not None and not plan.notes
    assert [by_subject[s].lesion_source for s in PATIENTS[1:]] == ["t1w-registered"] * 2
    assert not path.exists()


def test_mask_on_other_grid(copy, smoke):
    path = mask_on_other_grid(copy, "sub-PAT02")
    with pytest.raises(DwiInputError) as err:
        plan_bids(copy, smoke)
    message = str(err.value)
    assert str(path) in message and "DWI-space lesion mask" in message
    assert "resample" in message  # the fix


def test_mask_shifted(copy, source, smoke):
    """A DWI-space mask with the DWI's shape but another affine is refused too."""
    truth = nib.load(str(source / "derivatives/simulation/sub-P03/ses-pre/dwi/"
                                  "sub-P03_ses-pre_space-dwi_desc-lesion_mask.nii.gz"))
    affine = truth.affine.copy()
    affine[:3, 3] += 7.2  # one voxel off
    path = (copy / "derivatives" / PIPELINE / "sub-PAT03" / SESSION / "dwi"
            / f"sub-PAT03_{SESSION}_space-dwi_desc-lesion_mask.nii.gz")
    path.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.asanyarray(truth.dataobj), affine), str(path))
    with pytest.raises(DwiInputError) as err:
        plan_bids(copy, smoke)
    message = str(err.value)
    assert str(path) in message and "another affine" in message and "resample" in message


def test_unknown_group_label(copy, smoke):
    path = copy / "participants.tsv"
    path.write_text(path.read_text().replace("sub-PAT03\tpatient", "sub-PAT03\tsurgery"))
    with pytest.raises(DwiInputError) as err:
        plan_bids(copy, smoke)
    message = str(err.value)
    assert str(path) in message and "surgery" in message and "sub-PAT03" in message
    assert "bids.control_labels" in message and "bids.patient_labels" in message
    # the fix the message gives works
    plan = plan_bids(copy, _profile(bids={"patient_labels": ["patient", "surgery"]}))
    assert [s.subject for s in plan.patients] == PATIENTS and plan.patients[-1].group_source == "surgery"


def test_too_few_controls(copy, smoke):
    shutil.rmtree(copy / "sub-CON07")  # 6 controls, smoke's train.n_folds is 7
    with pytest.raises(DwiInputError) as err:
        plan_bids(copy, smoke)
    message = str(err.value)
    assert str(copy / "participants.tsv") in message and "train.n_folds=7" in message
    assert "train.n_folds: 6" in message and "leave-one-out" in message
    plan = plan_bids(copy, _profile(train={"n_folds": 6}))
    assert plan.n_folds == 6 and len(plan.controls) == 6 and "leave-one-out (6 folds)" in plan.text()


def test_no_participants(copy, smoke):
    path = copy / "participants.tsv"
    path.unlink()
    with pytest.raises(DwiInputError) as err:
        plan_bids(copy, smoke)
    message = str(err.value)
    assert str(path) in message and "missing" in message and "'group'" in message


def test_not_a_folder(tmp_path, smoke):
    with pytest.raises(DwiInputError, match="no such folder"):
        plan_bids(tmp_path / "nothing", smoke)


@pytest.mark.parametrize("lesion_masks", ["t1w", "none"])
def test_no_masks(copy, lesion_masks):
    shutil.rmtree(copy / "derivatives")
    plan = plan_bids(copy, _profile(bids={"lesion_masks": lesion_masks}))
    assert not plan.scored
    assert [s.lesion_source for s in plan.patients] == ["none"] * 3
    assert any("maps only" in n for n in plan.notes)
    assert "scored: no" in plan.text() and "maps only" in plan.text()


def test_lesion_sources_constant():
    assert LESION_SOURCES == ("dwi-derivative", "t1w-registered", "segmented", "none")


# --------------------------------------------------------------- DWI-derivative


def test_dwi_derivative(copy, source, smoke):
    """A DWI-space mask (here: the simulator's true one) wins over the T1w-space mask."""
    truth = source / "derivatives/simulation/sub-P01/ses-pre/dwi/sub-P01_ses-pre_space-dwi_desc-lesion_mask.nii.gz"
    path = (copy / "derivatives" / "radiology" / "sub-PAT01" / SESSION / "dwi"
            / f"sub-PAT01_{SESSION}_space-dwi_desc-lesion_mask.nii.gz")
    path.parent.mkdir(parents=True)
    shutil.copyfile(truth, path)
    plan = plan_bids(copy, smoke)
    by_subject = {s.subject: s for s in plan.patients}
    assert by_subject["sub-PAT01"].lesion_source == "dwi-derivative"
    assert by_subject["sub-PAT01"].lesion_file == path
    assert [by_subject[s].lesion_source for s in PATIENTS[1:]] == ["t1w-registered"] * 2
    assert "dwi-derivative (derivatives/radiology/" in plan.text()
    # lesion_masks: t1w ignores it
    plan = plan_bids(copy, _profile(bids={"lesion_masks": "t1w"}))
    assert plan.patients[0].lesion_source == "t1w-registered"
    # a second DWI-space mask is ambiguous
    other = copy / "derivatives" / PIPELINE / "sub-PAT01" / SESSION / "dwi" / path.name.replace("lesion", "tumor")
    other.parent.mkdir(parents=True)
    shutil.copyfile(truth, other)
    with pytest.raises(DwiInputError, match="several DWI-space lesion masks"):
        plan_bids(copy, smoke)


def test_dwi_derivative_staged(copy, source, smoke, tmp_path):
    """The DWI-space mask is staged as given (within the brain mask)."""
    truth = source / "derivatives/simulation/sub-P01/ses-pre/dwi/sub-P01_ses-pre_space-dwi_desc-lesion_mask.nii.gz"
    path = (copy / "derivatives" / PIPELINE / "sub-PAT01" / SESSION / "dwi"
            / f"sub-PAT01_{SESSION}_space-dwi_desc-lesion_mask.nii.gz")
    path.parent.mkdir(parents=True)
    shutil.copyfile(truth, path)
    profile = _profile(bids={"lesion_masks": "dwi", "missing_lesion": "maps_only"})
    plan = plan_bids(copy, profile)
    assert [s.lesion_source for s in plan.patients] == ["dwi-derivative", "none", "none"]
    out = stage_bids(plan, profile, tmp_path / "res" / "cohort", progress=False)
    folder = out / "derivatives" / study.STAGED_PIPELINE / "sub-PAT01" / SESSION / "dwi"
    lesion = _load(folder / f"sub-PAT01_{SESSION}_space-dwi_desc-lesion_mask.nii.gz").astype(bool)
    brain = _load(folder / f"sub-PAT01_{SESSION}_space-dwi_desc-brain_mask.nii.gz").astype(bool)
    given = _load(truth).astype(bool)
    assert np.array_equal(lesion, given & brain) and _dice(lesion, given) > 0.9
    record = {r["subject"]: r for r in read_study(out)["subjects"]}
    assert record["sub-PAT01"]["lesion_voxels"] == int(lesion.sum())
    assert "lesion_voxels" not in record["sub-PAT02"]
    assert not (out / "derivatives" / study.STAGED_PIPELINE / "sub-PAT02" / SESSION / "dwi"
                / f"sub-PAT02_{SESSION}_space-dwi_desc-lesion_mask.nii.gz").exists()


# -------------------------------------------------------------------- staging


def test_stage_layout(staged, clinical):
    plan, out = staged
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["Name"] == plan.name and description["DatasetType"] == "raw"
    lines = (out / "participants.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header[:3] == ["participant_id", "group", "group_source"] and "age" in header
    rows = {r.split("\t")[0]: r.split("\t") for r in lines[1:]}
    assert sorted(rows) == CONTROLS + PATIENTS
    for sub in CONTROLS:
        assert rows[sub][1:3] == ["healthy", "control"]
    for sub in PATIENTS:
        assert rows[sub][1:3] == ["patient", "patient"]
    for s in plan.subjects:
        folder = out / s.subject / SESSION / "dwi"
        for f in (s.dwi.dwi, s.dwi.bval, s.dwi.bvec, s.dwi.sidecar):
            link = folder / f.name
            assert link.is_symlink() and link.resolve() == f.resolve()
    # nothing written into the user's dataset
    assert not any(p.is_symlink() for p in clinical.rglob("*"))
    assert not (clinical / "derivatives" / study.STAGED_PIPELINE).exists()


def test_stage_masks(staged, clinical, source):
    plan, out = staged
    deriv = out / "derivatives" / study.STAGED_PIPELINE
    assert json.loads((deriv / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    for s in plan.subjects:
        ref = nib.load(str(_dwi(clinical, s.subject)))
        folder = deriv / s.subject / SESSION / "dwi"
        masks = {}
        for desc in ("brain", "wmgm", "lesion"):
            path = folder / f"{s.subject}_{SESSION}_space-dwi_desc-{desc}_mask.nii.gz"
            if desc == "lesion" and s.group == "healthy":
                assert not path.exists()
                continue
            img = nib.load(str(path))
            assert img.shape == ref.shape[:3] and np.allclose(img.affine, ref.affine), path
            masks[desc] = np.asanyarray(img.dataobj).astype(bool)
        brain, wmgm = masks["brain"], masks["wmgm"]
        lesion = masks.get("lesion", np.zeros_like(brain))
        assert brain.sum() > 1000 and wmgm.sum() > 0.5 * brain.sum()
        assert not (lesion & ~wmgm).any()
        assert not (wmgm & ~(brain | lesion)).any()
        if s.group == "patient":
            assert lesion.sum() > 0
    # the T1w-space tumour mask carried to the DWI grid by the ANTs registration
    # lands on the simulator's true DWI-grid lesion (sub-PATnn = sub-Pnn). Dice
    # measured (smoke cohort, seeded ANTs): PAT01 0.94 (56 true voxels),
    # PAT03 0.92 (193); PAT02 0.69 has 13 voxels only, too few for a stable bound.
    for p in ("01", "03"):
        truth = _load(source / f"derivatives/simulation/sub-P{p}/ses-pre/dwi/"
                               f"sub-P{p}_ses-pre_space-dwi_desc-lesion_mask.nii.gz")
        carried = _load(deriv / f"sub-PAT{p}" / SESSION / "dwi"
                        / f"sub-PAT{p}_{SESSION}_space-dwi_desc-lesion_mask.nii.gz")
        assert _dice(carried, truth) > 0.5, p


def test_stage_record(staged, clinical, smoke):
    plan, out = staged
    record = read_study(out)
    assert study.is_bids_study(out) and record["mode"] == "bids"
    assert record["dataset"] == {"name": "Glioma DWI study (test)", "root": str(clinical.resolve()),
                                 "bids_version": "1.9.0"}
    assert record["acquisition"] is None and record["directions"] is None
    assert record["target_bvalue"] == smoke.prepare.target_bvalue and record["scored"] is True
    assert record["session_rule"] == plan.session_rule
    assert record["config_hash"] == smoke.hash() and record["provenance"]["versions"]
    assert [r["subject"] for r in record["subjects"]] == CONTROLS + PATIENTS
    for r in record["subjects"]:
        assert r["session"] == SESSION and r["shells"] == {"0": 1, "1000": 64} and r["n_directions"] == 64
        assert r["shape"] == [30, 30, 18] and r["voxel_size"] == [7.2, 7.2, 7.2]
        assert r["dwi"] == str(_dwi(clinical, r["subject"]).relative_to(clinical))
        if r["group"] == "patient":
            assert r["group_source"] == "patient" and r["lesion_source"] == "t1w-registered"
            assert r["lesion_file"] == str(tumour_mask_path(clinical, r["subject"]).relative_to(clinical))
            folder = out / "derivatives" / study.STAGED_PIPELINE / r["subject"] / SESSION / "dwi"
            lesion = _load(folder / f"{r['subject']}_{SESSION}_space-dwi_desc-lesion_mask.nii.gz")
            assert r["lesion_voxels"] == int(np.count_nonzero(lesion)) > 0
            assert r["register_time_s"] >= 0
        else:
            assert r["group"] == "healthy" and r["group_source"] == "control" and r["lesion_file"] is None
        assert r["brain_source"] == "median_otsu(mean b0)"


def test_stage_again_is_instant(staged, smoke):
    plan, out = staged
    stamp = (out / "study.json").stat().st_mtime_ns
    assert stage_bids(plan_bids(plan.root, smoke), smoke, out, progress=False) == out
    assert (out / "study.json").stat().st_mtime_ns == stamp
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_stage_failure_leaves_nothing(clinical, smoke, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("registration failed")

    monkeypatch.setattr(study, "_carry_t1w_mask", broken)
    out = tmp_path / "results" / "smoke" / "cohort"
    with pytest.raises(RuntimeError, match="registration failed"):
        stage_bids(plan_bids(clinical, smoke), smoke, out, progress=False)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temporary folder either


def test_stage_refuses_foreign_folder(clinical, smoke, tmp_path):
    out = tmp_path / "cohort"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a staged BIDS study"):
        stage_bids(plan_bids(clinical, smoke), smoke, out, progress=False)
    assert (out / "mine.txt").read_text() == "keep"


# ------------------------------------------------------------------------ CLI


def test_cli_info(clinical, capsys):
    assert main(["info", str(clinical), "--config", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "What `make book BIDS=... PROFILE=smoke` uses" in out
    for sub in CONTROLS + PATIENTS:
        assert sub in out
    assert "t1w-registered" in out and "desc-tumor_mask" in out


def test_cli_info_bad(copy, capsys):
    drop_group_column(copy)
    assert main(["info", str(copy), "--config", "smoke"]) == 2
    captured = capsys.readouterr()
    assert "cannot start" in captured.out and "no 'group' column" in captured.out
    assert "participants.tsv" in captured.out
    assert "dmri info: error:" in captured.err and "problem(s)" in captured.err


def test_resample_volume_keeps_a_linear_ramp_and_the_field_of_view():
    affine = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -120], [0, 0, 2.5, -60], [0, 0, 0, 1]])
    shape = (40, 50, 24)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    ramp = (0.01 * world[..., 0] + 0.02 * world[..., 1] - 0.03 * world[..., 2] + 5).astype(np.float32)
    out, new_affine = study.resample_volume(ramp, affine, 5.0)
    assert out.shape == (16, 20, 12)
    assert np.allclose(np.sqrt((new_affine[:3, :3] ** 2).sum(axis=0)), 5.0)
    assert np.sign(new_affine[0, 0]) == np.sign(affine[0, 0])  # orientation kept
    new_ijk = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij"), axis=-1)
    new_world = new_ijk @ new_affine[:3, :3].T + new_affine[:3, 3]
    expected = 0.01 * new_world[..., 0] + 0.02 * new_world[..., 1] - 0.03 * new_world[..., 2] + 5
    inner = (slice(2, -2),) * 3  # the Gaussian pre-smoothing leaves a linear function unchanged away from the edges
    assert np.abs(out[inner] - expected[inner]).max() < 1e-3
    # the new voxels tile the old field of view: first and last centres half a new voxel inside its edges
    old_edge = affine[:3, :3] @ np.full(3, -0.5) + affine[:3, 3]
    new_edge = new_affine[:3, :3] @ np.full(3, -0.5) + new_affine[:3, 3]
    assert np.allclose(old_edge, new_edge)


def test_stage_resamples_to_bids_voxel_size_and_export_goes_back(clinical, tmp_path):
    import nibabel as nib

    from dmrilib.export import _to_native

    profile = _profile(bids={"voxel_size": 14.4})
    plan = plan_bids(clinical, profile)
    out = stage_bids(plan, profile, tmp_path / "smoke" / "cohort", progress=False)
    dwi = _dwi(out, "sub-PAT01")
    assert not dwi.is_symlink()
    img = nib.load(str(dwi))
    assert np.allclose(img.header.get_zooms()[:3], 14.4) and img.shape[:3] == (15, 15, 9)
    record = read_study(out)
    assert record["voxel_size"] == 14.4
    pat = next(s for s in record["subjects"] if s["subject"] == "sub-PAT01")
    assert pat["staged_shape"] == [15, 15, 9] and pat["lesion_voxels"] > 0
    lesion = next((out / "derivatives").rglob("sub-PAT01_*desc-lesion_mask.nii.gz"))
    assert nib.load(str(lesion)).shape == (15, 15, 9) and np.allclose(nib.load(str(lesion)).affine, img.affine)
    # a map on the staged grid goes back onto the acquired grid
    native = nib.load(str(_dwi(clinical, "sub-PAT01")))
    back = _to_native(nib.Nifti1Image(np.ones(img.shape[:3], np.float32), img.affine), native.shape[:3], native.affine)
    assert back.shape == native.shape[:3] and np.allclose(back.affine, native.affine)
    assert np.asarray(back.dataobj)[5:-5, 5:-5, 3:-3].min() > 0.99


def test_segmented_lesions_are_carried_to_the_dwi(copy, tmp_path):
    import shutil

    shutil.rmtree(copy / "derivatives")
    profile = _profile(bids={"lesion_masks": "segment"})
    plan = plan_bids(copy, profile)
    assert {s.lesion_source for s in plan.patients} == {"segmented"}
    out = stage_bids(plan, profile, tmp_path / "smoke" / "cohort", segmentation_dir=tmp_path / "seg",
                     progress=False)
    assert any((tmp_path / "seg").glob("checkpoint-*.pt"))
    record = read_study(out)
    for s in record["subjects"]:
        if s["group"] == "patient":
            assert s["lesion_source"] == "segmented" and "lesion_voxels" in s
            assert next((out / "derivatives").rglob(f"{s['subject']}_*desc-lesion_mask.nii.gz")).is_file()
