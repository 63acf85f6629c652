"""Tests of the simulated glioma cohort (dmrilib.simulate).

Realism checks fit dipy's TensorModel on subjects simulated at 4.8 mm (the
quick profile's geometry) or on a thin 2.4 mm slab through the tracts.
"""
from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest

from dmrilib.simulate import (
    CohortConfig,
    cohort_plan,
    simulate_cohort,
    simulate_subject,
    small64d_scheme,
    verify_manifest,
    write_manifest,
)
from dmrilib.simulate.lesion import random_tumour
from dmrilib.simulate.signal import tensor_attenuation
from dmrilib.simulate.variability import random_deformation

QUICK = CohortConfig(shape=(45, 45, 27), voxel_size=4.8)
TINY = CohortConfig(n_healthy=2, n_patients=2, shape=(30, 30, 18), voxel_size=7.2)


def _dti(subject):
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    gtab = gradient_table(subject.bvals, bvecs=subject.bvecs)
    fit = TensorModel(gtab, fit_method="OLS").fit(subject.dwi, mask=subject.brain_mask)
    return np.nan_to_num(fit.fa), np.nan_to_num(fit.md) * 1e3, np.nan_to_num(fit.evecs[..., 0])


@pytest.fixture(scope="module")
def healthy():
    subject = simulate_subject(QUICK, 11, structural=False)
    return subject, _dti(subject)


@pytest.fixture(scope="module")
def patient():
    subject = simulate_subject(QUICK, 5, grade="IV", size_class="large", followup=True)
    return subject, _dti(subject)


def _on_dwi_grid(subject, image):
    """A structural image read where each DWI voxel's anatomy lies (the true DWI-to-T1w map)."""
    from scipy import ndimage

    inv = np.linalg.inv(subject.structural_affine)
    vox = subject.dwi_to_structural @ inv[:3, :3].T + inv[:3, 3]
    return ndimage.map_coordinates(image, np.moveaxis(vox, -1, 0), order=1, mode="nearest")


def _mni_box(affine, shape, lo, hi):
    idx = np.indices(shape).reshape(3, -1).T
    xyz = idx @ affine[:3, :3].T + affine[:3, 3]
    inside = np.all((xyz >= lo) & (xyz <= hi), axis=1)
    return inside.reshape(shape)


# -- configuration and plan ---------------------------------------------------

def test_config_normalises_lists_and_scales_grades():
    cfg = CohortConfig(n_patients=3, shape=[30, 30, 18], bvalue=[1000])
    assert cfg.shape == (30, 30, 18) and cfg.bvalue == 1000.0
    assert sum(cfg.patient_grades.values()) == 3
    assert cfg.followup_count == 3
    assert CohortConfig().patient_grades == {"IV": 14, "III": 10, "II": 8}


@pytest.mark.parametrize("bad", [dict(shape=(10, 10)), dict(snr=0), dict(grade_counts={"V": 3}),
                                 dict(n_b0=0), dict(n_followup=40)])
def test_config_rejects_invalid_values(bad):
    with pytest.raises(ValueError):
        CohortConfig(**bad)


def test_plan_matches_paper_cohort_and_is_deterministic():
    plan = cohort_plan(CohortConfig())
    patients = [p for p in plan if p.group == "patient"]
    assert len(plan) == 60 and len(patients) == 32
    assert {g: sum(p.grade == g for p in patients) for g in ("IV", "III", "II")} == {"IV": 14, "III": 10, "II": 8}
    assert sum(p.followup for p in patients) == 28
    assert plan == cohort_plan(CohortConfig())
    assert len({p.seed for p in plan}) == 60


# -- building blocks -----------------------------------------------------------

def test_vectorised_signal_matches_dipy_multi_tensor():
    from dipy.core.gradients import gradient_table
    from dipy.sims.voxel import multi_tensor

    scheme = small64d_scheme((1000.0,), 1)
    gtab = gradient_table(scheme.bvals, bvecs=scheme.bvecs)
    direction = np.array([[0.6, 0.8, 0.0]])
    ours = tensor_attenuation(scheme, direction, np.array([1.7e-3]), np.array([0.3e-3]))[0]
    theirs, _ = multi_tensor(gtab, np.array([[1.7e-3, 0.3e-3, 0.3e-3]]), S0=1.0, angles=[(90, 53.13010235)],
                             fractions=[100], snr=None)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_deformation_is_bounded_and_invertible():
    rng = np.random.default_rng(0)
    deformation = random_deformation(rng, amplitude=4.0)
    assert deformation.field.lipschitz < 1
    pts = rng.uniform(-80, 80, size=(500, 3)).astype(np.float32)
    np.testing.assert_allclose(deformation.inverse(deformation(pts)), pts, atol=1e-2)
    assert np.abs(deformation(pts) - pts).max() < 20


