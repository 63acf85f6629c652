"""dmrilib.directions: one shell resampled to a fixed direction set, alone and through prepare_cohort."""
from __future__ import annotations

import json

import numpy as np
import pytest

from _io_fixtures import ellipsoid_mask, make_bids, write_dwi
from dmrilib.config import Profile
from dmrilib.dataset import PrepareConfig, load_prepared, prepare_cohort
from dmrilib.directions import DIRECTION_SETS, choose_sh_order, resample_shell, target_directions
from dmrilib.io import DwiInputError

MD = 0.8e-3  # mm^2/s, white matter


def _prolate(fa: float, md: float = MD) -> np.ndarray:
    """Eigenvalues (l1, l2, l2) of a prolate tensor with this FA and MD (closed form)."""
    if fa == 0:
        return np.full(3, md)
    # FA of (a, b, b) is |a - b| / sqrt(a^2 + 2 b^2); with a = r b solve for r.
    ratios = np.linspace(1.0, 50.0, 200_001)
    fas = (ratios - 1) / np.sqrt(ratios**2 + 2)
    r = ratios[np.argmin(np.abs(fas - fa))]
    b = 3 * md / (r + 2)
    return np.array([r * b, b, b])


def _tensor_signal(vecs, evals, evecs, bvalue=1000.0):
    from dipy.core.gradients import gradient_table
    from dipy.sims.voxel import single_tensor

    gtab = gradient_table(np.full(len(vecs), bvalue), bvecs=np.asarray(vecs))
    return single_tensor(gtab, S0=1.0, evals=evals, evecs=evecs, snr=None)


