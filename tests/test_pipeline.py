"""Tests for dmrilib.pipeline helpers that need no trained model."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _io_fixtures import make_bids
from dmrilib.config import Profile, load_profile
from dmrilib.dataset import prepare_cohort
from dmrilib.integrity import IntegrityError, save_npy, sha256_file
from dmrilib.pipeline import pipeline_lesions, run_dir, run_followup


def test_pipeline_lesions_follow_the_groundtruth_order_and_are_none_before_the_job(tmp_path):
    profile = load_profile("smoke")
    assert pipeline_lesions(profile, tmp_path, ["sub-P01"]) is None
    out = tmp_path / profile.name / "groundtruth"
    out.mkdir(parents=True)
    (out / "groundtruth.json").write_text(json.dumps({"subjects": ["sub-P02", "sub-P01"], "config_hash": "x"}))
    assert pipeline_lesions(profile, tmp_path, ["sub-P01"]) is None  # masks not written yet
    masks = np.zeros((2, 4, 4, 4), np.uint8)
    masks[0, 0, 0, 0] = masks[1, 1, 1, 1] = 1
    save_npy(out / "lesion-pipeline.npy", masks)
    got = pipeline_lesions(profile, tmp_path, ["sub-P01", "sub-P02"])
    assert got.dtype == bool and np.array_equal(got, masks[[1, 0]].astype(bool))
    with pytest.raises(ValueError, match=r"no pipeline mask for \['sub-P03'\]; re-run the ground-truth job"):
        pipeline_lesions(profile, tmp_path, ["sub-P03"])


def _flip_byte(path, offset=-1):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


def test_pipeline_lesions_refuse_masks_without_or_unlike_their_sha256(tmp_path):
    profile = load_profile("smoke")
    out = tmp_path / profile.name / "groundtruth"
    out.mkdir(parents=True)
    (out / "groundtruth.json").write_text(json.dumps({"subjects": ["sub-P01"], "config_hash": "x"}))
    path = out / "lesion-pipeline.npy"
    np.save(path, np.zeros((1, 4, 4, 4), np.uint8))  # no sidecar: its content cannot be checked
    with pytest.raises(IntegrityError, match=r"lesion-pipeline.npy: no sha256 record .*ground-truth job again"):
        pipeline_lesions(profile, tmp_path, ["sub-P01"])
    save_npy(path, np.zeros((1, 4, 4, 4), np.uint8))
    _flip_byte(path)  # one mask voxel 0 -> 64: np.load alone reads it without complaint
    assert np.load(path).any()
    with pytest.raises(IntegrityError, match=r"lesion-pipeline.npy: sha256 .* does not match its record"):
        pipeline_lesions(profile, tmp_path, ["sub-P01"])


SUBJECTS = (("H01", "healthy"), ("H02", "healthy"), ("P01", "patient"))


@pytest.fixture(scope="module")
def prepared_results(tmp_path_factory):
    """A tiny profile's results folder with a prepared cohort and an AUROC table naming one DAE variant."""
    work = tmp_path_factory.mktemp("followup")
    profile = Profile.from_dict({"name": "tiny", "seed": 0, "cohort": {}, "prepare": {"grid": [16, 16, 16]},
                                 "model": {}, "train": {"n_folds": 2}, "evaluate": {}, "folds": [0],
                                 "variants": {"dae": ["lsd16-linear"], "recdisc": []}})
    results = work / "results"
    prepare_cohort(make_bids(work / "bids", SUBJECTS), profile.prepare, results / "tiny" / "prepared", progress=False)
    (results / "tiny" / "tables").mkdir()
    pd.DataFrame([{"model": "dae", "variant": "lsd16-linear", "fold": 0, "subject": "sub-P01", "auroc": 0.9}]).to_csv(
        results / "tiny" / "tables" / "auroc_all.csv", index=False)
    return profile, results


