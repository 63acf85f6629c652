"""Tests of dmrilib.metrics: cross-checks with scikit-learn/scikit-image/scipy, properties, edge cases."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.measure import block_reduce
from sklearn import metrics as skm

from dmrilib import metrics as M
from dmrilib.metrics import EvalConfig

from _score_maps import SHAPE
from _score_maps import score_case as _case


# ----------------------------------------------------------------- cross-checks


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_roc_and_ap_match_scikit_learn(ties):
    score, truth, mask = _case(1, ties=ties)
    y, s = truth[mask], score[mask]
    assert M.auroc(score, truth, mask) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert M.average_precision(score, truth, mask) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    fpr, tpr, thr = M.roc_curve(score, truth, mask)
    rf, rt, rthr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, rf)
    np.testing.assert_allclose(tpr, rt)
    np.testing.assert_allclose(thr[1:], rthr[1:])
    assert np.isinf(thr[0])


def test_detection_scores_equal_single_functions():
    score, truth, mask = _case(2)
    d = M.detection_scores(score, truth, mask)
    assert d == {"auroc": M.auroc(score, truth, mask), "ap": M.average_precision(score, truth, mask)}


def test_otsu_rule_matches_scikit_image_on_brain_masked_map():
    score, truth, mask = _case(3)
    th = M.THRESHOLD_RULES["otsu"](score, None, mask)
    assert th.value == pytest.approx(threshold_otsu(score[mask].astype(np.float64)))
    assert th.supervised is False


def test_pooled_maximum_with_block_stride_matches_block_reduce():
    rng = np.random.default_rng(4)
    arr = rng.random((16, 24, 8))
    ref = block_reduce(arr, (8, 8, 8), np.mean).max()
    assert M.pooled_maximum(arr, 8, stride=8) == pytest.approx(ref)


def test_pooled_maximum_sliding_matches_uniform_filter():
    rng = np.random.default_rng(5)
    arr = rng.random((11, 9, 13))
    k = 4
    full = ndimage.uniform_filter(arr, size=k, mode="constant")
    # uniform_filter centres even windows at k//2; keep only windows fully inside
    lo = k // 2
    valid = full[lo:lo + arr.shape[0] - k + 1, lo:lo + arr.shape[1] - k + 1, lo:lo + arr.shape[2] - k + 1]
    assert M.pooled_maximum(arr, k) == pytest.approx(valid.max())


def test_pooled_maximum_clips_window_larger_than_map():
    arr = np.arange(24.0).reshape(2, 3, 4)
    assert M.pooled_maximum(arr, 16) == pytest.approx(arr.mean())


@pytest.mark.parametrize("size", [3, 5])
def test_opening_matches_scipy_binary_opening(size):
    rng = np.random.default_rng(size)
    b = rng.random((15, 13, 11)) > 0.35
    ref = ndimage.binary_opening(b, np.ones((size,) * 3, bool))
    np.testing.assert_array_equal(M.opening(b, size), ref)


def test_opening_removes_isolated_voxel_keeps_cube():
    b = np.zeros((10, 10, 10), bool)
    b[1, 1, 1] = True
    b[4:8, 4:8, 4:8] = True
    out = M.opening(b, 3)
    assert not out[1, 1, 1] and out[4:8, 4:8, 4:8].all()
    np.testing.assert_array_equal(M.opening(b, 1), b)


def test_postprocess_drops_components_below_min_size():
    b = np.zeros((12, 12, 12), bool)
    b[1:4, 1:4, 1:4] = True  # 27 voxels
    b[6:11, 6:11, 6:11] = True  # 125 voxels
    out = M.postprocess(b, opening_size=3, min_component_size=50)
    assert not out[2, 2, 2] and out[8, 8, 8]


def test_dice_known_value_and_mask():
    a = np.array([1, 1, 0, 0], bool)
    b = np.array([1, 0, 1, 0], bool)
    assert M.dice(a, b) == pytest.approx(0.5)
    assert M.dice(a, b, mask=np.array([1, 0, 0, 1], bool)) == pytest.approx(1.0)
    assert M.dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    assert M.dice(np.zeros(3, bool), np.ones(3, bool)) == 0.0


# ----------------------------------------------------------------- threshold rules


def test_youden_threshold_maximises_tpr_minus_fpr_like_scikit_learn():
    score, truth, mask = _case(6)
    th = M.THRESHOLD_RULES["youden"](score, truth, mask)
    fpr, tpr, thr = skm.roc_curve(truth[mask], score[mask], drop_intermediate=False)
    assert th.value == pytest.approx(thr[np.argmax(tpr - fpr)])
    assert th.supervised is True


def test_dice_optimal_threshold_beats_every_other_threshold():
    score, truth, mask = _case(7, ties=True)
    th = M.THRESHOLD_RULES["dice_optimal"](score, truth, mask)
    best = M.dice(score >= th.value, truth, mask)
    for t in np.unique(score[mask]):
        assert M.dice(score >= t, truth, mask) <= best + 1e-12


def test_fixed_rule_uses_configured_value_per_model():
    score, truth, mask = _case(8)
    cfg = EvalConfig(fixed_thresholds={"dae": 0.25})
    assert M.THRESHOLD_RULES["fixed"](score, None, mask, model="dae", config=cfg).value == 0.25
    assert M.THRESHOLD_RULES["fixed"](score, None, mask, model="recdisc", config=cfg).value == 0.5
    assert math.isnan(M.THRESHOLD_RULES["fixed"](score, None, mask, model="other").value)


def test_supervised_rule_without_truth_is_a_clear_error():
    score, _, mask = _case(9)
    with pytest.raises(ValueError, match="supervised"):
        M.THRESHOLD_RULES["youden"](score, None, mask)


def test_healthy_fpr_threshold_flags_at_most_the_fraction():
    rng = np.random.default_rng(10)
    maps = np.round(rng.random((3, 8, 8, 8)), 2).astype(np.float32)  # many ties, float32 like real maps
    masks = rng.random((3, 8, 8, 8)) > 0.2
    out = M.healthy_fpr_thresholds(maps, masks, (0.01, 0.05, 0.1))
    assert list(out) == ["healthy_fpr_01", "healthy_fpr_05", "healthy_fpr_10"]
    v = maps[masks]
    for key, q in zip(out, (0.01, 0.05, 0.1)):
        frac = np.mean(v >= out[key])
        assert frac <= q
        # and it is the smallest such threshold among the observed scores
        below = v[v < out[key]]
        if below.size:
            assert np.mean(v >= below.max()) > q


def test_evaluate_map_rows_have_every_rule_and_contract_columns():
    score, truth, mask = _case(11)
    healthy = {"healthy_fpr_05": 0.45}
    rows = M.evaluate_map(score, truth, mask, model="dae", healthy_thresholds=healthy)
    assert [r["rule"] for r in rows] == [*M.THRESHOLD_RULES, "healthy_fpr_05"]
    for r in rows:
        assert set(r) == {"rule", "threshold", "supervised", "dice", "dice_post"}
        assert 0.0 <= r["dice"] <= 1.0 and 0.0 <= r["dice_post"] <= 1.0
        assert r["supervised"] == (r["rule"] in ("youden", "dice_optimal"))
    by = {r["rule"]: r for r in rows}
    assert by["fixed"]["threshold"] == 0.3
    assert by["dice_optimal"]["dice"] >= max(r["dice"] for r in rows) - 1e-12


def test_evaluate_map_dice_post_equals_manual_opening():
    score, truth, mask = _case(12)
    rows = M.evaluate_map(score, truth, mask, model="recdisc", rules=["fixed"])
    binary = (score >= 0.5) & mask
    post = ndimage.binary_opening(binary, np.ones((3, 3, 3), bool))
    assert rows[0]["dice"] == pytest.approx(M.dice(binary, truth, mask))
    assert rows[0]["dice_post"] == pytest.approx(M.dice(post, truth, mask))


# ----------------------------------------------------------------- properties


# scores on a coarse grid, so that the transform below stays strictly monotone in floating point
_maps = hnp.arrays(np.int64, (5, 4, 3), elements=st.integers(-40, 40)).map(lambda a: a / 4.0)


@settings(max_examples=40, deadline=None)
@given(score=_maps, seed=st.integers(0, 1000))
def test_auroc_unchanged_by_monotone_transform(score, seed):
    rng = np.random.default_rng(seed)
    truth = rng.random(score.shape) > 0.6
    mask = np.ones(score.shape, bool)
    a = M.auroc(score, truth, mask)
    b = M.auroc(np.exp(score / 5.0) * 3.0 + 1.0, truth, mask)
    if math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == pytest.approx(b, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(a=hnp.arrays(bool, (4, 5, 3)), b=hnp.arrays(bool, (4, 5, 3)))
def test_dice_is_symmetric_and_in_unit_interval(a, b):
    d = M.dice(a, b)
    assert d == M.dice(b, a)
    assert 0.0 <= d <= 1.0


@settings(max_examples=40, deadline=None)
@given(score=_maps, seed=st.integers(0, 1000))
def test_thresholds_lie_inside_the_maps_range(score, seed):
    rng = np.random.default_rng(seed)
    truth = rng.random(score.shape) > 0.5
    mask = np.ones(score.shape, bool)
    cfg = EvalConfig(pool_size=2, pool_stride=1)
    for name, rule in M.THRESHOLD_RULES.items():
        if name == "fixed":
            continue
        t = rule(score, truth, mask, config=cfg).value
        if not math.isnan(t):
            assert score.min() <= t <= score.max(), name
    # blocks are zero-padded (block_reduce): the zeros are part of what is averaged
    t = M.THRESHOLD_RULES["pool_max"](score, truth, mask, config=EvalConfig(pool_size=2, pool_stride="block")).value
    assert min(score.min(), 0.0) <= t <= max(score.max(), 0.0)


# ----------------------------------------------------------------- edge cases


def test_empty_ground_truth_gives_nan_auroc_and_supervised_rules():
    score, _, mask = _case(13)
    truth = np.zeros(SHAPE, bool)
    assert math.isnan(M.auroc(score, truth, mask))
    assert math.isnan(M.average_precision(score, truth, mask))
    rows = {r["rule"]: r for r in M.evaluate_map(score, truth, mask, model="dae")}
    assert math.isnan(rows["youden"]["threshold"]) and math.isnan(rows["youden"]["dice"])
    assert 0.0 <= rows["otsu"]["dice"] <= 1.0


def test_constant_map_gives_half_auroc_and_defined_thresholds():
    _, truth, mask = _case(14)
    score = np.full(SHAPE, 0.2, np.float32)
    assert M.auroc(score, truth, mask) == 0.5
    rows = {r["rule"]: r for r in M.evaluate_map(score, truth, mask, model="dae")}
    assert rows["otsu"]["threshold"] == pytest.approx(0.2)
    # the pooled map is zero outside the brain, so windows at the border average lower
    assert 0.0 < rows["pool_max"]["threshold"] <= 0.2 + 1e-7
    assert all(0.0 <= r["dice"] <= 1.0 for r in rows.values())


def test_nan_inside_mask_is_a_clear_error():
    score, truth, mask = _case(15)
    score[5, 5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.auroc(score, truth, mask)
    score2, truth2, mask2 = _case(15)
    score2[0, 0, 0] = np.nan  # outside the mask: ignored
    assert not math.isnan(M.auroc(score2, truth2, mask2))


def test_mismatched_shapes_and_empty_mask_are_clear_errors():
    score, truth, mask = _case(16)
    with pytest.raises(ValueError, match="shape"):
        M.auroc(score[:-1], truth, mask)
    with pytest.raises(ValueError, match="truth has shape"):
        M.evaluate_map(score, truth[:, :-1], mask, model="dae")
    with pytest.raises(ValueError, match="no voxels"):
        M.evaluate_map(score, truth, np.zeros(SHAPE, bool), model="dae")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="best_by"):
        EvalConfig(best_by="auroc")
    with pytest.raises(ValueError, match="opening_size"):
        EvalConfig(opening_size=2)
    assert EvalConfig(healthy_fprs=[0.02]).healthy_fprs == (0.02,)
    for bad in ({"fidelity": "article"}, {"threshold_region": "csf"}, {"aggregate": "mean"},
                {"pool_stride": 0}, {"pool_stride": "blocks"}, {"pool_stride": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EvalConfig(**bad)


# ----------------------------------------------------------------- fidelity: code vs paper


def test_fidelity_sets_the_defaults_and_explicit_keys_win():
    from dmrilib.config import config_hash

    code, paper = EvalConfig(), EvalConfig(fidelity="paper")
    assert (code.fidelity, code.threshold_region, code.pool_stride, code.aggregate) == \
        ("code", "eroded_brain_no_csf", "block", "per_fold")
    assert (paper.threshold_region, paper.pool_stride, paper.aggregate) == ("brain", 1, "pooled")
    mixed = EvalConfig(fidelity="paper", pool_stride="block", aggregate="per_fold")
    assert (mixed.threshold_region, mixed.pool_stride, mixed.aggregate) == ("brain", "block", "per_fold")
    assert EvalConfig(threshold_region="wmgm").pool_stride == "block"
    # the resolved values are the fields: every config hash of them changes with them
    hashes = {config_hash(c) for c in (code, paper, mixed, EvalConfig(fidelity="paper", aggregate="per_fold"))}
    assert len(hashes) == 4


def _region_case():
    """Brain box with a CSF slab inside and a bright rim (edge artefact) along the brain border."""
    shape = (20, 20, 20)
    rng = np.random.default_rng(30)
    brain = np.zeros(shape, bool)
    brain[2:18, 2:18, 2:18] = True
    csf = brain.copy()
    csf[6:] = False
    tissue = brain & ~csf
    truth = np.zeros(shape, bool)
    truth[10:14, 8:12, 8:12] = True
    score = rng.random(shape) * 0.2 + truth * 0.5
    score[csf] = 0.9
    rim = brain & ~ndimage.binary_erosion(brain, np.ones((3, 3, 3), bool)) & tissue
    score[rim] = 0.7
    score[~brain] = 0.0
    return score.astype(np.float32), truth, brain, tissue


def test_eroded_region_is_the_brain_eroded_by_a_cube_without_csf():
    score, truth, brain, tissue = _region_case()
    mask, region = M.evaluation_regions(brain, tissue, "eroded_brain_no_csf")
    expected = ndimage.binary_erosion(brain, structure=np.ones((3, 3, 3))) & tissue
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(region, expected)
    mask, region = M.evaluation_regions(brain, tissue, "brain")
    assert (mask == tissue).all() and (region == brain).all()
    mask, region = M.evaluation_regions(brain, tissue, "wmgm")
    assert (mask == tissue).all() and (region == tissue).all()
    with pytest.raises(ValueError, match="eroded by a 3x3x3 cube holds no"):
        M.evaluation_regions(np.ones((2, 2, 2), bool), np.ones((2, 2, 2), bool))


def test_threshold_region_switch_changes_otsu_threshold_and_dice():
    score, truth, brain, tissue = _region_case()
    out = {}
    for region_name in ("eroded_brain_no_csf", "brain"):
        cfg = EvalConfig(threshold_region=region_name)
        mask, region = M.evaluation_regions(brain, tissue, cfg.threshold_region)
        rows = M.evaluate_map(score, truth, mask, model="dae", config=cfg, brain_mask=region, rules=["otsu"])
        out[region_name] = rows[0]
    code, old = out["eroded_brain_no_csf"], out["brain"]
    # the authors' region holds no CSF and no rim: Otsu splits tissue from lesion
    assert 0.15 <= code["threshold"] <= 0.5 and code["dice"] > 0.8
    # the whole brain: Otsu also sees CSF and rim, and the flagged rim is scored as false positives
    assert code["threshold"] != old["threshold"] and old["dice"] < 0.3


def test_pool_stride_block_splits_a_hot_cube_that_the_sliding_window_finds():
    score = np.full((8, 8, 8), 0.1, np.float32)
    truth = np.zeros(score.shape, bool)
    truth[2:6, 2:6, 2:6] = True
    score[truth] = 1.0
    score[6:, 6:, 6:] = 0.6  # a fainter blob beside the lesion
    mask = np.ones(score.shape, bool)
    rows = {stride: M.evaluate_map(score, truth, mask, model="dae", rules=["pool_max"],
                                   config=EvalConfig(pool_size=4, pool_stride=stride))[0]
            for stride in ("block", 1)}
    # each 4^3 block holds one eighth of the lesion; the one with the blob averages (8 + 8*0.6 + 48*0.1)/64
    assert rows["block"]["threshold"] == pytest.approx(0.275)
    assert rows[1]["threshold"] == pytest.approx(1.0)  # a sliding window covers the lesion whole
    assert rows["block"]["dice"] == pytest.approx(2 * 64 / (64 + 72))  # the blob is flagged too
    assert rows[1]["dice"] == pytest.approx(1.0)


def test_block_pooled_maximum_zero_pads_like_block_reduce():
    rng = np.random.default_rng(31)
    arr = rng.random((13, 18, 7))
    ref = block_reduce(arr, (4, 4, 4), np.mean, cval=0).max()
    assert M.pooled_maximum(arr, 4, stride="block") == pytest.approx(ref)
    small = arr[:, :16]  # one block, mostly padding
    assert M.pooled_maximum(small, 16, stride="block") == pytest.approx(small.sum() / 16**3)


# ----------------------------------------------------------------- tables and statistics


def _dice_table(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for model, variants, base in (("dae", ["lsd16-linear", "lsd512-sigmoid"], 0.4),
                                  ("recdisc", ["mix-mix-half", "normal-directional-full"], 0.6)):
        for vi, variant in enumerate(variants):
            for fold in range(2):
                for s in range(8):
                    for rule in ("fixed", "otsu"):
                        d = float(np.clip(base + 0.1 * vi + rng.normal(0, 0.05), 0, 1))
                        rows.append({"model": model, "variant": variant, "fold": fold, "subject": f"sub-P{s:02d}",
                                     "rule": rule, "threshold": 0.3, "dice": d, "dice_post": d + 0.01,
                                     "auroc": 0.7 + 0.1 * vi + rng.normal(0, 0.01), "ap": 0.5})
    return pd.DataFrame(rows)


def test_bootstrap_ci_is_reproducible_and_contains_the_mean():
    x = np.random.default_rng(0).normal(0.5, 0.1, 30)
    a = M.bootstrap_ci(x, n_boot=500, seed=3)
    assert a == M.bootstrap_ci(x, n_boot=500, seed=3)
    assert a != M.bootstrap_ci(x, n_boot=500, seed=4)
    assert a[0] < x.mean() < a[1]
    assert all(math.isnan(v) for v in M.bootstrap_ci([np.nan]))


def test_summarise_reports_mean_sd_ci_n_per_group():
    df = _dice_table()
    s = M.summarise(df, ["model", "variant", "rule"], ["dice"], EvalConfig(n_bootstrap=200))
    assert list(s.columns) == ["model", "variant", "rule", "metric", "mean", "sd", "ci_low", "ci_high", "n"]
    assert len(s) == 8 and (s["n"] == 16).all()
    assert (s["ci_low"] <= s["mean"]).all() and (s["mean"] <= s["ci_high"]).all()


def test_table_auroc_sorted_ascending_with_parsed_variants():
    t = M.table_auroc(_dice_table(), "dae", EvalConfig(n_bootstrap=100))
    assert list(t.index) == [1, 2]
    assert t["auroc_mean"].is_monotonic_increasing
    assert list(t["lsd"]) == ["16", "512"] and "±" in t["AUC"].iloc[0]


def test_table_dice_picks_best_variant_per_model():
    t = M.table_dice(_dice_table(), "otsu", EvalConfig(n_bootstrap=100))
    assert list(t["model"]) == ["dae", "recdisc"]
    assert list(t["variant"]) == ["lsd512-sigmoid", "normal-directional-full"]
    assert {"threshold", "dice_mean", "dice_post_ci_low", "Dice postprocessed"} <= set(t.columns)


def test_summarise_by_group_joins_participants():
    df = _dice_table()
    parts = pd.DataFrame({"participant_id": [f"sub-P{s:02d}" for s in range(8)],
                          "size_class": ["large", "small"] * 4})
    s = M.summarise_by_group(df, parts, "fixed", group="size_class", config=EvalConfig(n_bootstrap=50))
    assert set(s["size_class"]) == {"large", "small"}


def test_paired_wilcoxon_between_best_variants():
    res = M.paired_wilcoxon(_dice_table(), "fixed", config=EvalConfig(n_bootstrap=10))
    assert res["n"] == 8 and res["median_difference"] < 0
    assert 0.0 <= res["pvalue"] < 0.05


def test_aggregate_per_fold_averages_fold_means_and_population_sds():
    rows = [{"model": "dae", "variant": "lsd16-linear", "fold": f, "subject": f"sub-P{s}", "rule": "otsu",
             "threshold": 0.3, "dice": v, "dice_post": v, "auroc": v}
            for f, values in ((0, [0.1, 0.3]), (1, [0.5, 0.7])) for s, v in enumerate(values)]
    df = pd.DataFrame(rows)
    per_fold = M.summarise(df, [], ["dice"], EvalConfig(aggregate="per_fold", n_bootstrap=20)).iloc[0]
    pooled = M.summarise(df, [], ["dice"], EvalConfig(aggregate="pooled", n_bootstrap=20)).iloc[0]
    assert per_fold["mean"] == pytest.approx(0.4) and pooled["mean"] == pytest.approx(0.4)
    assert per_fold["sd"] == pytest.approx(0.1)  # pstdev 0.1 in each fold, averaged
    assert pooled["sd"] == pytest.approx(np.std([0.1, 0.3, 0.5, 0.7], ddof=1))
    assert per_fold["n"] == pooled["n"] == 4
    t_fold = M.table_dice(df, "otsu", EvalConfig(n_bootstrap=20))  # code: per fold
    t_pool = M.table_dice(df, "otsu", EvalConfig(fidelity="paper", n_bootstrap=20))
    assert t_fold["dice_sd"].iloc[0] == pytest.approx(0.1) and t_pool["dice_sd"].iloc[0] > 0.25
    assert M.table_auroc(df, "dae", EvalConfig(n_bootstrap=20))["auroc_sd"].iloc[0] == pytest.approx(0.1)


def test_aggregate_per_fold_weighs_folds_equally_when_picking_the_best_variant():
    # variant a: one patient at 1.0 in fold 0, three at 0.0 in fold 1; b: 0.4 everywhere
    rows = [{"model": "dae", "variant": "lsd16-linear", "fold": f, "subject": f"sub-P{s}", "rule": "otsu",
             "dice": v, "dice_post": v} for f, s, v in ((0, 0, 1.0), (1, 1, 0.0), (1, 2, 0.0), (1, 3, 0.0))]
    rows += [{"model": "dae", "variant": "lsd32-linear", "fold": f, "subject": f"sub-P{s}", "rule": "otsu",
              "dice": 0.4, "dice_post": 0.4} for f in (0, 1) for s in range(4)]
    df = pd.DataFrame(rows)
    assert M.best_variants(df, "otsu", EvalConfig(aggregate="per_fold")) == {"dae": "lsd16-linear"}  # 0.5 > 0.4
    assert M.best_variants(df, "otsu", EvalConfig(aggregate="pooled")) == {"dae": "lsd32-linear"}  # 0.25 < 0.4


# ----------------------------------------------------------------- follow-up, densities


def test_followup_colocalisation_counts_flagged_outside_lesion():
    shape = (16, 16, 16)
    mask = np.ones(shape, bool)
    lesion = np.zeros(shape, bool)
    lesion[2:6, 2:6, 2:6] = True
    follow = np.zeros(shape, bool)
    follow[9:14, 9:14, 9:14] = True
    score = np.zeros(shape, np.float32)
    score[2:6, 2:6, 2:6] = 1.0
    score[10:13, 10:13, 10:13] = 1.0  # 27 voxels outside the lesion, inside the follow-up lesion
    out = M.followup_colocalisation(score, 0.5, lesion, follow, mask, opening_size=3, min_mismatch_size=10)
    assert out["flagged_outside"] == 27 and out["fraction_in_followup"] == 1.0
    assert out["mismatch"] and out["mismatch_in_followup"]
    none = M.followup_colocalisation(score * lesion, 0.5, lesion, follow, mask)
    assert none["flagged_outside"] == 0 and not none["mismatch"] and math.isnan(none["fraction_in_followup"])


def test_score_densities_integrate_to_one():
    score, truth, mask = _case(17)
    d = M.score_densities(score, truth, mask, bins=20)
    width = np.diff(d["edges"])
    assert np.sum(d["healthy"] * width) == pytest.approx(1.0)
    assert np.sum(d["lesion"] * width) == pytest.approx(1.0)
    assert d["n_lesion"] == int((truth & mask).sum())
