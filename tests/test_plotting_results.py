"""Tests of dmrilib.plotting.results: figures build on tiny data with the expected axes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from dmrilib import metrics
from dmrilib.plotting import results as R

SHAPE = (12, 12, 8)


def _case(seed: int, label: str):
    rng = np.random.default_rng(seed)
    mask = np.zeros(SHAPE, bool)
    mask[1:-1, 1:-1, 1:-1] = True
    truth = np.zeros(SHAPE, bool)
    truth[3:7, 3:8, 2:5] = True
    score = (rng.random(SHAPE) * 0.4 + truth * 0.5).astype(np.float32)
    return {"md": rng.random(SHAPE), "score_map": score, "truth": truth, "mask": mask, "label": label}


def test_mean_roc_starts_at_zero_and_ends_at_one():
    c = _case(0, "a")
    fpr, tpr, _ = metrics.roc_curve(c["score_map"], c["truth"], c["mask"])
    grid, mean = R.mean_roc([(fpr, tpr), (fpr, tpr)])
    assert mean[0] == 0 and mean[-1] == pytest.approx(1.0)
    assert np.all(np.diff(mean) >= -1e-12)


def test_roc_figure_has_one_axes_with_a_line_per_variant():
    curves = {}
    for v, seed in (("lsd16-linear", 1), ("lsd512-sigmoid", 2)):
        c = _case(seed, v)
        fpr, tpr, _ = metrics.roc_curve(c["score_map"], c["truth"], c["mask"])
        curves[v] = [(fpr, tpr)]
    fig = R.plot_roc_curves(curves, aurocs={"lsd16-linear": 0.8})
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    assert len(fig.axes[0].lines) == 3  # two variants + chance line


def test_score_density_figure_is_two_by_two():
    panels = {}
    for i, name in enumerate(["best half", "best full", "worst half", "worst full"]):
        c = _case(i, name)
        panels[name] = metrics.score_densities(c["score_map"], c["truth"], c["mask"], bins=10)
    fig = R.plot_score_densities(panels)
    assert len(fig.axes) == 4


def test_qualitative_panel_has_four_columns_per_row_plus_colourbars():
    cases = [_case(i, lab) for i, lab in enumerate(["large", "medium", "small"])]
    fig = R.plot_qualitative(cases, threshold=0.5)
    assert len(fig.axes) == 3 * 4 + 3
    assert R.lesion_slice(cases[0]["truth"]) in (2, 3, 4)


def test_followup_figure_has_four_panels_and_a_colourbar():
    c = _case(5, "p")
    follow = np.zeros(SHAPE, bool)
    follow[7:10, 7:10, 3:6] = True
    c["score_map"][7:10, 7:10, 3:6] = 1.0
    fig = R.plot_followup(c["md"], c["score_map"], c["truth"], follow, c["mask"], threshold=0.6)
    assert len(fig.axes) == 5


def test_dice_by_rule_figure_has_one_axes_per_metric():
    rows = [{"model": m, "variant": "v", "fold": 0, "subject": f"sub-P{s}", "rule": r,
             "dice": 0.3 + 0.1 * s, "dice_post": 0.4 + 0.05 * s}
            for m in ("dae", "recdisc") for r in ("fixed", "otsu", "pool_max") for s in range(4)]
    summary = metrics.summarise(pd.DataFrame(rows), ["model", "rule"], ["dice", "dice_post"],
                                metrics.EvalConfig(n_bootstrap=50))
    fig = R.plot_dice_by_rule(summary)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="columns"):
        R.plot_dice_by_rule(pd.DataFrame({"x": [1]}))
