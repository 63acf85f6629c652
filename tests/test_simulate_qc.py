"""Cohort QC against the literature bands (dmrilib.simulate.qc) and its figures."""
from __future__ import annotations

import dataclasses
import shutil
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from dmrilib.io import find_bids_dwi, load_dwi, load_mask
from dmrilib.plotting.cohort import plot_artefact_examples, plot_cohort_spread
from dmrilib.simulate import CohortConfig, simulate_cohort
from dmrilib.simulate.qc import acceptance_table, cohort_qc, cohort_statistics, outlier_slices, subject_qc
from dmrilib.simulate.realism import ACCEPTANCE

TINY = CohortConfig(n_healthy=3, n_patients=2, grade_counts={"IV": 1, "II": 1}, n_followup=0,
                    shape=(30, 30, 18), voxel_size=7.2)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = simulate_cohort(TINY, tmp_path_factory.mktemp("qc") / "cohort", progress=False, n_jobs=1)
    return root, cohort_qc(root, n_jobs=1)


def _with_dropout(entry, folder, volume, z, factor=0.5):
    """A copy of a subject's DWI with one diffusion-weighted slice scaled by ``factor``."""
    folder.mkdir(parents=True, exist_ok=True)
    img = nib.load(entry.dwi)
    data = np.asarray(img.dataobj).copy()
    data[:, :, z, volume] = np.rint(data[:, :, z, volume] * factor).astype(data.dtype)
    out = folder / entry.dwi.name
    nib.save(nib.Nifti1Image(data, img.affine, img.header), out)
    bval, bvec = shutil.copy(entry.bval, folder), shutil.copy(entry.bvec, folder)
    return dataclasses.replace(entry, dwi=out, bval=type(entry.bval)(bval), bvec=type(entry.bvec)(bvec))


def test_qc_has_one_row_per_subject_with_participant_columns(cohort):
    root, qc = cohort
    assert list(qc["subject"]) == ["sub-H01", "sub-H02", "sub-H03", "sub-P01", "sub-P02"]
    assert list(qc["group"]) == ["healthy"] * 3 + ["patient"] * 2
    assert set(qc["grade"].dropna()) == {"IV", "II"}
    assert (qc["voxel_size_mm"] == 7.2).all()
    assert "age" not in qc and "scanner" not in qc  # an L0 cohort has neither


def test_measured_b0_snr_is_near_the_simulated_one(cohort):
    _, qc = cohort
    ratio = qc["b0_snr"] / qc["snr_recorded"]
    assert ratio.between(0.9, 1.1).all(), ratio.tolist()
    # the background is Rayleigh noise of sigma = 1000 / SNR
    assert (qc["noise_sigma"] / (1000.0 / qc["snr_recorded"])).between(0.9, 1.1).all()


def test_tissue_measures_are_in_adult_ranges(cohort):
    _, qc = cohort
    assert qc["wm_fa_median"].between(0.3, 0.7).all()
    assert (qc["wm_md_median"] * 1e3).between(0.6, 1.0).all()
    assert qc["brain_volume_ml"].between(1300, 2100).all()
    assert qc["ventricle_volume_ml"].between(5, 80).all()


def test_tumour_compartments_have_high_md_and_low_fa(cohort):
    _, qc = cohort
    patients = qc[qc["group"] == "patient"]
    assert (patients["voxels_visible"] > 0).all()
    assert (patients["md_ratio_visible"] > 1.2).all()
    assert (patients["fa_ratio_visible"] < 0.7).all()
    gbm = patients[patients["grade"] == "IV"].iloc[0]
    assert gbm["md_ratio_necrosis"] > gbm["md_ratio_enhancing"]  # free water beats the cellular rim
    assert qc.loc[qc["group"] == "healthy", "md_ratio_visible"].isna().all()


def test_clean_cohort_has_no_outlier_slices(cohort):
    _, qc = cohort
    assert (qc["outlier_slices"] == 0).all()
    assert (qc["dw_slices_tested"] > 0).all()


def test_injected_dropout_slice_is_detected(cohort, tmp_path):
    root, _ = cohort
    entry = find_bids_dwi(root)[0]
    dwi = load_dwi(entry.dwi)
    mask = load_mask(entry.derivatives["brain"], dwi)
    z = int(np.argmax(mask.sum(axis=(0, 1))))
    bad = _with_dropout(entry, tmp_path / "bad", volume=10, z=z, factor=0.6)  # file volume 10 = DW volume 9
    row = subject_qc(bad)
    assert row["outlier_slices"] == 1
    assert row["outlier_slice_fraction"] == pytest.approx(1 / row["dw_slices_tested"])
    flags, tested = outlier_slices(load_dwi(bad.dwi).data[..., 1:], mask)
    assert tested[z] and np.argwhere(flags).tolist() == [[9, z]]


def test_simulated_outlier_slices_are_detected_as_recorded(tmp_path):
    from dmrilib.simulate import simulate_subject
    from dmrilib.simulate.bids import write_subject

    # a fresh config: dataclasses.replace would keep TINY's resolved (L0) effect values
    config = CohortConfig(shape=(30, 30, 18), voxel_size=7.2, realism="L0+acquisition", outlier_slice_rate=(0.02, 0.02))
    write_subject(tmp_path, "H01", simulate_subject(config, 1, structural=False))
    row = subject_qc(find_bids_dwi(tmp_path)[0])
    assert row["outlier_slices_recorded"] >= 5
    assert row["outlier_slices_matched"] >= 0.8 * row["outlier_slices_recorded"]  # found where they were put
    assert row["outlier_slices"] - row["outlier_slices_matched"] <= 1  # hardly any false alarm
    assert 0.1 <= row["motion_rms_recorded_mm"] <= 0.5
    assert 15 < row["b0_snr"] < 35


