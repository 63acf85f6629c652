"""Quality control of a written simulated cohort, against the literature bands.

Reads a cohort as :func:`~dmrilib.simulate.simulate_cohort` writes it (raw
DWI plus the ground truth on the DWI grid under ``derivatives/simulation``),
fits a diffusion tensor to each subject with dipy (WLS, independent of the
simulator's own signal model) and measures what a study's QC report would:
white-matter FA and MD, brain and ventricle volume, free-water MD, b0 SNR,
outlier slices and, for patients, the tumour compartments' MD and FA relative
to normal-appearing white matter. :func:`acceptance_table` compares the
cohort's statistics with :data:`dmrilib.simulate.realism.ACCEPTANCE`.

What the files allow
--------------------
The cohort stores a tissue *label* per voxel (``dseg``: the largest of the
CSF, GM and WM fractions), not the fractions themselves, so two masks of the
bands are approximated:

- "CSF fraction > 0.5" is ``dseg == CSF`` (the largest fraction; > 1/3);
- "CSF fraction > 0.9" is the CSF label eroded by one voxel (face
  neighbours): a CSF voxel whose six neighbours are CSF too. On a subject
  simulated at 2.4 mm this selects 752 voxels against 840 with a true
  fraction above 0.9, and their median MD differs by 2 %.

The ventricles are the CSF label within 12 mm of the centre lines of the
template's lateral ventricles (an atlas region in MNI millimetres, frontal
horn to atrium, :data:`dmrilib.simulate.population.VENTRICLE_SITES`; the
scanner frame of a simulated subject is MNI space up to its head pose of a few
mm). A box about the midline held mostly cisterns and the interhemispheric
fissure, whose volume hardly varies: on 20 controls at L1 its CV was 0.26
against 0.39 for this region, whose volume follows the drawn ventricle factor
(correlation 0.96).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy import ndimage

__all__ = ["COMPARTMENTS", "QC_COLUMNS", "outlier_slices", "ventricle_region", "subject_qc", "cohort_qc", "cohort_statistics",
           "acceptance_table", "acceptance_summary"]

#: Tumour compartments measured per patient: name -> labels of ``desc-tumour_dseg``
#: (1 necrosis, 2 enhancing rim, 3 oedema / non-enhancing tumour; 4, the
#: invisible infiltration, is excluded from normal WM but not measured).
COMPARTMENTS = {"necrosis": (1,), "enhancing": (2,), "edema": (3,), "visible": (1, 2, 3)}
_CSF, _WM = 1, 3  # dseg labels (0 background, 1 CSF, 2 GM, 3 WM)
_VENTRICLE_REACH_MM = 12.0
_BACKGROUND_MARGIN_MM = 10.0  # background voxels lie this far outside the brain mask
_DW_SHELL = 1000.0  # the shell DTI is fitted to (the bands are for b = 1000 s/mm^2)

#: Per-subject columns of :func:`subject_qc` (patients add ``md_ratio_<c>``,
#: ``fa_ratio_<c>`` and ``voxels_<c>`` for each compartment of :data:`COMPARTMENTS`).
QC_COLUMNS = {
    "wm_fa_median": "median FA of WM voxels (WM the largest fraction, no tumour label)",
    "wm_md_median": "median MD (mm^2/s) of the same voxels",
    "brain_volume_ml": "brain mask volume (GM + WM + CSF fractions > 0.5)",
    "ventricle_volume_ml": "CSF label within 12 mm of the lateral ventricles' centre lines (atlas)",
    "csf_md_median": "median MD (mm^2/s) of the CSF label eroded by one voxel (~ CSF > 0.9)",
    "b0_wm_mean": "mean b0 of WM voxels eroded by one voxel",
    "noise_sigma": "noise sigma from the Rayleigh background of the b0 (second moment)",
    "b0_snr": "b0_wm_mean / noise_sigma",
    "outlier_slice_fraction": "flagged (volume, slice) pairs / tested pairs, diffusion-weighted volumes",
}


def outlier_slices(dw: np.ndarray, mask: np.ndarray, *, z_limit: float = 5.0, min_drop: float = 0.15,
                   min_fraction: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Detect axial slices with signal dropout in diffusion-weighted volumes.

    The mean brain signal of every (volume, slice) pair is modelled on a log
    scale as a volume effect plus a slice effect (Tukey's median polish, so
    a few outliers do not move the fit); a pair is an outlier when its
    residual lies below ``-max(z_limit * s, min_drop)``, with ``s`` the
    robust spread (1.4826 MAD) of that slice's residuals over the volumes.
    Like eddy's outlier replacement, only signal *loss* counts.

    Parameters
    ----------
    dw : ndarray, shape (X, Y, Z, N)
        Diffusion-weighted volumes (no b0).
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask.
    z_limit : float
        Robust z below which a pair is flagged.
    min_drop : float
        Smallest flagged loss on the log scale (0.15: the slice keeps < 86 %
        of its expected signal), so that a slice with an unusually small
        spread is not flagged for a trivial dip.
    min_fraction : float
        Slices holding fewer brain voxels than this fraction of the largest
        slice are not tested (their mean is too noisy).

    Returns
    -------
    flags : ndarray of bool, shape (N, Z)
        Outlier (volume, slice) pairs.
    tested : ndarray of bool, shape (Z,)
        The slices that were tested.
    """
    mask = np.asarray(mask, dtype=bool)
    counts = mask.sum(axis=(0, 1))
    tested = (counts >= max(10, min_fraction * counts.max())) if counts.max() else np.zeros_like(counts, bool)
    flags = np.zeros((dw.shape[3], mask.shape[2]), dtype=bool)
    if tested.sum() < 3 or dw.shape[3] < 3:
        return flags, tested
    zs = np.flatnonzero(tested)
    means = np.stack([dw[:, :, z][mask[:, :, z]].mean(axis=0, dtype=np.float64) for z in zs])  # (Zt, N)
    resid = np.log(np.maximum(means, 1e-6))
    for _ in range(4):
        resid = resid - np.median(resid, axis=1, keepdims=True)  # slice effect
        resid = resid - np.median(resid, axis=0, keepdims=True)  # volume effect
    spread = 1.4826 * np.median(np.abs(resid), axis=1, keepdims=True)
    flags[:, zs] = (resid < -np.maximum(z_limit * spread, min_drop)).T
    return flags, tested


