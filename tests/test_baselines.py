"""Tests of dmrilib.baselines: the normative FA/MD z-score map."""
from __future__ import annotations

import numpy as np
import pytest

from dmrilib import metrics
from dmrilib.baselines import NormativeBaseline, NormativeFit

SHAPE = (10, 12, 8)


def _healthy(n: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    fa = 0.45 + rng.normal(0, 0.02, (n, *SHAPE))
    md = 0.8e-3 + rng.normal(0, 0.03e-3, (n, *SHAPE))
    masks = np.zeros((n, *SHAPE), bool)
    masks[:, 1:-1, 1:-1, 1:-1] = True
    return fa.astype(np.float32), md.astype(np.float32), masks


def _patient(seed: int = 1):
    fa, md, masks = _healthy(1, seed)
    lesion = np.zeros(SHAPE, bool)
    lesion[3:7, 4:8, 2:6] = True
    fa, md = fa[0].copy(), md[0].copy()
    fa[lesion] -= 0.15  # tumour: lower anisotropy, higher diffusivity
    md[lesion] += 0.4e-3
    return fa, md, masks[0], lesion


def test_score_separates_simulated_lesion_from_healthy_tissue():
    fit = NormativeBaseline().fit(*_healthy())
    fa, md, brain, lesion = _patient()
    score = fit.score(fa, md, brain_mask=brain)
    assert score.shape == SHAPE and score.dtype == np.float32
    assert metrics.auroc(score, lesion, brain) > 0.95
    rows = {r["rule"]: r for r in metrics.evaluate_map(score, lesion, brain, model="normative")}
    assert rows["fixed"]["threshold"] == 3.0 and rows["fixed"]["dice_post"] > 0.8


def test_mean_subject_scores_zero_and_outside_support_is_zero():
    fa, md, masks = _healthy()
    fit = NormativeBaseline(smooth_sigma=0).fit(fa, md, masks)
    score = fit.score(fit.fa_mean, fit.md_mean)
    np.testing.assert_allclose(score[fit.support], 0.0, atol=1e-4)
    assert (score[~fit.support] == 0).all()
    assert not fit.support[0, 0, 0]


def test_z_scores_sign_follows_direction_of_change():
    fit = NormativeBaseline().fit(*_healthy())
    fa, md, _, lesion = _patient()
    z_fa, z_md = fit.z_scores(fa, md)
    assert z_fa[lesion].mean() < -3 and z_md[lesion].mean() > 3


def test_sd_floor_limits_scores_at_misaligned_borders():
    fa, md, masks = _healthy()
    # one subject's boundary shifted by a voxel: a near-zero sd elsewhere must not explode
    fa[:, 5, :, :] = 0.45
    fit = NormativeBaseline(smooth_sigma=0, sd_floor=0.5).fit(fa, md, masks)
    support_sd = fit.fa_sd[fit.support]
    assert support_sd.min() >= 0.5 * np.median(support_sd) - 1e-7


def test_batch_scoring_equals_per_subject_scoring():
    fit = NormativeBaseline(combine="max").fit(*_healthy())
    fa, md, _ = _healthy(3, seed=5)
    batch = fit.score(fa, md)
    for i in range(3):
        np.testing.assert_array_equal(batch[i], fit.score(fa[i], md[i]))


def test_fit_is_deterministic():
    a = NormativeBaseline().fit(*_healthy())
    b = NormativeBaseline().fit(*_healthy())
    assert isinstance(a, NormativeFit)
    np.testing.assert_array_equal(a.md_sd, b.md_sd)


def test_bad_inputs_are_clear_errors():
    fa, md, masks = _healthy()
    with pytest.raises(ValueError, match="same shape"):
        NormativeBaseline().fit(fa, md[:, :-1], masks)
    with pytest.raises(ValueError, match="at least"):
        NormativeBaseline().fit(fa[:1], md[:1], masks[:1])
    with pytest.raises(ValueError, match="combine"):
        NormativeBaseline(combine="mean")
    fa[0, 4, 4, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        NormativeBaseline().fit(fa, md, masks)
    fit = NormativeBaseline().fit(*_healthy())
    with pytest.raises(ValueError, match="fitted grid"):
        fit.score(fa[0, :-1], md[0, :-1])


def _phantom(rng, shift):
    """A white-matter ball in CSF, displaced by ``shift`` voxels (unregistered subjects)."""
    shape = (20, 20, 16)
    idx = np.indices(shape)
    centre = (np.array([10, 10, 8]) + shift).reshape(3, 1, 1, 1)
    wm = np.sqrt(((idx - centre) ** 2).sum(axis=0)) < 5
    fa = np.where(wm, 0.5, 0.1) + rng.normal(0, 0.02, shape)
    md = np.where(wm, 0.7e-3, 3e-3) + rng.normal(0, 0.03e-3, shape)
    return fa, md


def test_smoothing_keeps_misaligned_tissue_borders_from_dominating():
    rng = np.random.default_rng(0)
    train = [_phantom(rng, rng.integers(-1, 2, 3)) for _ in range(8)]
    fa, md = np.stack([t[0] for t in train]), np.stack([t[1] for t in train])
    masks = np.ones(fa.shape, bool)
    tests = [_phantom(rng, rng.integers(-1, 2, 3)) for _ in range(4)]
    raw = NormativeBaseline(smooth_sigma=0, sd_floor=0).fit(fa, md, masks)
    guarded = NormativeBaseline().fit(fa, md, masks)
    flagged_raw = np.mean([np.mean(raw.score(*t) >= 3) for t in tests])
    flagged = np.mean([np.mean(guarded.score(*t) >= 3) for t in tests])
    assert flagged < 0.5 * flagged_raw
    assert max(guarded.score(*t).max() for t in tests) < 10
