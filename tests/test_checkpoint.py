"""Tests for dmrilib.checkpoint: save/read/load, mismatches, weights_only, sha256, seeds; module boundaries."""
import ast
import pickle
from pathlib import Path

import pytest
import torch

import dmrilib.checkpoint as ckpt
import dmrilib.train as train
from dmrilib.checkpoint import (CHECKPOINT_FORMAT, CheckpointMismatchError, checkpoint_meta, derive_seed,
                                load_checkpoint, payload_sha256, read_checkpoint, resume, save_checkpoint,
                                save_resume_point, seeded_generator)
from dmrilib.integrity import IntegrityError
from dmrilib.models import ModelConfig, build_model

PACKAGE = Path(ckpt.__file__).parent
MODEL = ModelConfig(dae_widths=(4, 8), recon_base=4, recon_depth=2, disc_base=4, disc_depth=2)
GRID = (16, 16, 16)


def _payload(net, **extra):
    return {"format": CHECKPOINT_FORMAT, "model": "dae", "variant": "lsd16-sigmoid",
            "model_config": {k: list(v) if isinstance(v, tuple) else v for k, v in MODEL.__dict__.items()},
            "in_channels": 4, "grid": list(GRID), "config_hash": "abc", "seed": 3, "epoch": 0,
            "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()}, **extra}


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    net = build_model("dae", "lsd16-sigmoid", MODEL, 4, grid=GRID)
    path = tmp_path / "checkpoint-best.pt"
    save_checkpoint(path, _payload(net))
    return net, path


def test_train_reexports_the_checkpoint_names():
    for name in ("CheckpointMismatchError", "resolve_device", "derive_seed", "seeded_generator", "save_checkpoint",
                 "read_checkpoint", "load_checkpoint", "payload_sha256", "checkpoint_provenance", "checkpoint_meta",
                 "run_hash"):
        assert getattr(train, name) is getattr(ckpt, name), name


def test_save_read_load_round_trip(saved):
    net, path = saved
    payload = read_checkpoint(path, expected_format=CHECKPOINT_FORMAT, expected_hash="abc",
                              expected={"model": "dae"})
    assert payload["payload_sha256"] == payload_sha256(payload)
    loaded, meta = load_checkpoint(path, expected_hash="abc", expected={"variant": "lsd16-sigmoid"})
    assert not loaded.training and "state_dict" not in meta and meta["epoch"] == 0
    assert meta == checkpoint_meta(payload)
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_mismatches_and_missing_files_are_refused(saved, tmp_path):
    _, path = saved
    with pytest.raises(CheckpointMismatchError, match="written by config hash abc, expected xyz"):
        read_checkpoint(path, expected_format=CHECKPOINT_FORMAT, expected_hash="xyz")
    with pytest.raises(CheckpointMismatchError, match="was written for another run: model 'dae'"):
        load_checkpoint(path, expected={"model": "recdisc"})
    with pytest.raises(ValueError, match="not a checkpoint of this kind"):
        read_checkpoint(path, expected_format="dmrilib-segmentation/1")
    with pytest.raises(FileNotFoundError, match="Train the network first"):
        read_checkpoint(tmp_path / "none.pt", expected_format=CHECKPOINT_FORMAT)


def test_read_is_weights_only_and_does_not_run_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT, "x": Evil()}, protocol=2))
    with pytest.raises(IntegrityError, match="not a readable dmrilib checkpoint") as info:
        read_checkpoint(path, expected_format=CHECKPOINT_FORMAT)
    assert "weights_only=False" not in str(info.value)


def test_sha_check_finds_a_changed_entry_and_old_checkpoints_only_warn(saved, tmp_path):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    payload["epoch"] = 1  # edited without a new sha256
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(IntegrityError, match="does not match"):
        read_checkpoint(tmp_path / "edited.pt", expected_format=CHECKPOINT_FORMAT)
    del payload["payload_sha256"]
    torch.save(payload, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="no payload sha256"):
        read_checkpoint(tmp_path / "old.pt", expected_format=CHECKPOINT_FORMAT)
    assert payload_sha256({"a": torch.zeros(2)}) != payload_sha256({"a": torch.zeros(3)})
    assert payload_sha256({"a": 1, "b": 2}) == payload_sha256({"b": 2, "a": 1})


