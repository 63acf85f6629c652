"""Tests for dmrilib.pipeline helpers that need no trained model."""
import json

import numpy as np
import pandas as pd
import pytest

from _io_fixtures import make_bids
from dmrilib.config import Profile, load_profile
from dmrilib.dataset import prepare_cohort
from dmrilib.integrity import IntegrityError, save_npy
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
