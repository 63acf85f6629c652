"""Tumour realism (L3) of the simulated cohort: dmrilib.simulate.tumour_realism and lesion.

MD ratios are measured as :data:`dmrilib.simulate.realism.ACCEPTANCE` says
(dipy WLS DTI fit, true ``tumour_dseg`` labels, contralateral normal WM) on
thin 2.4 mm slabs through the tumour centre; the effects are checked on
4.8 mm subjects against the same subject with that effect off (each effect
draws from its own stream, so everything else is identical).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from dmrilib.simulate import CohortConfig, simulate_subject
from dmrilib.simulate import subject as subject_module
from dmrilib.simulate.anatomy import grid_affine
from dmrilib.simulate.realism import ACCEPTANCE
from dmrilib.simulate.tumour_realism import edema_severity, realistic_tumour

# Structural images in the diffusion scan's pose, undistorted: one grid for every array.
QUICK = dict(shape=(45, 45, 27), voxel_size=4.8, structural_pose_deg=0, structural_pose_mm=0, epi_distortion_mm=0)
ALL_ON = CohortConfig(**QUICK, realism="L0+tumour", haemorrhage_rate=1.0, cyst_rate=1.0, multifocal_rate=1.0,
                      remote_recurrence_rate=1.0)
SEED = 5
N_PATIENTS = 5


def _slab(config: CohortConfig, seed: int, grade: str, size_class: str, nz: int = 8):
    """A thin 2.4 mm slab (90 x 90 x nz) through the tumour centre."""
    streams = np.random.SeedSequence(seed).spawn(11)
    geometry = subject_module._geometry(config, np.random.default_rng(streams[0]), grade, size_class)
    centre = geometry.pose.to_scanner(geometry.tumour.centre[None].astype(np.float32))[0]
    affine = grid_affine((90, 90, 54), 2.4)
    affine[2, 3] += (round((centre[2] - affine[2, 3]) / 2.4) - nz // 2) * 2.4
    slab = dataclasses.replace(config, shape=(90, 90, nz))
    return simulate_subject(slab, seed, grade=grade, size_class=size_class, structural=False, affine=affine)


def _md_ratios(subject) -> dict[int, float]:
    """Median MD of each tumour_dseg label over the median MD of contralateral normal WM."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    fit = TensorModel(gradient_table(subject.bvals, bvecs=subject.bvecs), fit_method="WLS").fit(
        subject.dwi, mask=subject.brain_mask)
    md = np.nan_to_num(fit.md)
    idx = np.indices(subject.brain_mask.shape).reshape(3, -1).T
    x = (idx @ subject.affine[:3, :3].T + subject.affine[:3, 3])[:, 0].reshape(subject.brain_mask.shape)
    contra = np.sign(x) == -np.sign(subject.info["tumour_centre_mm"][0])
    normal = (subject.tissue[2] > 0.8) & (subject.tumour_dseg == 0) & contra
    ref = np.median(md[normal])
    t = subject.tumour_dseg
    return {k: float(np.median(md[t == k]) / ref) for k in (1, 2, 3) if (t == k).sum() >= 5}


@pytest.fixture(scope="module")
def ratios():
    """Measured MD ratios of WHO II and GBM patients with the tumour group on (2.4 mm slabs)."""
    config = CohortConfig(voxel_size=2.4, realism="L3")  # the shipped profiles' default level
    out = {}
    for grade in ("II", "IV"):
        rows = [_md_ratios(_slab(config, 100 + i, grade, "large" if i % 2 else "medium")) for i in range(N_PATIENTS)]
        out[grade] = {k: np.array([r[k] for r in rows if k in r]) for k in (1, 2, 3)}
    return out


def _band(name):
    band = ACCEPTANCE[name]
    return band.low, band.high


def test_md_ratios_in_literature_bands_and_in_the_right_order(ratios):
    who2, gbm_enh, gbm_edema = ratios["II"][3].mean(), ratios["IV"][2].mean(), ratios["IV"][3].mean()
    lo, hi = _band("lesion_md_ratio_II")
    assert lo <= who2 <= hi
    lo, hi = _band("lesion_md_ratio_IV_enhancing")
    assert lo <= gbm_enh <= hi
    lo, hi = _band("lesion_md_ratio_IV_edema")
    assert lo <= gbm_edema <= hi
    # Low-grade tumour diffuses more than GBM oedema, which diffuses more than the cellular rim.
    assert who2 > gbm_edema + 0.1 > gbm_enh + 0.2


def test_md_ratios_vary_between_patients(ratios):
    # At L0 every patient of a grade has the same values (CV ~1%); with five
    # patients the spread is a rough estimate, so the bounds are wider than the band's.
    lo, hi = _band("lesion_md_ratio_cv")
    for values in (ratios["II"][3], ratios["IV"][3], ratios["IV"][2]):
        cv = values.std() / values.mean()
        assert 0.5 * lo <= cv <= 1.5 * hi


def test_edema_severity_solves_for_the_md_ratio():
    assert edema_severity(1.0) == pytest.approx(0.0, abs=1e-9)
    ks = [edema_severity(r) for r in (1.4, 1.7, 2.0, 2.4)]
    assert all(a < b for a, b in zip(ks, ks[1:]))


