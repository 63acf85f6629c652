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
    with pytest.raises(ValueError, match="split"):
        make_folds(["a", "b"], 2, 0, split="stratified")


def test_contiguous_folds_are_the_authors_slices_of_the_sorted_ids_and_differ_from_random():
    ids = [f"sub-H{i:02d}" for i in range(28, 0, -1)]  # unsorted on purpose
    folds = make_folds(ids, 7, seed=0, split="contiguous")
    ordered = sorted(ids)
    # config.py: run 1 validates train[24:28], run k >= 2 validates train[4(k-2):4(k-1)]
    assert folds[0].val == tuple(ordered[24:28])
    for k in range(1, 7):
        assert folds[k].val == tuple(ordered[4 * (k - 1):4 * k])
        assert folds[k].train == tuple(s for s in ordered if s not in folds[k].val)
    assert make_folds(ids, 7, seed=5, split="contiguous") == folds  # the seed plays no part
    random = make_folds(ids, 7, seed=0, split="random")
    assert random != folds and random == make_folds(ids, 7, seed=0)
    assert sorted(s for f in random for s in f.val) == ordered
    assert [f.val for f in make_folds(ids[:5], 2, seed=0, split="contiguous")] == [tuple(ordered[-5:][3:]),
                                                                                 tuple(sorted(ids[:5])[:3])]