def test_outlier_test_ignores_a_volume_wide_change():
    # a whole volume 30% darker (e.g. a different gradient direction) is a volume effect, not an outlier
    rng = np.random.default_rng(0)
    mask = np.zeros((12, 12, 10), bool)
    mask[2:10, 2:10, 1:9] = True
    dw = (500 + rng.normal(0, 20, (12, 12, 10, 20))).astype(np.float32)
    dw[..., 3] *= 0.7
    flags, tested = outlier_slices(dw, mask)
    assert tested.sum() == 8 and not flags.any()
    dw[:, :, 4, 7] *= 0.5
    flags, _ = outlier_slices(dw, mask)
    assert np.argwhere(flags).tolist() == [[7, 4]]


def test_acceptance_marks_bands_na_when_their_groups_are_off(cohort):
    _, qc = cohort
    table = acceptance_table(qc, TINY).set_index("quantity")
    assert list(table.index) == list(ACCEPTANCE)
    for name, band in ACCEPTANCE.items():
        if band.groups:
            assert table.loc[name, "holds"] == "n/a", name
            assert "off at realism L0" in table.loc[name, "note"]
    assert table.loc["ventricle_md", "holds"] in ("yes", "no", "not measured")
    assert table["note"].str.contains("measured at 7.2 mm").all()
    everything = acceptance_table(qc, dataclasses.replace(TINY, realism="L4")).set_index("quantity")
    assert "n/a" not in set(everything["holds"])
    assert everything.loc["motion_rms_mm", "holds"] == "not measured"


def test_acceptance_holds_follows_the_band():
    qc = pd.DataFrame({
        "subject": [f"sub-H0{i}" for i in range(4)], "group": "healthy",
        "wm_fa_median": [0.44, 0.46, 0.47, 0.45], "wm_md_median": [7e-4, 7.4e-4, 7.8e-4, 8.2e-4],
        "brain_volume_ml": 1500.0, "ventricle_volume_ml": [10.0, 20.0, 30.0, 40.0], "csf_md_median": 2.9e-3,
        "b0_snr": [20.0, 25.0, 30.0, 35.0], "outlier_slices": [1, 0, 0, 0], "dw_slices_tested": 100,
    })
    config = CohortConfig(realism="L4")  # 2.4 mm: no geometry note
    table = acceptance_table(qc, config).set_index("quantity")
    assert table.loc["wm_fa_median", "holds"] == "yes"
    assert table.loc["wm_fa_median", "value"] == pytest.approx(0.455)
    assert table.loc["wm_md_cv", "holds"] == "no"  # CV 0.068 > 0.06
    assert table.loc["brain_volume_cv", "holds"] == "no"  # identical brains: CV 0
    assert table.loc["csf_volume_cv", "holds"] == "yes"
    assert table.loc["outlier_slice_fraction", "value"] == pytest.approx(1 / 400)
    assert table.loc["lesion_md_ratio_II", "holds"] == "not measured"  # no patients
    assert not table["note"].str.contains("measured at").any()
    assert cohort_statistics(qc)["b0_snr_median"][0] == pytest.approx(27.5)


def test_qc_explains_missing_ground_truth(cohort):
    root, _ = cohort
    entry = dataclasses.replace(find_bids_dwi(root)[0], derivatives={})
    with pytest.raises(ValueError, match="no brain mask image under derivatives/simulation"):
        subject_qc(entry)


def test_spread_figure_has_five_strips_and_a_cv_panel(cohort):
    _, qc = cohort
    fig = plot_cohort_spread(qc, groups=TINY.groups)
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    assert "n/a" in fig.axes[0].get_title()  # the FA band needs the population group
    assert len(fig.axes[0].collections) == 2  # controls and patients


def test_artefact_figure_shows_an_injected_dropout(cohort, tmp_path):
    root, qc = cohort
    entry = find_bids_dwi(root)[0]
    dwi = load_dwi(entry.dwi)
    mask = load_mask(entry.derivatives["brain"], dwi)
    dwi.data[:, :, int(np.argmax(mask.sum(axis=(0, 1)))), 5] *= 0.4
    fig = plot_artefact_examples(dwi.data, dwi.bvals, dwi.bvecs, mask, sigma=float(qc["noise_sigma"].iloc[0]))
    assert isinstance(fig, Figure)
    assert fig.axes[0].get_title().startswith("(a) dropout: volume 5")


def test_figures_stage_writes_qc_table_and_spread_figure(cohort, tmp_path):
    from dmrilib.figures import COHORT_QC_FILE, _cohort_figures

    root, _ = cohort
    results = tmp_path / "tiny"
    (results / "figures").mkdir(parents=True)
    (results / "cohort").symlink_to(root)
    for realism, expected in (("L0", {"cohort_spread"}), ("L0+acquisition", {"cohort_spread", "cohort_artefacts"})):
        profile = SimpleNamespace(cohort=dataclasses.replace(TINY, realism=realism))  # what the cohort figures read
        makers = _cohort_figures(SimpleNamespace(profile=profile, root=results))
        assert expected <= set(makers) and ("cohort_artefacts" in makers) == (realism != "L0")
    fig = makers["cohort_spread"]()
    assert isinstance(fig, Figure)
    assert isinstance(makers["cohort_artefacts"](), Figure)
    written = pd.read_csv(results / "figures" / COHORT_QC_FILE)
    assert len(written) == 5 and "b0_snr" in written
