"""Population realism (L1): L0 unchanged, each effect acts, the cohort meets the literature bands."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dmrilib.simulate import CohortConfig, simulate_subject
from dmrilib.simulate.population import draw_population, population_on
from dmrilib.simulate.realism import ACCEPTANCE
from dmrilib.simulate.subject import STREAM_POPULATION

COARSE = CohortConfig(shape=(45, 45, 27), voxel_size=4.8)
N_CONTROLS = 8


def _draw(config, seed, age=None):
    streams = np.random.SeedSequence(seed).spawn(11)
    return draw_population(config, np.random.default_rng(streams[STREAM_POPULATION]), age)


def _dti(subject, mask):
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    gtab = gradient_table(subject.bvals, bvecs=subject.bvecs)
    fit = TensorModel(gtab, fit_method="WLS").fit(subject.dwi, mask=mask)
    return np.nan_to_num(fit.fa), np.nan_to_num(fit.md)


def _band(name, value):
    band = ACCEPTANCE[name]
    return band.low <= value <= band.high


def _cv(values):
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1) / values.mean())


def _mm(subject):
    idx = np.indices(subject.tissue.shape[1:]).reshape(3, -1).T
    return (idx @ subject.affine[:3, :3].T + subject.affine[:3, 3]).reshape(subject.tissue.shape[1:] + (3,))


# -- the group is off at L0 and draws nothing -----------------------------------

def test_population_off_at_l0_and_on_at_l1():
    assert not population_on(CohortConfig())
    assert _draw(CohortConfig(), 3) is None
    assert population_on(CohortConfig(realism="L1"))
    assert population_on(CohortConfig(wmh_per_decade=2.0))  # one written field switches the group on
    assert not population_on(CohortConfig(realism="L0+acquisition"))


def test_l0_subject_has_no_population_info():
    subject = simulate_subject(COARSE, 2, structural=False)
    assert "age" not in subject.info and "wmh_count" not in subject.info


def test_other_streams_unchanged_by_the_population_group():
    """Switching the group on leaves the pose, SNR and noise draws of the subject as they were."""
    a = simulate_subject(COARSE, 4, structural=False)
    b = simulate_subject(dataclasses.replace(COARSE, realism="L1"), 4, structural=False)
    assert a.snr == b.snr
    assert a.info["head_rotation"] == b.info["head_rotation"]
    assert not np.array_equal(a.tissue, b.tissue)


# -- each effect does something --------------------------------------------------

def test_age_given_or_drawn_in_range():
    cfg = CohortConfig(realism="L1")
    ages = [_draw(cfg, s).age for s in range(40)]
    assert min(ages) >= 25 and max(ages) <= 80 and np.std(ages) > 10
    assert _draw(cfg, 1, age=61.0).age == 61.0
    assert _draw(CohortConfig(radial_scale_sd=0.05), 1).age is None  # L0's age_range: no age


def test_diffusivity_factors_spread_and_age():
    cfg = CohortConfig(realism="L1", age_range=(30.0, 30.0))
    draws = [_draw(cfg, s) for s in range(400)]
    ax, rad = np.log([d.axial for d in draws]), np.log([d.radial for d in draws])
    assert abs(ax.std() - cfg.axial_scale_sd) < 0.006 and abs(rad.std() - cfg.radial_scale_sd) < 0.008
    old = [_draw(cfg, s, age=75.0) for s in range(400)]
    # RD +0.4%/year and AD +0.1%/year over 45: at 75, +12% and +3%.
    assert np.mean([d.radial for d in old]) / np.mean([d.radial for d in draws]) == pytest.approx(1.12, abs=0.01)
    assert np.mean([d.axial for d in old]) / np.mean([d.axial for d in draws]) == pytest.approx(1.03, abs=0.01)
    pts = np.random.default_rng(0).uniform(-60, 60, (2000, 3)).astype(np.float32)
    par, _ = draws[0].diffusivity(pts)
    assert 0.02 < np.std(np.log(par)) < 0.07  # tract_scale_sd 0.04 over the brain


def test_head_and_ventricle_volume_spread():
    cfg = CohortConfig(realism="L1")
    draws = [_draw(cfg, s) for s in range(600)]
    head = np.array([d.head_scale**3 for d in draws])
    assert _band("brain_volume_cv", _cv(head))
    vent = np.array([d.ventricle_factor for d in draws])
    assert _cv(vent) >= 0.4
    ages = np.array([d.age for d in draws])
    assert np.corrcoef(ages, np.log(vent))[0, 1] > 0.4  # ventricles enlarge with age


def test_warp_inverse_and_reach():
    cfg = CohortConfig(realism="L1")
    pop = dataclasses.replace(_draw(cfg, 5), head_scale=1.08, ventricle_strength=0.6)
    pts = np.random.default_rng(1).uniform(-70, 80, (5000, 3)).astype(np.float32)
    back = pop.inverse(pop.warp(pts))
    assert np.abs(back - pts).max() < 1e-2
    assert np.sqrt(((pop.warp(pts) - pts) ** 2).sum(-1)).max() <= pop.reach_mm


@pytest.fixture(scope="module")
def focal():
    """A 4.8 mm subject of age 80 with several WMH and a lacune, and the same seed with them removed."""
    # Structural images in the DWI's pose, undistorted: the same voxel shows the same anatomy.
    cfg = dataclasses.replace(COARSE, realism="L1", wmh_per_decade=3.0, incidental_rate=1.0, structural_pose_deg=0.0,
                              structural_pose_mm=0.0, epi_distortion_mm=0.0)
    with_lesions = simulate_subject(cfg, 21, age=80.0)
    without = simulate_subject(dataclasses.replace(cfg, wmh_per_decade=0.0, incidental_rate=0.0), 21, age=80.0)
    return with_lesions, without


def test_wmh_and_lacune_recorded_not_labelled(focal):
    subject, clean = focal
    assert subject.info["wmh_count"] >= 5 and subject.info["lacune_count"] == 1
    assert 3.0 <= subject.info["lacune_diameter_mm"][0] <= 12.0
    assert subject.info["hyperintensity_volume_mm3"] > 500
    assert not subject.lesion.any() and not subject.tumour_dseg.any() and not subject.structural_lesion.any()
    assert clean.info["wmh_count"] == 0 and clean.info["hyperintensity_volume_mm3"] == 0


def test_wmh_raise_md_lower_fa_and_brighten_flair(focal):
    subject, clean = focal
    changed = np.abs(subject.flair - clean.flair) > 0.2 * np.abs(clean.flair).mean()
    brain = subject.brain_mask & clean.brain_mask & (subject.tissue[2] > 0.5) & (clean.tissue[2] > 0.5)
    spots = changed & brain & (subject.flair > clean.flair)
    assert spots.sum() >= 3
    fa, md = _dti(subject, spots)
    fa0, md0 = _dti(clean, spots)
    assert np.median(md[spots] / md0[spots]) > 1.15
    assert np.median(fa[spots] / fa0[spots]) < 0.92
    assert np.median(subject.t1w[spots] / clean.t1w[spots]) < 1.0


def test_lacune_is_a_fluid_cavity(focal):
    subject, clean = focal
    gained = subject.tissue[0] - clean.tissue[0]
    assert gained.max() > 0.4  # CSF replaces tissue in the cavity
    core = gained > 0.4
    assert np.all(subject.flair[core] < clean.flair[core])  # dark centre on FLAIR


# -- the cohort at 2.4 mm meets the literature bands -----------------------------

@pytest.fixture(scope="module")
def controls():
    # The default level of the shipped profiles (L3): acquisition effects (SNR
    # spread, noise map, motion, ringing) are part of what a DTI fit measures.
    cfg = CohortConfig(realism="L3")
    out = []
    for seed in range(100, 100 + N_CONTROLS):
        s = simulate_subject(cfg, seed, structural=False)
        csf = s.tissue[0]
        wm_label = (np.argmax(s.tissue, axis=0) == 2) & s.brain_mask
        fa, md = _dti(s, wm_label | (csf > 0.9))
        xyz = _mm(s)
        ventricles = (csf > 0.5) & (np.abs(xyz[..., 0]) < 30) & (xyz[..., 2] > -15)
        out.append(dict(fa=np.median(fa[wm_label]), md=np.median(md[wm_label]), csf_md=np.median(md[csf > 0.9]),
                        brain=float(s.tissue.sum()), ventricles=int(ventricles.sum()),
                        head=s.info["head_volume_factor"], vfactor=s.info["ventricle_volume_factor"]))
    return out


def test_control_wm_fa_and_spread_in_bands(controls):
    fa = [c["fa"] for c in controls]
    assert _band("wm_fa_median", float(np.mean(fa)))
    assert _band("wm_fa_cv", _cv(fa))
    assert _band("wm_md_cv", _cv([c["md"] for c in controls]))
    assert _band("ventricle_md", float(np.median([c["csf_md"] for c in controls])))


def test_brain_and_ventricle_volumes_follow_the_draws(controls):
    brain = np.log([c["brain"] for c in controls])
    head = np.log([c["head"] for c in controls])
    # The field of view cuts the lower cerebellum: the measured volume grows
    # as the head volume to a power ~0.8 (2.4 of 3 for a linear scale).
    slope = np.polyfit(head, brain, 1)[0]
    assert 0.6 < slope < 1.1
    vent = np.log([c["ventricles"] for c in controls])
    assert np.corrcoef(vent, np.log([c["vfactor"] for c in controls]))[0, 1] > 0.7
