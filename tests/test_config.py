import dataclasses
import re

import pytest

from dmrilib._atomic import atomic_path, write_json_atomic
from dmrilib.config import PROFILES_DIR, ConfigError, Profile, config_hash, load_profile, provenance

SHIPPED = ("smoke", "quick", "gpu", "paper", "bids")


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
    # the authors' code (fidelity: code, the default): 250 epochs at 1e-3
    assert (profile.train.epochs, profile.train.lr) == (250, 1e-3)


def _paper_side(fidelity=None, **sections):
    import yaml

    data = yaml.safe_load((PROFILES_DIR / "paper.yaml").read_text())
    if fidelity is not None:
        data["fidelity"] = fidelity
    for section, values in sections.items():
        data[section] = {**(data.get(section) or {}), **values}
    return Profile.from_dict(data, source="test.yaml")


def test_top_level_fidelity_reaches_every_section_and_a_written_key_wins():
    from dmrilib.fidelity import DIFFERENCES

    code, paper = _paper_side("code"), _paper_side("paper")
    for row in DIFFERENCES:
        if row.key in (code.sections.get(row.section) or {}):
            continue  # the profile writes it: neither side applies
        assert getattr(code.section(row.section), row.key) == row.code, row.setting
        assert getattr(paper.section(row.section), row.key) == row.paper, row.setting
    assert (paper.train.epochs, paper.train.lr, paper.model.dae_architecture) == (500, 1e-4, "paper")
    assert code.stage_hash("train") != paper.stage_hash("train")
    assert code.stage_hash("cohort") != paper.stage_hash("cohort")  # prepare.input_mask_erosion
    mixed = _paper_side("paper", train={"epochs": 7}, evaluate={"fidelity": "code"})
    assert mixed.train.epochs == 7 and mixed.train.lr == 1e-4
    assert mixed.evaluate.threshold_region == "eroded_brain_no_csf"  # a section may name its own side


def test_unknown_fidelity_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"test.yaml: fidelity: expected one of 'code', 'paper'.*got 'authors'"):
        _paper_side("authors")
    with pytest.raises(ConfigError, match=r"train.fidelity"):
        _paper_side(train={"fidelity": "authors"})


def test_config_hash_ignores_key_order_and_sees_values():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash({})) == 12


def test_profile_hash_changes_with_any_setting():
    sections = {s: {} for s in ("cohort", "prepare", "model", "train", "evaluate")}
    data = {"name": "x", "seed": 0, "folds": [0], "variants": {"dae": ["lsd16-linear"]}, **sections}
    h0 = Profile.from_dict(data).hash()
    assert Profile.from_dict({**data, "seed": 1}).hash() != h0
    assert Profile.from_dict({**data, "train": {"epochs": 3}}).hash() != h0


def test_shipped_profile_hashes_are_unchanged_by_validation():
    # the workflow hashes the sections as written; validation must not alter them
    assert load_profile("smoke").sections["groundtruth"]["epochs"] == 3
    assert load_profile("quick").sections["groundtruth"] == {}
    assert load_profile("quick").sections["train"]["jood_radius"] == [2.5, 5.5]


def test_unknown_profile_names_the_shipped_ones():
    with pytest.raises(ConfigError, match="Shipped profiles"):
        load_profile("no-such-profile")


def test_unknown_top_level_key_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nfolds: [0]\nvariants: {dae: [lsd16-linear]}\ntrian: {}\n")
    with pytest.raises(ConfigError, match=r"p.yaml: unknown top-level key\(s\) \['trian'\]"):
        load_profile(path)


def test_unknown_section_setting_is_refused(tmp_path):
    path = _profile_file(tmp_path, {"evaluate.pool_sise": 8})
    with pytest.raises(ConfigError, match="unknown setting.*pool_sise"):
        load_profile(path)


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


# ------------------------------------------------- whole-profile validation at load


def _profile_file(tmp_path, edit=None, drop=()):
    """Write the smoke profile, edited, to ``tmp_path/p.yaml`` and return its path."""
    import yaml

    from dmrilib.config import PROFILES_DIR

    data = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    for key in drop:
        data.pop(key)
    for dotted, value in (edit or {}).items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_negative_pool_size_fails_at_load_naming_the_key(tmp_path):
    path = _profile_file(tmp_path, {"evaluate.pool_size": -3})
    with pytest.raises(ConfigError, match=r"p\.yaml: evaluate\.pool_size must be >= 1, got -3"):
        load_profile(path)  # not only when a job reads profile.evaluate


