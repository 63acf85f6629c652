"""Tests of dmrilib.evaluation: NIfTI maps scored against a BIDS cohort's truth, files checked first."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from dmrilib import metrics as M
from dmrilib.evaluation import evaluate_nifti_maps
from dmrilib.metrics import EvalConfig

from _score_maps import SHAPE
from _score_maps import score_case as _case


def _write_truth(root, label, truth, mask, brain=True):
    folder = root / "derivatives" / "simulation" / f"sub-{label}" / "ses-pre" / "dwi"
    folder.mkdir(parents=True)
    masks = [("lesion", truth), ("wmgm", mask)] + ([("brain", np.ones(mask.shape, bool))] if brain else [])
    for desc, arr in masks:
        nib.save(nib.Nifti1Image(arr.astype(np.uint8), np.eye(4)),
                 folder / f"sub-{label}_ses-pre_space-dwi_desc-{desc}_mask.nii.gz")


def test_evaluate_nifti_maps_writes_tidy_csv(tmp_path):
    score, truth, mask = _case(18)
    maps = tmp_path / "maps"
    maps.mkdir()
    nib.save(nib.Nifti1Image(score, np.eye(4)), maps / "sub-P01_ses-pre_desc-anomaly_map.nii.gz")
    _write_truth(tmp_path / "bids", "P01", truth, mask)
    out = tmp_path / "eval.csv"
    assert evaluate_nifti_maps(maps, tmp_path / "bids", out, model="dae", config=EvalConfig()) == out
    back = pd.read_csv(out)
    assert len(back) == len(M.THRESHOLD_RULES) and set(back["subject"]) == {"sub-P01"}
    region = ndimage.binary_erosion(np.ones(SHAPE, bool), np.ones((3, 3, 3))) & mask  # the authors' region
    assert back["auroc"].iloc[0] == pytest.approx(M.auroc(score, truth, region))
    assert list(back.columns[:5]) == ["model", "variant", "fold", "subject", "rule"]


def test_evaluate_nifti_maps_missing_truth_names_file_and_writes_nothing(tmp_path):
    score, truth, mask = _case(19)
    maps = tmp_path / "maps"
    maps.mkdir()
    nib.save(nib.Nifti1Image(score, np.eye(4)), maps / "sub-P01_anomaly.nii.gz")
    nib.save(nib.Nifti1Image(score, np.eye(4)), maps / "sub-P02_anomaly.nii.gz")
    _write_truth(tmp_path / "bids", "P01", truth, mask)
    out = tmp_path / "eval.csv"
    with pytest.raises(FileNotFoundError, match="sub-P02"):
        evaluate_nifti_maps(maps, tmp_path / "bids", out, model="dae")
    assert not out.exists()


def test_evaluate_nifti_maps_shape_mismatch_names_file(tmp_path):
    score, truth, mask = _case(20)
    maps = tmp_path / "maps"
    maps.mkdir()
    nib.save(nib.Nifti1Image(score[:-1], np.eye(4)), maps / "sub-P01_anomaly.nii.gz")
    _write_truth(tmp_path / "bids", "P01", truth, mask)
    with pytest.raises(ValueError, match="sub-P01_anomaly.nii.gz"):
        evaluate_nifti_maps(maps, tmp_path / "bids", tmp_path / "e.csv", model="dae")


def test_evaluate_nifti_maps_reads_sessionless_truth_and_brain_mask(tmp_path):
    score, truth, mask = _case(21)
    maps = tmp_path / "maps"
    maps.mkdir()
    nib.save(nib.Nifti1Image(score, np.eye(4)), maps / "sub-P07_desc-anomaly.nii.gz")
    folder = tmp_path / "bids" / "derivatives" / "simulation" / "sub-P07" / "dwi"
    folder.mkdir(parents=True)
    brain = np.ones(SHAPE, bool)
    for desc, arr in (("lesion", truth), ("wmgm", mask), ("brain", brain)):
        nib.save(nib.Nifti1Image(arr.astype(np.uint8), np.eye(4)),
                 folder / f"sub-P07_space-dwi_desc-{desc}_mask.nii.gz")
    region = ndimage.binary_erosion(brain, np.ones((3, 3, 3))) & mask
    code = pd.read_csv(evaluate_nifti_maps(maps, tmp_path / "bids", tmp_path / "e.csv", model="recdisc"))
    paper = pd.read_csv(evaluate_nifti_maps(maps, tmp_path / "bids", tmp_path / "p.csv", model="recdisc",
                                              config=EvalConfig(fidelity="paper")))
    code, paper = code.set_index("rule"), paper.set_index("rule")
    assert code.loc["otsu", "threshold"] == pytest.approx(M.THRESHOLD_RULES["otsu"](score, None, region).value)
    expected = M.THRESHOLD_RULES["otsu"](score, None, mask, brain_mask=brain).value
    assert paper.loc["otsu", "threshold"] == pytest.approx(expected)
    assert code.loc["otsu", "threshold"] != pytest.approx(expected)


def test_evaluate_nifti_maps_without_brain_mask_names_the_setting(tmp_path):
    score, truth, mask = _case(22)
    maps = tmp_path / "maps"
    maps.mkdir()
    nib.save(nib.Nifti1Image(score, np.eye(4)), maps / "sub-P01_anomaly.nii.gz")
    _write_truth(tmp_path / "bids", "P01", truth, mask, brain=False)
    with pytest.raises(FileNotFoundError, match=r"no desc-brain_mask for the map of sub-P01.*threshold_region: wmgm"):
        evaluate_nifti_maps(maps, tmp_path / "bids", tmp_path / "e.csv", model="dae")
    out = evaluate_nifti_maps(maps, tmp_path / "bids", tmp_path / "e.csv", model="dae",
                                config=EvalConfig(threshold_region="wmgm"))
    assert pd.read_csv(out)["auroc"].iloc[0] == pytest.approx(M.auroc(score, truth, mask))


def test_metrics_reads_no_files():
    """dmrilib.metrics works on arrays; reading NIfTI files is this module's job."""
    import ast
    from pathlib import Path

    sources = sorted(Path(M.__file__).parent.glob("*.py"))  # the package and its detection/thresholds/... modules
    assert len(sources) >= 4
    for source in sources:
        tree = ast.parse(source.read_text())
        imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for a in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {"nibabel", "os", "pathlib", "glob"}, source.name
    assert not hasattr(M, "evaluate_nifti_maps")
