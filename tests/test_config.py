import dataclasses

import pytest

from dmrilib._atomic import atomic_path, write_json_atomic
from dmrilib.config import ConfigError, Profile, config_hash, load_profile, provenance

SHIPPED = ("smoke", "quick", "gpu", "paper")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_builds_all_sections(name):
    profile = load_profile(name)
    for section in ("cohort", "prepare", "model", "train", "evaluate"):
        assert dataclasses.is_dataclass(profile.section(section))
    assert profile.runs(), "a profile without runs trains nothing"


def test_paper_profile_is_the_full_grid():
    profile = load_profile("paper")
    assert len(profile.variants["dae"]) == 12 and len(profile.variants["recdisc"]) == 12
    assert len(profile.runs()) == 24 * 7
    assert profile.train.epochs == 500


def test_config_hash_ignores_key_order_and_sees_values():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash({})) == 12


def test_profile_hash_changes_with_any_setting():
    data = {"name": "x", "seed": 0, "folds": [0], "variants": {"dae": ["lsd16-linear"]}}
    h0 = Profile.from_dict(data).hash()
    assert Profile.from_dict({**data, "seed": 1}).hash() != h0
    assert Profile.from_dict({**data, "train": {"epochs": 3}}).hash() != h0


def test_unknown_profile_names_the_shipped_ones():
    with pytest.raises(ConfigError, match="Shipped profiles"):
        load_profile("no-such-profile")


def test_unknown_top_level_key_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nfolds: [0]\nvariants: {dae: [lsd16-linear]}\ntrian: {}\n")
    with pytest.raises(ConfigError, match=r"p.yaml: unknown top-level key\(s\) \['trian'\]"):
        load_profile(path)


def test_unknown_section_setting_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nfolds: [0]\nvariants: {dae: [lsd16-linear]}\nevaluate: {pool_sise: 8}\n")
    with pytest.raises(ConfigError, match="unknown setting.*pool_sise"):
        load_profile(path).evaluate


def test_malformed_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile(path)


def test_provenance_records_versions_and_extra():
    record = provenance(seed=3)
    assert record["seed"] == 3
    assert record["versions"]["numpy"] and record["versions"]["torch"]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    write_json_atomic(target, {"a": 1})
    assert target.read_text().strip().startswith("{") and list(tmp_path.iterdir()) == [target]


def test_write_csv_atomic_writes_header_rows_and_nothing_else(tmp_path):
    from dmrilib._atomic import write_csv_atomic

    target = tmp_path / "log.csv"
    write_csv_atomic(target, [{"epoch": 0, "loss": 0.5}, {"epoch": 1, "loss": float("nan")}], ("epoch", "loss"))
    assert target.read_text() == "epoch,loss\n0,0.5\n1,nan\n"
    assert list(tmp_path.iterdir()) == [target]


def test_public_api_names_all_resolve():
    import dmrilib

    for name in dmrilib.__all__:
        assert getattr(dmrilib, name) is not None, name
