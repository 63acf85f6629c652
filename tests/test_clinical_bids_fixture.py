"""The clinical-layout BIDS dataset of tests/_clinical_bids.py: layout, no trace of a simulation, bad cases."""
from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

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
from dmrilib.io import DwiInputError, find_bids_dwi, read_participants, shells



@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sources")
    return {"single": simulated_source(tmp), "multishell": simulated_source(tmp, multishell=True)}


@pytest.fixture(scope="module")
def clinical(sources, tmp_path_factory):
    return make_clinical_dataset(sources["single"], tmp_path_factory.mktemp("clinical") / "study")


@pytest.fixture(scope="module")
def multishell(sources, tmp_path_factory):
    return make_clinical_dataset(sources["multishell"], tmp_path_factory.mktemp("clinical-ms") / "study",
                                 multishell=True, directions_per_shell=30, seed=0)


@pytest.fixture
def copy(clinical, tmp_path):
    return copy_dataset(clinical, tmp_path / "copy")


def _nifti_text(path) -> str:
    """The header's free-text fields and extensions."""
    img = nib.load(str(path))
    fields = [bytes(img.header[k].item()) for k in ("descrip", "intent_name", "db_name", "aux_file")]
    fields += [bytes(ext.get_content()) if isinstance(ext.get_content(), bytes) else str(ext.get_content()).encode()
               for ext in img.header.extensions]
    return b" ".join(fields).decode("latin-1")


