"""The structural session of a simulated subject (dmrilib.simulate).

T1w/FLAIR live on their own grid with their own head pose; the DWI carries a
susceptibility distortion along y. ``dwi_to_structural`` is the ground truth
a DWI-to-T1w registration has to recover. Small grids: 7.2 mm DWI, 3.6 mm
structural images.
"""
from __future__ import annotations

import dataclasses
import itertools
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from dmrilib.io import find_bids_dwi
from dmrilib.simulate import CohortConfig, simulate_cohort, simulate_subject
from dmrilib.simulate.anatomy import grid_coordinates, load_template, sample_template
from dmrilib.simulate.bids import subject_files
from dmrilib.simulate.config import BRAIN_BOX_MM, POSE_CLIP_SD
from dmrilib.simulate.variability import HeadPose

BASE = CohortConfig(n_healthy=1, n_patients=1, shape=(30, 30, 18), voxel_size=7.2, structural_voxel_size=3.6)
STILL = dataclasses.replace(BASE, structural_pose_deg=0, structural_pose_mm=0, epi_distortion_mm=0)
# Large enough that ignoring the transform visibly misplaces the lesion.
MOVED = dataclasses.replace(BASE, structural_pose_deg=6, structural_pose_mm=8, epi_distortion_mm=6)


def _nearest(volume, affine, points_mm):
    """``volume`` sampled at scanner mm points (..., 3) by nearest neighbour (0 outside)."""
    inv = np.linalg.inv(affine)
    vox = points_mm @ inv[:3, :3].T + inv[:3, 3]
    return ndimage.map_coordinates(np.asarray(volume, np.uint8), np.moveaxis(vox, -1, 0), order=0,
                                   mode="constant") > 0


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture(scope="module")
def moved():
    return simulate_subject(MOVED, 5, grade="IV", size_class="large", followup=True)


@pytest.fixture(scope="module")
def still():
    return simulate_subject(STILL, 5, grade="IV", size_class="large")


def test_without_motion_and_distortion_structural_images_share_the_diffusion_pose(still):
    grid = grid_coordinates(STILL.shape, still.affine)
    np.testing.assert_allclose(still.dwi_to_structural, grid, atol=1e-3)
    assert np.all(still.transform.displacement(grid) == 0)
    assert still.info["structural_motion_deg"] == [0.0, 0.0, 0.0]
    # same anatomy, two grids: the fine lesion read at the DWI voxel centres
    resampled = _nearest(still.structural_lesion, still.structural_affine, grid)
    assert still.lesion.sum() > 20 and _dice(resampled, still.lesion) > 0.85
    assert _dice(_nearest(still.structural_brain_mask, still.structural_affine, grid), still.brain_mask) > 0.95


def test_without_motion_on_the_diffusion_grid_structural_truth_equals_dwi_truth():
    config = dataclasses.replace(STILL, structural_voxel_size=None)
    subject = simulate_subject(config, 5, grade="III", size_class="medium")
    np.testing.assert_array_equal(subject.structural_affine, subject.affine)
    np.testing.assert_array_equal(subject.structural_lesion, subject.lesion)
    np.testing.assert_array_equal(subject.structural_tumour_dseg, subject.tumour_dseg)
    np.testing.assert_array_equal(subject.structural_brain_mask, subject.brain_mask)


def test_distortion_moves_along_y_only_and_is_bounded():
    config = dataclasses.replace(STILL, epi_distortion_mm=6.0)
    subject = simulate_subject(config, 7, structural=False)
    grid = grid_coordinates(config.shape, subject.affine)
    shift = subject.dwi_to_structural - grid
    np.testing.assert_allclose(shift[..., [0, 2]], 0, atol=1e-3)
    d = shift[..., 1][subject.brain_mask]
    assert 0.7 * 6.0 < np.abs(d).max() <= 6.0 * 1.1
    assert abs(subject.info["epi_distortion_peak_mm"] - np.abs(d).max()) < 1e-3
    # one-to-one along every phase-encode line
    assert np.all(np.diff(subject.dwi_to_structural[..., 1], axis=1) > 0)
    assert np.abs(subject.transform.displacement_gradient(grid)[..., 1]).max() < 0.9
    assert subject.structural_lesion is None and subject.t1w is None


def test_dwi_to_structural_carries_the_lesion_onto_the_structural_lesion(moved):
    grid = grid_coordinates(MOVED.shape, moved.affine)
    true = _dice(_nearest(moved.structural_lesion, moved.structural_affine, moved.dwi_to_structural), moved.lesion)
    identity = _dice(_nearest(moved.structural_lesion, moved.structural_affine, grid), moved.lesion)
    assert moved.lesion.sum() > 50
    assert true > 0.8
    assert identity < true - 0.2, (true, identity)  # the test can fail: motion and distortion matter
    np.testing.assert_allclose(moved.transform(grid), moved.dwi_to_structural, atol=1e-4)


def test_rigid_part_of_the_transform_matches_the_poses(moved):
    pts = np.random.default_rng(0).uniform(-60, 60, size=(50, 3)).astype(np.float32)
    rigid = np.asarray(moved.info["dwi_to_structural_rigid"])
    expected = moved.transform.structural_pose.to_scanner(moved.transform.dwi_pose.to_head(pts))
    np.testing.assert_allclose(pts @ rigid[:3, :3].T + rigid[:3, 3], expected, atol=1e-3)


