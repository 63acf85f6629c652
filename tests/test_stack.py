"""Tests for dmrilib.stack: stacked DAE networks and several folds trained at once."""
import csv
import json

import numpy as np
import pytest
import torch

import dmrilib.stack as stack_module
from dmrilib.checkpoint import CHECKPOINT_FORMAT, read_checkpoint, run_hash
from dmrilib.models import build_model, dae_loss
from dmrilib.stack import StackedModels, StackMember, stacked_dae_loss, train_stacked
from dmrilib.train import TrainConfig, load_checkpoint, train_run

from test_train import GRID, MODEL
from test_train import _data as _subjects

VARIANT = "lsd16-sigmoid"


def _data():
    return _subjects(n=9)  # nine subjects: three overlapping folds of 3 + 2


def _config(**kw):
    base = dict(epochs=2, batch_size=2, lr=1e-3, device="cpu", num_threads=1, seed=3)
    base.update(kw)
    return TrainConfig(**base)


#: Three folds of equal size (3 training, 2 validation subjects) that overlap, as cross-validation folds do.
FOLDS = [((0, 1, 2), (3, 4)), ((4, 5, 6), (7, 8)), ((1, 3, 5), (6, 8))]


def _members(tmp_path, ids, prefix, folds=FOLDS):
    return [StackMember(tuple(ids[i] for i in tr), tuple(ids[i] for i in va), tmp_path / f"{prefix}{k}")
            for k, (tr, va) in enumerate(folds)]


def _stacked(tmp_path, prefix="stack", folds=FOLDS, **kw):
    vols, brain, ids = _data()
    return train_stacked(vols, brain, ids, members=_members(tmp_path, ids, prefix, folds), model="dae",
                         variant=VARIANT, model_config=MODEL, train_config=_config(**kw), progress=False)


def _alone(tmp_path, prefix="alone", folds=FOLDS, **kw):
    vols, brain, ids = _data()
    return [train_run(vols, brain, ids, train_ids=m.train_ids, val_ids=m.val_ids, model="dae", variant=VARIANT,
                      model_config=MODEL, train_config=_config(**kw), out_dir=m.out_dir, progress=False)
            for m in _members(tmp_path, ids, prefix, folds)]


def _nets(k, dtype=torch.float64):
    nets = []
    for seed in range(k):
        torch.manual_seed(seed)
        nets.append(build_model("dae", VARIANT, MODEL, 4, grid=GRID).to(dtype))
    return nets


def _reconstruction(run_dir, record):
    """What the run's last checkpoint reconstructs of two subjects (evaluation mode)."""
    net, _ = load_checkpoint(run_dir / "checkpoint-last.pt", expected_hash=record["config_hash"])
    with torch.no_grad():
        return net.eval()(torch.from_numpy(_data()[0][:2])).reconstruction


def _log(path):
    return list(csv.DictReader(path.open()))