def test_mass_effect_pushes_tissue_outward_and_fades():
    tumour = random_tumour(np.random.default_rng(0), "IV", "large", np.zeros(3))
    r = np.linspace(0, 120, 400, dtype=np.float32)
    pts = np.stack([r, np.zeros_like(r), np.zeros_like(r)], axis=1)
    source = np.linalg.norm(tumour.displace(pts), axis=1)
    assert np.all(np.diff(source) >= -1e-4)  # monotonic: no folding
    assert np.all(source <= r + 1e-4)  # tissue came from closer to the centre
    assert source[r > 15][0] < r[r > 15][0] - 1  # displaced near the tumour
    assert abs(source[-1] - r[-1]) < 0.5  # far tissue stays put


# -- realism of healthy tissue ---------------------------------------------------

def test_healthy_tissue_dti_in_literature_ranges(healthy):
    subject, (fa, md, _) = healthy
    csf, gm, wm = subject.tissue
    pure_wm, pure_gm, pure_csf = wm > 0.8, gm > 0.8, csf > 0.9
    assert pure_csf.sum() > 10 and pure_wm.sum() > 500
    wm_fa = fa[pure_wm]
    assert 0.35 < np.median(wm_fa) < 0.8
    assert np.mean((wm_fa > 0.35) & (wm_fa < 0.8)) > 0.6
    assert np.median(fa[pure_gm]) < 0.25
    assert 0.6 < np.median(md[pure_wm]) < 0.9
    assert 2.5 < np.median(md[pure_csf]) < 3.2


@pytest.fixture(scope="module")
def slab():
    """A 2.4 mm slab through corpus callosum, internal capsule and cingulum."""
    cfg = CohortConfig(shape=(36, 40, 17), voxel_size=2.4)
    affine = np.diag([2.4, 2.4, 2.4, 1.0])
    affine[:3, 3] = (-42.0, -48.0, 0.0)
    subject = simulate_subject(cfg, 3, structural=False, affine=affine)
    return subject, _dti(subject)


@pytest.mark.parametrize("name, lo, hi, axis", [
    ("corpus callosum body", (-5, -16, 19), (5, 4, 27), 0),
    ("posterior limb of internal capsule", (-27, -19, 2), (-19, -11, 12), 2),
    ("cingulum", (-11, -30, 31), (-7, 6, 38), 1),
])
def test_principal_eigenvector_follows_tract(slab, name, lo, hi, axis):
    subject, (fa, _, evec) = slab
    roi = _mni_box(subject.affine, fa.shape, lo, hi) & (fa > 0.3)
    assert roi.sum() >= 3, f"{name}: ROI empty"
    along = np.abs(evec[roi][:, axis])
    assert np.median(along) > 0.8, f"{name}: |e1[{axis}]| median {np.median(along):.2f}"


def test_corpus_callosum_fa_above_0_6(slab):
    subject, (fa, _, _) = slab
    roi = _mni_box(subject.affine, fa.shape, (-5, -16, 19), (5, 4, 27)) & (subject.tissue[2] > 0.8)
    assert roi.sum() >= 3
    assert np.median(fa[roi]) > 0.6


def test_measured_b0_snr_matches_configured(healthy):
    from scipy import ndimage

    subject, _ = healthy
    b0 = subject.dwi[..., 0]
    background = ~ndimage.binary_dilation(subject.tissue.sum(0) > 1e-3, iterations=2)
    sigma = b0[background].mean() / np.sqrt(np.pi / 2)  # Rayleigh mean
    white = (subject.tissue[2] > 0.9)
    measured = b0[white].mean() / sigma
    assert abs(measured / QUICK.snr - 1) < 0.10
    assert abs(subject.snr / QUICK.snr - 1) <= QUICK.snr_jitter + 1e-9


