"""dmrilib.dataset: BIDS cohort -> network-grid arrays and back."""
from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from _io_fixtures import AFFINE, make_bids, synthetic_dwi, write_dwi, write_mask
from dmrilib.config import Profile, load_profile
from dmrilib.dataset import PrepareConfig, load_prepared, prepare_cohort, to_input_grid
from dmrilib.io import DwiInputError

GRID = (8, 12, 8)


@pytest.fixture
def bids(tmp_path):
    return make_bids(tmp_path / "bids")


@pytest.fixture
def config():
    return PrepareConfig(grid=GRID)


def _listing(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_prepare_writes_arrays_on_the_network_grid(bids, config, tmp_path):
    out = prepare_cohort(bids, config, tmp_path / "prepared", progress=False)
    cohort = load_prepared(out)
    assert cohort.subjects == ["sub-H01", "sub-H02", "sub-P01"]
    assert cohort.attenuation.shape == (3, 6) + GRID
    att = cohort.attenuation[0]
    assert att.dtype == np.float32
    assert 0.0 <= att.min() and att.max() <= 1.0
    assert (cohort.attenuation[:, :, ~cohort.brain_mask[0]][0] == 0).all()
    for name in ("brain_mask", "eval_mask", "lesion", "infiltration", "followup_lesion"):
        assert getattr(cohort, name).shape == (3,) + GRID
        assert getattr(cohort, name).dtype == bool
    assert cohort.lesion[2].sum() == 8 and not cohort.lesion[:2].any()
    assert cohort.followup_lesion[2].sum() == 27
    assert not cohort.infiltration.any()  # no such derivative: all False
    assert cohort.fa.dtype == np.float32 and 0 <= cohort.fa.min() and cohort.fa.max() <= 1
    assert 0.3e-3 < np.median(cohort.md[cohort.brain_mask]) < 1.5e-3
    assert cohort.affines.shape == (3, 4, 4)
    np.testing.assert_allclose(cohort.affines[0], AFFINE)
    assert cohort.input_shapes[0] == (8, 10, 8)
    assert cohort.bvals.shape == (3, 6) and cohort.bvecs.shape == (3, 6, 3)


def test_prepare_gives_the_same_arrays_with_one_or_two_workers(bids, config, tmp_path):
    one = prepare_cohort(bids, config, tmp_path / "one", progress=False, n_jobs=1)
    two = prepare_cohort(bids, config, tmp_path / "two", progress=False, n_jobs=2)
    names = sorted(p.name for p in one.glob("*.npy"))
    assert names == sorted(p.name for p in two.glob("*.npy")) and "attenuation.npy" in names
    for name in names:
        np.testing.assert_array_equal(np.load(one / name), np.load(two / name), err_msg=name)
    meta_one, meta_two = (json.loads((d / "meta.json").read_text()) for d in (one, two))
    for key in ("subjects", "crops", "labels_present", "brain_mask_source", "brain_fraction_in_grid"):
        assert meta_one[key] == meta_two[key], key


def test_attenuation_is_float16_on_disk_and_float32_on_access(bids, tmp_path):
    out = prepare_cohort(bids, PrepareConfig(grid=GRID), tmp_path / "p16", progress=False)
    assert np.load(out / "attenuation.npy", mmap_mode="r").dtype == np.float16
    cohort = load_prepared(out)
    assert np.asarray(cohort.attenuation).dtype == np.float32
    # training and prediction read the stored values and convert per batch: the same numbers
    assert cohort.attenuation.stored.dtype == np.float16
    np.testing.assert_array_equal(cohort.attenuation.stored[[2, 0]].astype(np.float32), cohort.attenuation[[2, 0]])
    assert cohort.attenuation[cohort.index(["H01", "P01"])].shape == (2, 6) + GRID
    out32 = prepare_cohort(bids, PrepareConfig(grid=GRID, dtype="float32"), tmp_path / "p32", progress=False)
    full = load_prepared(out32).attenuation
    np.testing.assert_allclose(np.asarray(cohort.attenuation), full, atol=1e-3)


def test_groups_and_index_follow_participants_tsv(bids, config, tmp_path):
    cohort = load_prepared(prepare_cohort(bids, config, tmp_path / "prepared", progress=False))
    assert cohort.healthy_ids() == ["sub-H01", "sub-H02"]
    assert cohort.patient_ids() == ["sub-P01"]
    assert cohort.index(["sub-P01", "H01"]).tolist() == [2, 0]
    assert cohort.participants.loc["sub-P01", "grade"] == "IV"
    with pytest.raises(KeyError, match="X9"):
        cohort.index(["X9"])


def test_meta_records_hashes_crops_and_provenance(bids, config, tmp_path):
    out = prepare_cohort(bids, config, tmp_path / "prepared", progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config_hash"] == config.hash()
    assert meta["config"]["grid"] == list(GRID)
    assert meta["provenance"]["versions"]["dipy"]
    assert meta["crops"][0]["grid_shape"] == list(GRID)
    assert meta["labels_present"]["sub-P01"] == ["brain_mask", "eval_mask", "followup_lesion", "lesion"]
    assert meta["brain_mask_source"]["sub-H01"].endswith("desc-brain_mask.nii.gz")


def test_map_on_network_grid_goes_back_to_the_input_grid(bids, config, tmp_path):
    cohort = load_prepared(prepare_cohort(bids, config, tmp_path / "prepared", progress=False))
    i = int(cohort.index(["P01"])[0])
    img = to_input_grid(cohort, "sub-P01", cohort.lesion[i])
    path = tmp_path / "lesion_back.nii.gz"
    nib.save(img, str(path))
    back = nib.load(str(path))
    np.testing.assert_allclose(back.affine, AFFINE)
    original = nib.load(str(bids / "derivatives/simulation/sub-P01/ses-pre/dwi/sub-P01_ses-pre_space-dwi_desc-lesion_mask.nii.gz"))
    np.testing.assert_array_equal(back.get_fdata() > 0, original.get_fdata() > 0)
    with pytest.raises(ValueError, match="network grid"):
        to_input_grid(cohort, "sub-P01", np.zeros((3, 3, 3)))


def test_rerun_with_same_inputs_is_a_no_op(bids, config, tmp_path):
    out = prepare_cohort(bids, config, tmp_path / "prepared", progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    prepare_cohort(bids, config, out, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_changed_config_replaces_the_output(bids, config, tmp_path):
    out = prepare_cohort(bids, config, tmp_path / "prepared", progress=False)
    prepare_cohort(bids, PrepareConfig(grid=(16, 16, 16)), out, progress=False)
    assert load_prepared(out).grid == (16, 16, 16)
    assert _listing(tmp_path) == ["bids", "prepared"]  # no leftover temp folders


def test_grid_smaller_than_the_brain_warns(bids, tmp_path):
    with pytest.warns(UserWarning, match="cuts off brain"):
        out = prepare_cohort(bids, PrepareConfig(grid=(4, 4, 4)), tmp_path / "small", progress=False)
    assert max(load_prepared(out).meta["brain_fraction_in_grid"].values()) < 0.9


def test_bad_subject_writes_nothing(bids, config, tmp_path):
    bval = bids / "sub-H02/ses-pre/dwi/sub-H02_ses-pre_dwi.bval"
    bval.write_text("0 1000 1000\n")
    out = tmp_path / "prepared"
    with pytest.raises(DwiInputError, match="sub-H02_ses-pre_dwi.bval: 3 b-values"):
        prepare_cohort(bids, config, out, progress=False)
    assert not out.exists()
    assert _listing(tmp_path) == ["bids"]


def test_nan_voxel_found_late_still_writes_nothing(bids, config, tmp_path):
    path = bids / "sub-P01/ses-pre/dwi/sub-P01_ses-pre_dwi.nii.gz"
    img = nib.load(str(path))
    data = img.get_fdata()
    data[1, 1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    with pytest.raises(DwiInputError, match="NaN"):
        prepare_cohort(bids, config, tmp_path / "prepared", progress=False)
    assert _listing(tmp_path) == ["bids"]


def test_interrupted_run_leaves_no_output(bids, config, tmp_path, monkeypatch):
    import dmrilib.dataset as dataset

    calls = []
    original = dataset.dti_maps

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(dataset, "dti_maps", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_cohort(bids, config, tmp_path / "prepared", progress=False)
    assert _listing(tmp_path) == ["bids"]


def test_misaligned_mask_is_rejected_before_writing(bids, config, tmp_path):
    mask = bids / "derivatives/simulation/sub-H01/ses-pre/dwi/sub-H01_ses-pre_space-dwi_desc-wmgm_mask.nii.gz"
    write_mask(mask, np.ones((8, 10, 9), bool))
    with pytest.raises(DwiInputError, match="desc-wmgm_mask.nii.gz: shape"):
        prepare_cohort(bids, config, tmp_path / "prepared", progress=False)
    assert _listing(tmp_path) == ["bids"]


def test_subjects_with_different_channel_counts_are_rejected(bids, config, tmp_path):
    data, bvals, bvecs, _ = synthetic_dwi(bvals=(0,) + (1000,) * 5)
    write_dwi(bids / "sub-H02/ses-pre/dwi", "sub-H02_ses-pre_dwi", data, bvals, bvecs)
    with pytest.raises(DwiInputError, match="same channels"):
        prepare_cohort(bids, config, tmp_path / "prepared", progress=False)


def test_real_layout_without_sessions_or_derivatives_uses_b0_mask_and_chosen_shell(tmp_path):
    # like OpenNeuro ds001226: multi-shell, no tumour derivatives
    root = make_bids(
        tmp_path / "ds", subjects=(("CON01", "control"), ("PAT01", "patient")),
        shape=(14, 16, 12), bvals=(0, 700, 1200, 2800, 1200, 700, 1200, 2800),
        session=None, pipeline=None,
    )
    cfg = PrepareConfig(grid=(16, 16, 16), target_bvalue=1200, pipeline=None)
    cohort = load_prepared(prepare_cohort(root, cfg, tmp_path / "prepared", progress=False))
    assert cohort.attenuation.shape == (2, 3, 16, 16, 16)
    assert (cohort.bvals == 1200).all()
    assert cohort.brain_mask.any(axis=(1, 2, 3)).all()
    assert not cohort.eval_mask.any() and not cohort.lesion.any()
    assert cohort.meta["brain_mask_source"]["sub-CON01"].startswith("median_otsu")
    assert cohort.healthy_ids() == ["sub-CON01"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"grid": (64, 80)}, "three positive integers"),
        ({"grid": (64, -1, 64)}, "three positive integers"),
        ({"dtype": "int8"}, "float16"),
        ({"target_bvalue": 100, "bvalue_tolerance": 60}, "b0_threshold"),
        ({"dti_fit": "NLLS"}, "OLS"),
        ({"session": ""}, "session"),
        ({"input_mask_erosion": -1}, "input_mask_erosion"),
        ({"input_mask_erosion": 1.5}, "input_mask_erosion"),
        ({"fidelity": "thesis"}, "fidelity"),
    ],
)
def test_prepare_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrepareConfig(**kwargs)


def test_prepare_config_accepts_lists_from_yaml():
    assert PrepareConfig(grid=[16, 32, 16]).grid == (16, 32, 16)
    assert PrepareConfig(grid=[16, 32, 16]).hash() == PrepareConfig(grid=(16, 32, 16)).hash()


@pytest.mark.parametrize("name", ["smoke", "quick", "gpu", "paper"])
def test_shipped_profiles_build_a_prepare_config(name):
    if not os.path.exists(load_profile(name).source):
        pytest.skip("profile missing")
    cfg = load_profile(name).prepare
    assert isinstance(cfg, PrepareConfig) and len(cfg.grid) == 3


def test_unknown_prepare_setting_is_a_config_error():
    from dmrilib.config import ConfigError

    # profiles are validated when they are loaded (every required section present)
    sections = {name: {} for name in ("cohort", "model", "train", "evaluate")}
    with pytest.raises(ConfigError, match="grid_size"):
        Profile.from_dict({"name": "x", "variants": {}, "folds": [0], **sections, "prepare": {"grid_size": 3}})


# ----------------------------------------------------------------- integrity and acquisition


def _rehash(out, name):
    """Record the current sha256 of ``name`` in meta.json, as if prepare had written the file so."""
    from dmrilib.integrity import sha256_file

    meta = json.loads((out / "meta.json").read_text())
    meta["sha256"][name] = sha256_file(out / name)
    (out / "meta.json").write_text(json.dumps(meta))


def test_meta_records_the_sha256_of_every_array(bids, config, tmp_path):
    from dmrilib.integrity import sha256_file

    out = prepare_cohort(bids, config, tmp_path / "prepared", progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert sorted(meta["sha256"]) == sorted(f"{name}.npy" for name in meta["arrays"])
    for name, digest in meta["sha256"].items():
        assert sha256_file(out / name) == digest, name
    assert meta["orientations"] == ["RAS"] * 3


def test_changed_mask_file_is_refused_by_load_prepared(bids, config, tmp_path):
    from dmrilib.integrity import IntegrityError

    out = prepare_cohort(bids, config, tmp_path / "prepared", progress=False)
    lesion = np.load(out / "lesion.npy", mmap_mode="r+")
    lesion[0, 0, 0, 0] = ~lesion[0, 0, 0, 0]
    lesion.flush()
    del lesion
    with pytest.raises(IntegrityError, match=r"lesion.npy: sha256 .* does not match its record.*Prepare the cohort"):
        load_prepared(out)


def test_attenuation_outside_unit_interval_is_refused_on_first_access(bids, config, tmp_path):
    from dmrilib.integrity import IntegrityError

    out = prepare_cohort(bids, config, tmp_path / "prepared", progress=False)
    att = np.load(out / "attenuation.npy", mmap_mode="r+")
    att[0, 0, 4, 5, 4] = 1.5
    att.flush()
    del att
    cohort = load_prepared(out)  # cheap: masks checked, the large attenuation file not yet read
    with pytest.raises(IntegrityError, match=r"attenuation.npy: sha256 .* does not match"):
        cohort.attenuation[0]
    _rehash(out, "attenuation.npy")  # a bad value written with a matching record: the range check finds it
    cohort = load_prepared(out)
    for access in (lambda a: a[0], lambda a: a.stored, np.asarray):
        with pytest.raises(IntegrityError, match=r"attenuation.npy: 1 value\(s\) lie outside \[0, 1\]"):
            access(cohort.attenuation)
    assert cohort.attenuation.shape[0] == 3  # the shape needs no values


def test_nan_attenuation_is_refused(bids, config, tmp_path):
    from dmrilib.integrity import IntegrityError

    out = prepare_cohort(bids, PrepareConfig(grid=GRID, dtype="float32"), tmp_path / "prepared", progress=False)
    att = np.load(out / "attenuation.npy", mmap_mode="r+")
    att[1, 2, 3, 3, 3] = np.nan
    att.flush()
    del att
    _rehash(out, "attenuation.npy")
    with pytest.raises(IntegrityError, match="outside"):
        load_prepared(out).attenuation[1]


def test_folder_without_sha256_record_warns_and_is_rebuilt(bids, config, tmp_path):
    out = prepare_cohort(bids, config, tmp_path / "prepared", progress=False)
    meta = json.loads((out / "meta.json").read_text())
    del meta["sha256"]
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="records no sha256"):
        assert load_prepared(out).attenuation[0].max() <= 1
    prepare_cohort(bids, config, out, progress=False)  # not up to date without the record
    assert "sha256" in json.loads((out / "meta.json").read_text())


def test_acquisition_summarises_geometry_and_gradients_of_the_subjects(bids, config, tmp_path):
    cohort = load_prepared(prepare_cohort(bids, config, tmp_path / "prepared", progress=False))
    acq = cohort.acquisition(["H01", "H02"])
    assert acq["voxel_size_min"] == acq["voxel_size_max"] == [2.0, 2.0, 2.0]
    assert acq["orientations"] == ["RAS"] and acq["input_shapes"] == [[8, 10, 8]]
    assert acq["grid"] == list(GRID) and acq["bvalue"] == 1000.0 and acq["n_subjects"] == 2
    # make_bids draws each subject's directions from its own seed: two schemes, in channel order
    assert len(acq["gradient_schemes"]) == 2
    np.testing.assert_allclose(acq["gradient_schemes"][0], cohort.bvecs[0], atol=1e-6)
    assert 0 < acq["brain_fraction_min"] <= 1
    json.dumps(acq)  # plain JSON types: it goes into checkpoints loaded with weights_only=True


def test_input_mask_erosion_follows_fidelity_and_an_explicit_value_wins():
    assert PrepareConfig().input_mask_erosion == 1  # the authors' processing_data.py
    assert PrepareConfig(fidelity="paper").input_mask_erosion == 0
    assert PrepareConfig(fidelity="paper", input_mask_erosion=2).input_mask_erosion == 2
    assert PrepareConfig(input_mask_erosion=0).hash() != PrepareConfig().hash()


def test_input_mask_erosion_zeroes_the_rim_of_the_brain_and_keeps_the_brain_mask(bids, tmp_path):
    from scipy import ndimage

    plain = load_prepared(prepare_cohort(bids, PrepareConfig(grid=GRID, input_mask_erosion=0), tmp_path / "e0",
                                         progress=False))
    eroded = load_prepared(prepare_cohort(bids, PrepareConfig(grid=GRID, input_mask_erosion=1), tmp_path / "e1",
                                          progress=False))
    np.testing.assert_array_equal(plain.brain_mask, eroded.brain_mask)  # stored mask: not eroded
    for i in range(len(plain.subjects)):
        brain = plain.brain_mask[i]
        kept = ndimage.binary_erosion(brain, structure=np.ones((3, 3, 3), bool))
        rim = brain & ~kept
        assert rim.any() and kept.any()
        assert (plain.attenuation[i][:, rim] > 0).any()  # without erosion the rim carries signal
        assert (eroded.attenuation[i][:, rim] == 0).all()
        np.testing.assert_array_equal(eroded.attenuation[i][:, kept], plain.attenuation[i][:, kept])
