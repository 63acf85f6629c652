"""pipeline.predict_run / run_evaluate: a run's maps come from that run's checkpoint, checked, or not at all."""
import json
import shutil

import numpy as np
import pytest

from _io_fixtures import make_bids
from dmrilib import pipeline
from dmrilib.config import Profile
from dmrilib.dataset import prepare_cohort
from dmrilib.integrity import IntegrityError, save_npy, sha256_file
from dmrilib.train import CheckpointMismatchError, load_checkpoint

SUBJECTS = tuple((f"H0{i}", "healthy") for i in range(1, 5)) + (("P01", "patient"), ("P02", "patient"))
DAE, RECDISC = ("dae", "lsd16-linear"), ("recdisc", "normal-directional-full")


def _profile(evaluate=None, **train):
    return Profile.from_dict({
        "name": "tiny", "seed": 0, "cohort": {}, "prepare": {"grid": [16, 16, 16]},
        "model": {"dae_widths": [4, 8], "recon_base": 4, "recon_depth": 2, "disc_base": 2, "disc_depth": 2},
        "train": {"epochs": 1, "batch_size": 2, "n_folds": 2, "copies_per_subject": 1, "jood_radius": [1.5, 3.0],
                  "device": "cpu", "num_threads": 1, **train},
        # fidelity paper: this 104-voxel brain eroded by a 3^3 cube keeps only the lesion (AUROC undefined)
        "evaluate": {"pool_size": 3, "n_bootstrap": 10, "fidelity": "paper", **(evaluate or {})},
        "folds": [0], "variants": {"dae": [DAE[1]], "recdisc": [RECDISC[1]]},
    })


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Results of a tiny profile: prepared cohort, one DAE and one RecDiscNet run with their stored maps."""
    work = tmp_path_factory.mktemp("evaluate")
    profile = _profile()
    results = work / "results"
    prepare_cohort(make_bids(work / "bids", SUBJECTS), profile.prepare, results / "tiny" / "prepared", progress=False)
    for model, variant in (DAE, RECDISC):
        pipeline.run_train(profile, model, variant, 0, results, progress=False)
    return profile, results


@pytest.fixture
def runs(trained, tmp_path):
    """A private copy of the trained results (tests change files in it)."""
    profile, results = trained
    shutil.copytree(results, tmp_path / "results")
    return profile, tmp_path / "results"


def _dir(profile, results, model_variant):
    return pipeline.run_dir(profile, *model_variant, 0, results)


def test_pipeline_checkpoints_record_the_training_acquisition(runs):
    profile, results = runs
    acq = load_checkpoint(_dir(profile, results, DAE) / "checkpoint-best.pt")[1]["acquisition"]
    assert acq["voxel_size_min"] == acq["voxel_size_max"] == [2.0, 2.0, 2.0]
    assert acq["orientations"] == ["RAS"] and acq["grid"] == [16, 16, 16] and acq["bvalue"] == 1000.0
    assert len(acq["gradient_schemes"][0]) == 6 and acq["n_subjects"] == 4  # the fold's train + val subjects


def test_evaluate_refuses_a_checkpoint_copied_from_another_model(runs):
    profile, results = runs
    target = _dir(profile, results, RECDISC)
    shutil.copy(_dir(profile, results, DAE) / "checkpoint-best.pt", target / "checkpoint-best.pt")
    with pytest.raises(CheckpointMismatchError, match=rf"{target / 'checkpoint-best.pt'}: was written for another "
                                                      r"run: model 'dae' \(this run: 'recdisc'\)"):
        pipeline.run_evaluate(profile, *RECDISC, 0, results)
    assert not (target / "eval.json").exists()


def test_evaluate_refuses_a_checkpoint_of_another_configuration(runs, tmp_path):
    profile, results = runs
    other = _profile(epochs=2)  # same model and variant, other training settings
    shutil.copytree(results / "tiny" / "prepared", tmp_path / "other" / "tiny" / "prepared")
    pipeline.run_train(other, *DAE, 0, tmp_path / "other", progress=False)
    target = _dir(profile, results, DAE)
    shutil.copy2(_dir(other, tmp_path / "other", DAE) / "checkpoint-best.pt", target / "checkpoint-best.pt")
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint-best.pt: written by config hash \w+, expected"):
        pipeline.run_evaluate(profile, *DAE, 0, results)


def test_stored_maps_of_another_checkpoint_are_not_used(runs):
    profile, results = runs
    dae, recdisc = _dir(profile, results, DAE), _dir(profile, results, RECDISC)
    own = np.load(recdisc / "maps-test.npy")
    for name in ("maps-test.npy", "maps-test.npy.sha256", "maps-val.npy", "maps-val.npy.sha256", "maps.json"):
        shutil.copy(dae / name, recdisc / name)
    summary = pipeline.run_evaluate(profile, *RECDISC, 0, results)
    assert summary["model"] == "recdisc"
    np.testing.assert_array_equal(np.load(recdisc / "maps-test.npy"), own)  # predicted again from its checkpoint
    record = json.loads((recdisc / "maps.json").read_text())
    assert record["identity"]["checkpoint"]["sha256"] == sha256_file(recdisc / "checkpoint-best.pt")
    assert record["identity"]["run"]["model"] == "recdisc"


def test_stored_maps_are_reused_without_loading_the_checkpoint(runs, monkeypatch):
    profile, results = runs
    import dmrilib.train

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded although its stored maps are valid")

    monkeypatch.setattr(dmrilib.train, "load_checkpoint", refuse)
    summary = pipeline.run_evaluate(profile, *DAE, 0, results)
    assert summary["model"] == "dae" and np.isfinite(summary["auroc_mean"])


def test_flipped_byte_in_stored_maps_is_refused(runs):
    profile, results = runs
    path = _dir(profile, results, DAE) / "maps-test.npy"
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=r"maps-test.npy: sha256 .* does not match its record.*Delete"):
        pipeline.run_evaluate(profile, *DAE, 0, results)


def test_nan_in_stored_maps_is_refused(runs):
    profile, results = runs
    out = _dir(profile, results, DAE)
    maps = np.load(out / "maps-test.npy")
    maps[0, 8, 8, 8] = np.nan
    # written with matching records, as a buggy writer would: the value check still refuses it
    digest = save_npy(out / "maps-test.npy", maps)
    record = json.loads((out / "maps.json").read_text())
    record["sha256"]["maps-test.npy"] = digest
    (out / "maps.json").write_text(json.dumps(record))
    with pytest.raises(IntegrityError, match=r"maps-test.npy: 1 value\(s\) are NaN or infinite"):
        pipeline.run_evaluate(profile, *DAE, 0, results)


def test_maps_swapped_with_their_sidecar_are_refused(runs):
    profile, results = runs
    out = _dir(profile, results, DAE)
    maps = np.load(out / "maps-test.npy")
    save_npy(out / "maps-test.npy", maps * np.float16(0.5))  # another map, consistent sidecar
    with pytest.raises(IntegrityError, match=r"maps-test.npy.sha256: records sha256 .* the file is not the one"):
        pipeline.run_evaluate(profile, *DAE, 0, results)


def test_threshold_region_of_the_profile_decides_where_maps_are_scored(runs):
    import pandas as pd
    from scipy import ndimage

    from dmrilib import metrics
    from dmrilib.dataset import load_prepared

    profile, results = runs
    out = _dir(profile, results, DAE)
    code = pipeline.run_evaluate(_profile({"fidelity": "code"}), *DAE, 0, results)  # same maps, reused
    dice_code = pd.read_csv(out / "eval-dice.csv")
    assert code["evaluation"]["threshold_region"] == "eroded_brain_no_csf"
    assert code["evaluation"]["pool_stride"] == "block"
    # the authors' region by hand: brain mask eroded by a 3^3 cube, without CSF (WM+GM mask)
    prepared = load_prepared(results / "tiny" / "prepared")
    maps = np.load(out / "maps-test.npy").astype(np.float32)
    j = prepared.index(["sub-P01"])[0]
    region = ndimage.binary_erosion(prepared.brain_mask[j], np.ones((3, 3, 3))) & prepared.eval_mask[j]
    assert region.sum() < prepared.eval_mask[j].sum()
    i = json.loads((out / "maps.json").read_text())["identity"]["test_ids"].index("sub-P01")
    expected = metrics.evaluate_map(maps[i], prepared.lesion[j], region, model="dae",
                                    config=_profile({"fidelity": "code"}).evaluate, brain_mask=region,
                                    rules=["otsu", "pool_max"])
    got = dice_code[dice_code["subject"] == "sub-P01"].set_index("rule")
    for row in expected:
        assert got.loc[row["rule"], "threshold"] == pytest.approx(row["threshold"])
        assert got.loc[row["rule"], "dice"] == pytest.approx(row["dice"])

    paper = pipeline.run_evaluate(profile, *DAE, 0, results)
    dice_paper = pd.read_csv(out / "eval-dice.csv")
    assert paper["evaluation"] == {"fidelity": "paper", "threshold_region": "brain", "pool_size": 3, "pool_stride": 1}
    assert paper["config_hash"] != code["config_hash"]
    merged = dice_code.merge(dice_paper, on=["subject", "rule"], suffixes=("_code", "_paper"))
    otsu = merged[merged["rule"] == "otsu"]
    assert (otsu["threshold_code"] != otsu["threshold_paper"]).any()
