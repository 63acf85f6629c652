"""Tests for dmrilib.figures: what the figures read from a results folder."""
import numpy as np
import pandas as pd
import pytest

from _io_fixtures import make_bids
from dmrilib.config import Profile
from dmrilib.dataset import prepare_cohort
from dmrilib.figures import _Results
from dmrilib.integrity import IntegrityError, save_npy


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A tiny profile's results folder: prepared cohort, result tables and one run's stored maps."""
    work = tmp_path_factory.mktemp("figures")
    profile = Profile.from_dict({"name": "tiny", "seed": 0, "cohort": {}, "prepare": {"grid": [16, 16, 16]},
                                 "model": {}, "train": {"n_folds": 2}, "evaluate": {}, "folds": [0],
                                 "variants": {"dae": ["lsd16-linear"], "recdisc": []}})
    root = work / "results" / "tiny"
    prepare_cohort(make_bids(work / "bids", (("H01", "healthy"), ("H02", "healthy"), ("P01", "patient"))),
                   profile.prepare, root / "prepared", progress=False)
    (root / "tables").mkdir()
    row = {"model": "dae", "variant": "lsd16-linear", "fold": 0, "subject": "sub-P01"}
    pd.DataFrame([{**row, "auroc": 0.9}]).to_csv(root / "tables" / "auroc_all.csv", index=False)
    pd.DataFrame([{**row, "rule": "otsu", "threshold": 0.5, "dice": 0.4}]).to_csv(root / "tables" / "dice_all.csv",
                                                                                   index=False)
    return profile, root


def _maps_path(root, model="dae", variant="lsd16-linear"):
    path = root / "runs" / model / variant / "fold-0" / "maps-test.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_results_maps_are_read_checked_as_float32(results):
    profile, root = results
    path = _maps_path(root)
    save_npy(path, np.full((1, 16, 16, 16), 0.25, np.float16))
    maps = _Results(profile, root).maps("dae", "lsd16-linear")
    assert maps.dtype == np.float32 and maps.shape == (1, 16, 16, 16) and (maps == 0.25).all()


@pytest.mark.parametrize("damage", ["no sidecar", "flipped byte", "nan"])
def test_results_maps_refuse_a_map_without_sha256_corrupted_or_not_finite(results, damage):
    profile, root = results
    path = _maps_path(root, "baseline", "normative")
    maps = np.full((1, 16, 16, 16), 0.25, np.float16)
    save_npy(path, maps)
    if damage == "no sidecar":
        path.with_name("maps-test.npy.sha256").unlink()
        match = r"maps-test.npy: no sha256 record"
    elif damage == "flipped byte":
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 0x40  # 0.25 -> 64.25 in one voxel: np.load reads it without complaint
        path.write_bytes(bytes(raw))
        match = r"maps-test.npy: sha256 .* does not match its record"
    else:
        maps[0, 1, 2, 3] = np.inf
        save_npy(path, maps)
        match = r"maps-test.npy: 1 value\(s\) are NaN or infinite"
    with pytest.raises(IntegrityError, match=match + r".*run the baseline job of baseline/normative fold 0 again"):
        _Results(profile, root).maps("baseline", "normative")
