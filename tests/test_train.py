"""Tests for dmrilib.train: folds, training runs, resume, checkpoints."""
import csv
import json

import numpy as np
import pytest
import torch

from dmrilib.integrity import IntegrityError
from dmrilib.models import ModelConfig
from dmrilib.train import (CheckpointMismatchError, Fold, TrainConfig, checkpoint_provenance, derive_seed,
                           load_checkpoint, make_folds, payload_sha256, read_checkpoint, read_folds, run_hash,
                           save_checkpoint, seeded_generator, train_run, write_folds)

GRID = (16, 16, 16)
MODEL = ModelConfig(dae_widths=(4, 8), recon_base=4, recon_depth=2, disc_base=4, disc_depth=2)


def _data(n=6, c=4, seed=0):
    rng = np.random.default_rng(seed)
    brain = np.zeros((n, *GRID), bool)
    brain[:, 3:13, 2:14, 3:13] = True
    vols = (rng.random((n, c, *GRID), dtype=np.float32) * 0.5 + 0.25) * brain[:, None]
    return vols.astype(np.float32), brain, [f"sub-H{i:02d}" for i in range(1, n + 1)]


def _config(**kw):
    base = dict(epochs=2, batch_size=2, lr=1e-3, copies_per_subject=2, jood_radius=(2, 4), device="cpu",
                num_threads=1, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _run(tmp_path, model="dae", variant="lsd16-sigmoid", name="run", **kw):
    vols, brain, ids = _data()
    return train_run(vols, brain, ids, train_ids=ids[:4], val_ids=ids[4:], model=model, variant=variant,
                     model_config=MODEL, train_config=_config(**kw), out_dir=tmp_path / name, progress=False)


def test_folds_partition_subjects_with_four_validation_each():
    ids = [f"sub-H{i:02d}" for i in range(1, 29)]
    folds = make_folds(ids, 7, seed=0)
    assert [len(f.val) for f in folds] == [4] * 7
    assert sorted(s for f in folds for s in f.val) == sorted(ids)
    for f in folds:
        assert set(f.train) | set(f.val) == set(ids) and not set(f.train) & set(f.val)
    assert folds == make_folds(ids, 7, seed=0)
    assert folds != make_folds(ids, 7, seed=1)


def test_folds_round_trip_through_json(tmp_path):
    folds = make_folds(["a", "b", "c", "d", "e"], 2, seed=4)
    write_folds(folds, tmp_path / "folds.json", seed=4)
    assert read_folds(tmp_path / "folds.json") == folds
    assert json.loads((tmp_path / "folds.json").read_text())["seed"] == 4
    assert isinstance(folds[0], Fold)


def test_make_folds_rejects_bad_input():
    with pytest.raises(ValueError, match="duplicates"):
        make_folds(["a", "a", "b"], 2, 0)
    with pytest.raises(ValueError, match="n_folds"):
        make_folds(["a", "b"], 3, 0)


@pytest.mark.parametrize("model,variant", [("dae", "lsd16-sigmoid"), ("recdisc", "mix-mix-half")])
def test_train_run_writes_run_folder(tmp_path, model, variant):
    record = _run(tmp_path, model, variant)
    out = tmp_path / "run"
    for name in ("checkpoint-best.pt", "checkpoint-last.pt", "log.csv", "run.json"):
        assert (out / name).is_file()
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[1]["lr"]) == pytest.approx(1e-3 * 0.95)
    assert json.loads((out / "run.json").read_text()) == json.loads(json.dumps(record))
    assert record["best_val_loss"] == min(float(r["val_loss"]) for r in rows)
    assert record["parameters"] > 0 and record["provenance"]["versions"]["torch"]
    net, meta = load_checkpoint(out / "checkpoint-best.pt", expected_hash=record["config_hash"])
    assert meta["epoch"] == record["best_epoch"] and not net.training