@pytest.mark.parametrize("damage", ["no sidecar", "flipped byte", "nan"])
def test_followup_refuses_a_map_without_sha256_corrupted_or_not_finite(prepared_results, tmp_path, damage):
    profile, results = prepared_results
    out = run_dir(profile, "dae", "lsd16-linear", 0, tmp_path)
    out.mkdir(parents=True)
    (tmp_path / "tiny").joinpath("prepared").symlink_to(results / "tiny" / "prepared")
    (tmp_path / "tiny").joinpath("tables").symlink_to(results / "tiny" / "tables")
    maps = np.full((1, 16, 16, 16), 0.25, np.float16)
    pd.DataFrame([{"rule": "healthy_fpr_05", "subject": "sub-P01", "threshold": 0.5}]).to_csv(out / "eval-dice.csv")
    save_npy(out / "maps-test.npy", maps)
    assert run_followup(profile, tmp_path).empty  # intact (and no patient with follow-up): read and used
    if damage == "no sidecar":
        (out / "maps-test.npy.sha256").unlink()
        match = r"maps-test.npy: no sha256 record"
    elif damage == "flipped byte":
        _flip_byte(out / "maps-test.npy")
        match = r"maps-test.npy: sha256 .* does not match its record"
    else:
        maps[0, 3, 3, 3] = np.nan
        save_npy(out / "maps-test.npy", maps)
        match = r"maps-test.npy: 1 value\(s\) are NaN or infinite"
    with pytest.raises(IntegrityError, match=match + r".*run the evaluate job of dae/lsd16-linear fold 0 again"):
        run_followup(profile, tmp_path)


class _Healthy:
    """The one thing _folds asks of a prepared cohort."""

    def healthy_ids(self):
        return [f"sub-H{i:02d}" for i in range(8, 0, -1)]


def _tiny_profile(**top):
    return Profile.from_dict({"name": "tiny", "seed": 0, "cohort": {}, "prepare": {"grid": [16, 16, 16]},
                              "model": {}, "train": {"n_folds": 4}, "evaluate": {}, "folds": [0],
                              "variants": {"dae": ["lsd16-linear"], "recdisc": ["mix-mix-full"]}, **top})


def test_folds_follow_train_fold_split_and_are_recorded(tmp_path):
    from dmrilib.crossval import read_folds
    from dmrilib.pipeline import _folds

    code = _folds(_tiny_profile(), _Healthy(), tmp_path / "code")
    assert [f.val for f in code] == [("sub-H07", "sub-H08"), ("sub-H01", "sub-H02"), ("sub-H03", "sub-H04"),
                                     ("sub-H05", "sub-H06")]  # the authors' sorted slices
    record = json.loads((tmp_path / "code" / "tiny" / "folds.json").read_text())
    assert record["split"] == "contiguous" and read_folds(tmp_path / "code" / "tiny" / "folds.json") == code
    paper = _folds(_tiny_profile(fidelity="paper"), _Healthy(), tmp_path / "paper")
    assert paper != code and sorted(s for f in paper for s in f.val) == sorted(_Healthy().healthy_ids())
    assert json.loads((tmp_path / "paper" / "tiny" / "folds.json").read_text())["split"] == "random"