def _load_label(path: Path | None, reference, what: str, subject: str) -> np.ndarray:
    from dmrilib.io import load_labels

    if path is None:
        raise ValueError(f"{subject}: no {what} image under derivatives/simulation; the cohort QC needs the "
                         "simulated ground truth on the DWI grid. Pass the root of a cohort written by "
                         "dmrilib.simulate.simulate_cohort.")
    return load_labels(path, reference)


def _scanner_mm(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    return (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape((3,) + tuple(shape))


def ventricle_region(shape: tuple[int, int, int], affine: np.ndarray,
                     reach_mm: float = _VENTRICLE_REACH_MM) -> np.ndarray:
    """Voxels within ``reach_mm`` of the lateral ventricles' centre lines (MNI mm).

    Parameters
    ----------
    shape : tuple of 3 int
    affine : ndarray (4, 4)
        Voxel -> scanner mm of the grid (MNI-aligned for simulated subjects).
    reach_mm : float

    Returns
    -------
    ndarray of bool, ``shape``
    """
    from dmrilib.simulate.population import VENTRICLE_SITES

    xyz = np.moveaxis(_scanner_mm(shape, affine), 0, -1).reshape(-1, 3)
    sites = np.asarray(VENTRICLE_SITES)
    lo, hi = sites.min(axis=0) - reach_mm, sites.max(axis=0) + reach_mm
    near = np.all((xyz >= lo) & (xyz <= hi), axis=1)
    out = np.zeros(len(xyz), dtype=bool)
    pts = xyz[near]
    dist2 = np.full(len(pts), np.inf)
    for site in sites:
        np.minimum(dist2, ((pts - site) ** 2).sum(axis=1), out=dist2)
    out[near] = dist2 < reach_mm**2
    return out.reshape(shape)


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else float("nan")


def subject_qc(entry, *, fit_method: str = "WLS") -> dict[str, Any]:
    """QC measurements of one subject of a written simulated cohort.

    Parameters
    ----------
    entry : dmrilib.io.BidsDwi
        The subject's DWI with its derivatives (``brain``, ``dseg``,
        ``tumour_dseg``), as :func:`dmrilib.io.find_bids_dwi` finds them.
    fit_method : str
        dipy's tensor fit (``"WLS"``, as the bands assume, or ``"OLS"``).

    Returns
    -------
    dict
        ``subject`` and every key of :data:`QC_COLUMNS`, plus
        ``voxel_size_mm``, voxel counts, ``outlier_slices``,
        ``dw_slices_tested``; what the simulator recorded in the DWI sidecar
        (NaN when absent): ``snr_recorded``, ``motion_rms_recorded_mm``,
        ``outlier_slices_recorded``, ``outlier_slices_matched`` (of those,
        the ones the QC detected) and ``vibration_recorded``; and, where the tumour labels
        hold voxels, ``md_ratio_<c>``, ``fa_ratio_<c>`` and ``voxels_<c>``
        per compartment of :data:`COMPARTMENTS` (median over the compartment
        / median over white matter of the other hemisphere).

    Raises
    ------
    ValueError
        When the ground-truth images are missing.
    """
    from dmrilib.io import inspect_dwi, load_dwi, shells
    from dmrilib.preprocess import dti_maps

    nominal = [b for b in shells(np.loadtxt(entry.bval, ndmin=1)) if b > 0]
    if not nominal:
        raise ValueError(f"{entry.bval.name}: no diffusion-weighted volumes; the cohort QC fits a tensor.")
    shell = min(nominal, key=lambda b: abs(b - _DW_SHELL))
    header = inspect_dwi(entry.dwi, bval=entry.bval, bvec=entry.bvec, target_bvalue=shell)
    dwi = load_dwi(entry.dwi, bval=entry.bval, bvec=entry.bvec, target_bvalue=shell)
    brain = _load_label(entry.derivatives.get("brain"), dwi, "brain mask", entry.subject).astype(bool)
    dseg = _load_label(entry.derivatives.get("dseg"), dwi, "tissue dseg", entry.subject)
    tumour = _load_label(entry.derivatives.get("tumour_dseg"), dwi, "tumour dseg", entry.subject)
    voxel = dwi.voxel_size
    ml = float(np.prod(voxel)) / 1000.0
    xyz = _scanner_mm(dwi.spatial_shape, dwi.affine)

    healthy = brain & (tumour == 0)
    wm = healthy & (dseg == _WM)
    csf = brain & (dseg == _CSF)
    pure_csf = ndimage.binary_erosion(csf) & (tumour == 0)
    ventricles = csf & ventricle_region(dwi.spatial_shape, dwi.affine) & (tumour == 0)
    lesion = brain & (tumour >= 1) & (tumour <= 3)
    fit_mask = wm | pure_csf | lesion
    maps = dti_maps(dwi, fit_mask, fit_method=fit_method)
    fa, md = maps.fa, maps.md

    b0 = dwi.data[..., dwi.is_b0].mean(axis=3, dtype=np.float64)
    pure_wm = ndimage.binary_erosion(dseg == _WM) & healthy
    if pure_wm.sum() < 20:
        pure_wm = wm
    reach = max(1, int(math.ceil(_BACKGROUND_MARGIN_MM / min(voxel))))
    background = ~ndimage.binary_dilation(brain, iterations=reach)
    b0_all = dwi.data[..., dwi.is_b0][background]
    sigma = float(np.sqrt((b0_all.astype(np.float64) ** 2).mean() / 2.0)) if b0_all.size >= 100 else float("nan")
    b0_wm = float(b0[pure_wm].mean()) if pure_wm.any() else float("nan")
    flags, tested = outlier_slices(dwi.data[..., ~dwi.is_b0], brain)
    n_tested = int(tested.sum()) * int((~dwi.is_b0).sum())
    row: dict[str, Any] = {
        "subject": entry.subject,
        "voxel_size_mm": round(float(np.mean(voxel)), 4),
        "wm_fa_median": _median(fa[wm]),
        "wm_md_median": _median(md[wm]),
        "wm_voxels": int(wm.sum()),
        "brain_volume_ml": float(brain.sum() * ml),
        "ventricle_volume_ml": float(ventricles.sum() * ml),
        "csf_md_median": _median(md[pure_csf]),
        "csf_voxels": int(pure_csf.sum()),
        "b0_wm_mean": b0_wm,
        "noise_sigma": sigma,
        "b0_snr": b0_wm / sigma if sigma > 0 else float("nan"),
        "outlier_slices": int(flags.sum()),
        "dw_slices_tested": n_tested,
        "outlier_slice_fraction": float(flags.sum() / n_tested) if n_tested else float("nan"),
    }
    row.update(_recorded(entry.metadata(), flags, np.asarray(header.selected)[~dwi.is_b0]))
    if lesion.any():
        # Normal-appearing WM of the other hemisphere (the midline is x = 0 in the scanner frame).
        side = np.sign(xyz[0][lesion].mean()) or 1.0
        nawm = wm & (np.sign(xyz[0]) == -side)
        if nawm.sum() < 10:
            nawm = wm
        md_ref, fa_ref = _median(md[nawm]), _median(fa[nawm])
        for name, labels in COMPARTMENTS.items():
            sel = brain & np.isin(tumour, labels)
            row[f"voxels_{name}"] = int(sel.sum())
            row[f"md_ratio_{name}"] = _median(md[sel]) / md_ref if sel.any() else float("nan")
            row[f"fa_ratio_{name}"] = _median(fa[sel]) / fa_ref if sel.any() else float("nan")
    return row


def _recorded(sidecar: Mapping, flags: np.ndarray, dw_volumes: np.ndarray) -> dict[str, Any]:
    """What the simulator wrote in the DWI sidecar, beside what the QC measured.

    ``dw_volumes`` maps the rows of ``flags`` to volume indices of the file,
    which the sidecar's ``OutlierSlices`` use.
    """
    out: dict[str, Any] = {"snr_recorded": float(sidecar.get("SNR_b0_WhiteMatter", float("nan")))}
    artefacts = sidecar.get("SimulatedArtefacts") or {}
    motion = artefacts.get("Motion")
    out["motion_rms_recorded_mm"] = float(motion["RmsOverVolumesMM"]) if motion else float("nan")
    slices = artefacts.get("OutlierSlices")
    if slices is not None:
        true = {(int(v), int(z)) for v, z, _ in slices["Slices"]}
        found = {(int(dw_volumes[v]), int(z)) for v, z in np.argwhere(flags)}
        out.update(outlier_slices_recorded=len(true), outlier_slices_matched=len(true & found))
    else:
        out.update(outlier_slices_recorded=np.nan, outlier_slices_matched=np.nan)
    vibration = artefacts.get("Vibration")
    out["vibration_recorded"] = bool(vibration["Affected"]) if vibration else np.nan
    return out


def _qc_one(entry, fit_method: str) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    # One subject per core: BLAS threads inside a worker only compete.
    with threadpool_limits(limits=1):
        return subject_qc(entry, fit_method=fit_method)


def cohort_qc(cohort_root: str | os.PathLike, *, n_jobs: int | None = None, fit_method: str = "WLS",
              progress: bool = False) -> pd.DataFrame:
    """QC measurements of every subject of a written simulated cohort.

    Parameters
    ----------
    cohort_root : path-like
        Root of the BIDS dataset written by :func:`~dmrilib.simulate.simulate_cohort`.
    n_jobs : int, optional
        Worker processes (default: up to 2, the CPU count permitting).
    fit_method : str
        dipy tensor fit, ``"WLS"`` (default) or ``"OLS"``.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    pandas.DataFrame
        One row per subject (sorted by subject): ``subject``, the
        ``participants.tsv`` columns ``group``, ``grade``, ``size_class``
        and, when the cohort has them, ``age`` and ``scanner``; then the
        measurements of :func:`subject_qc`. About 0.4 s of CPU per subject
        at 4.8 mm (45x45x27) and 3 s at 2.4 mm (90x90x54).
    """
    from dmrilib._workers import process_pool
    from dmrilib.io import find_bids_dwi, read_participants

    root = Path(cohort_root)
    entries = find_bids_dwi(root, pipeline="simulation")
    n_jobs = max(1, min(n_jobs or min(2, os.cpu_count() or 1), len(entries)))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(entries), desc="cohort QC", unit="subject", disable=not progress)
    rows = []
    if n_jobs == 1:
        for e in entries:
            rows.append(_qc_one(e, fit_method))
            bar.update()
    else:
        with process_pool(n_jobs, "fork") as pool:
            for row in pool.map(_qc_one, entries, [fit_method] * len(entries)):
                rows.append(row)
                bar.update()
    bar.close()
    table = pd.DataFrame(rows)
    participants = read_participants(root)
    keep = [c for c in ("group", "grade", "size_class", "age", "scanner") if c in participants.columns]
    info = participants[keep].replace("n/a", np.nan)
    table = table.merge(info, left_on="subject", right_index=True, how="left")
    front = ["subject"] + keep
    return table[front + [c for c in table.columns if c not in front]].sort_values("subject", ignore_index=True)


def _cv(values: pd.Series) -> float:
    values = values.dropna()
    if len(values) < 3 or values.mean() == 0:
        return float("nan")
    return float(values.std(ddof=1) / values.mean())


def _ratio_cvs(patients: pd.DataFrame) -> dict[str, float]:
    """Between-patient CV of the MD ratio of each banded compartment (at least 3 patients)."""
    out = {}
    for grade, name in (("II", "visible"), ("IV", "enhancing"), ("IV", "edema")):
        column = f"md_ratio_{name}"
        if column in patients:
            cv = _cv(patients.loc[patients["grade"].astype(str) == grade, column])
            if not math.isnan(cv):
                out[f"WHO {grade} {name}"] = cv
    return out


def _recorded_motion(qc: pd.DataFrame) -> tuple[float, str]:
    values = qc["motion_rms_recorded_mm"].dropna() if "motion_rms_recorded_mm" in qc else pd.Series(dtype=float)
    if values.empty:
        return float("nan"), "not measured (needs a registration of every volume)"
    return float(values.mean()), (f"mean of {len(values)} subjects as the simulator recorded it (the QC does not "
                                  "register the volumes)")


def cohort_statistics(qc: pd.DataFrame) -> dict[str, tuple[float, str]]:
    """Cohort statistics named as the bands of :data:`~dmrilib.simulate.realism.ACCEPTANCE`.

    Parameters
    ----------
    qc : DataFrame
        :func:`cohort_qc`'s table.

    Returns
    -------
    dict of str to (float, str)
        Band name -> (value, what it was computed from). NaN when the cohort
        lacks what a statistic needs (e.g. fewer than 3 controls, no WHO II
        patient). ``motion_rms_mm`` is the only value not measured from the
        images: residual motion needs a registration of every volume, which
        this QC does not run, so it is the simulator's record (DWI sidecar),
        NaN when there is none.
    """
    group = qc["group"].astype(str) if "group" in qc else pd.Series("healthy", index=qc.index)
    controls = qc[group == "healthy"]
    patients = qc[group == "patient"]
    n_c, n_all = len(controls), len(qc)

    def mean_ratio(grade: str, name: str) -> tuple[float, str]:
        column = f"md_ratio_{name}"
        if column not in qc or "grade" not in qc:
            return float("nan"), "no patient"
        values = patients.loc[patients["grade"].astype(str) == grade, column].dropna()
        return (float(values.mean()) if len(values) else float("nan")), f"mean of {len(values)} WHO {grade} patients"

    cvs = _ratio_cvs(patients) if "grade" in qc else {}
    tested = qc["dw_slices_tested"].sum()
    return {
        "wm_fa_median": (float(controls["wm_fa_median"].mean()) if n_c else float("nan"), f"mean of {n_c} controls"),
        "wm_fa_cv": (_cv(controls["wm_fa_median"]), f"{n_c} controls"),
        "wm_md_cv": (_cv(controls["wm_md_median"]), f"{n_c} controls"),
        "brain_volume_cv": (_cv(controls["brain_volume_ml"]), f"{n_c} controls"),
        "csf_volume_cv": (_cv(controls["ventricle_volume_ml"]), f"{n_c} controls"),
        "ventricle_md": (float(controls["csf_md_median"].median()) if n_c else float("nan"),
                         f"median of {n_c} controls"),
        "b0_snr_median": (float(qc["b0_snr"].median()), f"{n_all} subjects"),
        "b0_snr_cv": (_cv(qc["b0_snr"]), f"{n_all} subjects"),
        "outlier_slice_fraction": (float(qc["outlier_slices"].sum() / tested) if tested else float("nan"),
                                   f"{int(qc['outlier_slices'].sum())} of {int(tested)} (volume, slice) pairs"),
        "motion_rms_mm": _recorded_motion(qc),
        "lesion_md_ratio_II": mean_ratio("II", "visible"),
        "lesion_md_ratio_IV_enhancing": mean_ratio("IV", "enhancing"),
        "lesion_md_ratio_IV_edema": mean_ratio("IV", "edema"),
        "lesion_md_ratio_cv": (float(np.median(list(cvs.values()))) if cvs else float("nan"),
                               "median of " + (", ".join(f"{k} {v:.3f}" for k, v in cvs.items()) or "no compartment")
                               + " (>= 3 patients each)"),
    }


def acceptance_table(qc: pd.DataFrame, config, *, bands: Mapping | None = None) -> pd.DataFrame:
    """The cohort's statistics against the literature bands.

    Parameters
    ----------
    qc : DataFrame
        :func:`cohort_qc`'s table.
    config : CohortConfig
        The cohort's settings: its realism says which bands apply, its voxel
        size whether they are comparable (most bands are defined at 2.4 mm).
    bands : mapping, optional
        Name -> :class:`~dmrilib.simulate.realism.Band`; default
        :data:`~dmrilib.simulate.realism.ACCEPTANCE`.

    Returns
    -------
    pandas.DataFrame
        One row per band: ``quantity``, ``value``, ``low``, ``high``,
        ``unit``, ``holds`` (``"yes"``, ``"no"``, ``"n/a"`` when the band's
        realism groups are off for this cohort, ``"not measured"`` when the
        value is missing), ``note`` (what the value was computed from, which
        groups are off, and "measured at X mm" when the voxel size is not
        2.4 mm), ``basis`` (the first part of the note alone), ``how`` and
        ``source``.
    """
    from dmrilib.simulate.realism import ACCEPTANCE

    bands = ACCEPTANCE if bands is None else bands
    stats = cohort_statistics(qc)
    groups = config.groups
    voxel = float(config.voxel_size)
    rows = []
    for name, band in bands.items():
        value, basis = stats.get(name, (float("nan"), "not computed"))
        off = sorted(set(band.groups) - set(groups))
        notes = [basis]
        if off:
            holds = "n/a"
            notes.append(f"{' + '.join(off)} off at realism {config.realism}")
        elif value is None or math.isnan(value):
            holds = "not measured"
        else:
            holds = "yes" if band.low <= value <= band.high else "no"
        if not math.isclose(voxel, 2.4):
            notes.append(f"measured at {voxel:g} mm (band defined at 2.4 mm)")
        rows.append({"quantity": name, "value": value, "low": band.low, "high": band.high, "unit": band.unit,
                     "holds": holds, "note": "; ".join(notes), "basis": basis, "how": band.how, "source": band.source})
    return pd.DataFrame(rows)


def _number(value: float) -> str:
    return "" if value is None or not np.isfinite(value) else f"{value:.3g}"


def acceptance_summary(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`acceptance_table` as text columns for the book.

    Returns
    -------
    pandas.DataFrame
        ``quantity``, ``measured`` (3 significant digits), ``band``
        (``"0.42-0.5"`` or ``">= 0.3"``, with its unit), ``holds``, ``how``
        (how the quantity is measured, then what the value was computed
        from) and ``source``. Which groups are off and the voxel size are
        left to the text around the table.
    """
    def band(row) -> str:
        unit = f" {row['unit']}" if row["unit"] and row["unit"] not in ("CV", "ratio", "fraction") else ""
        if not np.isfinite(row["high"]):
            return f"≥ {row['low']:.3g}{unit}"
        return f"{row['low']:.3g}–{row['high']:.3g}{unit}"

    return pd.DataFrame({
        "quantity": table["quantity"],
        "measured": [_number(v) for v in table["value"]],
        "band": [band(r) for _, r in table.iterrows()],
        "holds": table["holds"],
        "how": [f"{h} ({b})" for h, b in zip(table["how"], table["basis"])],
        "source": table["source"],
    })