def test_seed_derivation_is_stable_across_processes_and_versions():
    # Fixed values: changing them changes every trained network.
    assert derive_seed(3, "init") == derive_seed(3, "init")
    assert derive_seed(0) == int.from_bytes(__import__("hashlib").sha256(b"(0,)").digest()[:8], "little") >> 1
    assert derive_seed(3, "order", 0) != derive_seed(3, "order", 1)
    assert 0 <= derive_seed("x") < 2 ** 63
    a = torch.rand(4, generator=seeded_generator(torch.device("cpu"), 3, "noise", 0))
    b = torch.rand(4, generator=seeded_generator(torch.device("cpu"), 3, "noise", 0))
    assert torch.equal(a, b)


def test_resume_point_round_trip(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    fresh = resume(tmp_path / "checkpoint-last.pt", expected_format="f/1", expected_hash="h", net=net, optimizer=opt,
                   scheduler=sched, device=torch.device("cpu"), trainer="t")
    assert (fresh.start_epoch, fresh.log, fresh.train_time_s, fresh.payload) == (0, [], 0.0, {})
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    save_resume_point(tmp_path / "checkpoint-last.pt", {"format": "f/1", "config_hash": "h", "epoch": 4},
                      state=ckpt.cpu_state(net), optimizer=opt, scheduler=sched, log=[{"epoch": 4}],
                      train_time_s=2.5, seed=1, extra={"best_epoch": 3})
    other = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(other.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.ExponentialLR(opt2, gamma=0.5)
    point = resume(tmp_path / "checkpoint-last.pt", expected_format="f/1", expected_hash="h", net=other,
                   optimizer=opt2, scheduler=sched2, device=torch.device("cpu"), trainer="t")
    assert (point.start_epoch, point.log, point.train_time_s, point.payload["best_epoch"]) == (5, [{"epoch": 4}],
                                                                                                2.5, 3)
    assert torch.equal(other.weight, net.weight) and sched2.get_last_lr() == sched.get_last_lr()
    assert point.payload["provenance"]["config_hash"] == "h"
    with pytest.raises(CheckpointMismatchError, match="config hash"):
        resume(tmp_path / "checkpoint-last.pt", expected_format="f/1", expected_hash="other", net=other,
               optimizer=opt2, scheduler=sched2, device=torch.device("cpu"), trainer="t")


def test_resume_reads_the_time_of_a_resume_point_written_before_the_keys_were_unified(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    path = tmp_path / "checkpoint-last.pt"
    ckpt.save_checkpoint(path, {"format": "f/1", "config_hash": "h", "epoch": 1, "state_dict": ckpt.cpu_state(net),
                                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                "log": [{"epoch": 1, "seconds": 3.0}], "wall_seconds": 7.5})
    point = resume(path, expected_format="f/1", expected_hash="h", net=net, optimizer=opt, scheduler=sched,
                   device=torch.device("cpu"), trainer="t")
    assert (point.start_epoch, point.train_time_s, point.log) == (2, 7.5, [{"epoch": 1, "epoch_time_s": 3.0}])


def _imports(path):
    """(module, names) of every import in a file, function-level ones included."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, set()


@pytest.mark.parametrize("module", ["scoring.py", "pipeline.py", *[f"groundtruth/{p.name}"
                                    for p in sorted((PACKAGE / "groundtruth").glob("*.py"))]])
def test_inference_and_groundtruth_take_checkpoint_names_from_checkpoint_not_train(module):
    names = set(ckpt.__all__) | {"checkpoint_meta", "run_hash"}
    for imported, what in _imports(PACKAGE / module):
        if imported == "dmrilib.train":
            assert not what & names, f"{module} imports {sorted(what & names)} from dmrilib.train"
            assert module == "pipeline.py" and what == {"train_run"}, f"{module} imports dmrilib.train"