def test_run_train_confines_jood_centres_to_the_eroded_brain_without_csf(prepared_results, tmp_path, monkeypatch):
    import dmrilib.pipeline as pipeline
    import dmrilib.train as train_module
    from dmrilib import metrics

    _, results = prepared_results
    profile = _tiny_profile(train={"n_folds": 2})
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "prepared").symlink_to(results / "tiny" / "prepared")
    seen = {}
    monkeypatch.setattr(train_module, "train_run", lambda *a, **kw: seen.update(kw, subjects=a[2]) or {})
    monkeypatch.setattr(pipeline, "predict_run", lambda *a, **kw: None)
    pipeline.run_train(profile, "recdisc", "mix-mix-full", 0, tmp_path, progress=False)
    from dmrilib.dataset import load_prepared

    prepared = load_prepared(results / "tiny" / "prepared")
    expected = np.stack([metrics.evaluation_regions(prepared.brain_mask[j], prepared.eval_mask[j],
                                                    "eroded_brain_no_csf")[1]
                         for j in prepared.index(seen["subjects"])])
    assert seen["jood_regions"].dtype == bool and np.array_equal(seen["jood_regions"], expected)
    assert seen["jood_regions"].any() and (seen["jood_regions"] <= prepared.brain_mask[prepared.index(seen["subjects"])]).all()
    pipeline.run_train(profile, "dae", "lsd16-linear", 0, tmp_path, progress=False)
    assert seen["jood_regions"] is None  # the DAE draws no patches


#: Two folds of one healthy subject each (equal sizes, so they stack) and a tiny DAE, two epochs.
STACK_PROFILE = {"name": "tiny", "seed": 0, "cohort": {}, "prepare": {"grid": [16, 16, 16]},
                 "model": {"dae_widths": [4, 8, 16]},
                 "train": {"n_folds": 2, "epochs": 2, "device": "cpu", "copies_per_subject": 1},
                 "evaluate": {}, "folds": [0, 1], "variants": {"dae": ["lsd16-linear"], "recdisc": []}}


def _stack_profile(variants=None):
    return Profile.from_dict({**STACK_PROFILE, "variants": variants or STACK_PROFILE["variants"]})


def _results_with(prepared_results, folder):
    _, results = prepared_results
    (folder / "tiny").mkdir(parents=True)
    (folder / "tiny" / "prepared").symlink_to(results / "tiny" / "prepared")
    return folder


def _checkpoint(run_folder):
    from dmrilib.checkpoint import CHECKPOINT_FORMAT, read_checkpoint

    return read_checkpoint(run_folder / "checkpoint-best.pt", expected_format=CHECKPOINT_FORMAT)


def test_run_train_stack_gives_each_fold_the_run_folder_of_run_train(prepared_results, tmp_path):
    import torch

    from dmrilib.pipeline import run_train, run_train_stack

    profile = _stack_profile()
    solo, stack, one = (_results_with(prepared_results, tmp_path / name) for name in ("solo", "stack", "one"))
    alone = {f: run_train(profile, "dae", "lsd16-linear", f, solo, progress=False) for f in (0, 1)}
    together = run_train_stack(profile, "dae", "lsd16-linear", [1, 0], stack, progress=False)
    for fold, run in zip((1, 0), together):
        a, b = (run_dir(profile, "dae", "lsd16-linear", fold, r) for r in (solo, stack))
        # checkpoints, log.csv, run.json and the stored maps the evaluate job reuses
        assert sorted(p.name for p in b.iterdir()) == sorted(p.name for p in a.iterdir())
        assert {"run.json", "checkpoint-best.pt", "maps-test.npy", "maps.json"} <= {p.name for p in b.iterdir()}
        solo_record, stack_record = (json.loads((x / "run.json").read_text()) for x in (a, b))
        assert run["config_hash"] == alone[fold]["config_hash"] == stack_record["config_hash"]
        differ = {k for k in solo_record if solo_record[k] != stack_record[k]}
        assert differ <= {"train_time_s", "best_val_loss"}
        assert stack_record["best_val_loss"] == pytest.approx(solo_record["best_val_loss"], rel=1e-3)
        assert _checkpoint(b)["epoch"] == _checkpoint(a)["epoch"]
        # the same maths; grouped convolutions only round differently (tests/test_stack.py)
        log_a, log_b = pd.read_csv(a / "log.csv"), pd.read_csv(b / "log.csv")
        np.testing.assert_allclose(log_b[["train_loss", "val_loss"]], log_a[["train_loss", "val_loss"]], rtol=1e-3)
        maps = json.loads((b / "maps.json").read_text())
        assert maps["identity"]["checkpoint"]["sha256"] == sha256_file(b / "checkpoint-best.pt")
        assert maps["identity"] == {**json.loads((a / "maps.json").read_text())["identity"],
                                    "checkpoint": maps["identity"]["checkpoint"]}
        np.testing.assert_allclose(np.load(b / "maps-test.npy"), np.load(a / "maps-test.npy"), atol=1e-2)
    # One fold is run_train itself: the same weights and record, bit for bit.
    (single,) = run_train_stack(profile, "dae", "lsd16-linear", [0], one, progress=False)
    a, c = (run_dir(profile, "dae", "lsd16-linear", 0, r) for r in (solo, one))
    assert {k for k in single if single[k] != alone[0][k]} == {"train_time_s"}
    ca, cc = _checkpoint(a), _checkpoint(c)
    assert {k for k in ca if k != "state_dict" and ca[k] != cc[k]} == set()
    assert all(torch.equal(cc["state_dict"][n], w) for n, w in ca["state_dict"].items())
    assert sha256_file(c / "maps-test.npy") == sha256_file(a / "maps-test.npy")


