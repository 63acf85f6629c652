"""Run records: one key set per record, checked on reading, one time suffix."""
import ast
import dataclasses
import json
from pathlib import Path

import pytest

import dmrilib
from dmrilib.records import (LEGACY_KEYS, LEGACY_LOG_KEYS, LEGACY_STUDY_KEYS, RUN_TABLE_FIELDS, TIME_SUFFIX,
                             EvalRecord, MapsRecord, RecordError, SegmentationRecord, TrainRecord, read_record,
                             time_key, upgrade_keys, write_record)

PACKAGE = Path(dmrilib.__file__).parent


def _train_record(**changes):
    values = dict(model="dae", variant="lsd16-linear", config_hash="abc", seed=3, epochs=2, best_epoch=1,
                  best_val_loss=0.25, train_time_s=1.5, device="cpu", device_name="cpu", parameters=10,
                  train_ids=["sub-C01"], val_ids=["sub-C02"], model_config={"lsd": 16}, train_config={"lr": 1e-3},
                  grid=[8, 8, 8], in_channels=64, acquisition=None, provenance={"seed": 3})
    return TrainRecord(**{**values, **changes})


def test_write_then_read_gives_the_same_record(tmp_path):
    record = _train_record()
    written = write_record(tmp_path / "run.json", record)
    assert written == json.loads((tmp_path / "run.json").read_text()) == dataclasses.asdict(record)
    assert read_record(tmp_path / "run.json", TrainRecord) == record


def test_optional_fields_left_unset_are_not_written(tmp_path):
    record = EvalRecord(model="baseline", variant="normative", fold=0, n_test=2, auroc_mean=0.9,
                        healthy_fpr_thresholds={}, dice_post_mean_by_rule={}, evaluation={}, config_hash="h", seed=0,
                        provenance={}, fit_time_s=0.4)
    data = write_record(tmp_path / "eval.json", record)
    assert "fit_time_s" in data and not {"predict_time_s", "train_config_hash", "truth_pipeline"} & set(data)
    assert read_record(tmp_path / "eval.json", EvalRecord) == record


def test_a_writer_cannot_spell_a_key_the_reader_does_not_know():
    with pytest.raises(TypeError, match="wall_seconds"):
        _train_record(wall_seconds=1.0)


def test_reading_names_the_file_and_the_wrong_keys(tmp_path):
    path = tmp_path / "run.json"
    data = dataclasses.asdict(_train_record())
    del data["seed"]
    path.write_text(json.dumps({**data, "colour": "red"}))
    with pytest.raises(RecordError, match=r"run\.json: not a TrainRecord \(unknown keys \['colour'\]; missing keys "
                                          r"\['seed'\]\)"):
        read_record(path, TrainRecord)
    path.write_text("{not json")
    with pytest.raises(RecordError, match="run.json: not valid JSON"):
        read_record(path, TrainRecord)
    path.write_text("[1, 2]")
    with pytest.raises(RecordError, match="JSON object"):
        read_record(path, TrainRecord)


def test_a_record_of_an_older_dmrilib_is_read_with_its_legacy_keys_renamed(tmp_path):
    data = dataclasses.asdict(_train_record(train_time_s=9.0))
    data["wall_seconds"] = data.pop("train_time_s")
    (tmp_path / "run.json").write_text(json.dumps(data))
    assert read_record(tmp_path / "run.json", TrainRecord).train_time_s == 9.0
    assert upgrade_keys({"wall_seconds": 1, "seed": 2}) == {"train_time_s": 1, "seed": 2}
    assert upgrade_keys({"seconds": 1}, LEGACY_STUDY_KEYS) == {"stage_time_s": 1}


def test_maps_record_gives_the_test_ids_of_its_identity():
    record = MapsRecord(identity={"test_ids": ["sub-P01", "sub-P02"]}, sha256={}, checkpoint_config_hash="h",
                        checkpoint_epoch=3, predict_time_s=0.1)
    assert record.test_ids == ["sub-P01", "sub-P02"]
    assert dataclasses.replace(record, identity={}).test_ids is None


def test_every_duration_ends_in_the_time_suffix():
    assert time_key("segment") == "segment_time_s"
    with pytest.raises(ValueError, match="snake_case"):
        time_key("Segment time")
    for kind in (TrainRecord, SegmentationRecord, MapsRecord, EvalRecord):
        for f in dataclasses.fields(kind):
            timed = "time" in f.name or "second" in f.name
            assert not timed or f.name.endswith(TIME_SUFFIX), (kind.__name__, f.name)
    for legacy in (LEGACY_KEYS, LEGACY_LOG_KEYS, LEGACY_STUDY_KEYS):
        assert all(new.endswith(TIME_SUFFIX) for new in legacy.values())


def test_runs_table_columns_are_train_record_fields():
    assert set(RUN_TABLE_FIELDS) <= {f.name for f in dataclasses.fields(TrainRecord)}


def _string_constants(path):
    tree = ast.parse(path.read_text())
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("*.py") if p.name != "records.py"),
                         ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_module_spells_a_legacy_time_key(path):
    # The drift this module ended: a writer and a reader that spell a duration differently.
    legacy = {*LEGACY_KEYS, *LEGACY_LOG_KEYS, *LEGACY_STUDY_KEYS, "seconds_segment", "seconds_register"}
    assert not _string_constants(path) & legacy
