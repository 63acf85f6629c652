"""dmrilib.sweep: the derived profiles, a tiny sweep end to end on smoke, resume, summaries and figures."""
import numpy as np
import pandas as pd
import pytest

from dmrilib import sweep
from dmrilib.config import load_profile
from dmrilib.plotting.sweep import plot_group_costs, plot_sweep_levels

# One worker runs the module's tiny sweep (a module-scoped fixture) for every test that uses it.
pytestmark = pytest.mark.xdist_group("sweep")


@pytest.fixture(scope="module")
def smoke():
    return load_profile("smoke")


def test_plan_sets_realism_and_cohort_seed_and_keeps_everything_else(smoke):
    items = sweep.plan_sweep(smoke)
    assert [(i.condition, i.seed) for i in items] == [(c, k) for c in sweep.CONDITIONS for k in sweep.SEEDS]
    assert len({i.name for i in items}) == len(items) == 24
    for item in items:
        p = item.profile
        assert p.cohort.realism == item.condition
        assert p.cohort.seed == smoke.cohort.seed + item.seed
        assert p.cohort.groups == frozenset(() if item.groups == "none" else item.groups.split("+"))
        assert p.cohort.structural_voxel_size is None  # smoke's reduction: no separate T1w/FLAIR grid
        # everything else is the profile's, with the sweep's reductions written over it
        reduced = sweep.REDUCTIONS["smoke"]
        for section, values in smoke.sections.items():
            extra = {"realism": item.condition, "seed": p.cohort.seed} if section == "cohort" else {}
            assert dict(p.sections[section]) == {**values, **reduced.get(section, {}), **extra}, section
        assert p.model == smoke.model and p.evaluate == smoke.evaluate and p.train.epochs == 1
        assert p.folds == smoke.folds[:1] and dict(p.variants) == {m: (v,) for m, v in sweep.NETWORKS}
    by_condition = {i.condition: i for i in items if i.seed == 0}
    assert by_condition["L0+tumour"].groups == "tumour" and by_condition["L3"].groups == "population+acquisition+tumour"
    assert by_condition["L0"].profile.hash() != by_condition["L0+scanner"].profile.hash()


def test_plan_lets_the_condition_decide_effects_the_profile_writes(smoke):
    data = {"name": "custom", "folds": [0], "variants": dict(smoke.variants),
            **{s: dict(v) for s, v in smoke.sections.items()}}
    data["cohort"] = {**data["cohort"], "realism": "L2", "motion_mm": 0.4}
    profile = type(smoke).from_dict(data)
    (l0,) = sweep.plan_sweep(profile, ["L0"], [1])
    assert l0.profile.cohort.realism == "L0" and l0.profile.cohort.motion_mm == 0.0
    assert l0.profile.cohort.structural_voxel_size == profile.cohort.structural_voxel_size  # no reduction listed
    (l2,) = sweep.plan_sweep(profile, ["L0+acquisition"], [0])
    assert l2.profile.cohort.motion_mm > 0


def test_plan_refuses_unknown_conditions_and_negative_seeds(smoke):
    with pytest.raises(ValueError, match="unknown part 'L9'"):
        sweep.plan_sweep(smoke, ["L9"])
    with pytest.raises(ValueError, match="seed offsets"):
        sweep.plan_sweep(smoke, ["L0"], [-1])


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, smoke):
    results = tmp_path_factory.mktemp("sweep")
    table = sweep.run_sweep(smoke, results, conditions=["L0", "L0+acquisition"], seeds=[0], threads=1,
                            progress=False)
    return results, table


@pytest.mark.slow
def test_tiny_sweep_writes_one_row_per_condition_method_and_patient(tiny_sweep, smoke):
    results, table = tiny_sweep
    root = sweep.sweep_dir(smoke, results)
    on_disk = pd.read_csv(root / "sweep.csv")
    assert list(on_disk.columns) == list(sweep.COLUMNS)
    assert len(on_disk) == len(table) == 2 * len(sweep.METHODS) * smoke.cohort.n_patients
    assert set(on_disk["condition"]) == {"L0", "L0+acquisition"}
    assert set(on_disk["groups"]) == {"none", "acquisition"}
    counts = on_disk.groupby(["condition", "method"])["patient"].nunique()
    assert (counts == smoke.cohort.n_patients).all() and len(counts) == 2 * len(sweep.METHODS)
    assert (on_disk["rule"] == on_disk["method"].map(sweep.RULES)).all()
    assert on_disk["auroc"].between(0, 1).all() and on_disk["dice"].between(0, 1).all()
    assert on_disk.groupby("condition")["config_hash"].nunique().eq(1).all()
    assert on_disk["config_hash"].nunique() == 2
    info = (root / "sweep.json").read_text()
    assert '"profile_hash"' in info and '"versions"' in info and "lsd512-sigmoid" in info
    for item in sweep.plan_sweep(smoke, ["L0", "L0+acquisition"], [0]):
        folder = root / item.name
        assert (folder / "rows.csv").is_file()
        assert not (folder / "cohort").exists() and not (folder / "prepared").exists()  # deleted once finished


@pytest.mark.slow
def test_raw_md_is_scored_by_its_own_rule(tiny_sweep):
    _, table = tiny_sweep
    md = table[table["method"] == "md"]
    assert set(md["rule"]) == {"healthy_fpr_05"} and md["auroc"].notna().all()
    # the raw MD map is not one of the trained maps
    dae = table[table["method"] == "dae"].set_index(["condition", "patient"])["auroc"]
    assert not np.allclose(md.set_index(["condition", "patient"])["auroc"].loc[dae.index], dae)