def test_stacked_adam_step_equals_each_network_stepping_alone_in_float64():
    nets = _nets(3)
    stack = StackedModels(nets)
    x = torch.rand(3, 2, 4, *GRID, dtype=torch.float64)
    eps = torch.randn(3, 2, 16, dtype=torch.float64)
    losses = stack.functional(lambda net, xx, ee: dae_loss(net(xx, ee), xx))(x, eps)
    optimizer = torch.optim.Adam(stack.parameters(), lr=1e-3)
    losses.sum().backward()
    optimizer.step()
    for k, net in enumerate(nets):
        alone = torch.optim.Adam(net.parameters(), lr=1e-3)
        loss = dae_loss(net(x[k], eps[k]), x[k])
        loss.backward()
        alone.step()
        assert float(losses[k].detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
        state = stack.member_state(k)
        for name, value in net.state_dict().items():  # weights and BatchNorm running statistics
            torch.testing.assert_close(state[name].to(value.dtype), value, rtol=1e-9, atol=1e-12)


def test_member_states_load_into_single_networks_and_optimisers_and_stack_back():
    nets = _nets(2, torch.float32)
    stack = StackedModels(nets)
    optimizer = torch.optim.Adam(stack.parameters(), lr=1e-3)
    x = torch.rand(2, 2, 4, *GRID)
    stack(x, torch.randn(2, 2, 16))[0].sum().backward()
    optimizer.step()
    singles = []
    for k in range(2):
        net = build_model("dae", VARIANT, MODEL, 4, grid=GRID)
        net.load_state_dict(stack.member_state(k))
        single = torch.optim.Adam(net.parameters(), lr=1e-3)
        single.load_state_dict(stack.member_optimizer_state(optimizer, k))
        singles.append(single.state_dict())
        assert list(net.state_dict()) == list(stack.member_state(k))
    again = torch.optim.Adam(StackedModels(nets).parameters(), lr=1e-3)
    stack.load_optimizer_states(again, singles)
    for a, b in zip(optimizer.state_dict()["state"].values(), again.state_dict()["state"].values()):
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_stacked_models_refuse_other_architectures():
    small = build_model("dae", VARIANT, MODEL, 4, grid=GRID)
    wide = build_model("dae", "lsd32-sigmoid", MODEL, 4, grid=GRID)
    with pytest.raises(ValueError, match="other weight shapes"):
        StackedModels([small, wide])
    with pytest.raises(ValueError, match="one architecture"):
        StackedModels([small, torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="at least one"):
        StackedModels([])


def test_stacked_loss_is_the_dae_training_loss_of_each_network():
    nets = _nets(2, torch.float32)
    stack = StackedModels(nets)
    config = _config(precision="bf16", channels_last=True)  # channels_last cannot apply under vmap: ignored
    x = torch.rand(2, 2, 4, *GRID)
    losses = stacked_dae_loss(stack, config, torch.device("cpu"))(x, None)
    assert losses.shape == (2,) and torch.isfinite(losses).all()


def test_train_stacked_gives_each_fold_the_run_train_alone_gives(tmp_path):
    stacked = _stacked(tmp_path)
    alone = _alone(tmp_path)
    for k, (a, s) in enumerate(zip(alone, stacked)):
        assert s["config_hash"] == a["config_hash"] and s["train_ids"] == a["train_ids"]
        assert set(s) == set(a) and s["train_config"]["stack_folds"] == 1
        rows_a, rows_s = _log(tmp_path / f"alone{k}" / "log.csv"), _log(tmp_path / f"stack{k}" / "log.csv")
        assert [r["epoch"] for r in rows_s] == [r["epoch"] for r in rows_a] and [r["lr"] for r in rows_s] == [
            r["lr"] for r in rows_a]
        # the same maths; a grouped convolution only rounds differently
        np.testing.assert_allclose([float(r["train_loss"]) for r in rows_s],
                                   [float(r["train_loss"]) for r in rows_a], rtol=1e-4)
        np.testing.assert_allclose([float(r["val_loss"]) for r in rows_s],
                                   [float(r["val_loss"]) for r in rows_a], rtol=1e-3)
        # the stacked run's checkpoint loads as any run's and reconstructs like the run trained alone
        torch.testing.assert_close(_reconstruction(tmp_path / f"stack{k}", s),
                                   _reconstruction(tmp_path / f"alone{k}", a), rtol=1e-3, atol=1e-3)
        payload = read_checkpoint(tmp_path / f"stack{k}" / "checkpoint-last.pt", expected_format=CHECKPOINT_FORMAT)
        first = next(iter(payload["state_dict"].values()))
        assert payload["optimizer"]["state"][0]["exp_avg"].shape == first.shape  # one network's Adam state
    # the stack's wall time is shared among its runs
    times = [float(r["epoch_time_s"]) for k in range(3) for r in _log(tmp_path / f"stack{k}" / "log.csv")]
    assert all(t > 0 for t in times)


def test_interrupted_stack_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    _stacked(tmp_path, prefix="full", epochs=2, checkpoint_every=1)
    real = stack_module.write_csv_atomic

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stack_module, "write_csv_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        _stacked(tmp_path, prefix="part", epochs=2, checkpoint_every=1)
    monkeypatch.setattr(stack_module, "write_csv_atomic", real)
    # the first member saved epoch 0 before the kill; the others had not: their start epochs differ
    starts = []
    for k in range(3):
        last = tmp_path / f"part{k}" / "checkpoint-last.pt"
        starts.append(torch.load(last, weights_only=True)["epoch"] + 1 if last.exists() else 0)
    assert starts == [1, 0, 0]
    resumed = _stacked(tmp_path, prefix="part", epochs=2, checkpoint_every=1)
    for k in range(3):
        # trained one by one after the stack broke up: the same runs up to float32 rounding
        torch.testing.assert_close(_reconstruction(tmp_path / f"part{k}", resumed[k]),
                                   _reconstruction(tmp_path / f"full{k}", resumed[k]), rtol=1e-3, atol=1e-3)
        assert [int(r["epoch"]) for r in _log(tmp_path / f"part{k}" / "log.csv")] == [0, 1]


def test_stack_resumed_at_one_epoch_is_bit_identical_to_the_uninterrupted_stack(tmp_path, monkeypatch):
    _stacked(tmp_path, prefix="full", epochs=2, checkpoint_every=1)
    calls = {"n": 0}
    real = stack_module.write_csv_atomic

    def kill_after_first_epoch(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # every member has written epoch 0
            raise KeyboardInterrupt

    monkeypatch.setattr(stack_module, "write_csv_atomic", kill_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        _stacked(tmp_path, prefix="part", epochs=2, checkpoint_every=1)
    monkeypatch.setattr(stack_module, "write_csv_atomic", real)
    resumed = _stacked(tmp_path, prefix="part", epochs=2, checkpoint_every=1)
    for k in range(3):
        a = torch.load(tmp_path / f"full{k}" / "checkpoint-last.pt", weights_only=True)
        b = torch.load(tmp_path / f"part{k}" / "checkpoint-last.pt", weights_only=True)
        assert all(torch.equal(a["state_dict"][n], b["state_dict"][n]) for n in a["state_dict"])
        assert [r["val_loss"] for r in a["log"]] == [r["val_loss"] for r in b["log"]]
        assert resumed[k]["best_epoch"] == json.loads((tmp_path / f"full{k}" / "run.json").read_text())["best_epoch"]


def test_members_at_different_epochs_are_trained_one_by_one_exactly_as_train_run(tmp_path):
    folds = FOLDS[:2]
    _alone(tmp_path, prefix="mixed", folds=folds[:1], epochs=1)  # member 0 already has epoch 0 of 1
    vols, brain, ids = _data()
    mixed = train_stacked(vols, brain, ids, members=_members(tmp_path, ids, "mixed", folds), model="dae",
                          variant=VARIANT, model_config=MODEL, train_config=_config(epochs=1), progress=False)
    alone = _alone(tmp_path, prefix="alone", folds=folds, epochs=1)
    for k in range(2):
        a = torch.load(tmp_path / f"alone{k}" / "checkpoint-last.pt", weights_only=True)["state_dict"]
        b = torch.load(tmp_path / f"mixed{k}" / "checkpoint-last.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(a[n], b[n]) for n in a)
        assert mixed[k]["config_hash"] == alone[k]["config_hash"]


def test_train_stacked_refuses_what_cannot_stack(tmp_path):
    vols, brain, ids = _data()
    members = _members(tmp_path, ids, "bad")
    common = dict(variant=VARIANT, model_config=MODEL, train_config=_config(), progress=False)
    with pytest.raises(ValueError, match="only the DAE"):
        train_stacked(vols, brain, ids, members=members, model="recdisc", **{**common, "variant": "mix-mix-half"})
    uneven = [members[0], StackMember(ids[4:8], ids[8:], tmp_path / "uneven")]
    with pytest.raises(ValueError, match="equal numbers"):
        train_stacked(vols, brain, ids, members=uneven, model="dae", **common)
    with pytest.raises(ValueError, match="named twice"):
        train_stacked(vols, brain, ids, members=[members[0], members[0]], model="dae", **common)
    with pytest.raises(ValueError, match="not in subject_ids"):
        train_stacked(vols, brain, ids, members=[StackMember(("nobody",), ids[:1], tmp_path / "x")], model="dae",
                      **common)
    assert not any((tmp_path / f"bad{k}").exists() for k in range(3))


def test_speed_settings_are_validated_and_do_not_change_the_run_hash():
    for bad in (dict(stack_folds=0), dict(compile_mode="fastest")):
        with pytest.raises(ValueError, match="stack_folds|compile_mode"):
            _config(**bad)
    kw = dict(in_channels=4, grid=GRID, train_ids=["a"], val_ids=["b"])
    plain = run_hash("dae", VARIANT, MODEL, _config(), **kw)
    fast = run_hash("dae", VARIANT, MODEL, _config(stack_folds=7, compile_mode="reduce-overhead",
                                                   cudnn_benchmark=True), **kw)
    assert plain == fast