def test_tumour_draws_only_from_its_stream_and_only_when_on():
    config = CohortConfig(**QUICK)
    streams = np.random.SeedSequence(SEED).spawn(11)
    geometry = subject_module._geometry(config, np.random.default_rng(streams[0]), "IV", "large")
    a = realistic_tumour(ALL_ON, geometry.tumour, geometry.deformation, 4.8, streams[subject_module.STREAM_TUMOUR])
    b = realistic_tumour(dataclasses.replace(ALL_ON, haemorrhage_rate=0.0), geometry.tumour, geometry.deformation,
                         4.8, streams[subject_module.STREAM_TUMOUR])
    assert a.realism.haemorrhage is not None and b.realism.haemorrhage is None
    assert a.realism.values == b.realism.values
    assert np.array_equal(a.realism.recurrence.centre, b.realism.recurrence.centre)
    assert geometry.tumour.realism is None


# -- the effects, at 4.8 mm ---------------------------------------------------------

@pytest.fixture(scope="module")
def gbm():
    return simulate_subject(ALL_ON, SEED, grade="IV", size_class="large", followup=True)


@pytest.fixture(scope="module")
def gbm_l0():
    return simulate_subject(CohortConfig(**QUICK), SEED, grade="IV", size_class="large", followup=True)


def _ball(subject, name, shrink=0.0):
    idx = np.indices(subject.brain_mask.shape).reshape(3, -1).T
    xyz = (idx @ subject.affine[:3, :3].T + subject.affine[:3, 3]).reshape(subject.brain_mask.shape + (3,))
    centre = np.asarray(subject.info[f"tumour_{name}_centre_mm"])
    radius = subject.info[f"tumour_{name}_radius_mm"]
    return np.linalg.norm(xyz - centre, axis=-1) < max(radius - shrink, 0.6 * subject.affine[0, 0])


def _voxel(subject, mm):
    return tuple(np.rint(np.linalg.solve(subject.affine[:3, :3], np.asarray(mm) - subject.affine[:3, 3])).astype(int))


def test_l0_arrays_unchanged_away_from_the_tumour(gbm, gbm_l0):
    for name in ("brain_mask", "dseg", "tissue", "dwi_to_structural"):
        assert np.array_equal(getattr(gbm, name), getattr(gbm_l0, name)), name
    near = ndimage.binary_dilation((gbm.tumour_dseg > 0) | (gbm_l0.tumour_dseg > 0), iterations=2)
    assert np.array_equal(gbm.dwi[~near], gbm_l0.dwi[~near])
    assert not np.array_equal(gbm.dwi[near], gbm_l0.dwi[near])
    assert "tumour_md_ratio_edema" not in gbm_l0.info and gbm.info["tumour_multifocal"]


def test_haemorrhage_is_dark_on_b0_and_bright_on_t1w(gbm):
    plain = simulate_subject(dataclasses.replace(ALL_ON, haemorrhage_rate=0.0), SEED, grade="IV", size_class="large")
    blob = _ball(gbm, "haemorrhage")
    assert blob.sum() >= 1
    assert gbm.dwi[..., 0][blob].mean() < 0.8 * plain.dwi[..., 0][blob].mean()
    assert gbm.t1w[blob].mean() > 1.1 * plain.t1w[blob].mean()
    assert np.array_equal(gbm.lesion, plain.lesion)  # still part of the visible tumour


def test_cyst_is_dark_on_flair_and_t1w():
    config = ALL_ON
    cyst = simulate_subject(config, SEED, grade="II", size_class="large")
    plain = simulate_subject(dataclasses.replace(config, cyst_rate=0.0), SEED, grade="II", size_class="large")
    blob = _ball(cyst, "cyst")
    assert blob.sum() >= 1
    assert cyst.flair[blob].mean() < 0.8 * plain.flair[blob].mean()
    assert cyst.t1w[blob].mean() < plain.t1w[blob].mean()


def test_second_focus_is_a_separate_visible_component(gbm):
    labelled, n = ndimage.label(gbm.lesion)
    assert n >= 2
    main = labelled[_voxel(gbm, gbm.info["tumour_centre_mm"])]
    focus = labelled[_voxel(gbm, gbm.info["tumour_focus_centre_mm"])]
    assert main > 0 and focus > 0 and focus != main


def test_treated_followup_cavity_gliosis_and_radiation_are_not_tumour(gbm):
    labelled, _ = ndimage.label(gbm.lesion)
    # The first focus's necrosis lies inside the resection cavity (the second focus is not resected).
    core = (gbm.tumour_dseg == 1) & (labelled == labelled[_voxel(gbm, gbm.info["tumour_centre_mm"])])
    assert core.sum() > 3 and not gbm.followup_lesion[core].any()
    normal_wm = (gbm.tissue[2] > 0.8) & (gbm.tumour_dseg == 0)
    assert gbm.flair_followup[core].mean() < 0.4 * gbm.flair_followup[normal_wm].mean()  # CSF-like
    assert gbm.flair_followup[core].mean() < 0.6 * gbm.flair[core].mean()
    # Around the cavity: white matter brighter at follow-up (gliosis, radiation) yet not tumour.
    ring = ndimage.binary_dilation(gbm.lesion, iterations=3) & ~gbm.lesion & (gbm.tissue[2] > 0.6) \
        & ~gbm.followup_lesion
    assert ring.sum() > 10
    assert gbm.flair_followup[ring].mean() > 1.05 * gbm.flair[ring].mean()


def test_remote_recurrence_lies_outside_the_infiltration_zone(gbm):
    site = _ball(gbm, "recurrence") & gbm.brain_mask
    assert site.sum() >= 1
    assert gbm.followup_lesion[site].all()
    assert not (gbm.infiltration[site] | gbm.lesion[site]).any()
    assert gbm.flair_followup[site].mean() > 1.15 * gbm.flair[site].mean()
