import numpy as np
import pandas as pd
import pytest

from dmrilib import report
from dmrilib.metrics import EvalConfig
from dmrilib.published import paper_table


def _ours_auroc(model):
    paper = paper_table("table1" if model == "dae" else "table2")
    return pd.DataFrame({"variant": paper["variant"], "auroc_mean": paper["auroc_mean"] + 0.1,
                         "auroc_sd": 0.05, "ci_low": 0.5, "ci_high": 0.9})


@pytest.mark.parametrize("model", ["dae", "recdisc"])
def test_comparison_auroc_keeps_the_paper_order_and_computes_differences(model):
    table = report.comparison_auroc(_ours_auroc(model), model)
    assert len(table) == 12
    assert table.iloc[:, 0].tolist() == list(range(1, 13))
    np.testing.assert_allclose(table["ours − paper"], 0.1, atol=1e-9)
    assert table["AUROC (paper)"].str.contains("±").all()


def test_comparison_auroc_leaves_blanks_for_configurations_not_run():
    ours = _ours_auroc("dae").iloc[:2]
    table = report.comparison_auroc(ours, "dae")
    assert (table["AUROC (ours)"] == "").sum() == 10
    assert table["ours − paper"].isna().sum() == 10


def test_comparison_dice_pairs_each_model_with_the_paper_row():
    ours = pd.DataFrame([
        {"model": "dae", "variant": "lsd512-sigmoid", "threshold": 0.2, "dice_mean": 0.4, "dice_sd": 0.1,
         "dice_post_mean": 0.5, "dice_post_sd": 0.1},
        {"model": "recdisc", "variant": "mix-mix-half", "threshold": 0.5, "dice_mean": 0.6, "dice_sd": 0.2,
         "dice_post_mean": 0.61, "dice_post_sd": 0.2},
    ])
    table = report.comparison_dice(ours, "table3")
    assert table["network"].tolist() == ["DAE", "RecDiscNet"]
    assert table["Δ Dice post (ours − paper)"].tolist() == [round(0.5 - 0.431, 3), round(0.61 - 0.599, 3)]
    assert "m=12" in table["configuration (ours)"].iloc[0]


def test_format_helpers_blank_missing_values():
    assert report.fmt_pm(float("nan"), 0.1) == ""
    assert report.fmt_pm(0.81234, 0.1) == "0.812 ± 0.100"
    assert report.fmt_ci(0.1, float("nan")) == ""


def test_book_context_explains_missing_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DMRI_RESULTS", raising=False)
    with pytest.raises(FileNotFoundError, match="make book PROFILE=smoke"):
        report.book_context("smoke")


def test_banner_says_simulated_and_names_the_profile(tmp_path):
    (tmp_path / "smoke").mkdir()
    ctx = report.book_context("smoke", tmp_path)
    text = report.banner(ctx)
    assert "Simulated data" in text and "`smoke`" in text and "not** the paper's protocol" in text


# --------------------------------------------------------------------------- findings scorecard

_CONFIG = EvalConfig(n_bootstrap=200)


def _auroc_table(rows):
    """{variant: (mean, low, high)} -> a table1/table2-like frame."""
    return pd.DataFrame([{"variant": v, "auroc_mean": m, "auroc_sd": 0.1, "ci_low": lo, "ci_high": hi, "n": 5}
                         for v, (m, lo, hi) in rows.items()])


