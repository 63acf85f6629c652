"""Realism levels of the simulated cohort (dmrilib.simulate.realism and CohortConfig)."""
from __future__ import annotations

import dataclasses

import pytest

from dmrilib.simulate import CohortConfig
from dmrilib.simulate.realism import ACCEPTANCE, EFFECTS, GROUPS, LEVELS, effect_defaults, effects_table, parse_realism


def test_levels_are_cumulative_and_groups_combine():
    assert parse_realism("L0") == frozenset()
    assert parse_realism("L2") == {"population", "acquisition"}
    assert parse_realism("L4") == set(GROUPS)
    assert parse_realism("L0+acquisition") == {"acquisition"}
    assert parse_realism("tumour") == {"tumour"}
    assert parse_realism("L2 + scanner") == {"population", "acquisition", "scanner"}
    for k in range(1, len(LEVELS)):
        assert LEVELS[f"L{k - 1}"] < LEVELS[f"L{k}"]


@pytest.mark.parametrize("bad", ["L5", "population+gibbs", "", "l1", 3])
def test_unknown_realism_is_refused_with_the_accepted_names(bad):
    with pytest.raises(ValueError, match="realism"):
        CohortConfig(realism=bad)


def test_every_effect_is_a_config_field_off_at_l0_and_on_at_l4():
    fields = {f.name for f in dataclasses.fields(CohortConfig)}
    l0, l4 = CohortConfig(), CohortConfig(realism="L4")
    for effect in EFFECTS:
        assert effect.field in fields
        assert effect.group in GROUPS and effect.confidence in {"high", "medium", "low"} and effect.source
        assert getattr(l0, effect.field) == effect.off
        assert getattr(l4, effect.field) == effect.on
        assert effect.on != effect.off, f"{effect.field}: switching its group on changes nothing"


def test_a_written_effect_wins_over_the_level():
    config = CohortConfig(realism="L3", motion_mm=0.5, cyst_rate=0)
    assert config.motion_mm == 0.5 and config.cyst_rate == 0.0
    assert config.noise_map_sd == effect_defaults("L3")["noise_map_sd"]
    # An effect of a group that is off can still be written alone.
    assert CohortConfig(realism="L0", motion_mm=0.2).motion_mm == 0.2


@pytest.mark.parametrize("key, value", [
    ("motion_mm", -0.1), ("outlier_slice_rate", (0.1,)), ("outlier_slice_rate", (0.1, 2.0)),
    ("gibbs_kspace_fraction", 0.1), ("followup_treatment", 1), ("cyst_rate", 1.5), ("age_range", (60, 30)),
    ("snr_cv", "high"),
])
def test_invalid_effect_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"cohort.{key}"):
        CohortConfig(**{key: value})


def test_level_changes_the_cohort_hash_but_resolved_defaults_do_not():
    from dmrilib.config import config_hash

    assert config_hash(CohortConfig()) != config_hash(CohortConfig(realism="L1"))
    # Writing the value a level gives is the same cohort as leaving it to the level.
    assert config_hash(CohortConfig(realism="L2")) == config_hash(
        CohortConfig(realism="L2", motion_mm=effect_defaults("L2")["motion_mm"]))


def test_effects_table_and_acceptance_bands_are_complete():
    table = effects_table()
    assert list(table["field"]) == [e.field for e in EFFECTS]
    assert set(table["level"]) == {"L1", "L2", "L3", "L4"}
    for name, band in ACCEPTANCE.items():
        assert band.low < band.high, name
        assert band.groups <= set(GROUPS), name


def test_replace_changes_the_level_but_keeps_written_effects():
    config = CohortConfig(motion_mm=0.45)
    moved = dataclasses.replace(config, realism="L3")
    assert moved == CohortConfig(realism="L3", motion_mm=0.45)
    assert moved.tumour_value_cv == effect_defaults("L3")["tumour_value_cv"]
    back = dataclasses.replace(moved, realism="L0")
    assert back == config and back.tumour_value_cv == 0.0
    # An effect changed by the replace counts as written from then on.
    changed = dataclasses.replace(moved, cyst_rate=0.5, realism="L4")
    assert changed.cyst_rate == 0.5 and changed.scanner_share == effect_defaults("L4")["scanner_share"]


def test_bookkeeping_is_not_part_of_the_settings():
    from dmrilib.config import config_hash

    a = CohortConfig(realism="L2")
    b = dataclasses.replace(CohortConfig(), realism="L2")
    assert a == b and config_hash(a) == config_hash(b)
    assert "_resolution" not in repr(a)


def test_group_active_follows_values_not_the_level():
    from dmrilib.simulate.realism import group_active

    assert not any(group_active(CohortConfig(), g) for g in GROUPS)
    assert all(group_active(CohortConfig(realism="L4"), g) for g in GROUPS)
    assert group_active(CohortConfig(cyst_rate=0.3), "tumour")  # a written field alone
    assert not group_active(CohortConfig(realism="L3", **{e.field: e.off for e in EFFECTS if e.group == "tumour"}),
                            "tumour")
    with pytest.raises(ValueError, match="group"):
        group_active(CohortConfig(), "scanners")