def test_same_seed_gives_identical_arrays_and_seeds_differ(moved):
    again = simulate_subject(MOVED, 5, grade="IV", size_class="large", followup=True)
    for name in ("dwi", "lesion", "tumour_dseg", "t1w", "flair", "flair_followup", "structural_lesion",
                 "structural_tumour_dseg", "structural_brain_mask", "dwi_to_structural"):
        np.testing.assert_array_equal(getattr(again, name), getattr(moved, name), err_msg=name)
    assert again.info == moved.info
    other = simulate_subject(MOVED, 6, structural=False)
    assert other.info["structural_motion_mm"] != moved.info["structural_motion_mm"]


def test_new_draws_leave_the_diffusion_anatomy_unchanged():
    # the head movement and distortion come from new random streams
    a = simulate_subject(STILL, 3, structural=False)
    b = simulate_subject(dataclasses.replace(STILL, structural_pose_deg=5, structural_pose_mm=5), 3,
                         structural=False)
    np.testing.assert_array_equal(a.dwi, b.dwi)
    assert not np.allclose(a.dwi_to_structural, b.dwi_to_structural)


def test_structural_grid_covers_the_brain_in_the_largest_head_pose():
    config = CohortConfig(structural_voxel_size=2.4)
    lo = config.structural_affine[:3, 3]
    hi = lo + (np.array(config.structural_shape) - 1) * config.structural_spacing
    axes = [np.arange(a, b + 1, 3.0) for a, b in BRAIN_BOX_MM]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
    pts = pts[sample_template(load_template(2.4), pts).sum(0) > 0.5]
    worst_deg = 3.0 + POSE_CLIP_SD * config.structural_pose_deg  # diffusion pose + movement
    worst_mm = 3.0 + POSE_CLIP_SD * config.structural_pose_mm
    for signs in itertools.product((-1.0, 1.0), repeat=3):
        rot = Rotation.from_euler("xyz", np.deg2rad(worst_deg * np.array(signs))).as_matrix()
        pose = HeadPose(rot, worst_mm * np.array(signs), np.array([0.0, -17.0, 15.0]))
        moved = pose.to_scanner(pts)
        assert np.all(moved.min(0) > lo) and np.all(moved.max(0) < hi), signs


def test_subject_brain_stays_inside_the_structural_grid(moved):
    idx = np.argwhere(moved.structural_brain_mask)
    assert np.all(idx.min(0) >= 2) and np.all(idx.max(0) <= np.array(moved.structural_brain_mask.shape) - 3)


@pytest.mark.parametrize("bad, name", [(dict(structural_pose_deg=-1), "structural_pose_deg"),
                                       (dict(structural_pose_mm=40), "structural_pose_mm"),
                                       (dict(epi_distortion_mm=20), "epi_distortion_mm"),
                                       (dict(epi_distortion_mm="3"), "epi_distortion_mm"),
                                       (dict(structural_voxel_size=0), "structural_voxel_size")])
def test_config_rejects_invalid_structural_settings(bad, name):
    with pytest.raises(ValueError, match=name):
        CohortConfig(**bad)


def test_bids_cohort_holds_structural_truth_and_transform(tmp_path):
    root = simulate_cohort(MOVED, tmp_path / "c", progress=False, n_jobs=1)
    for label, followup in (("H01", False), ("P01", True)):
        listed = subject_files(root, label, followup=followup)
        assert all(p.is_file() for p in listed)
        written = {p for p in root.rglob(f"sub-{label}_*") if p.is_file()}
        assert written == set(listed)
    anat = root / "derivatives/simulation/sub-P01/ses-pre/anat"
    dwi_deriv = root / "derivatives/simulation/sub-P01/ses-pre/dwi"
    t1w = nib.load(root / "sub-P01/ses-pre/anat/sub-P01_ses-pre_T1w.nii.gz")
    assert t1w.shape == MOVED.structural_shape
    for name in ("desc-lesion_mask", "desc-tumour_dseg", "desc-brain_mask"):
        img = nib.load(anat / f"sub-P01_ses-pre_space-T1w_{name}.nii.gz")
        assert img.shape == t1w.shape
        np.testing.assert_array_equal(img.affine, t1w.affine)
    assert np.asarray(nib.load(anat / "sub-P01_ses-pre_space-T1w_desc-lesion_mask.nii.gz").dataobj).any()
    healthy = root / "derivatives/simulation/sub-H01/ses-pre/anat/sub-H01_ses-pre_space-T1w_desc-lesion_mask.nii.gz"
    assert not np.asarray(nib.load(healthy).dataobj).any()

    xfm = nib.load(dwi_deriv / "sub-P01_ses-pre_from-dwi_to-T1w_desc-points_xfm.nii.gz")
    dwi = nib.load(root / "sub-P01/ses-pre/dwi/sub-P01_ses-pre_dwi.nii.gz")
    assert xfm.shape == MOVED.shape + (3,) and xfm.get_data_dtype() == np.float32
    np.testing.assert_array_equal(xfm.affine, dwi.affine)
    sidecar = json.loads((dwi_deriv / "sub-P01_ses-pre_from-dwi_to-T1w_desc-points_xfm.json").read_text())
    assert sidecar["EpiDistortion"]["PhaseEncodingAxis"] == "j"
    assert 0 < sidecar["EpiDistortion"]["PeakInBrainMM"] <= 6.0 * 1.1
    assert len(sidecar["HeadMotion"]["RotationDeg"]) == 3 and np.shape(sidecar["HeadMotion"]["RigidDwiToT1w"]) == (4, 4)
    # the reader of the DWI-grid truth is not confused by the new files
    entry = next(e for e in find_bids_dwi(root) if e.subject == "sub-P01")
    assert entry.derivatives["lesion"].parent == dwi_deriv
    assert "xfm" not in " ".join(p.name for p in entry.derivatives.values())