def _dice_table(dae, recdisc):
    """(dice, dice_post) per model, each (mean, low, high) -> a table3..6-like frame."""
    rows = []
    for model, variant, (pre, post) in (("dae", "lsd16-sigmoid", dae), ("recdisc", "mix-mix-half", recdisc)):
        row = {"model": model, "variant": variant, "threshold": 0.3}
        for col, (m, lo, hi) in (("dice", pre), ("dice_post", post)):
            row.update({f"{col}_mean": m, f"{col}_sd": 0.1, f"{col}_ci_low": lo, f"{col}_ci_high": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def _dice_all(dae_gain, recdisc_gain, n=6):
    """Per-patient Dice of the table rows' variants under the paper's four rules."""
    rows = []
    for rule in ("fixed", "otsu", "pool_max", "dice_optimal"):
        for model, variant, gain in (("dae", "lsd16-sigmoid", dae_gain), ("recdisc", "mix-mix-half", recdisc_gain)):
            for i in range(n):
                pre = 0.3 + 0.01 * i
                rows.append({"model": model, "variant": variant, "fold": 0, "subject": f"sub-P{i:02d}",
                             "rule": rule, "dice": pre, "dice_post": pre + gain + 0.002 * (i % 3)})
    return pd.DataFrame(rows)


def _followup(mismatch_by_grade):
    """{grade: list of bool (one per patient)} -> a followup-like frame."""
    return pd.DataFrame([{"subject": f"sub-{g}{i}", "grade": g, "fold": 0, "mismatch": m}
                         for g, ms in mismatch_by_grade.items() for i, m in enumerate(ms)])


def _tables(*, dae=(0.90, 0.85, 0.95), recdisc=(0.70, 0.60, 0.75), gains=(0.3, 0.0),
            followup=None):
    """Tables in which DAE and RecDiscNet AUROC are ``dae`` and ``recdisc`` (best configuration each)."""
    t1 = _auroc_table({"lsd16-linear": (0.6, 0.55, 0.65), "lsd16-sigmoid": dae})
    t2 = _auroc_table({"mix-mix-full": (0.5, 0.45, 0.55), "mix-mix-half": recdisc})
    dice = _dice_table(((0.2, 0.15, 0.25), (0.45, 0.40, 0.50)), ((0.6, 0.55, 0.65), (0.6, 0.55, 0.65)))
    fu = followup if followup is not None else {"IV": [True] * 4, "III": [True, False, False, False],
                                                "II": [False] * 3}
    return {"table1": t1, "table2": t2, **{f"table{k}": dice for k in (3, 4, 5, 6)},
            "dice_all": _dice_all(*gains), "followup": _followup(fu)}


def _verdict(card, claim_start):
    rows = card[card["claim"].str.startswith(claim_start)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_scorecard_claim_holds_when_its_interval_lies_above():
    card = report.findings_scorecard(_tables(), voxel_mm=2.4, config=_CONFIG)
    assert list(card.columns) == list(report.SCORECARD_COLUMNS)
    row = _verdict(card, "1.")
    assert row["verdict"] == "holds"
    assert row["this build"] == "0.900\u00a0[0.850,\u00a00.950] vs 0.700\u00a0[0.600,\u00a00.750]"
    assert row["paper"] == "0.820 vs 0.772"  # from dmrilib.published
    assert "best: lsd16-sigmoid vs mix-mix-half (paper: lsd512-sigmoid vs mix-mix-half)" in row["note"]


def test_scorecard_claim_does_not_hold_when_its_interval_lies_below():
    # the best DAE is now lsd16-linear, 0.6 [0.55, 0.65]: below RecDiscNet's 0.8 [0.7, 0.85]
    card = report.findings_scorecard(_tables(dae=(0.55, 0.50, 0.58), recdisc=(0.8, 0.7, 0.85)),
                                     voxel_mm=2.4, config=_CONFIG)
    assert _verdict(card, "1.")["verdict"] == "does not hold"
    assert _verdict(card, "2.")["verdict"] == "inconclusive"  # sigmoid 0.55 [0.50, 0.58] vs linear 0.6 [0.55, 0.65]


def test_scorecard_claim_is_inconclusive_when_intervals_overlap():
    card = report.findings_scorecard(_tables(dae=(0.72, 0.66, 0.80)), voxel_mm=2.4, config=_CONFIG)
    row = _verdict(card, "1.")
    assert row["verdict"] == "inconclusive"
    assert "intervals overlap (means in the paper's direction)" in row["note"]


def test_scorecard_compares_sigmoid_and_half_only_within_pairs():
    card = report.findings_scorecard(_tables(), voxel_mm=2.4, config=_CONFIG)
    assert _verdict(card, "2.")["claim"].endswith("LSD 16")
    assert _verdict(card, "2.")["paper"] == "0.804 vs 0.779"
    assert _verdict(card, "3.")["claim"].endswith("mix-mix")
    tables = _tables()
    tables["table1"] = _auroc_table({"lsd16-linear": (0.6, 0.5, 0.7), "lsd512-sigmoid": (0.9, 0.8, 1.0)})
    row = _verdict(report.findings_scorecard(tables, voxel_mm=2.4, config=_CONFIG), "2.")
    assert row["verdict"] == "not testable"
    assert "lsd16-linear, lsd512-sigmoid" in row["note"]


def test_scorecard_dice_and_opening_claims_per_rule():
    card = report.findings_scorecard(_tables(), voxel_mm=2.4, config=_CONFIG)
    dice = card[card["claim"].str.startswith("4.")]
    assert len(dice) == 8 and (dice["verdict"] == "holds").all()
    opening = card[card["claim"].str.startswith("5.")]
    assert len(opening) == 4 and (opening["verdict"] == "holds").all()
    assert opening["paper"].iloc[0] == "gain +0.263 vs -0.004"  # Table 3 of the paper
    card = report.findings_scorecard(_tables(gains=(0.0, 0.3)), voxel_mm=2.4, config=_CONFIG)
    assert (card[card["claim"].str.startswith("5.")]["verdict"] == "does not hold").all()


def test_scorecard_followup_claims_by_grade():
    card = report.findings_scorecard(_tables(), voxel_mm=2.4, config=_CONFIG)
    fu = card[card["claim"].str.startswith("6.")].set_index("claim")["verdict"]
    assert fu.tolist() == ["holds", "holds", "inconclusive", "holds"]
    assert card[card["claim"] == "6. No follow-up mismatch in WHO II"]["this build"].item() == "0 / 3"
    tables = _tables(followup={"IV": [False] * 4, "III": [True] * 3, "II": [True, False]})
    fu = report.findings_scorecard(tables, voxel_mm=2.4, config=_CONFIG)
    fu = fu[fu["claim"].str.startswith("6.")]["verdict"].tolist()
    assert fu == ["does not hold", "does not hold", "inconclusive", "does not hold"]


def test_scorecard_marks_opening_claims_not_testable_on_a_coarse_grid():
    fine = report.findings_scorecard(_tables(), voxel_mm=2.4, config=_CONFIG)
    coarse = report.findings_scorecard(_tables(), voxel_mm=4.8, config=_CONFIG)
    assert (fine["verdict"] != "not testable").all()
    untestable = coarse[coarse["verdict"] == "not testable"]["claim"]
    assert untestable.str.match(r"4\..*after the opening|5\.|6\.").all()
    assert len(untestable) == 4 + 4 + 4
    assert "can remove small lesions" in coarse[coarse["claim"].str.startswith("5.")]["note"].iloc[0]
    assert "measured in the paper's direction" in coarse[coarse["claim"].str.startswith("5.")]["note"].iloc[0]
    # what is untestable follows the voxel size, not the profile's name
    assert (report.findings_scorecard(_tables(), config=_CONFIG)["verdict"] != "not testable").all()


def test_opening_limits_follow_the_voxel_size():
    assert report.opening_limits(2.4, 3) == {}
    assert set(report.opening_limits(4.8, 3)) == {"lesion", "margin"}
    assert "3³ opening at 4.8 mm (14.4 mm cube)" in report.opening_limits(4.8, 3)["lesion"]
    assert report.opening_limits(7.2, 1) == {}


def test_scorecard_without_tables_says_not_testable():
    card = report.findings_scorecard({}, voxel_mm=2.4, config=_CONFIG)
    assert set(card["verdict"]) == {"not testable"}
    assert set(card["verdict"]) <= set(report.VERDICTS)


def test_style_table_hides_the_index_and_lets_prose_wrap():
    html = report.style_table(pd.DataFrame({"claim": ["a long sentence"], "value": [0.123456]}),
                              wrap=["claim"]).to_html()
    assert "0.123" in html and "0.123456" not in html
    assert "row_heading" not in html
    assert "white-space: normal" in html


def test_style_scorecard_puts_each_side_of_a_comparison_on_its_own_line():
    card = report.findings_scorecard(_tables(), voxel_mm=2.4, config=_CONFIG)
    html = report.style_scorecard(card).to_html()
    assert "0.820<br>vs 0.772" in html
    assert "background-color: #dff0d8" in html  # a verdict that holds is tinted


def test_style_table_keeps_a_table_too_wide_for_the_page_at_its_natural_width():
    narrow = pd.DataFrame({"WHO grade": ["IV"], "mismatch (paper, visual)": ["11 / 14"]})
    assert "width: max-content" not in report.style_table(narrow).to_html()  # fits with headers wrapped
    wide = pd.DataFrame({f"Dice post (config {i})": ["uniform-isotropic-half (d=10)"] for i in range(6)})
    assert "width: max-content" in report.style_table(wide).to_html()
    assert "width: max-content" not in report.style_table(wide, wrap=["Dice post (config 0)"]).to_html()
