"""dmrilib.io: reading, validating and discovering DWI inputs."""
from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest

from _io_fixtures import AFFINE, make_bids, small_64d, synthetic_dwi, write_dwi, write_mask
from dmrilib.io import (
    DwiInputError,
    bids_files,
    bids_name,
    describe,
    find_bids_dwi,
    inspect_dwi,
    load_dwi,
    load_labels,
    load_mask,
    parse_bids_name,
    read_participants,
    select_shell,
    shells,
)


@pytest.fixture
def dwi_file(tmp_path):
    data, bvals, bvecs, _ = synthetic_dwi()
    return write_dwi(tmp_path, "sub-03_dwi", data, bvals, bvecs)


# ------------------------------------------------------------ reading


def test_load_dwi_returns_float32_with_unit_bvecs(dwi_file):
    dwi = load_dwi(dwi_file)
    assert dwi.data.dtype == np.float32
    assert dwi.data.shape == (8, 10, 8, 7)
    assert dwi.is_b0.tolist() == [True] + [False] * 6
    np.testing.assert_allclose(np.linalg.norm(dwi.bvecs[1:], axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(dwi.bvecs[0], 0.0)
    np.testing.assert_allclose(dwi.affine, AFFINE)
    assert dwi.voxel_size == (2.0, 2.0, 2.0)
    assert dwi.bval_path.name == "sub-03_dwi.bval"
    assert dwi.gtab.b0s_mask.tolist() == dwi.is_b0.tolist()


def test_nx3_bvec_layout_reads_like_fsl_layout(tmp_path):
    data, bvals, bvecs, _ = synthetic_dwi()
    a = load_dwi(write_dwi(tmp_path / "a", "x_dwi", data, bvals, bvecs, bvec_layout="fsl"))
    b = load_dwi(write_dwi(tmp_path / "b", "x_dwi", data, bvals, bvecs, bvec_layout="rows"))
    np.testing.assert_allclose(a.bvecs, b.bvecs)


def test_non_unit_bvecs_are_normalised(tmp_path):
    data, bvals, bvecs, _ = synthetic_dwi()
    dwi = load_dwi(write_dwi(tmp_path, "x_dwi", data, bvals, bvecs * 3.0))
    np.testing.assert_allclose(np.linalg.norm(dwi.bvecs[1:], axis=1), 1.0, atol=1e-6)


def test_multishell_selects_b0_and_target_shell_only(tmp_path):
    bvals = (0, 700, 1200, 2800, 5, 1195, 700, 1210, 2800)
    data, bvals, bvecs, _ = synthetic_dwi(bvals=bvals)
    path = write_dwi(tmp_path, "ms_dwi", data, bvals, bvecs)
    dwi = load_dwi(path, target_bvalue=1200, bvalue_tolerance=50)
    assert dwi.bvals.tolist() == [0, 5, 1200, 1195, 1210]
    np.testing.assert_array_equal(dwi.data, data[..., [0, 4, 2, 5, 7]])
    everything = load_dwi(path, target_bvalue=None)
    assert everything.data.shape[3] == 9
    assert shells(everything.bvals) == {0: 2, 700: 2, 1200: 3, 2800: 2}


def test_b0_threshold_is_configurable(tmp_path):
    data, bvals, bvecs, _ = synthetic_dwi(bvals=(0, 80, 1000, 1000))
    path = write_dwi(tmp_path, "x_dwi", data, bvals, bvecs)
    assert load_dwi(path, b0_threshold=100).is_b0.sum() == 2
    assert load_dwi(path).is_b0.sum() == 1


def test_clip_negative_sets_negative_signal_to_zero(tmp_path):
    data, bvals, bvecs, _ = synthetic_dwi()
    data[0, 0, 0, 1] = -3.0
    dwi = load_dwi(write_dwi(tmp_path, "x_dwi", data, bvals, bvecs), clip_negative=True)
    assert dwi.data.min() == 0.0


def test_load_mask_accepts_mask_on_the_dwi_grid(tmp_path, dwi_file):
    mask = np.zeros((8, 10, 8), bool)
    mask[2:4, 3:5, 1:6] = True
    path = write_mask(tmp_path / "m.nii.gz", mask)
    np.testing.assert_array_equal(load_mask(path, inspect_dwi(dwi_file)), mask)
    labels = load_labels(path, load_dwi(dwi_file))
    assert labels.dtype == np.int16 and labels.sum() == mask.sum()


# ------------------------------------------------------- real acquisition


def test_small_64d_real_acquisition_reads_back_and_gives_plausible_dti(tmp_path):
    from dmrilib.preprocess import attenuation, dti_maps

    data, affine, bvals, bvecs = small_64d()
    assert np.isnan(bvecs[0]).all()  # the b0 direction is NaN in the shipped file
    path = write_dwi(tmp_path, "sub-real_dwi", data, bvals, bvecs, affine, bvec_layout="rows")
    dwi = load_dwi(path)
    assert dwi.data.shape == (10, 10, 10, 65)
    assert dwi.is_b0.sum() == 1
    assert np.isfinite(dwi.bvecs).all()
    # the 10^3 crop lies inside the head: tissue plus bright CSF, no background
    mask = np.ones((10, 10, 10), bool)
    att = attenuation(dwi, mask)
    assert att.shape == (10, 10, 10, 64)
    assert 0.0 <= att.min() and att.max() <= 1.0
    assert 0.3 < np.median(att) < 0.7  # tissue at b=1000; CSF voxels near 0.05
    maps = dti_maps(dwi, mask)
    assert 0.0 <= maps.fa.min() and maps.fa.max() <= 1.0
    assert 0.6e-3 < np.median(maps.md) < 1.2e-3  # mm^2/s, brain tissue ~0.7-0.9e-3
    assert np.percentile(maps.md, 95) < 3.5e-3  # free water at body temperature ~3e-3
    assert maps.color_fa.shape == (10, 10, 10, 3)


# -------------------------------------------------------- bad inputs


def _msg(excinfo) -> str:
    return str(excinfo.value)


def test_not_a_nifti_names_the_file(tmp_path):
    bad = tmp_path / "sub-03_dwi.nii.gz"
    bad.write_text("this is not an image")
    with pytest.raises(DwiInputError) as e:
        load_dwi(bad)
    assert "sub-03_dwi.nii.gz" in _msg(e) and "NIfTI" in _msg(e)


def test_truncated_gzip_is_reported_as_corrupt(tmp_path, dwi_file):
    raw = gzip.decompress(dwi_file.read_bytes())
    truncated = tmp_path / "cut" / "sub-03_dwi.nii.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    for ext in (".bval", ".bvec"):
        shutil.copy(dwi_file.with_name("sub-03_dwi" + ext), truncated.with_name("sub-03_dwi" + ext))
    with pytest.raises(DwiInputError) as e:
        load_dwi(truncated)
    assert "sub-03_dwi.nii.gz" in _msg(e)
    assert "truncated" in _msg(e) or "copied completely" in _msg(e)


def test_3d_image_is_not_a_dwi(tmp_path):
    path = tmp_path / "x_dwi.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), AFFINE), str(path))
    with pytest.raises(DwiInputError) as e:
        load_dwi(path)
    assert "x_dwi.nii.gz" in _msg(e) and "4D" in _msg(e)


def test_bval_count_mismatch_names_both_files(tmp_path, dwi_file):
    bval = dwi_file.with_name("sub-03_dwi.bval")
    bval.write_text(" ".join(["0"] + ["1000"] * 7) + "\n")
    with pytest.raises(DwiInputError) as e:
        load_dwi(dwi_file)
    assert _msg(e).startswith("sub-03_dwi.bval: 8 b-values but sub-03_dwi.nii.gz has 7 volumes.")
    assert "FSL layout" in _msg(e)


def test_bvec_with_wrong_shape_is_rejected(tmp_path, dwi_file):
    dwi_file.with_name("sub-03_dwi.bvec").write_text("1 0 0 0\n0 1 0 0\n")
    with pytest.raises(DwiInputError) as e:
        load_dwi(dwi_file)
    assert "sub-03_dwi.bvec" in _msg(e) and "3x7" in _msg(e)


def test_bvec_count_mismatch_is_rejected(tmp_path):
    data, bvals, bvecs, _ = synthetic_dwi()
    path = write_dwi(tmp_path, "x_dwi", data, bvals, bvecs)
    np.savetxt(path.with_name("x_dwi.bvec"), bvecs[:5].T)
    with pytest.raises(DwiInputError) as e:
        load_dwi(path)
    assert "x_dwi.bvec" in _msg(e) and "7 volumes" in _msg(e)


def test_zero_norm_bvec_on_diffusion_volume_is_rejected(tmp_path):
    data, bvals, bvecs, _ = synthetic_dwi()
    bvecs[3] = 0.0
    path = write_dwi(tmp_path, "x_dwi", data, bvals, bvecs)
    with pytest.raises(DwiInputError) as e:
        load_dwi(path)
    assert "x_dwi.bvec" in _msg(e) and "[3]" in _msg(e) and "b0_threshold" in _msg(e)


def test_missing_b0_is_rejected(tmp_path):
    data, bvals, bvecs, _ = synthetic_dwi(bvals=(1000,) * 5)
    path = write_dwi(tmp_path, "x_dwi", data, bvals, bvecs)
    with pytest.raises(DwiInputError) as e:
        load_dwi(path)
    assert "x_dwi.bval" in _msg(e) and "no b0 volume" in _msg(e)


def test_missing_target_shell_lists_available_shells(tmp_path):
    data, bvals, bvecs, _ = synthetic_dwi(bvals=(0, 700, 700, 2800, 2800))
    path = write_dwi(tmp_path, "x_dwi", data, bvals, bvecs)
    with pytest.raises(DwiInputError) as e:
        load_dwi(path)  # default target b=1000
    assert "b=1000" in _msg(e) and "{700: 2, 2800: 2}" in _msg(e) and "target_bvalue" in _msg(e)


def test_select_shell_orders_b0_first():
    idx = select_shell(np.array([1000, 0, 990, 5, 2000]), target_bvalue=1000)
    assert idx.tolist() == [1, 3, 0, 2]


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_voxels_are_rejected(tmp_path, bad_value):
    data, bvals, bvecs, _ = synthetic_dwi()
    data[1, 2, 3, 4] = bad_value
    path = write_dwi(tmp_path, "x_dwi", data, bvals, bvecs)
    with pytest.raises(DwiInputError) as e:
        load_dwi(path)
    assert "x_dwi.nii.gz" in _msg(e) and "NaN or infinite" in _msg(e)


def test_negative_signal_is_rejected_by_default(tmp_path):
    data, bvals, bvecs, _ = synthetic_dwi()
    data[1, 2, 3, 4] = -1.0
    path = write_dwi(tmp_path, "x_dwi", data, bvals, bvecs)
    with pytest.raises(DwiInputError) as e:
        load_dwi(path)
    assert "negative" in _msg(e) and "clip_negative=True" in _msg(e)


def test_mask_with_other_shape_is_rejected(tmp_path, dwi_file):
    path = write_mask(tmp_path / "brain_mask.nii.gz", np.ones((8, 10, 9), bool))
    with pytest.raises(DwiInputError) as e:
        load_mask(path, inspect_dwi(dwi_file))
    assert "brain_mask.nii.gz" in _msg(e) and "(8, 10, 8)" in _msg(e) and "resample" in _msg(e)


def test_mask_with_other_affine_is_rejected(tmp_path, dwi_file):
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    path = write_mask(tmp_path / "brain_mask.nii.gz", np.ones((8, 10, 8), bool), shifted)
    with pytest.raises(DwiInputError) as e:
        load_mask(path, inspect_dwi(dwi_file))
    assert "brain_mask.nii.gz" in _msg(e) and "affine" in _msg(e)


def test_missing_bval_file_says_where_it_is_expected(tmp_path, dwi_file):
    dwi_file.with_name("sub-03_dwi.bval").unlink()
    with pytest.raises(DwiInputError) as e:
        inspect_dwi(dwi_file)
    assert "sub-03_dwi.bval" in _msg(e) and "no such file" in _msg(e)


# ------------------------------------------------------------- BIDS


def test_parse_bids_name_splits_entities_suffix_and_extension():
    name = parse_bids_name("/x/sub-01_ses-pre_from-dwi_to-T1w_desc-points_xfm.nii.gz")
    assert dict(name.entities) == {"sub": "01", "ses": "pre", "from": "dwi", "to": "T1w", "desc": "points"}
    assert (name.suffix, name.extension) == ("xfm", ".nii.gz")
    assert parse_bids_name("desc-tumour_dseg").entities == {"desc": "tumour"}
    assert parse_bids_name("scan_dwi.nii").entities == {} and parse_bids_name("scan_dwi.nii").suffix == "dwi"


def test_bids_name_is_the_inverse_of_parse_and_skips_missing_entities():
    entities = {"sub": "sub-01", "ses": None, "space": "dwi", "desc": "brain"}
    name = bids_name(entities, "mask", ".nii.gz")
    assert name == "sub-01_space-dwi_desc-brain_mask.nii.gz"
    back = parse_bids_name(name)
    assert bids_name(back.entities, back.suffix, back.extension) == name


def test_bids_files_filters_by_entity_suffix_and_extension(tmp_path):
    names = ["sub-01_ses-pre_space-dwi_desc-brain_mask.nii.gz", "sub-01_ses-pre_space-dwi_dseg.nii",
             "sub-01_ses-pre_space-dwi_desc-tumour_dseg.nii.gz", "sub-01_space-DWI_desc-lesion_mask.nii.gz",
             "sub-01_ses-post_desc-lesion_mask.nii.gz", "sub-01_ses-pre_desc-brain_mask.json", "sub-010_dwi.nii.gz"]
    for name in names:
        (tmp_path / name).write_text("")
    (tmp_path / "deeper").mkdir()
    (tmp_path / "deeper" / "sub-01_ses-followup_desc-lesion_mask.nii.gz").write_text("")

    def found(**filters):
        return [p.name for p in bids_files(tmp_path, **filters)]

    assert found(subject="sub-01", desc="brain", suffix="mask") == [names[0]]
    assert found(suffix="dseg", desc=(None,)) == [names[1]]  # the tissue dseg, not desc-tumour_dseg
    assert found(suffix="mask", session=(None, "pre"), desc=("lesion", "brain")) == [names[0], names[3]]
    assert found(suffix="mask", space=lambda s: s is not None and s.lower() == "dwi") == [names[0], names[3]]
    assert found(desc="brain", extensions=(".json",)) == [names[5]]
    assert found(subject="01", suffix="dwi") == []  # sub-010 is another subject
    assert [p.name for p in bids_files(tmp_path, session="followup", recursive=True)] == [
        "sub-01_ses-followup_desc-lesion_mask.nii.gz"]
    assert bids_files(tmp_path / "missing") == []




def test_find_bids_dwi_lists_subjects_with_derivatives(tmp_path):
    root = make_bids(tmp_path / "bids")
    found = find_bids_dwi(root)
    assert [f.subject for f in found] == ["sub-H01", "sub-H02", "sub-P01"]
    assert all(f.session == "ses-pre" for f in found)
    assert set(found[0].derivatives) == {"brain", "wmgm"}
    assert set(found[2].derivatives) == {"brain", "wmgm", "lesion", "followup_lesion"}
    assert found[2].derivatives["followup_lesion"].name.startswith("sub-P01_ses-followup")
    assert found[0].metadata()["PhaseEncodingDirection"] == "j-"
    assert find_bids_dwi(root, pipeline=None)[0].derivatives == {}


def test_find_bids_dwi_reads_datasets_without_sessions_or_derivatives(tmp_path):
    root = make_bids(tmp_path / "bids", session=None, pipeline=None)
    found = find_bids_dwi(root)
    assert [f.session for f in found] == [None, None, None]
    assert found[1].dwi.name == "sub-H02_dwi.nii.gz"


def test_default_session_prefers_preoperative(tmp_path):
    data, bvals, bvecs, _ = synthetic_dwi()
    root = tmp_path / "ds"
    for ses in ("ses-postop", "ses-preop"):
        write_dwi(root / "sub-PAT01" / ses / "dwi", f"sub-PAT01_{ses}_dwi", data, bvals, bvecs)
    assert find_bids_dwi(root)[0].session == "ses-preop"
    assert find_bids_dwi(root, session="postop")[0].session == "ses-postop"
    with pytest.raises(DwiInputError) as e:
        find_bids_dwi(root, session="followup")
    assert "ses-followup" in _msg(e) and "sub-PAT01" in _msg(e)


def test_bids_folder_without_dwi_is_rejected(tmp_path):
    (tmp_path / "sub-01" / "anat").mkdir(parents=True)
    with pytest.raises(DwiInputError) as e:
        find_bids_dwi(tmp_path)
    assert str(tmp_path) in _msg(e) and "no diffusion data" in _msg(e)


def test_duplicated_subject_in_participants_is_rejected(tmp_path):
    root = make_bids(tmp_path / "bids")
    with open(root / "participants.tsv", "a") as fh:
        fh.write("sub-H01\thealthy\tn/a\n")
    with pytest.raises(DwiInputError) as e:
        find_bids_dwi(root)
    assert "participants.tsv" in _msg(e) and "sub-H01" in _msg(e) and "more than once" in _msg(e)


def test_several_dwi_series_per_subject_need_an_acquisition(tmp_path):
    data, bvals, bvecs, _ = synthetic_dwi()
    folder = tmp_path / "sub-01" / "dwi"
    write_dwi(folder, "sub-01_acq-AP_dwi", data, bvals, bvecs)
    write_dwi(folder, "sub-01_acq-PA_dwi", data, bvals, bvecs)
    with pytest.raises(DwiInputError) as e:
        find_bids_dwi(tmp_path)
    assert "sub-01" in _msg(e) and "acquisition=" in _msg(e)
    assert find_bids_dwi(tmp_path, acquisition="AP")[0].dwi.name == "sub-01_acq-AP_dwi.nii.gz"


def test_read_participants_indexes_by_subject(tmp_path):
    root = make_bids(tmp_path / "bids")
    table = read_participants(root)
    assert table.loc["sub-P01", "group"] == "patient"
    assert read_participants(tmp_path).empty


# ----------------------------------------------------------- describe


def test_describe_file_lists_shells_directions_and_grid(tmp_path):
    data, bvals, bvecs, _ = synthetic_dwi(bvals=(0, 700, 1200, 1200, 2800))
    text = describe(write_dwi(tmp_path, "x_dwi", data, bvals, bvecs))
    assert "8x10x8 voxels, 5 volumes" in text
    assert "shells: b=0 x1, b=700 x1, b=1200 x2, b=2800 x1" in text
    assert "diffusion directions: 4" in text
    assert "2 x 2 x 2 mm" in text


def test_describe_bids_lists_subjects_groups_and_masks(tmp_path):
    root = make_bids(tmp_path / "bids")
    text = describe(root)
    assert "subjects: 3" in text and "ses-pre (3)" in text
    assert "healthy: 2, patient: 1" in text
    assert "grid 8x10x8 (7 volumes) at 2 x 2 x 2 mm: 3 subject(s)" in text
    assert "shells b=0 x1, b=1000 x6: 3 subject(s)" in text
    assert "derivatives/simulation: brain: 3, wmgm: 3, lesion: 1, followup_lesion: 1" in text


def test_describe_bids_reports_a_broken_subject_instead_of_failing(tmp_path):
    root = make_bids(tmp_path / "bids")
    (root / "sub-H02/ses-pre/dwi/sub-H02_ses-pre_dwi.bval").write_text("0 1000\n")
    text = describe(root)
    assert "problem: sub-H02_ses-pre_dwi.bval: 2 b-values" in text
    assert "2 subject(s)" in text


def test_describe_missing_path_raises(tmp_path):
    with pytest.raises(DwiInputError):
        describe(tmp_path / "nope")


def _truncate(path):
    """Cut a .nii.gz in half: the header still reads, the voxel data does not."""
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def test_describe_reads_the_voxels_like_load_dwi(tmp_path):
    data, bvals, bvecs, _ = synthetic_dwi()
    cut = _truncate(write_dwi(tmp_path / "cut", "x_dwi", data, bvals, bvecs))
    data[1, 2, 3, 4] = np.nan
    nan = write_dwi(tmp_path / "nan", "x_dwi", data, bvals, bvecs)
    for path, problem in ((cut, "truncated"), (nan, "NaN or infinite")):
        with pytest.raises(DwiInputError, match=problem):
            describe(path)
        assert "x_dwi.nii.gz" in describe(path, header_only=True)  # headers alone do not see it


def test_check_input_of_bids_collects_data_problems(tmp_path):
    from dmrilib.io import check_input

    root = make_bids(tmp_path / "bids")
    assert check_input(root).problems == ()
    _truncate(root / "sub-H02/ses-pre/dwi/sub-H02_ses-pre_dwi.nii.gz")
    report = check_input(root)
    assert len(report.problems) == 1 and "sub-H02_ses-pre_dwi.nii.gz" in report.problems[0]
    assert "problem: sub-H02_ses-pre_dwi.nii.gz" in report.text and "2 subject(s)" in report.text
    assert check_input(root, header_only=True).problems == ()


def test_check_input_of_bids_without_dwi_is_a_problem(tmp_path):
    from dmrilib.io import check_input

    root = make_bids(tmp_path / "bids")
    for image in root.glob("sub-*/ses-pre/dwi/*_dwi.nii.gz"):
        image.unlink()
    report = check_input(root)
    assert len(report.problems) == 1 and "no diffusion data found" in report.problems[0]


def test_dwi_volume_repr_is_one_line_summary(dwi_file):
    dwi = load_dwi(dwi_file)
    text = repr(dwi)
    assert text == ("DwiVolume(sub-03_dwi.nii.gz: 8x10x8 voxels of 2 x 2 x 2 mm, 7 volumes "
                    "(b=0 x1, b=1000 x6), float32)")
    assert str(dwi) == text and "\n" not in text