@pytest.mark.parametrize("value", ["2", 2.5, 2.0, True, "ten"])
def test_int_setting_refuses_text_floats_and_booleans(tmp_path, value):
    path = _profile_file(tmp_path, {"train.batch_size": value})
    shown = {True: "true"}.get(value, repr(value)) if not isinstance(value, str) else repr(value)
    with pytest.raises(ConfigError) as exc:
        load_profile(path)
    assert str(exc.value).startswith(f"{path}: train.batch_size: expected an integer, got {shown}")
    # a fidelity key may also be null (follow the profile's side)
    with pytest.raises(ConfigError, match=rf"train\.epochs: expected null or an integer, got {re.escape(shown)}"):
        load_profile(_profile_file(tmp_path, {"train.epochs": value}))


def test_float_setting_accepts_an_integer_and_tuple_settings_accept_lists(tmp_path):
    path = _profile_file(tmp_path, {"train.lr": 1, "train.jood_radius": [1, 2], "prepare.grid": [32, 32, 32]})
    profile = load_profile(path)
    assert profile.train.lr == 1 and profile.train.jood_radius == (1.0, 2.0)
    assert profile.prepare.grid == (32, 32, 32)


def test_exponent_without_decimal_point_is_explained(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-4 as the text '1e-4'
    path = tmp_path / "p.yaml"
    path.write_text(_profile_file(tmp_path).read_text().replace("lr: 0.001", "lr: 1e-4"))
    with pytest.raises(ConfigError, match=r"train\.lr: expected a number, got '1e-4'.*1\.0e-4"):
        load_profile(path)


@pytest.mark.parametrize("key, value, message", [
    ("train.channels_last", "yes", r"train\.channels_last: expected true or false, got 'yes'"),
    ("registration.syn", 1, r"registration\.syn: expected true or false, got 1"),
    ("train.precision", "fp16", r"train\.precision: expected one of 'fp32', 'bf16', got 'fp16'"),
    ("prepare.grid", [32, 32], r"prepare\.grid: expected a list of 3 integers, got \[32, 32\]"),
    ("train.jood_radius", [1.5, "3"], r"train\.jood_radius\[1\]: expected a number, got '3'"),
    ("cohort.grade_counts", {"IV": "2"}, r"cohort\.grade_counts\.IV: expected an integer, got '2'"),
    ("train.recdisc_crop", 16, r"train\.recdisc_crop: expected null or a list of 3 integers, got 16"),
    ("train.lr", float("nan"), r"train\.lr: expected a finite number, got nan"),
    ("train.seed", -1, r"train\.seed: expected a non-negative integer, got -1"),
    ("evaluate.fixed_thresholds", {"dea": 0.3}, r"evaluate\.fixed_thresholds.*'dea'"),
    ("train", 5, r"p\.yaml: train: expected a mapping of settings, got 5"),
])
def test_bad_setting_names_file_and_key_path(tmp_path, key, value, message):
    path = _profile_file(tmp_path, {key: value})
    with pytest.raises(ConfigError, match=message) as exc:
        load_profile(path)
    assert str(exc.value).startswith(f"{path}: ")


def test_missing_train_section_is_refused_not_500_epochs(tmp_path):
    path = _profile_file(tmp_path, drop=("train",))
    with pytest.raises(ConfigError, match=r"p\.yaml: missing required section\(s\) \['train'\]"):
        load_profile(path)


def test_groundtruth_and_registration_sections_are_optional(tmp_path):
    profile = load_profile(_profile_file(tmp_path, drop=("groundtruth", "registration")))
    assert profile.groundtruth.epochs == 12  # the documented defaults, tuned for quick


@pytest.mark.parametrize("variants, message", [
    ({"dae": ["lsd16-linear"], "recdisc": ["normal-directionnal-full"]},
     r"variants\.recdisc\[0\]: RecDiscNet/JOOD variant 'normal-directionnal-full'"),
    ({"dae": ["lsd16-linear", "lsd16-lineal"]}, r"variants\.dae\[1\]: DAE variant 'lsd16-lineal'"),
    ({"dae": ["lsd16-linear", "lsd16-linear"]}, r"variants\.dae: 'lsd16-linear' is listed twice"),
    ({"dae": "lsd16-linear"}, r"variants\.dae: expected a list of variant ids, got 'lsd16-linear'"),
    ({"vae": ["lsd16-linear"]}, r"variants: unknown model\(s\) \['vae'\]"),
])
def test_misspelt_variant_fails_at_load(tmp_path, variants, message):
    with pytest.raises(ConfigError, match=message):
        load_profile(_profile_file(tmp_path, {"variants": variants}))


@pytest.mark.parametrize("folds, message", [
    ([7], r"folds\[0\]: fold 7 does not exist: train\.n_folds is 7 \(folds 0-6\)"),
    ([0, 0], r"folds: fold 0 is listed twice"),
    (["0"], r"folds\[0\]: expected a non-negative integer, got '0'"),
    ([], r"folds: expected a non-empty list"),
])
def test_bad_folds_fail_at_load(tmp_path, folds, message):
    with pytest.raises(ConfigError, match=message):
        load_profile(_profile_file(tmp_path, {"folds": folds}))


@pytest.mark.parametrize("key, value, message", [
    ("seed", "0", r"seed: expected a non-negative integer, got '0'"),
    ("name", "../x", r"name: '\.\./x' is not usable as a folder name"),
    ("name", 3, r"name: expected a string, got 3"),
])
def test_bad_top_level_values_fail_at_load(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_profile(_profile_file(tmp_path, {key: value}))


def test_loaded_profile_has_every_section_built(tmp_path):
    profile = load_profile("smoke")
    for name in ("cohort", "prepare", "model", "train", "evaluate", "groundtruth", "registration"):
        assert name in vars(profile), f"section {name} was not built at load"
    assert profile.section("train") is profile.train


def test_snakefile_refuses_a_bad_profile_before_any_job(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    path = _profile_file(tmp_path, {"evaluate.pool_size": -3})
    out = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "-s", "workflow/Snakefile", "-n", "--cores", "1",
         "--config", f"profile={path}", f"results={tmp_path / 'results'}"],
        cwd=root, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode != 0
    assert "evaluate.pool_size must be >= 1" in out.stdout + out.stderr
    assert not (tmp_path / "results").exists()


def test_loading_a_profile_does_not_import_torch():
    # Evaluation, baseline, aggregate and figure jobs validate their profile
    # too; importing torch would cost each ~2.5 s.
    import subprocess
    import sys

    code = ("import sys; from dmrilib.config import load_profile; "
            "[load_profile(p) for p in ('smoke', 'quick', 'gpu', 'paper')]; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_stage_hash_follows_the_resolved_settings_not_the_yaml_text():
    import yaml

    from dmrilib.config import PROFILES_DIR, Profile

    data = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    implied = dict(data["evaluate"], fidelity="code")
    spelled_out = dict(implied, threshold_region="eroded_brain_no_csf", pool_stride="block", aggregate="per_fold")
    other = dict(data["evaluate"], fidelity="paper")
    hashes = {name: Profile.from_dict(dict(data, evaluate=section), source="test.yaml").stage_hash("evaluate")
              for name, section in (("implied", implied), ("spelled_out", spelled_out), ("other", other))}
    # The workflow re-runs a stage when this hash changes: writing out what a
    # default implies changes nothing, a different setting does.
    assert hashes["implied"] == hashes["spelled_out"] != hashes["other"]
    p = Profile.from_dict(data, source="test.yaml")
    assert p.stage_hash("train") != p.stage_hash("cohort")
    with pytest.raises(KeyError, match="unknown stage"):
        p.stage_hash("book")


def test_speed_settings_leave_the_train_stage_hash_alone():
    import yaml

    from dmrilib.config import PROFILES_DIR, Profile
    from dmrilib.crossval import RUNTIME_FIELDS

    data = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())

    def train_hash(**train):
        return Profile.from_dict(dict(data, train=dict(data["train"], **train)), source="t.yaml").stage_hash("train")

    plain = train_hash()
    # switching a speed setting (e.g. stacking the DAE folds on a GPU) re-runs no training job
    assert train_hash(stack_folds=7, compile=True, compile_mode="reduce-overhead", cudnn_benchmark=True,
                      device="cpu", num_threads=1, checkpoint_every=3) == plain
    assert {"stack_folds", "compile", "device"} <= set(RUNTIME_FIELDS)
    assert train_hash(lr=5e-4) != plain and train_hash(precision="bf16") != plain