def test_run_train_stack_refuses_folds_it_cannot_stack(prepared_results, tmp_path):
    from dmrilib.pipeline import run_train_stack

    profile = _stack_profile()
    results = _results_with(prepared_results, tmp_path)
    with pytest.raises(ValueError, match="no folds given"):
        run_train_stack(profile, "dae", "lsd16-linear", [], results)
    with pytest.raises(ValueError, match=r"folds \[0, 0\] name a fold more than once"):
        run_train_stack(profile, "dae", "lsd16-linear", [0, 0], results)
    with pytest.raises(ValueError, match=r"folds \[2\] do not exist: profile 'tiny' has 2 folds \(0..1\)"):
        run_train_stack(profile, "dae", "lsd16-linear", [0, 2], results)
    with pytest.raises(ValueError, match="variant 'lsd99' is not in profile"):
        run_train_stack(profile, "dae", "lsd99", [0, 1], results)
    recdisc = _stack_profile({"dae": [], "recdisc": ["mix-mix-full"]})
    with pytest.raises(ValueError, match="only 'dae' runs train several folds at once, got 'recdisc'"):
        run_train_stack(recdisc, "recdisc", "mix-mix-full", [0, 1], results)
    assert not (results / "tiny" / "runs").exists()


@pytest.mark.slow
def test_train_notebook_trains_the_folds_the_workflow_passes(prepared_results, tmp_path):
    """`-p folds 0,1` (a stacked train job) arrives as text, `-p folds 1` as a number: both train their folds."""
    import ast
    import subprocess
    import sys

    import nbformat
    import yaml

    root = Path(__file__).resolve().parent.parent
    results = _results_with(prepared_results, tmp_path / "results")
    profile_file = tmp_path / "tiny.yaml"
    profile_file.write_text(yaml.safe_dump(STACK_PROFILE))
    for folds, out in (("0,1", "stack.ipynb"), ("1", "one.ipynb")):
        run = subprocess.run([sys.executable, "workflow/scripts/run_notebook.py", "notebooks/train.ipynb",
                              str(tmp_path / out), "-p", "profile", str(profile_file), "-p", "results", str(results),
                              "-p", "variant", "lsd16-linear", "-p", "folds", folds],
                             cwd=root, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        summary, plots = nbformat.read(tmp_path / out, as_version=4).cells[-2:]
        trained = [int(f) for f in folds.split(",")]
        assert sorted(ast.literal_eval(summary.outputs[-1]["data"]["text/plain"])) == trained  # one per fold
        assert sum("image/png" in o.get("data", {}) for o in plots.outputs) == len(trained)  # one plot per fold
    for fold in (0, 1):
        assert (run_dir(_stack_profile(), "dae", "lsd16-linear", fold, results) / "maps.json").is_file()
