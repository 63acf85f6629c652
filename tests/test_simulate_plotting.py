"""Figures of the simulated cohort (dmrilib.plotting.cohort)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
from matplotlib.figure import Figure

from dmrilib.plotting.cohort import plot_cohort_slices, plot_tissue_histograms, subject_dti
from dmrilib.simulate import CohortConfig, simulate_subject

TINY = CohortConfig(shape=(30, 30, 18), voxel_size=7.2)


@pytest.fixture(scope="module")
def subjects():
    return {
        "healthy": simulate_subject(TINY, 1, structural=False),
        "large": simulate_subject(TINY, 2, grade="IV", size_class="large", followup=True, structural=False),
    }


def test_cohort_slices_figure_has_two_panels_per_subject(subjects):
    fig = plot_cohort_slices(subjects)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 * len(subjects)
    # the patient's panels carry the ground-truth contours
    assert len(fig.axes[2].collections) > 0


def test_tissue_histograms_accept_precomputed_dti(subjects):
    dti = {"healthy": subject_dti(subjects["healthy"])}
    fig = plot_tissue_histograms({"healthy": subjects["healthy"]}, dti=dti)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert fig.axes[0].get_legend() is not None


def test_cohort_slices_reject_empty_input():
    with pytest.raises(ValueError, match="empty"):
        plot_cohort_slices({})