def test_two_healthy_subjects_differ_and_seed_reproduces():
    a = simulate_subject(TINY, 1, structural=False)
    b = simulate_subject(TINY, 2, structural=False)
    again = simulate_subject(TINY, 1, structural=False)
    np.testing.assert_array_equal(a.dwi, again.dwi)
    assert not np.array_equal(a.brain_mask, b.brain_mask)  # deformation and head pose differ
    assert np.abs(a.dwi[..., 0] - b.dwi[..., 0]).mean() > 0.05 * a.dwi[..., 0][a.brain_mask].mean()


# -- the tumour ----------------------------------------------------------------

def _mirror(mask, affine):
    """Voxels mirrored across the mid-sagittal plane (x -> -x in mm)."""
    idx = np.argwhere(mask)
    xyz = idx @ affine[:3, :3].T + affine[:3, 3]
    xyz[:, 0] *= -1
    back = np.rint((xyz - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(int)
    back = np.clip(back, 0, np.array(mask.shape) - 1)
    out = np.zeros_like(mask)
    out[tuple(back.T)] = True
    return out


def test_lesion_compartments_move_fa_md_in_expected_directions(patient):
    subject, (fa, md, _) = patient
    t = subject.tumour_dseg
    assert {1, 2, 3, 4} <= set(np.unique(t).tolist())
    normal_wm = (subject.tissue[2] > 0.8) & (t == 0)
    assert md[t == 1].mean() > 1.8 and fa[t == 1].mean() < 0.15  # necrosis: free-ish water
    assert md[t == 3].mean() > 1.15 * md[normal_wm].mean()  # edema: raised MD
    assert fa[t == 3].mean() < 0.7 * fa[normal_wm].mean()  # edema: lowered FA
    assert md[t == 1].mean() > md[t == 2].mean()  # necrosis above cellular rim


def test_infiltration_is_subtly_but_measurably_abnormal(patient):
    subject, (fa, md, _) = patient
    white = subject.tissue[2] > 0.6  # compare like with like: white matter on both sides
    zone = subject.infiltration & white
    contra = _mirror(subject.infiltration, subject.affine) & (subject.tumour_dseg == 0) & white
    assert zone.sum() > 20 and contra.sum() > 20
    md_ratio = md[zone].mean() / md[contra].mean()
    fa_ratio = fa[zone].mean() / fa[contra].mean()
    assert md_ratio > 1.03 and fa_ratio < 0.95  # measurable
    edema = (subject.tumour_dseg == 3) & white
    assert md[edema].mean() / md[contra].mean() > md_ratio + 0.2  # subtle next to the edema
    assert fa[edema].mean() / fa[contra].mean() < fa_ratio - 0.2


def test_followup_tumour_grows_into_infiltration_zone(patient):
    subject, _ = patient
    fu, visible, zone = subject.followup_lesion, subject.lesion, subject.infiltration
    assert np.all(fu[visible])
    assert np.all(~fu | visible | zone)
    assert fu.sum() > visible.sum()
    assert subject.flair_followup is not None
    grown = fu & zone
    flair, flair_fu = _on_dwi_grid(subject, subject.flair), _on_dwi_grid(subject, subject.flair_followup)
    assert flair_fu[grown].mean() > 1.2 * flair[grown].mean()


def test_low_grade_grows_less_than_glioblastoma():
    grown = {}
    for grade in ("IV", "II"):
        s = simulate_subject(QUICK, 5, grade=grade, size_class="large", followup=True, structural=False)
        grown[grade] = (s.followup_lesion & s.infiltration).sum() / max(s.infiltration.sum(), 1)
    assert grown["IV"] > 1.5 * grown["II"]


def test_visible_lesion_is_bright_on_flair(patient):
    subject, _ = patient
    normal_wm = (subject.tissue[2] > 0.8) & (subject.tumour_dseg == 0)
    flair = _on_dwi_grid(subject, subject.flair)  # T1w/FLAIR have their own head pose
    assert flair[subject.tumour_dseg == 3].mean() > 1.3 * flair[normal_wm].mean()
    zone = subject.infiltration & (subject.tissue[2] > 0.5)
    assert flair[zone].mean() < 1.15 * flair[normal_wm].mean()  # invisible-ish


# -- the dataset -----------------------------------------------------------------

def test_cohort_is_bids_and_bit_identical(tmp_path):
    first = simulate_cohort(TINY, tmp_path / "a", progress=False, n_jobs=1)
    write_manifest(first, tmp_path / "a.sha256")
    second = simulate_cohort(TINY, tmp_path / "b", progress=False, n_jobs=2)
    assert verify_manifest(second, tmp_path / "a.sha256") == []

    desc = json.loads((first / "dataset_description.json").read_text())
    assert desc["Simulated"] is True and desc["SimulationConfig"]["voxel_size"] == 7.2
    rows = (first / "participants.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["participant_id", "group", "grade", "size_class", "followup", "seed"]
    assert len(rows) == 5
    dwi = nib.load(first / "sub-P01/ses-pre/dwi/sub-P01_ses-pre_dwi.nii.gz")
    assert dwi.shape == (30, 30, 18, 65) and dwi.get_data_dtype() == np.int16
    bvals = np.loadtxt(first / "sub-P01/ses-pre/dwi/sub-P01_ses-pre_dwi.bval")
    bvecs = np.loadtxt(first / "sub-P01/ses-pre/dwi/sub-P01_ses-pre_dwi.bvec")
    assert bvals.shape == (65,) and bvecs.shape == (3, 65)
    deriv = first / "derivatives/simulation/sub-P01/ses-pre/dwi"
    lesion = nib.load(deriv / "sub-P01_ses-pre_space-dwi_desc-lesion_mask.nii.gz")
    np.testing.assert_array_equal(lesion.affine, dwi.affine)
    assert (first / "sub-P01/ses-pre/anat/sub-P01_ses-pre_FLAIR.nii.gz").is_file()


def test_verify_manifest_reports_changed_and_extra_files(tmp_path):
    root = simulate_cohort(dataclasses.replace(TINY, n_patients=0, n_healthy=1), tmp_path / "c", progress=False)
    write_manifest(root, tmp_path / "m.sha256")
    (root / "participants.tsv").write_text("changed\n")
    (root / "extra.txt").write_text("x")
    problems = verify_manifest(root, tmp_path / "m.sha256")
    assert "changed: participants.tsv" in problems and "extra: extra.txt" in problems


def test_interrupted_run_leaves_no_cohort_and_resume_matches(tmp_path, monkeypatch):
    import dmrilib.simulate.cohort as cohort_mod

    config = dataclasses.replace(TINY, n_healthy=2, n_patients=1)
    clean = simulate_cohort(config, tmp_path / "clean", progress=False, n_jobs=1)
    write_manifest(clean, tmp_path / "clean.sha256")

    real = cohort_mod.write_subject
    calls = []

    def failing(root, label, subject):
        calls.append(label)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(root, label, subject)

    monkeypatch.setattr(cohort_mod, "write_subject", failing)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        simulate_cohort(config, out, progress=False, n_jobs=1)
    assert not out.exists()
    monkeypatch.setattr(cohort_mod, "write_subject", real)
    simulate_cohort(config, out, progress=False, n_jobs=1)
    assert verify_manifest(out, tmp_path / "clean.sha256") == []


def test_existing_other_cohort_is_not_overwritten(tmp_path):
    out = simulate_cohort(dataclasses.replace(TINY, n_patients=0, n_healthy=1), tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="Remove it"):
        simulate_cohort(dataclasses.replace(TINY, n_patients=0, n_healthy=1, seed=5), out, progress=False)


@pytest.mark.parametrize("voxel_size, shape, grid", [(4.8, (45, 45, 27), (32, 40, 32)),
                                                     (2.4, (90, 90, 54), (64, 80, 64))])
def test_brain_fits_network_grid_after_cropping(voxel_size, shape, grid):
    from dmrilib.simulate.anatomy import grid_affine, grid_coordinates, load_template, sample_template

    coords = grid_coordinates(shape, grid_affine(shape, voxel_size))
    brain = sample_template(load_template(voxel_size), coords).sum(0) > 0.5
    idx = np.argwhere(brain)
    extent = idx.max(0) - idx.min(0) + 1
    # one voxel of room for head pose and deformation (60 simulated quick
    # subjects span at most 31 x 38 x 26 voxels)
    assert np.all(extent + 1 <= np.array(grid)), extent