def _rotation(rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q


@pytest.fixture(scope="module")
def shell30():
    """30 well-spread directions (dipy's electrostatic repulsion from a seeded start)."""
    from dipy.core.sphere import HemiSphere, disperse_charges

    v = np.random.default_rng(1).normal(size=(30, 3))
    hemi, _ = disperse_charges(HemiSphere(xyz=v / np.linalg.norm(v, axis=1, keepdims=True)), 5000)
    return hemi.vertices


@pytest.fixture(scope="module")
def target():
    return target_directions("small_64D")


def test_target_is_the_simulators_64_directions():
    from dmrilib.simulate.signal import small64d_scheme

    target = target_directions("small_64D")
    assert DIRECTION_SETS == ("small_64D",)
    assert target.shape == (64, 3)
    np.testing.assert_allclose(np.linalg.norm(target, axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(target, small64d_scheme((1000.0,)).bvecs[1:])
    target[0] = 0  # a copy: the cached scheme is not changed
    assert np.linalg.norm(target_directions("small_64D")[0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown direction set 'x'"):
        target_directions("x")


def test_choose_sh_order():
    assert choose_sh_order(30) == 4 and choose_sh_order(64) == 6
    assert [choose_sh_order(n) for n in (9, 22, 23, 41, 42, 67, 68, 200)] == [2, 2, 4, 4, 6, 6, 8, 8]
    with pytest.raises(ValueError, match="8 distinct direction.*at least 9"):
        choose_sh_order(8)
    with pytest.raises(ValueError, match="integer"):
        choose_sh_order(30.0)


@pytest.mark.parametrize("fa, tolerance", [
    # Largest error measured over 20 random orientations (seed 16), 30 -> 64 directions, order 4,
    # smooth 0.006: isotropic 6e-8 (float32 rounding), FA 0.3: 0.0070, FA 0.8: 0.040. Almost all of
    # it is the regulariser's shrinkage (smooth=0 gives 0.0004 and 0.013, next test); under noise the
    # shrinkage pays (module docstring). The bounds leave ~25% headroom; a wrong basis, angle
    # convention or antipodal handling gives errors of 0.1-0.5.
    (0.0, 1e-6),
    (0.3, 0.009),
    (0.8, 0.05),
])
def test_single_tensor_resampled_to_small64d_matches_dipy_truth(shell30, target, fa, tolerance):
    rng = np.random.default_rng(16)
    errors = []
    for _ in range(20):
        evals, evecs = _prolate(fa), _rotation(rng)
        acquired = _tensor_signal(shell30, evals, evecs).astype(np.float32)
        resampled = resample_shell(acquired, shell30, target)
        assert resampled.dtype == np.float32 and resampled.shape == (64,)
        errors.append(np.abs(resampled - _tensor_signal(target, evals, evecs)).max())
    assert max(errors) < tolerance, max(errors)


def test_without_regularisation_the_fit_itself_is_close(shell30, target):
    rng = np.random.default_rng(16)
    evals = _prolate(0.8)
    signals = np.stack([_tensor_signal(shell30, evals, _rotation(rng)) for _ in range(20)])
    rng = np.random.default_rng(16)
    truth = np.stack([_tensor_signal(target, evals, _rotation(rng)) for _ in range(20)])
    # measured: 0.013 (order 4), 0.0020 (order 6: 28 coefficients from 30 directions)
    assert np.abs(resample_shell(signals, shell30, target, smooth=0.0) - truth).max() < 0.02
    assert np.abs(resample_shell(signals, shell30, target, sh_order=6, smooth=0.0) - truth).max() < 0.004


@pytest.mark.parametrize("order, smooth", [(4, 0.006), (2, 0.0), (6, 0.02)])
def test_equals_dipys_sf_to_sh_then_sh_to_sf(shell30, target, order, smooth):
    from dipy.core.sphere import Sphere
    from dipy.reconst.shm import sf_to_sh, sh_to_sf

    signal = np.random.default_rng(2).uniform(0.1, 1.0, size=(3, 4, 30))
    kwargs = {"sh_order_max": order, "basis_type": "descoteaux07", "legacy": False}
    sh = sf_to_sh(signal, Sphere(xyz=shell30), smooth=smooth, **kwargs)
    expected = sh_to_sf(sh, Sphere(xyz=target), **kwargs)
    got = resample_shell(signal.astype(np.float32), shell30, target, sh_order=order, smooth=smooth)
    assert got.shape == (3, 4, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # float64 in, float64 out, to rounding
    np.testing.assert_allclose(resample_shell(signal, shell30, target, sh_order=order, smooth=smooth),
                               expected, atol=1e-12)


def test_64_directions_to_themselves_barely_change_a_smooth_signal(target):
    rng = np.random.default_rng(5)
    signals = np.stack([_tensor_signal(target, _prolate(0.3), _rotation(rng)) for _ in range(20)])
    # measured: 0.0041 (order 6, smooth 0.006: the shrinkage); 6e-5 without regularisation
    assert np.abs(resample_shell(signals, target, target) - signals).max() < 0.006
    assert np.abs(resample_shell(signals, target, target, smooth=0.0) - signals).max() < 2e-4


def test_opposite_directions_are_one_measurement(shell30, target):
    signal = np.random.default_rng(3).uniform(0.2, 0.9, size=(5, 30))
    doubled = resample_shell(np.concatenate([signal, signal], axis=1), np.concatenate([shell30, -shell30]),
                             target, smooth=0.0)
    np.testing.assert_allclose(doubled, resample_shell(signal, shell30, target, smooth=0.0), atol=1e-10)
    # 15 axes measured twice are still 15 directions: order 4 (15 coefficients) fits, order 6 does not
    resample_shell(signal[:, :30], np.concatenate([shell30[:15], -shell30[:15]]), target, sh_order=4)
    with pytest.raises(ValueError, match="sh_order=6 needs 28 coefficients.*only 15 distinct directions"):
        resample_shell(signal[:, :30], np.concatenate([shell30[:15], -shell30[:15]]), target, sh_order=6)


def test_large_volume_is_resampled_in_chunks(shell30, target):
    signal = np.random.default_rng(4).uniform(0, 1, size=(40, 50, 40, 30)).astype(np.float32)  # > one chunk
    out = resample_shell(signal, shell30, target)
    assert out.shape == (40, 50, 40, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out[17, 31, 5], resample_shell(signal[17, 31, 5], shell30, target), atol=1e-6)
    assert not resample_shell(np.zeros((2, 30)), shell30, target).any()  # zero stays zero (outside the brain)


def test_bad_inputs_are_refused_with_clear_errors(shell30, target):
    signal = np.ones((2, 30), np.float32)
    with pytest.raises(ValueError, match="sh_order=8 needs 45 coefficients but the shell has only 30 distinct"):
        resample_shell(signal, shell30, target, sh_order=8)
    with pytest.raises(ValueError, match="8 distinct direction.*at least 9"):
        resample_shell(signal[:, :8], shell30[:8], target)
    with pytest.raises(ValueError, match="even integer"):
        resample_shell(signal, shell30, target, sh_order=3)
    with pytest.raises(ValueError, match=r"signal has shape \(2, 30\) but bvecs has 29 directions"):
        resample_shell(signal, shell30[:29], target)
    with pytest.raises(ValueError, match=r"bvecs must have shape \(N, 3\)"):
        resample_shell(signal, shell30[:, :2], target)
    with pytest.raises(ValueError, match=r"target must have shape \(N, 3\)"):
        resample_shell(signal, shell30, target.ravel())
    with pytest.raises(ValueError, match=r"bvecs must be unit vectors: row\(s\) \[3\]"):
        resample_shell(signal, shell30 * np.where(np.arange(30) == 3, 2.0, 1.0)[:, None], target)
    with pytest.raises(ValueError, match="target must be unit vectors"):
        resample_shell(signal, shell30, target * 1.01)
    with pytest.raises(ValueError, match="bvecs holds NaN"):
        resample_shell(signal, np.where(np.arange(30)[:, None] == 0, np.nan, shell30), target)
    bad = signal.copy()
    bad[1, 4] = np.inf
    with pytest.raises(ValueError, match="signal holds NaN or infinite"):
        resample_shell(bad, shell30, target)
    with pytest.raises(ValueError, match="smooth must be a finite number >= 0"):
        resample_shell(signal, shell30, target, smooth=-1.0)


# --- through prepare_cohort ------------------------------------------------------------------------

GRID = (8, 12, 8)
FIBRE = np.array([0.6, 0.0, 0.8])


def _truth(vecs: np.ndarray) -> np.ndarray:
    """The attenuation every brain voxel has: one prolate tensor (ADC 0.5e-3 across, 1.5e-3 along FIBRE)."""
    return np.exp(-1000.0 * 0.5e-3 * (1.0 + 2.0 * (vecs @ FIBRE) ** 2))


def _two_shells(tmp_path, counts=(30, 40)):
    """Two subjects whose b=1000 shells have ``counts`` directions (different, randomly ordered sets)."""
    root = make_bids(tmp_path / "bids", subjects=(("H01", "healthy"), ("P01", "patient")))
    mask = ellipsoid_mask((8, 10, 8))  # make_bids's brain mask
    for i, (sub, n) in enumerate(zip(("sub-H01", "sub-P01"), counts)):
        v = np.random.default_rng(10 + i).normal(size=(n, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        data = 1000.0 * np.concatenate([np.ones(1), _truth(v)])[None, None, None, :] * mask[..., None]
        bvecs = np.concatenate([np.zeros((1, 3)), v])
        write_dwi(root / sub / "ses-pre" / "dwi", f"{sub}_ses-pre_dwi", data.astype(np.float32),
                  np.array([0.0] + [1000.0] * n), bvecs)
    return root


def test_prepare_resamples_shells_of_different_sizes_to_64_channels(tmp_path, target):
    root = _two_shells(tmp_path)
    # no erosion of the input mask: on this tiny brain it would leave 8 of 104 voxels to check
    config = PrepareConfig(grid=GRID, directions="small_64D", input_mask_erosion=0)
    cohort = load_prepared(prepare_cohort(root, config, tmp_path / "prepared", progress=False, n_jobs=1))
    assert cohort.attenuation.shape == (2, 64) + GRID
    assert cohort.meta["n_channels"] == 64
    assert cohort.meta["directions"] == {"set": "small_64D", "sh_order": 4,
                                         "acquired": {"sub-H01": 30, "sub-P01": 40}}
    np.testing.assert_array_equal(cohort.bvecs, np.stack([target, target]))
    np.testing.assert_allclose(cohort.bvals, 1000.0)
    assert len(cohort.acquisition()["gradient_schemes"]) == 1  # one channel layout for both subjects
    att = np.asarray(cohort.attenuation)
    for i in range(2):
        brain = cohort.brain_mask[i]
        inside = att[i][:, brain]  # (64, voxels)
        # The tensor's FA is 0.6 and these random directions cover the sphere unevenly: measured largest
        # error 0.034 (30 directions) and 0.024 (40), order 4, smooth 0.006 (0.008 and 0.004 without the
        # regulariser), plus float16 rounding (< 3e-4). Not resampling (e.g. channels in file order)
        # would give errors ~0.3.
        assert np.abs(inside - _truth(target)[:, None]).max() < 0.045
        assert (att[i][:, ~brain] == 0).all() and 0 <= att.min() and att.max() <= 1
        # FA/MD come from the acquired volumes: the tensor's MD, 0.5e-3 * (1 + 2/3)
        np.testing.assert_allclose(np.median(cohort.md[i][brain]), 0.5e-3 * 5 / 3, rtol=0.02)
    meta = json.loads((tmp_path / "prepared" / "meta.json").read_text())
    assert meta["config"]["directions"] == "small_64D" and meta["config"]["sh_order"] is None


def test_without_directions_different_shells_are_refused_naming_the_counts(tmp_path):
    root = _two_shells(tmp_path)
    with pytest.raises(DwiInputError, match=r"30 volumes: \['sub-H01'\]; 40 volumes: \['sub-P01'\].*"
                                            r"prepare.directions"):
        prepare_cohort(root, PrepareConfig(grid=GRID), tmp_path / "prepared", progress=False)
    assert not (tmp_path / "prepared").exists()


def test_prepare_refuses_a_shell_too_small_for_the_order(tmp_path):
    root = _two_shells(tmp_path, counts=(30, 8))
    with pytest.raises(DwiInputError, match=r"sub-P01_ses-pre_dwi.nii.gz: the shell b=1000 has 8 distinct "
                                            r"direction\(s\).*at least 9"):
        prepare_cohort(root, PrepareConfig(grid=GRID, directions="small_64D"), tmp_path / "p", progress=False)
    root = _two_shells(tmp_path / "b", counts=(30, 40))
    with pytest.raises(DwiInputError, match=r"sub-H01_ses-pre_dwi.nii.gz: .* 30 distinct direction\(s\).*"
                                            r"fewer than the 45 coefficients of the order-8"):
        prepare_cohort(root, PrepareConfig(grid=GRID, directions="small_64D", sh_order=8), tmp_path / "p",
                       progress=False)
    assert not (tmp_path / "p").exists()


def test_prepare_config_validates_and_hashes_the_new_settings():
    assert PrepareConfig().directions is None and PrepareConfig().sh_order is None
    assert PrepareConfig(directions="small_64D").hash() != PrepareConfig().hash()
    assert PrepareConfig(directions="small_64D", sh_order=4).hash() != PrepareConfig(directions="small_64D").hash()
    with pytest.raises(ValueError, match=r"directions must be null or one of \['small_64D'\]"):
        PrepareConfig(directions="64")
    with pytest.raises(ValueError, match="sh_order must be an even integer"):
        PrepareConfig(directions="small_64D", sh_order=5)
    with pytest.raises(ValueError, match="sh_order applies only when directions is set"):
        PrepareConfig(sh_order=4)
    sections = {s: {} for s in ("cohort", "model", "train", "evaluate")}
    profile = Profile.from_dict({"name": "x", "seed": 0, "folds": [0], "variants": {"dae": ["lsd16-linear"]},
                                 "prepare": {"directions": "small_64D", "sh_order": 4}, **sections})
    assert profile.section("prepare") == PrepareConfig(directions="small_64D", sh_order=4)