def test_train_config_resolves_switched_keys_from_fidelity():
    code, paper = TrainConfig(), TrainConfig(fidelity="paper")
    assert (code.lr, code.epochs, code.val_copies, code.jood_copies, code.fold_split, code.kl_reduction,
            code.jood_isotropic, code.jood_geometry, code.jood_uniform_width, code.jood_mix) == \
        (1e-3, 250, 4, "fixed", "contiguous", "sum", "per_patch", "centred", 0.24, "weighted")
    assert (paper.lr, paper.epochs, paper.val_copies, paper.jood_copies, paper.fold_split, paper.kl_reduction,
            paper.jood_isotropic, paper.jood_geometry, paper.jood_uniform_width, paper.jood_mix) == \
        (1e-4, 500, 1, "fresh", "random", "mean", "per_voxel", "anywhere", 0.12, "thirds")
    assert (code.shuffle, code.jood_insertion) == ("fixed", "authors")
    assert (paper.shuffle, paper.jood_insertion) == ("every_epoch", "replace")
    assert TrainConfig(fidelity="paper", epochs=4, jood_copies="fixed").jood_copies == "fixed"
    assert TrainConfig(jood_centre_offset=[2, 8]).jood_centre_offset == (2.0, 8.0)
    for bad in ({"fidelity": "thesis"}, {"jood_copies": "once"}, {"fold_split": "sorted"},
                {"kl_reduction": "max"}, {"jood_isotropic": "x"}, {"jood_geometry": "x"}, {"jood_mix": "x"},
                {"jood_uniform_width": 0.0}, {"jood_centre_offset": (5, 2)}, {"jood_centre_offset": (1, 2, 3)},
                {"shuffle": "never"}, {"jood_insertion": "add"}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


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


@pytest.mark.parametrize("model,variant,copies", [("dae", "lsd16-linear", "fixed"),
                                                  ("recdisc", "uniform-isotropic-half", "fixed"),
                                                  ("recdisc", "mix-mix-half", "fresh")])
def test_resume_matches_uninterrupted_run(tmp_path, model, variant, copies, monkeypatch):
    import dmrilib.train as train_module

    full = _run(tmp_path, model, variant, name="full", epochs=2, jood_copies=copies)
    # Kill the second run right after its first epoch's checkpoint (before the log is written).
    real_write = train_module.write_csv_atomic

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "write_csv_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, model, variant, name="part", epochs=2, jood_copies=copies)
    last = tmp_path / "part" / "checkpoint-last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    monkeypatch.setattr(train_module, "write_csv_atomic", real_write)
    resumed = _run(tmp_path, model, variant, name="part", epochs=2, jood_copies=copies)

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


def _recorded_steps(monkeypatch):
    """Record (training?, clean, disturbed, mask) of every loss the run computes."""
    import dmrilib.train as train_module

    calls = []
    real = train_module._Step.loss

    def loss(self, clean, **kw):
        d, m = kw.get("disturbed"), kw.get("patch_mask")
        calls.append((self.net.training, clean.clone(), None if d is None else d.clone(),
                      None if m is None else m.clone()))
        return real(self, clean, **kw)

    monkeypatch.setattr(train_module._Step, "loss", loss)
    return calls


def _epochs(calls, n_steps):
    train = [c for c in calls if c[0]]
    return [train[i:i + n_steps] for i in range(0, len(train), n_steps)]


@pytest.mark.parametrize("crop", [None, (8, 8, 8)])
def test_fixed_copies_are_reused_every_epoch_and_fresh_ones_are_not(tmp_path, monkeypatch, crop):
    import dmrilib.train as train_module

    calls = _recorded_steps(monkeypatch)
    pools = []
    real_copies = train_module._fixed_copies
    monkeypatch.setattr(train_module, "_fixed_copies", lambda *a, **k: pools.append(real_copies(*a, **k)) or pools[-1])
    # 4 training subjects x 2 copies, batches of 2: 4 steps per epoch
    _run(tmp_path, "recdisc", "normal-random-full", name="fixed", epochs=2, jood_copies="fixed", recdisc_crop=crop)
    first, second = _epochs(calls, 4)
    assert len(pools) == 1 and len(first) == len(second) == 4
    if crop is None:  # the same copies in the same order, every epoch
        for a, b in zip(first, second):
            assert all(torch.equal(x, y) for x, y in zip(a[1:], b[1:]))
    else:  # every training input is a window of one of the copies made before the first epoch
        windows = np.lib.stride_tricks.sliding_window_view(pools[0][0].float().numpy(), crop, axis=(2, 3, 4))
        mask_windows = np.lib.stride_tricks.sliding_window_view(pools[0][1].numpy(), crop, axis=(1, 2, 3))
        for _, _, disturbed, mask in first + second:
            for d, m in zip(disturbed.numpy(), mask.numpy()):
                same = (windows == d[None, :, None, None, None]).all(axis=(1, 5, 6, 7))
                assert same.any() and (mask_windows[same] == m).all()
    assert any(m.any() for *_, m in first)
    calls.clear()
    _run(tmp_path, "recdisc", "normal-random-full", name="fresh", epochs=2, jood_copies="fresh", recdisc_crop=crop)
    first, second = _epochs(calls, 4)
    assert not all(torch.equal(a[2], b[2]) for a, b in zip(first, second))
    assert not all(torch.equal(a[3], b[3]) for a, b in zip(first, second))


def test_fixed_copies_keep_the_stored_dtype_and_do_not_depend_on_the_other_subjects():
    from dmrilib.noise import JoodConfig
    from dmrilib.train import _fixed_copies

    vols, brain, ids = _data()
    jood = JoodConfig.from_train_config("mix-mix-full", _config())
    cpu = torch.device("cpu")
    data = torch.from_numpy(vols.astype(np.float16))
    masks = torch.from_numpy(brain)
    disturbed, mask = _fixed_copies(data, masks, None, ids, 3, jood, seed=3, device=cpu)
    assert disturbed.dtype == torch.float16 and mask.dtype == torch.bool
    assert disturbed.shape == (len(ids) * 3, *data.shape[1:]) and mask.shape == (len(ids) * 3, *GRID)
    assert mask.any() and torch.equal((disturbed != data.repeat_interleave(3, 0)).any(1), mask)
    # subject 2's copies alone, or after other subjects in another order: the same
    alone, alone_mask = _fixed_copies(data[[2]], masks[[2]], None, ids[2:3], 3, jood, seed=3, device=cpu)
    assert torch.equal(alone, disturbed[6:9]) and torch.equal(alone_mask, mask[6:9])
    other, _ = _fixed_copies(data, masks, None, ids, 3, jood, seed=4, device=cpu)
    assert not torch.equal(other, disturbed)


def test_resumed_run_continues_with_the_same_fixed_copies(tmp_path, monkeypatch):
    import dmrilib.train as train_module

    seen = {}
    real = train_module._fixed_copies

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.setdefault("copies", []).append(out[0].clone())
        return out

    monkeypatch.setattr(train_module, "_fixed_copies", spy)
    _run(tmp_path, "recdisc", "normal-random-full", epochs=1, jood_copies="fixed")
    _run(tmp_path, "recdisc", "normal-random-full", epochs=1, jood_copies="fixed", name="again")
    assert torch.equal(seen["copies"][0], seen["copies"][1])


@pytest.mark.parametrize("val_copies", [1, 3])
def test_val_copies_sets_the_disturbed_copies_per_validation_subject(tmp_path, monkeypatch, val_copies):
    calls = _recorded_steps(monkeypatch)
    _run(tmp_path, "recdisc", "normal-random-full", epochs=1, val_copies=val_copies)
    val = [c for c in calls if not c[0]]
    assert len(val) == 2 * val_copies  # two validation subjects
    disturbed = [c[2] for c in val]
    assert all(not torch.equal(disturbed[0], d) for d in disturbed[1:])


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_kl_reduction_reaches_the_dae_loss(tmp_path, monkeypatch, reduction):
    import dmrilib.train as train_module

    seen = []
    real = train_module.dae_loss

    def spy(out, clean, kl_weight, **kw):
        seen.append(kw.get("kl_reduction"))
        return real(out, clean, kl_weight, **kw)

    monkeypatch.setattr(train_module, "dae_loss", spy)
    _run(tmp_path, epochs=1, kl_reduction=reduction)
    assert seen and set(seen) == {reduction}


@pytest.mark.parametrize("jood_copies", ["fixed", "fresh"])
def test_jood_regions_reach_add_jood_as_centre_region(tmp_path, monkeypatch, jood_copies):
    import dmrilib.train as train_module

    vols, brain, ids = _data()
    regions = np.zeros_like(brain)
    regions[:, 6:10, 6:10, 6:10] = True
    for i in range(len(ids)):
        regions[i, 6, 6, 6 + i % 4] = False  # each subject's region differs: rows must follow the subjects
    seen = []
    real = train_module.add_jood

    def spy(clean, brain_mask, config, generator, **kw):
        seen.append((clean.clone(), kw.get("centre_region")))
        return real(clean, brain_mask, config, generator, **kw)

    monkeypatch.setattr(train_module, "add_jood", spy)
    train_run(vols, brain, ids, train_ids=ids[:4], val_ids=ids[4:], model="recdisc", variant="normal-random-full",
              model_config=MODEL, train_config=_config(epochs=1, jood_copies=jood_copies), out_dir=tmp_path / "r",
              jood_regions=regions, progress=False)
    assert seen
    subjects = set()
    for clean, region in seen:
        assert region is not None and region.shape == clean.shape[:1] + clean.shape[2:]
        for row in range(clean.shape[0]):
            (i,) = [i for i in range(len(ids)) if np.array_equal(vols[i], clean[row].float().numpy())]
            assert np.array_equal(region[row].numpy(), regions[i])
            subjects.add(i)
    assert subjects == set(range(len(ids)))  # training and validation subjects
    with pytest.raises(ValueError, match="jood_regions"):
        train_run(vols, brain, ids, train_ids=ids[:4], val_ids=ids[4:], model="recdisc",
                  variant="normal-random-full", model_config=MODEL, train_config=_config(epochs=1),
                  out_dir=tmp_path / "bad", jood_regions=regions[:, :8], progress=False)


def _visits(tmp_path, monkeypatch, name, model, variant, train_ids, **kw):
    """Per epoch, the training subjects (indices into the data) in the order the loss saw them."""
    import dmrilib.train as train_module

    vols, brain, ids = _data()
    seen = []
    real = train_module._Step.loss

    def spy(self, clean, **kwargs):
        if torch.is_grad_enabled():  # training steps only, not validation
            for row in clean:
                (i,) = [i for i in range(len(ids)) if np.array_equal(vols[i], row.float().numpy())]
                seen.append(i)
        return real(self, clean, **kwargs)

    monkeypatch.setattr(train_module._Step, "loss", spy)
    cfg = _config(epochs=3, **kw)
    train_run(vols, brain, ids, train_ids=[ids[i] for i in train_ids], val_ids=ids[4:], model=model,
              variant=variant, model_config=MODEL, train_config=cfg, out_dir=tmp_path / name, progress=False)
    per_epoch = len(seen) // 3
    return [seen[e * per_epoch:(e + 1) * per_epoch] for e in range(3)]


def test_dae_visits_train_ids_in_the_given_order_every_epoch_unless_shuffled(tmp_path, monkeypatch):
    given = [3, 0, 2, 1]  # not sorted on purpose: fixed means the order of train_ids
    fixed = _visits(tmp_path, monkeypatch, "fixed", "dae", "lsd16-sigmoid", given)  # code default
    assert fixed == [given] * 3
    shuffled = _visits(tmp_path, monkeypatch, "every", "dae", "lsd16-sigmoid", given, shuffle="every_epoch")
    assert all(sorted(e) == sorted(given) for e in shuffled)
    assert len({tuple(e) for e in shuffled}) > 1  # a new order in some epoch
    assert shuffled == _visits(tmp_path, monkeypatch, "every2", "dae", "lsd16-sigmoid", given,
                               shuffle="every_epoch")  # seeded


@pytest.mark.parametrize("copies", ["fresh", "fixed"])
def test_recdisc_order_follows_shuffle_with_fresh_copies_and_the_single_shuffle_with_fixed_ones(
        tmp_path, monkeypatch, copies):
    kw = dict(jood_copies=copies, copies_per_subject=2)
    once = _visits(tmp_path, monkeypatch, "fixed", "recdisc", "normal-random-full", [0, 1, 2, 3],
                   shuffle="fixed", **kw)
    every = _visits(tmp_path, monkeypatch, "every", "recdisc", "normal-random-full", [0, 1, 2, 3],
                    shuffle="every_epoch", **kw)
    for epochs in (once, every):
        assert all(sorted(e) == [0, 0, 1, 1, 2, 2, 3, 3] for e in epochs)
    assert once[0] == once[1] == once[2]
    if copies == "fresh":
        assert len({tuple(e) for e in every}) > 1
    else:  # the copies' single shuffle, whatever shuffle says
        assert every == once


@pytest.mark.parametrize("mode,marks", [("default", 0), ("reduce-overhead", 2)])
def test_compiled_marks_a_cuda_graph_step_before_each_call_with_reduce_overhead(monkeypatch, mode, marks):
    from dmrilib.train import compiled

    seen = {"compile": None, "marks": 0}

    def fake_compile(fn, **kwargs):
        seen["compile"] = kwargs
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: seen.__setitem__("marks", seen["marks"] + 1))
    double = lambda x: 2 * x  # noqa: E731
    assert compiled(double, _config()) is double  # compile off: the function itself
    fast = compiled(double, _config(compile=True, compile_mode=mode))
    assert fast(1) == 2 and fast(2) == 4
    assert seen["compile"] == {"mode": mode, "dynamic": False} and seen["marks"] == marks
