"""dmrilib.ablation: which rows are flipped how, and the paired deltas (no training here)."""
import pandas as pd
import pytest

from dmrilib import report
from dmrilib.ablation import METRICS, _deltas, ablation_table, plan_ablation
from dmrilib.config import load_profile
from dmrilib.fidelity import DIFFERENCES, ablation_rows


def _tables(tmp_path, profile, aurocs):
    tables = tmp_path / profile.name / "tables"
    tables.mkdir(parents=True)
    rows = [{"model": m, "variant": v, "fold": 0, "subject": f"sub-{i}", "auroc": a + 0.01 * i}
            for (m, v), a in aurocs.items() for i in range(3)]
    pd.DataFrame(rows).to_csv(tables / "auroc_all.csv", index=False)
    return tmp_path


@pytest.fixture
def smoke(tmp_path):
    profile = load_profile("smoke")
    results = _tables(tmp_path, profile, {("dae", "lsd16-linear"): 0.6, ("dae", "lsd512-sigmoid"): 0.8,
                                          ("recdisc", "normal-directional-full"): 0.7,
                                          ("recdisc", "mix-mix-half"): 0.5})
    return profile, results


def test_each_row_flips_only_its_keys_on_the_best_runs(smoke):
    profile, results = smoke
    plans = {p.row.number: p for p in plan_ablation(profile, results)}
    assert set(plans) == {r.number for r in ablation_rows()}
    for number, plan in plans.items():
        flipped = plan.profile
        for setting, (before, after) in plan.changes.items():
            section, key = setting.split(".")
            assert getattr(profile.section(section), key) == before != after == getattr(flipped.section(section), key)
        untouched = [r for r in DIFFERENCES if r.setting not in plan.changes]
        for r in untouched:
            assert getattr(flipped.section(r.section), r.key) == getattr(profile.section(r.section), r.key), r.setting
        for model, variant in plan.runs:
            assert model in plan.row.models
    # the profile's own lr (a reduction) is scaled by paper/code = 0.1, not replaced
    assert plans[1].changes["train.lr"] == (1e-3, pytest.approx(1e-4))
    assert plans[1].runs == (("dae", "lsd512-sigmoid"), ("recdisc", "normal-directional-full"))
    # the isotropic row runs the best configuration that uses isotropic noise
    assert plans[3].runs == (("recdisc", "mix-mix-half"),)
    assert plans[8].changes == {"model.dae_map": ("mean_normalised", "abs_sum")}
    # the map row also measures the best linear-output DAE
    assert plans[8].runs == (("dae", "lsd512-sigmoid"), ("dae", "lsd16-linear"))
    # smoke sets disc_depth itself (its grid): it stays, the architecture flips
    assert plans[14].kept == ("model.disc_depth",) and "model.recdisc_architecture" in plans[14].changes
    assert {n for n, p in plans.items() if p.evaluate_only} == {9, 10}
    assert plans[4].profile.stage_hash("train") != profile.stage_hash("train")
    assert plans[9].profile.stage_hash("train") == profile.stage_hash("train")


def test_plan_refuses_unknown_rows_and_a_profile_without_results(smoke, tmp_path):
    profile, results = smoke
    with pytest.raises(ValueError, match=r"rows \[2\] are not ablated"):
        plan_ablation(profile, results, rows=[2])
    with pytest.raises(FileNotFoundError, match="make book PROFILE=smoke"):
        plan_ablation(profile, tmp_path / "elsewhere")
    assert ablation_table(profile, tmp_path / "elsewhere") is None


def _run(folder, auroc, dice):
    folder.mkdir(parents=True)
    subjects = [f"sub-{i}" for i in range(len(auroc))]
    pd.DataFrame({"subject": subjects, "fold": 0, "auroc": auroc}).to_csv(folder / "eval-auroc.csv", index=False)
    rows = [{"subject": s, "fold": 0, "rule": rule, "dice_post": d + k * 0.01}
            for s, d in zip(subjects, dice) for k, rule in enumerate(("fixed", "otsu", "pool_max", "dice_optimal",
                                                                      "youden"))]
    pd.DataFrame(rows).to_csv(folder / "eval-dice.csv", index=False)
    return folder


def test_deltas_are_paired_per_patient(tmp_path):
    base = _run(tmp_path / "base", [0.5, 0.6, 0.7, 0.8], [0.1, 0.2, 0.3, 0.4])
    flipped = _run(tmp_path / "flipped", [0.6, 0.7, 0.8, 0.9], [0.1, 0.2, 0.3, 0.4])
    rows = {r["metric"]: r for r in _deltas([base], [flipped], n_boot=200, ci=0.95, seed=0)}
    assert list(rows) == list(METRICS)
    # every patient gains exactly 0.1: paired, the interval has no width
    assert rows["auroc"]["delta"] == pytest.approx(0.1)
    assert rows["auroc"]["low"] == pytest.approx(0.1) and rows["auroc"]["high"] == pytest.approx(0.1)
    assert rows["dice_otsu"]["delta"] == pytest.approx(0.0) and rows["dice_otsu"]["n"] == 4
    summary = report.ablation_summary(pd.DataFrame([{"row": 1, "item": "learning rate", "model": "dae",
                                                     "variant": "lsd16-linear", "settings": "train.lr",
                                                     "change": "0.003 -> 0.0003", "kept": "", **r}
                                                    for r in rows.values()]))
    assert summary.loc[0, "Δ AUROC"] == "+0.100\u00a0[+0.100,\u00a0+0.100]"
    assert summary.loc[0, "Δ Dice Otsu"].startswith("+0.000")


def test_differences_table_shows_every_row_and_where_the_value_comes_from():
    table = report.differences_table(load_profile("quick"))
    assert len(table) == len(DIFFERENCES)
    by_key = dict(zip(table["profile key"], table["this build"]))
    assert by_key["train.lr"] == "0.003\u00a0(profile)"
    assert by_key["train.jood_copies"] == "fixed\u00a0(code)"
    assert by_key["evaluate.pool_stride"] == "block\u00a0(code)"