@pytest.mark.slow
def test_finished_items_are_skipped_and_an_interrupted_one_resumes(tiny_sweep, smoke, monkeypatch):
    results, table = tiny_sweep
    from dmrilib import pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a finished (condition, seed) was run again")

    with monkeypatch.context() as m:
        m.setattr(pipeline, "run_cohort", refuse)
        again = sweep.run_sweep(smoke, results, conditions=["L0", "L0+acquisition"], seeds=[0], progress=False)
    pd.testing.assert_frame_equal(again, table)
    # a partial call keeps the rows of every finished item in sweep.csv
    only_l0 = sweep.run_sweep(smoke, results, conditions=["L0"], seeds=[0], progress=False)
    pd.testing.assert_frame_equal(only_l0, table)
    # interrupted after training (no rows yet): run again, the same rows
    (item,) = sweep.plan_sweep(smoke, ["L0+acquisition"], [0])
    (sweep.sweep_dir(smoke, results) / item.name / "rows.csv").unlink()
    resumed = sweep.run_sweep(smoke, results, conditions=["L0", "L0+acquisition"], seeds=[0], progress=False)
    pd.testing.assert_frame_equal(resumed, table)
    assert sweep.load_sweep(smoke, results) is not None
    assert sweep.load_sweep(smoke, results.parent / "nothing-here") is None


def _synthetic(deltas):
    """sweep.csv rows: L0 and each group's condition, 2 seeds x 4 patients, AUROC shifted by ``deltas``."""
    rows = []
    for condition, group in [("L0", "none"), *((c, g) for g, c in sweep.GROUP_CONDITIONS.items())]:
        for method in sweep.METHODS:
            for seed in (0, 1):
                for p in range(4):
                    base = 0.6 + 0.05 * p + 0.01 * seed
                    shift = deltas.get((group, method), 0.0)
                    rows.append({"condition": condition, "groups": group, "seed": seed, "cohort_seed": seed,
                                 "method": method, "variant": method, "rule": sweep.RULES[method],
                                 "patient": f"sub-P{p:02d}", "auroc": base + shift, "dice": 0.3 + shift / 2,
                                 "config_hash": condition})
    return pd.DataFrame(rows)


def test_group_costs_are_paired_per_patient_and_mark_the_costliest_group():
    table = _synthetic({("tumour", "dae"): -0.2, ("scanner", "dae"): -0.05, ("acquisition", "md"): -0.1})
    costs = sweep.group_costs(table, n_boot=200)
    dae = costs[costs["method"] == "dae"].set_index("group")
    assert dae.loc["tumour", "auroc_delta"] == pytest.approx(-0.2)
    # paired: the patient spread (0.15) does not widen the interval of a constant shift
    assert dae.loc["tumour", "auroc_low"] == pytest.approx(-0.2) == dae.loc["tumour", "auroc_high"]
    assert dae.loc["tumour", "dice_delta"] == pytest.approx(-0.1)
    assert dae.loc["population", "n"] == 8 and dae.loc["population", "auroc_delta"] == pytest.approx(0.0)
    worst = costs[costs["costliest"]].set_index("method")["group"]
    assert worst.to_dict() == {"dae": "tumour", "md": "acquisition"}  # no group costs the others anything
    assert sweep.group_costs(table[table["condition"] != "L0"]).empty


def test_sweep_table_orders_conditions_and_bootstraps_over_patients_and_seeds():
    table = _synthetic({("scanner", "recdisc"): -0.1})
    summary = sweep.sweep_table(table, n_boot=200)
    assert list(dict.fromkeys(summary["condition"])) == ["L0", "L1", "L0+acquisition", "L0+tumour", "L0+scanner"]
    row = summary[(summary["condition"] == "L0+scanner") & (summary["method"] == "recdisc")].iloc[0]
    assert row["n"] == 8 and row["n_seeds"] == 2
    assert row["auroc"] == pytest.approx(np.mean([0.6 + 0.05 * p + 0.01 * s for s in (0, 1) for p in range(4)]) - 0.1)
    assert row["auroc_low"] < row["auroc"] < row["auroc_high"]


@pytest.mark.slow
def test_figures_draw_the_summaries(tiny_sweep):
    table = _synthetic({("tumour", "dae"): -0.2})
    levels = pd.concat([table, table[table["condition"] == "L1"].assign(condition="L4", groups="all")])
    fig = plot_sweep_levels(sweep.sweep_table(levels, n_boot=50))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["L0", "L1", "L4"]
    assert len(fig.axes[0].get_legend().get_texts()) == len(sweep.METHODS)
    costs = sweep.group_costs(table, n_boot=50)
    fig = plot_group_costs(costs)
    hatched = [b for b in fig.axes[0].patches if b.get_hatch()]
    assert len(hatched) == 1  # the DAE's tumour bar; no other group lowers any method's AUROC
    # the tiny sweep's own results draw too (L0 and one group)
    _, real = tiny_sweep
    plot_sweep_levels(sweep.sweep_table(real, n_boot=20))
    plot_group_costs(sweep.group_costs(real, n_boot=20))
    with pytest.raises(ValueError, match="run the sweep first"):
        plot_group_costs(sweep.group_costs(real[real["condition"] == "L0"]))
