"""Tests for dmrilib.pipeline helpers that need no trained model."""
import json

import numpy as np
import pytest

from dmrilib.config import load_profile
from dmrilib.pipeline import pipeline_lesions


def test_pipeline_lesions_follow_the_groundtruth_order_and_are_none_before_the_job(tmp_path):
    profile = load_profile("smoke")
    assert pipeline_lesions(profile, tmp_path, ["sub-P01"]) is None
    out = tmp_path / profile.name / "groundtruth"
    out.mkdir(parents=True)
    (out / "groundtruth.json").write_text(json.dumps({"subjects": ["sub-P02", "sub-P01"], "config_hash": "x"}))
    assert pipeline_lesions(profile, tmp_path, ["sub-P01"]) is None  # masks not written yet
    masks = np.zeros((2, 4, 4, 4), np.uint8)
    masks[0, 0, 0, 0] = masks[1, 1, 1, 1] = 1
    np.save(out / "lesion-pipeline.npy", masks)
    got = pipeline_lesions(profile, tmp_path, ["sub-P01", "sub-P02"])
    assert got.dtype == bool and np.array_equal(got, masks[[1, 0]].astype(bool))
    with pytest.raises(ValueError, match=r"no pipeline mask for \['sub-P03'\]; re-run the ground-truth job"):
        pipeline_lesions(profile, tmp_path, ["sub-P03"])
