"""dmrilib.preprocess: attenuation, network-grid crop and its inverse, DTI maps."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _io_fixtures import AFFINE, ellipsoid_mask, synthetic_dwi
from dmrilib.io import DwiVolume
from dmrilib.preprocess import (
    GridCrop,
    NetworkGrid,
    attenuation,
    brain_mask_from_b0,
    dti_maps,
    mean_b0,
)


def _volume(data, bvals, bvecs) -> DwiVolume:
    return DwiVolume(
        data=np.asarray(data, np.float32),
        affine=AFFINE,
        bvals=np.asarray(bvals, float),
        bvecs=np.asarray(bvecs, float),
        path=Path("x_dwi.nii.gz"),
        bval_path=Path("x_dwi.bval"),
        bvec_path=Path("x_dwi.bvec"),
    )


@pytest.fixture
def dwi():
    data, bvals, bvecs, _ = synthetic_dwi(bvals=(0, 1000, 0, 1000, 1000, 1000, 1000, 1000))
    return _volume(data, bvals, bvecs)


# ---------------------------------------------------------- attenuation


def test_attenuation_divides_by_mean_b0_and_drops_b0(dwi):
    att = attenuation(dwi)
    assert att.shape == dwi.spatial_shape + (6,)
    assert att.dtype == np.float32
    b0 = (dwi.data[..., 0] + dwi.data[..., 2]) / 2
    expected = np.clip(dwi.data[..., 3] / b0, 0, 1)
    np.testing.assert_allclose(att[..., 1], expected, rtol=1e-5)


def test_attenuation_is_zero_outside_mask(dwi):
    mask = ellipsoid_mask(dwi.spatial_shape, 0.5)
    att = attenuation(dwi, mask)
    assert (att[~mask] == 0).all()
    assert (att[mask] > 0).any()


def test_attenuation_is_clipped_to_unit_interval(dwi):
    data = dwi.data.copy()
    data[2, 3, 4, 1] = 10 * data[2, 3, 4, 0] + 100  # signal above b0 (noise)
    att = attenuation(_volume(data, dwi.bvals, dwi.bvecs))
    assert att.max() <= 1.0 and att.min() >= 0.0
    assert att[2, 3, 4, 0] == 1.0


def test_attenuation_is_zero_and_finite_where_b0_is_zero(dwi):
    data = dwi.data.copy()
    data[1, 1, 1, [0, 2]] = 0.0
    data[1, 1, 1, 1] = 50.0
    att = attenuation(_volume(data, dwi.bvals, dwi.bvecs))
    assert np.isfinite(att).all()
    assert (att[1, 1, 1] == 0).all()


def test_attenuation_rejects_mask_on_other_grid(dwi):
    with pytest.raises(ValueError, match="mask has shape"):
        attenuation(dwi, np.ones((3, 3, 3), bool))


def test_brain_mask_from_b0_finds_the_head():
    data, bvals, bvecs, mask = synthetic_dwi(shape=(20, 22, 18))
    found = brain_mask_from_b0(_volume(data, bvals, bvecs))
    # a generous mask is fine: it centres the crop and zeroes the background
    assert (found & mask).sum() / mask.sum() > 0.95
    assert (found & mask).sum() / found.sum() > 0.6
    assert not found[0, 0, 0]


def test_mean_b0_averages_only_b0_volumes(dwi):
    np.testing.assert_allclose(mean_b0(dwi), dwi.data[..., [0, 2]].mean(axis=3), rtol=1e-6)


# ------------------------------------------------------------ grid crop


def test_crop_is_centred_on_the_mask():
    mask = np.zeros((30, 40, 20), bool)
    mask[10:20, 5:25, 2:18] = True
    crop = NetworkGrid((16, 32, 24)).crop_for(mask)
    assert crop.start == (7, -1, -2)
    grid_mask = crop.to_grid(mask)
    # equal margins on both sides (to within one voxel)
    for axis in range(3):
        occupied = np.flatnonzero(grid_mask.any(axis=tuple(a for a in range(3) if a != axis)))
        left, right = occupied[0], grid_mask.shape[axis] - 1 - occupied[-1]
        assert abs(left - right) <= 1


def test_crop_of_empty_mask_centres_on_volume():
    crop = NetworkGrid((4, 4, 4)).crop_for(np.zeros((10, 8, 4), bool))
    assert crop.start == (3, 2, 0)


def test_crop_keeps_trailing_channel_axes():
    crop = GridCrop((6, 6, 6), (4, 8, 6), (1, -1, 0))
    x = np.arange(6 * 6 * 6 * 2, dtype=np.float32).reshape(6, 6, 6, 2)
    g = crop.to_grid(x)
    assert g.shape == (4, 8, 6, 2)
    np.testing.assert_array_equal(g[0, 1, 0], x[1, 0, 0])
    assert (g[:, 0] == 0).all() and (g[:, 7] == 0).all()


@settings(max_examples=60, deadline=None)
@given(
    input_shape=st.tuples(*[st.integers(1, 12)] * 3),
    grid_shape=st.tuples(*[st.integers(1, 12)] * 3),
    data=st.data(),
)
def test_crop_round_trip_is_exact_inside_the_window(input_shape, grid_shape, data):
    start = tuple(data.draw(st.integers(-g - 2, n + 2)) for n, g in zip(input_shape, grid_shape))
    crop = GridCrop(input_shape, grid_shape, start)
    x = np.random.default_rng(0).random(input_shape).astype(np.float32) + 1.0
    back = crop.to_input(crop.to_grid(x))
    window = crop.to_input(np.ones(grid_shape, bool))
    np.testing.assert_array_equal(back[window], x[window])
    assert (back[~window] == 0).all()
    # the other direction: a network map survives where it covers the input
    y = np.random.default_rng(1).random(grid_shape).astype(np.float32) + 1.0
    covered = crop.to_grid(np.ones(input_shape, bool))
    np.testing.assert_array_equal(crop.to_grid(crop.to_input(y))[covered], y[covered])


def test_map_written_back_as_nifti_is_aligned_with_input(tmp_path):
    shape = (12, 14, 10)
    mask = ellipsoid_mask(shape, 0.7)
    crop = NetworkGrid((8, 16, 8)).crop_for(mask)
    # a "map" on the network grid = world x-coordinate of each network voxel
    grid_aff = crop.grid_affine(AFFINE)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in crop.grid_shape], indexing="ij"), -1)
    world_x = (ijk @ grid_aff[:3, :3].T + grid_aff[:3, 3])[..., 0].astype(np.float32)
    path = tmp_path / "map.nii.gz"
    nib.save(crop.to_nifti(world_x, AFFINE), str(path))
    img = nib.load(str(path))
    assert img.shape == shape
    np.testing.assert_allclose(img.affine, AFFINE)
    back = img.get_fdata()
    window = crop.to_input(np.ones(crop.grid_shape, bool))
    ijk_in = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    expected_x = (ijk_in @ AFFINE[:3, :3].T + AFFINE[:3, 3])[..., 0]
    np.testing.assert_allclose(back[window], expected_x[window], atol=1e-5)
    assert crop.to_nifti(world_x.astype(np.float16), AFFINE).get_data_dtype() == np.float32


def test_crop_serialises_to_json_ready_dict():
    crop = GridCrop((90, 90, 54), (64, 80, 64), (13, 5, -5))
    assert GridCrop.from_dict(crop.to_dict()) == crop


def test_network_grid_rejects_bad_shapes():
    with pytest.raises(ValueError, match="3 positive sizes"):
        NetworkGrid((64, 80))
    with pytest.raises(ValueError, match="3 positive sizes"):
        NetworkGrid((64, 0, 64))


def test_to_grid_rejects_wrong_input_shape():
    crop = GridCrop((6, 6, 6), (4, 4, 4), (1, 1, 1))
    with pytest.raises(ValueError, match="input grid"):
        crop.to_grid(np.zeros((5, 6, 6)))


# ------------------------------------------------------------------ DTI


def test_dti_maps_recover_isotropic_diffusivity():
    shape = (4, 4, 4)
    bvals = np.array([0.0] + [1000.0] * 12)
    from _io_fixtures import directions

    bvecs = directions(13)
    bvecs[0] = 0
    d = 0.8e-3
    data = np.broadcast_to(1000 * np.exp(-bvals * d), shape + (13,))
    maps = dti_maps(_volume(data, bvals, bvecs))
    np.testing.assert_allclose(maps.md, d, rtol=1e-3)
    assert maps.fa.max() < 1e-3


def test_dti_maps_are_zero_outside_mask_and_fa_in_unit_interval(dwi):
    mask = ellipsoid_mask(dwi.spatial_shape, 0.6)
    maps = dti_maps(dwi, mask)
    assert (maps.fa[~mask] == 0).all() and (maps.md[~mask] == 0).all()
    assert 0 <= maps.fa.min() and maps.fa.max() <= 1
    assert maps.fa[mask].mean() > 0.2  # the fixture's tensor is prolate
    assert maps.color_fa.shape == dwi.spatial_shape + (3,)