def test_same_seed_gives_same_weights(tmp_path):
    _run(tmp_path, "recdisc", "normal-random-full", name="a", epochs=1)
    _run(tmp_path, "recdisc", "normal-random-full", name="b", epochs=1)
    a = torch.load(tmp_path / "a" / "checkpoint-last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "checkpoint-last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("model,variant", [("dae", "lsd16-linear"), ("recdisc", "uniform-isotropic-half")])
def test_resume_matches_uninterrupted_run(tmp_path, model, variant, monkeypatch):
    import dmrilib.train as train_module

    full = _run(tmp_path, model, variant, name="full", epochs=2)
    # Kill the second run right after its first epoch's checkpoint (before the log is written).
    real_write = train_module.write_csv_atomic

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "write_csv_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, model, variant, name="part", epochs=2)
    last = tmp_path / "part" / "checkpoint-last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    monkeypatch.setattr(train_module, "write_csv_atomic", real_write)
    resumed = _run(tmp_path, model, variant, name="part", epochs=2)

    a = torch.load(tmp_path / "full" / "checkpoint-last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert [r["val_loss"] for r in a["log"]] == [r["val_loss"] for r in b["log"]]
    assert resumed["best_epoch"] == full["best_epoch"]
    assert resumed["config_hash"] == full["config_hash"]
    rows = list(csv.DictReader((tmp_path / "part" / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]


def test_run_of_other_config_is_refused(tmp_path):
    _run(tmp_path, "dae", "lsd16-linear", epochs=1)
    with pytest.raises(CheckpointMismatchError, match="config hash"):
        _run(tmp_path, "dae", "lsd16-linear", epochs=1, lr=5e-4)


def test_load_checkpoint_refuses_other_hash(tmp_path):
    _run(tmp_path, "dae", "lsd16-linear", epochs=1)
    with pytest.raises(CheckpointMismatchError, match="another configuration"):
        load_checkpoint(tmp_path / "run" / "checkpoint-best.pt", expected_hash="0" * 12)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pt")


def test_runtime_settings_do_not_change_the_run_hash(tmp_path):
    a = _run(tmp_path, "dae", "lsd16-linear", name="a", epochs=1)
    b = _run(tmp_path, "dae", "lsd16-linear", name="a", epochs=1, num_threads=2)  # resumes: already finished
    assert a["config_hash"] == b["config_hash"]


def test_bf16_channels_last_path_runs_on_cpu(tmp_path):
    record = _run(tmp_path, "recdisc", "normal-directional-full", epochs=1, precision="bf16", channels_last=True)
    assert np.isfinite(record["best_val_loss"])


def test_train_config_validates_values():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="n_folds"):
        TrainConfig(n_folds=1)
    assert TrainConfig(jood_radius=[1, 2]).jood_radius == (1.0, 2.0)


def test_train_run_rejects_overlapping_folds(tmp_path):
    vols, brain, ids = _data()
    with pytest.raises(ValueError, match="both train and val"):
        train_run(vols, brain, ids, train_ids=ids[:4], val_ids=ids[3:], model="dae", variant="lsd16-linear",
                  model_config=MODEL, train_config=_config(), out_dir=tmp_path, progress=False)


def test_recdisc_trains_on_crops_and_validates_on_whole_volumes(tmp_path):
    record = _run(tmp_path, "recdisc", "normal-isotropic-full", epochs=1, recdisc_crop=(8, 8, 8))
    net, meta = load_checkpoint(tmp_path / "run" / "checkpoint-best.pt")
    assert meta["grid"] == list(GRID) and np.isfinite(record["best_val_loss"])
    with pytest.raises(ValueError, match="recdisc_crop"):
        _run(tmp_path, "recdisc", "normal-isotropic-full", name="bad", epochs=1, recdisc_crop=(6, 8, 8))


def test_checkpoint_every_keeps_resume_point_and_logs_every_epoch(tmp_path):
    _run(tmp_path, "dae", "lsd16-linear", epochs=3, checkpoint_every=2)
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert len(rows) == 3
    assert torch.load(tmp_path / "run" / "checkpoint-last.pt", weights_only=True)["epoch"] == 2


@pytest.mark.parametrize("selection", ["val_loss", "last"])
def test_selection_decides_which_epoch_is_the_best_checkpoint(tmp_path, selection):
    run = _run(tmp_path, epochs=3, selection=selection)
    losses = [float(line.split(",")[2]) for line in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]]
    expected = len(losses) - 1 if selection == "last" else int(np.argmin(losses))
    assert run["best_epoch"] == expected
    best = torch.load(tmp_path / "run" / "checkpoint-best.pt", weights_only=True)
    assert best["epoch"] == expected
    assert best["val_loss"] == pytest.approx(losses[expected])


def test_selection_is_validated_and_changes_the_run_hash():
    with pytest.raises(ValueError, match="selection"):
        _config(selection="best")
    kw = dict(in_channels=4, grid=GRID, train_ids=["a"], val_ids=["b"])
    assert (run_hash("dae", "lsd16-sigmoid", MODEL, _config(selection="last"), **kw)
            != run_hash("dae", "lsd16-sigmoid", MODEL, _config(), **kw))


@pytest.mark.parametrize("selection", ["val_loss", "last"])
def test_val_every_validates_only_some_epochs_and_selects_among_them(tmp_path, selection):
    run = _run(tmp_path, epochs=5, val_every=2, selection=selection)
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    losses = np.array([float(r["val_loss"]) for r in rows])
    # epochs 1 and 3 (every 2nd) and 4 (the last) are validated
    assert np.isnan(losses[[0, 2]]).all() and np.isfinite(losses[[1, 3, 4]]).all()
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)
    expected = 4 if selection == "last" else int(np.nanargmin(losses))
    assert run["best_epoch"] == expected and np.isfinite(run["best_val_loss"])
    # The validated epochs' losses do not depend on skipping the others.
    full = _run(tmp_path, name="full", epochs=5, selection=selection)
    every = [float(r["val_loss"]) for r in csv.DictReader((tmp_path / "full" / "log.csv").open())]
    np.testing.assert_allclose(losses[[1, 3, 4]], np.array(every)[[1, 3, 4]], rtol=1e-6)
    assert full["config_hash"] != run["config_hash"]
    with pytest.raises(ValueError, match="val_every"):
        _config(val_every=0)


def test_derive_seed_is_pinned_so_earlier_runs_stay_reproducible():
    # Every random stream of a run is seeded through derive_seed: changing it changes every result.
    assert derive_seed(0, "init") == 6109011495221250200
    assert 0 <= derive_seed(3, "order", 7) < 2 ** 63
    a = torch.rand(4, generator=seeded_generator(torch.device("cpu"), 3, "order", 7))
    b = torch.rand(4, generator=torch.Generator().manual_seed(derive_seed(3, "order", 7)))
    assert torch.equal(a, b)


def test_saved_checkpoint_with_provenance_loads_weights_only(tmp_path):
    path = tmp_path / "sub" / "checkpoint.pt"
    save_checkpoint(path, {"state_dict": {"w": torch.ones(2)}, "provenance": checkpoint_provenance("abc", 5)})
    payload = torch.load(path, weights_only=True)
    assert payload["provenance"]["config_hash"] == "abc" and payload["provenance"]["seed"] == 5
    assert torch.equal(payload["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_read_checkpoint_checks_file_format_and_hash(tmp_path):
    from dmrilib.train import checkpoint_meta, read_checkpoint

    path = tmp_path / "checkpoint.pt"
    with pytest.raises(FileNotFoundError, match="my_trainer"):
        read_checkpoint(path, expected_format="kind/1", trainer="my_trainer")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        read_checkpoint(path, expected_format="kind/1")
    save_checkpoint(path, {"format": "other/1", "config_hash": "abc", "state_dict": {"w": torch.ones(1)}})
    with pytest.raises(ValueError, match="'kind/1' expected, found 'other/1'"):
        read_checkpoint(path, expected_format="kind/1")
    with pytest.raises(ValueError, match="format"):
        load_checkpoint(path)  # a model checkpoint is another kind
    with pytest.raises(CheckpointMismatchError, match="expected xyz"):
        read_checkpoint(path, expected_format="other/1", expected_hash="xyz")
    payload = read_checkpoint(path, expected_format="other/1", expected_hash="abc")
    assert checkpoint_meta(payload) == {"format": "other/1", "config_hash": "abc",
                                        "payload_sha256": payload_sha256(payload)}


def test_unreadable_checkpoint_error_names_the_file_without_torchs_weights_only_advice(tmp_path):
    import os
    import pickle

    path = tmp_path / "checkpoint-best.pt"
    with path.open("wb") as f:  # a pickle that would call os.system: torch's safe loader refuses it
        pickle.dump({"run": os.system}, f, protocol=2)
    with pytest.raises(IntegrityError) as info:
        read_checkpoint(path, expected_format="kind/1", trainer="my_trainer")
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable dmrilib checkpoint")
    assert "damaged" in message and "Re-run the training job (my_trainer)" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # not shown in a traceback either
    path.write_bytes(torch.ones(1).numpy().tobytes())  # not a checkpoint at all
    with pytest.raises(IntegrityError, match="not a readable dmrilib checkpoint") as info:
        load_checkpoint(path)
    assert "weights_only" not in str(info.value)


def _flip_byte_in_largest_tensor(path):
    """Flip one bit inside the stored bytes of the checkpoint's largest weight tensor."""
    state = torch.load(path, weights_only=True)["state_dict"]
    name, tensor = max(state.items(), key=lambda kv: kv[1].numel())
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(tensor.numpy().tobytes())
    assert at >= 0, "tensor bytes not found in the file"
    raw[at + tensor.element_size() * (tensor.numel() // 2) + 3] ^= 0x40  # an exponent bit of one float32
    path.write_bytes(bytes(raw))
    return name


def test_flipped_byte_in_checkpoint_is_refused_on_load(tmp_path):
    _run(tmp_path, epochs=1)
    path = tmp_path / "run" / "checkpoint-best.pt"
    load_checkpoint(path)  # intact: loads
    name = _flip_byte_in_largest_tensor(path)
    changed = torch.load(path, weights_only=True)["state_dict"][name]
    assert changed.abs().max() > 1e3  # torch alone loads the corrupted weight without complaint
    with pytest.raises(IntegrityError, match=r"checkpoint-best.pt: content sha256 .* does not match"):
        load_checkpoint(path)


def test_resume_refuses_a_corrupted_last_checkpoint(tmp_path):
    _run(tmp_path, epochs=1)
    _flip_byte_in_largest_tensor(tmp_path / "run" / "checkpoint-last.pt")
    with pytest.raises(IntegrityError, match="checkpoint-last.pt"):
        _run(tmp_path, epochs=2)


def test_payload_sha256_covers_metadata_and_ignores_device():
    payload = {"format": "x/1", "config_hash": "abc", "state_dict": {"w": torch.arange(4.0)}, "log": [{"a": 1.5}]}
    digest = payload_sha256(payload)
    assert digest == payload_sha256({**payload, "payload_sha256": "ignored"})
    assert digest != payload_sha256({**payload, "config_hash": "abd"})
    assert digest != payload_sha256({**payload, "log": [{"a": 1.25}]})
    assert digest != payload_sha256({**payload, "state_dict": {"w": torch.arange(4.0).double()}})


def test_checkpoint_without_sha256_from_older_versions_loads_with_a_warning(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": "kind/1", "config_hash": "abc", "state_dict": {"w": torch.ones(1)}}, path)
    with pytest.warns(UserWarning, match="no payload sha256"):
        read_checkpoint(path, expected_format="kind/1")


def test_load_checkpoint_refuses_another_runs_model_or_variant(tmp_path):
    _run(tmp_path, epochs=1)
    path = tmp_path / "run" / "checkpoint-best.pt"
    load_checkpoint(path, expected={"model": "dae", "variant": "lsd16-sigmoid"})
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint-best.pt: was written for another run: "
                                                      r"model 'dae' \(this run: 'recdisc'\)"):
        load_checkpoint(path, expected={"model": "recdisc", "variant": "lsd16-sigmoid"})


def test_checkpoints_and_run_json_record_the_training_acquisition(tmp_path):
    acquisition = {"voxel_size_min": (2.4, 2.4, 2.4), "voxel_size_max": np.array([2.4, 2.4, 2.5]),
                   "orientations": ["LAS"], "bvalue": np.float64(1000.0)}
    vols, brain, ids = _data()
    train_run(vols, brain, ids, train_ids=ids[:4], val_ids=ids[4:], model="dae", variant="lsd16-sigmoid",
              model_config=MODEL, train_config=_config(epochs=1), out_dir=tmp_path / "run",
              acquisition=acquisition, progress=False)
    expected = {"voxel_size_min": [2.4, 2.4, 2.4], "voxel_size_max": [2.4, 2.4, 2.5], "orientations": ["LAS"],
                "bvalue": 1000.0}
    for name in ("checkpoint-best.pt", "checkpoint-last.pt"):
        assert load_checkpoint(tmp_path / "run" / name)[1]["acquisition"] == expected
    assert json.loads((tmp_path / "run" / "run.json").read_text())["acquisition"] == expected
