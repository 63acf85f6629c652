"""Acquisition (L2) and scanner (L4) realism of the simulated DWI (dmrilib.simulate.acquisition).

The literature bands come from :data:`dmrilib.simulate.realism.ACCEPTANCE`;
the cohort checks use ten controls at 4.8 mm (the quick profile's grid), the
single-effect checks the smoke grid (7.2 mm).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from dmrilib.simulate import CohortConfig, cohort_plan, simulate_subject
from dmrilib.simulate import _portable as pmath
from dmrilib.simulate.acquisition import (
    VIBRATION_MIN_GX,
    _lognormal_sd,
    distortion_factor,
    gibbs_ringing,
)
from dmrilib.simulate.bids import write_subject
from dmrilib.simulate.realism import ACCEPTANCE
from dmrilib.simulate.signal import rician_volume

ROOT = Path(__file__).resolve().parents[1]
# The bands are checked at the shipped profiles' default level (L3).
QUICK_ACQ = CohortConfig(shape=(45, 45, 27), voxel_size=4.8, realism="L3")
SMOKE = dict(shape=(30, 30, 18), voxel_size=7.2)
# sha256 of the DWI of simulate_subject(CohortConfig(**SMOKE), 3, grade="IV", size_class="large"),
# computed before the acquisition effects existed: L0 must keep these bytes.
L0_DWI_SHA256 = "37a85c90c4eb16fcfe24f6d5d4101e5595289a2162320f39fb14d9eb24dd310c"


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _b0_snr(subject) -> float:
    """Mean white-matter b0 over the background noise sigma (Rayleigh mean)."""
    b0 = subject.dwi[..., 0]
    background = ~ndimage.binary_dilation(subject.tissue.sum(0) > 1e-3, iterations=2)
    sigma = b0[background].mean() / np.sqrt(np.pi / 2)
    return float(b0[subject.tissue[2] > 0.9].mean() / sigma)


def _dropout_slices(subject, threshold: float = 0.8, min_voxels: int = 50) -> tuple[set, set]:
    """Detect dropout from the data alone, as a robust slice-intensity test.

    A slice's mean brain signal in each DW volume, over its median across the
    DW volumes, is the slice's relative intensity; a dropout is a relative
    intensity below ``threshold`` of the median of the same volume's five
    nearest slices (itself included): the gradient direction and motion change
    neighbouring slices alike, a dropout hits one. Returns the (volume, slice)
    pairs found and the slices tested.
    """
    dw = np.flatnonzero(subject.bvals > 50)
    brain = subject.brain_mask
    tested = np.flatnonzero(brain.sum(axis=(0, 1)) >= min_voxels)
    means = np.array([[subject.dwi[..., z, v][brain[..., z]].mean() for z in tested] for v in dw])
    relative = means / np.median(means, axis=0, keepdims=True)
    local = np.stack([np.median(relative[:, max(0, j - 2):j + 3], axis=1) for j in range(len(tested))], axis=1)
    hits = np.nonzero(relative < threshold * local)
    return {(int(dw[i]), int(tested[j])) for i, j in zip(*hits)}, set(tested.tolist())


@pytest.fixture(scope="module")
def controls():
    """Ten controls at 4.8 mm with every acquisition effect on."""
    return [simulate_subject(QUICK_ACQ, 100 + k, structural=False) for k in range(10)]


# -- the cohort meets the literature bands -------------------------------------------------------

def test_b0_snr_median_and_spread_in_literature_band(controls):
    snr = np.array([_b0_snr(s) for s in controls])
    median, cv = float(np.median(snr)), float(snr.std(ddof=1) / snr.mean())
    band, spread = ACCEPTANCE["b0_snr_median"], ACCEPTANCE["b0_snr_cv"]
    assert band.low <= median <= band.high, snr
    assert spread.low <= cv <= spread.high, snr
    # The recorded SNR is the one drawn (log-normal around config.snr), and the data show it.
    recorded = np.array([s.info["simulated_artefacts"]["snr_b0"] for s in controls])
    np.testing.assert_allclose(recorded, [s.snr for s in controls])
    assert np.corrcoef(recorded, snr)[0, 1] > 0.9


def test_outlier_slices_in_band_and_detectable_from_the_data(controls):
    band = ACCEPTANCE["outlier_slice_fraction"]
    n_out = n_slices = 0
    for s in controls:
        art = s.info["simulated_artefacts"]
        recorded = {(v, z) for v, z, _ in art["outlier_slices"]}
        assert all(0.2 <= f <= 0.7 and s.bvals[v] > 50 for v, _, f in art["outlier_slices"])
        brain_slices = int(s.brain_mask.any(axis=(0, 1)).sum())
        n_out += len(recorded)
        n_slices += int((s.bvals > 50).sum()) * brain_slices
        found, tested = _dropout_slices(s)
        # Every dropout the test can see is found, and nothing else (vibration, motion and
        # ringing do not pass for a dropout).
        assert found == {(v, z) for v, z in recorded if z in tested}
    assert band.low <= n_out / n_slices <= band.high


def test_residual_motion_rms_in_band(controls):
    band = ACCEPTANCE["motion_rms_mm"]
    for s in controls:
        motion = s.info["simulated_artefacts"]["motion"]
        rms = np.asarray(motion["rms_mm"])
        assert rms[0] == 0 and np.all(rms[1:] > 0)  # volume 0 is the reference
        assert band.low <= motion["rms_over_volumes_mm"] <= band.high
        assert len(rms) == s.dwi.shape[-1]


# -- each effect does what it says ---------------------------------------------------------------

def test_l0_keeps_its_bytes_and_acquisition_leaves_anatomy_alone():
    l0 = simulate_subject(CohortConfig(**SMOKE), 3, grade="IV", size_class="large", structural=False)
    assert _sha(l0.dwi) == L0_DWI_SHA256 and "simulated_artefacts" not in l0.info
    # The acquisition stream is separate: with the distortion spread off, the
    # anatomy and labels are L0's, only the DWI changes.
    acq = simulate_subject(CohortConfig(**SMOKE, realism="L0+acquisition", distortion_spread=0), 3, grade="IV",
                           size_class="large", structural=False)
    np.testing.assert_array_equal(acq.tissue, l0.tissue)
    np.testing.assert_array_equal(acq.tumour_dseg, l0.tumour_dseg)
    np.testing.assert_array_equal(acq.bvals, l0.bvals)
    assert not np.array_equal(acq.dwi, l0.dwi)


def test_gibbs_ringing_overshoots_at_a_sharp_edge():
    x, y = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    disk = (((x - 32) ** 2 + (y - 32) ** 2) < 20**2).astype(np.float32)[:, :, None] * np.ones(3, np.float32)
    np.testing.assert_allclose(gibbs_ringing(disk, 1.0), disk, atol=1e-5)  # all of k-space: no change
    ringing = gibbs_ringing(disk, 0.6)
    r = np.sqrt((x - 32) ** 2 + (y - 32) ** 2)
    inside_edge, outside_edge = (r > 14) & (r < 20), (r >= 20) & (r < 26)
    assert ringing[..., 1][inside_edge].max() > 1.05  # overshoot inside the edge
    assert ringing[..., 1][outside_edge].min() < -0.03  # undershoot outside it
    assert abs(ringing[..., 1][r < 8].mean() - 1) < 0.03 and abs(ringing.sum() / disk.sum() - 1) < 1e-3


def test_vibration_loses_posterior_signal_only_in_left_right_gradient_volumes():
    base = CohortConfig(**SMOKE)
    off = simulate_subject(base, 5, structural=False)
    # Vibration alone renders into the signal without moving it: same noise draws as L0.
    on = simulate_subject(CohortConfig(**SMOKE, vibration_rate=1.0), 5, structural=False)
    vib = on.info["simulated_artefacts"]["vibration"]
    assert vib["affected"] and 0.3 <= vib["severity"] <= 0.8
    changed = np.flatnonzero([not np.array_equal(on.dwi[..., v], off.dwi[..., v]) for v in range(on.dwi.shape[-1])])
    assert changed.tolist() == vib["volumes"] and len(changed) >= 3
    assert np.all(np.abs(on.bvecs[changed, 0]) > VIBRATION_MIN_GX)
    brain = off.brain_mask
    assert np.all(on.dwi[brain][:, changed].mean(axis=0) < off.dwi[brain][:, changed].mean(axis=0))
    # The loss is posterior: the voxels that lose most lie behind the brain's centre (y, scanner mm).
    v = changed[np.argmax(np.abs(on.bvecs[changed, 0]))]
    loss = (off.dwi[..., v] - on.dwi[..., v]) * off.brain_mask
    ys = (np.arange(loss.shape[1]) * on.affine[1, 1] + on.affine[1, 3])[None, :, None] * np.ones(loss.shape)
    brain_y = ys[off.brain_mask].mean()
    assert (loss * ys).sum() / loss.sum() < brain_y - 20


def test_scanner_one_measures_higher_diffusivity_and_lower_snr():
    config = CohortConfig(**SMOKE, scanner_offset=(0.04, 0.0))
    ref = simulate_subject(config, 7, structural=False)
    second = simulate_subject(config, 7, structural=False, scanner=1)
    np.testing.assert_array_equal(second.bvals, ref.bvals)  # the written b-values stay nominal

    def mean_adc(s):
        dw = s.bvals > 50
        wm = s.tissue[2] > 0.7
        att = s.dwi[wm][:, dw] / s.dwi[wm][:, :1]
        return np.mean(-np.log(np.clip(att, 1e-3, None)) / s.bvals[dw], axis=1)

    ratio = np.median(mean_adc(second) / mean_adc(ref))
    assert 1.03 < ratio < 1.05, ratio
    assert second.info["simulated_artefacts"]["scanner"]["index"] == 1
    noisy = simulate_subject(CohortConfig(**SMOKE, scanner_offset=(0.04, 0.10)), 7, structural=False, scanner=1)
    assert noisy.snr == pytest.approx(0.9 * ref.snr)


def test_noise_map_varies_sigma_across_the_grid():
    # rician_volume: per-voxel sigma.
    rng = np.random.default_rng(0)
    sigma = np.where(np.arange(40)[:, None, None] < 20, 10.0, 20.0) * np.ones((40, 30, 30))
    where = np.zeros((40, 30, 30), bool)
    where[:, :15] = True
    signal = np.full((int(where.sum()), 4), 100.0, np.float32)
    out = rician_volume((40, 30, 30, 4), where, signal, sigma, rng)
    assert out.flags["F_CONTIGUOUS"] and out.dtype == np.float32
    background = out[:, 15:]  # Rayleigh: mean = sigma sqrt(pi / 2)
    assert background[20:].mean() / background[:20].mean() == pytest.approx(2.0, rel=0.02)
    assert out[20:, :15].std() / out[:20, :15].std() == pytest.approx(2.0, rel=0.05)
    # In a subject: the background's sigma differs between regions far more than with a flat map.

    def corner_spread(s):
        b0 = s.dwi[..., 0]
        h = [n // 4 for n in b0.shape]
        corners = [b0[i * (b0.shape[0] - h[0]):][:h[0], j * (b0.shape[1] - h[1]):][:, :h[1]] for i in (0, 1)
                   for j in (0, 1)]
        means = np.array([c.mean() for c in corners])
        return means.max() / means.min()

    flat = simulate_subject(CohortConfig(**SMOKE), 4, structural=False)
    varying = simulate_subject(CohortConfig(**SMOKE, noise_map_sd=0.3), 4, structural=False)
    assert corner_spread(flat) < 1.08 < corner_spread(varying)


def test_snr_and_distortion_draws():
    assert _lognormal_sd(0.15) == pytest.approx(math.sqrt(math.log(1 + 0.15**2)), rel=1e-12)
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    assert distortion_factor(CohortConfig(), rng) == 1.0 and rng.bit_generator.state == state  # no draw
    spread = CohortConfig(distortion_spread=0.4)
    factors = [distortion_factor(spread, rng) for _ in range(200)]
    assert 0.6 <= min(factors) < 0.7 and 1.3 < max(factors) <= 1.4
    peaks = [simulate_subject(CohortConfig(**SMOKE, distortion_spread=0.4), k, structural=False)
             .info["epi_distortion_peak_mm"] for k in range(3)]
    assert max(peaks) - min(peaks) > 0.2


# -- cohort plan and BIDS ------------------------------------------------------------------------

def test_plan_draws_age_and_scanner_only_when_on():
    l0 = cohort_plan(CohortConfig())
    assert all(p.age is None and p.scanner is None for p in l0)
    assert cohort_plan(CohortConfig(realism="L0+acquisition")) == l0
    l4 = cohort_plan(CohortConfig(realism="L4"))
    assert [(p.label, p.seed, p.grade, p.size_class, p.followup) for p in l4] == \
        [(p.label, p.seed, p.grade, p.size_class, p.followup) for p in l0]
    assert sum(p.scanner for p in l4 if p.group == "healthy") == round(0.3 * 28)
    assert sum(p.scanner for p in l4 if p.group == "patient") == round(0.7 * 32)
    assert all(25 <= p.age <= 80 for p in l4) and len({p.age for p in l4}) > 40
    assert l4 == cohort_plan(CohortConfig(realism="L4"))
    assert l0[0].row().count("\t") == 5 and l4[0].row().count("\t") == 7


def test_dwi_sidecar_records_the_artefacts_only_when_on(tmp_path):
    on = simulate_subject(CohortConfig(**SMOKE, realism="L0+acquisition+scanner"), 2, grade="III",
                          size_class="medium", structural=False, scanner=1)
    off = simulate_subject(CohortConfig(**SMOKE), 2, structural=False)
    write_subject(tmp_path, "P01", on)
    write_subject(tmp_path, "H01", off)
    art = json.loads((tmp_path / "sub-P01/ses-pre/dwi/sub-P01_ses-pre_dwi.json").read_text())["SimulatedArtefacts"]
    assert set(art) >= {"Motion", "OutlierSlices", "Vibration", "NoiseMapSD", "GibbsKspaceFraction", "Scanner"}
    assert len(art["Motion"]["RmsDisplacementMM"]) == on.dwi.shape[-1] and art["Scanner"]["Index"] == 1
    assert "SimulatedArtefacts" not in json.loads((tmp_path / "sub-H01/ses-pre/dwi/sub-H01_ses-pre_dwi.json").read_text())


# -- CPU-portable bytes --------------------------------------------------------------------------

_PORTABLE_SCRIPT = """
import hashlib, json, numpy as np
from dmrilib.simulate import CohortConfig, simulate_subject
s = simulate_subject(CohortConfig(shape=(30, 30, 18), voxel_size=7.2, realism="L0+acquisition+scanner",
                                  vibration_rate=1.0, noise_map_sd=0.3), 11, grade="IV", size_class="small",
                     structural=False, scanner=1)
print(hashlib.sha256(np.ascontiguousarray(s.dwi).tobytes()).hexdigest())
print(hashlib.sha256(json.dumps(s.info["simulated_artefacts"], sort_keys=True).encode()).hexdigest())
"""


def test_acquisition_bytes_do_not_depend_on_the_cpu_code_paths():
    def run(env):
        out = subprocess.run([sys.executable, "-c", _PORTABLE_SCRIPT], env={**os.environ, **env}, cwd=ROOT,
                             capture_output=True, text=True, check=True)
        return out.stdout.split()

    native, baseline = run({}), run(pmath.BASELINE_CPU_ENV)
    assert len(native) == 2 and native == baseline
