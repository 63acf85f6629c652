"""Cohort-level bands at the shipped profiles' default realism (L3) that need many controls.

The per-voxel bands (FA, MD, SNR, outliers, motion, lesion ratios) are tested
with their effects in test_simulate_population/-acquisition/-tumour; the
volume spreads need more subjects than those fixtures hold, on a field of view
that covers the whole brain, so they are simulated here on coarse grids (the
tissue fractions, not the DWI, carry the volumes).
"""
from __future__ import annotations

import numpy as np
import pytest

from dmrilib.simulate import CohortConfig, simulate_subject
from dmrilib.simulate.qc import ventricle_region
from dmrilib.simulate.realism import ACCEPTANCE

pytestmark = [pytest.mark.xdist_group("acceptance")]


def _cv(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1) / values.mean())


def _in_band(name: str, value: float) -> None:
    band = ACCEPTANCE[name]
    assert band.low <= value <= band.high, f"{name} = {value:.3f}, literature band [{band.low}, {band.high}]"


def _controls(voxel_size: float, n: int, seeds_from: int):
    # Whole brain in the field of view (BRAIN_BOX_MM plus head scaling): 194 x 230 x 202 mm.
    shape = tuple(int(round(mm / voxel_size)) for mm in (194.0, 230.0, 202.0))
    config = CohortConfig(realism="L3", shape=shape, voxel_size=voxel_size, epi_distortion_mm=0.0)
    return [simulate_subject(config, seed, structural=False) for seed in range(seeds_from, seeds_from + n)]


def test_brain_volume_spread_of_controls_is_in_the_literature_band():
    subjects = _controls(7.2, 40, 1000)
    volumes = [s.tissue.sum() for s in subjects]
    _in_band("brain_volume_cv", _cv(volumes))
    # Not all the spread comes from noise: the volume follows the drawn head size.
    drawn = [s.info["head_volume_factor"] for s in subjects]
    assert np.corrcoef(np.log(volumes), np.log(drawn))[0, 1] > 0.9


def test_ventricle_volume_spread_of_controls_is_in_the_literature_band():
    subjects = _controls(4.8, 20, 2000)
    volumes = []
    for s in subjects:
        csf_label = (np.argmax(s.tissue, axis=0) == 0) & (s.tissue.sum(0) > 0.5)
        volumes.append((csf_label & ventricle_region(csf_label.shape, s.affine)).sum())
    _in_band("csf_volume_cv", _cv(volumes))
    # Older controls have larger ventricles.
    ages = [s.info["age"] for s in subjects]
    assert np.corrcoef(ages, np.log(volumes))[0, 1] > 0.3
