import numpy as np
import pandas as pd
import pytest

from dmrilib import report
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