@pytest.mark.parametrize("which", ["clinical", "multishell"])
def test_layout(which, request):
    root = request.getfixturevalue(which)
    subjects = sorted(p.name for p in root.glob("sub-*"))
    assert subjects == CONTROLS + PATIENTS
    for sub in subjects:
        sessions = sorted(p.name for p in (root / sub).iterdir())
        assert sessions == (["ses-postop", "ses-preop"] if sub in PATIENTS else ["ses-preop"])
        dwi = root / sub / "ses-preop" / "dwi"
        assert sorted(p.name for p in dwi.iterdir()) == [
            f"{sub}_ses-preop_acq-AP_dwi.{ext}" for ext in ("bval", "bvec", "json", "nii.gz")]
        anat = root / sub / "ses-preop" / "anat"
        assert sorted(p.name for p in anat.iterdir()) == [f"{sub}_ses-preop_{m}.nii.gz" for m in ("FLAIR", "T1w")]
    # tumour masks: patients only, T1w space only, on the T1w grid; no other derivative
    derivatives = sorted(str(p.relative_to(root / "derivatives")) for p in (root / "derivatives").rglob("*")
                         if p.is_file())
    assert derivatives == [f"{PIPELINE}/dataset_description.json"] + [
        str(tumour_mask_path(root, s).relative_to(root / "derivatives")) for s in PATIENTS]
    for sub in PATIENTS:
        mask = nib.load(str(tumour_mask_path(root, sub)))
        t1w = nib.load(str(root / sub / "ses-preop" / "anat" / f"{sub}_ses-preop_T1w.nii.gz"))
        assert mask.shape == t1w.shape and np.allclose(mask.affine, t1w.affine)
        assert np.asanyarray(mask.dataobj).any()
    description = json.loads((root / "derivatives" / PIPELINE / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "manual"
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.9.0" and description["DatasetType"] == "raw" and description["Authors"]
    assert description["Name"] == "Glioma DWI study (test)"
    # a plain copy: tests may change it without touching the source
    assert not any(p.is_symlink() for p in root.rglob("*"))


def test_participants(clinical):
    table = read_participants(clinical)
    assert list(table.columns) == ["group", "age", "sex"]
    assert list(table.index) == CONTROLS + PATIENTS
    assert (table.loc[CONTROLS, "group"] == "control").all() and (table.loc[PATIENTS, "group"] == "patient").all()
    assert table["age"].between(18, 100).all() and set(table["sex"]) <= {"F", "M"}


@pytest.mark.parametrize("which", ["clinical", "multishell"])
def test_nothing_says_simulated(which, request):
    root = request.getfixturevalue(which)
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) > 60
    for path in files:
        assert "simul" not in str(path.relative_to(root)).lower(), path
        if path.name.endswith(".nii.gz"):
            text = _nifti_text(path)
            with gzip.open(path) as f:  # the raw header block too (352 bytes incl. the extension flag)
                text += f.read(352).decode("latin-1")
        else:
            text = path.read_text()
        assert "simul" not in text.lower(), path
    sidecar = json.loads((root / "sub-PAT01/ses-preop/dwi/sub-PAT01_ses-preop_acq-AP_dwi.json").read_text())
    assert sidecar["PhaseEncodingDirection"] == "j-" and "Seed" not in sidecar


def test_check_can_fail(copy):
    """The 'simul' check above reads what a simulator would leave: header text and JSON."""
    path = copy / "sub-CON01/ses-preop/anat/sub-CON01_ses-preop_T1w.nii.gz"
    img = nib.load(str(path))
    img.header["descrip"] = b"simulated"
    nib.save(img, str(path))
    assert "simul" in _nifti_text(path)


@pytest.mark.parametrize("which", ["clinical", "multishell"])
def test_find_bids_dwi(which, request):
    root = request.getfixturevalue(which)
    found = find_bids_dwi(root, pipeline=None, acquisition="AP")
    assert [e.subject for e in found] == CONTROLS + PATIENTS
    assert {e.session for e in found} == {"ses-preop"}
    for entry in found:
        bvals = np.loadtxt(entry.bval)
        bvecs = np.loadtxt(entry.bvec)
        n = nib.load(str(entry.dwi)).shape[3]
        assert bvals.shape == (n,) and bvecs.shape == (3, n)
        assert np.allclose(np.linalg.norm(bvecs[:, bvals > 50], axis=0), 1, atol=1e-4)


def test_multishell_scheme(multishell, sources):
    found = find_bids_dwi(multishell, pipeline=None, acquisition="AP")
    schemes = {(e.bval.read_text(), e.bvec.read_text()) for e in found}
    assert len(schemes) == 1  # one acquisition scheme for the whole study
    entry = found[-1]
    bvals, bvecs = np.loadtxt(entry.bval), np.loadtxt(entry.bvec).T
    assert shells(bvals) == {0: 1, 700: 30, 1200: 30, 2800: 30}
    nominal = np.round(bvals / 100) * 100
    dirs = [set(map(tuple, np.round(bvecs[nominal == b], 5))) for b in (700, 1200, 2800)]
    assert all(len(d) == 30 for d in dirs) and len(dirs[0] | dirs[1] | dirs[2]) > 30  # a subset per shell
    # every kept volume is the source volume with the same b-value and direction
    src_dir = sources["multishell"] / "sub-P03/ses-pre/dwi"
    src_b, src_v = np.loadtxt(src_dir / "sub-P03_ses-pre_dwi.bval"), np.loadtxt(src_dir / "sub-P03_ses-pre_dwi.bvec").T
    src = np.asanyarray(nib.load(str(src_dir / "sub-P03_ses-pre_dwi.nii.gz")).dataobj)
    data = np.asanyarray(nib.load(str(entry.dwi)).dataobj)
    assert data.dtype == src.dtype
    for k, (b, v) in enumerate(zip(bvals, bvecs)):
        (j,) = np.flatnonzero((src_b == b) & np.all(src_v == v, axis=1))
        assert np.array_equal(data[..., k], src[..., j])


def test_multishell_needs_shells(sources, tmp_path):
    with pytest.raises(ValueError, match="one shell"):
        make_clinical_dataset(sources["single"], tmp_path / "x", multishell=True)


def test_drop_group_column(copy):
    path = drop_group_column(copy)
    assert path == copy / "participants.tsv"
    assert list(read_participants(copy).columns) == ["age", "sex"]


@pytest.mark.parametrize("subject", [None, "sub-PAT02"])
def test_add_second_dwi_run(copy, subject):
    path = add_second_dwi_run(copy, subject)
    assert path.name == f"{subject or 'sub-CON01'}_ses-preop_acq-PA_dwi.nii.gz" and path.is_file()
    runs = sorted(copy.glob("sub-*/ses-preop/dwi/*_acq-PA_dwi.nii.gz"))
    assert len(runs) == (1 if subject else 10)
    for ext in (".bval", ".bvec", ".json"):
        assert path.with_name(path.name.replace(".nii.gz", ext)).is_file()
    with pytest.raises(DwiInputError, match=path.name):
        find_bids_dwi(copy, pipeline=None)
    assert len(find_bids_dwi(copy, pipeline=None, acquisition="AP")) == 10


def test_drop_patient_mask(copy):
    path = drop_patient_mask(copy)
    assert path == tumour_mask_path(copy, "sub-PAT01") and not path.exists()
    assert all(tumour_mask_path(copy, s).is_file() for s in PATIENTS[1:])


def test_mask_on_other_grid(copy):
    path = mask_on_other_grid(copy, "sub-PAT02")
    assert path == (copy / "derivatives" / PIPELINE / "sub-PAT02/ses-preop/dwi"
                    / "sub-PAT02_ses-preop_space-dwi_desc-tumor_mask.nii.gz")
    mask = nib.load(str(path))
    dwi = nib.load(str(copy / "sub-PAT02/ses-preop/dwi/sub-PAT02_ses-preop_acq-AP_dwi.nii.gz"))
    assert mask.shape != dwi.shape[:3] and not np.allclose(mask.affine, dwi.affine)
    assert np.asanyarray(mask.dataobj).any()
