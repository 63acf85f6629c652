"""Realism levels of the simulated cohort: which effects are on, and their literature values.

A cohort's ``realism`` (a :class:`~dmrilib.simulate.CohortConfig` field)
switches groups of effects on; each effect is its own ``CohortConfig`` field,
which a profile may also set directly (a written value always wins).

======= ================================================================
level   groups switched on (cumulative)
======= ================================================================
L0      none: the simulator of sessions 1-5, bit for bit
L1      ``population``: between-subject diffusivity, tract and anatomy
        variation, age, white-matter hyperintensities, incidental lacunes
L2      + ``acquisition``: SNR spread, spatially varying noise, per-volume
        motion, outlier slices, Gibbs ringing, vibration, distortion spread
L3      + ``tumour``: per-patient compartment values in literature bands,
        texture, haemorrhage, cysts, multifocal tumours, treated follow-up
L4      + ``scanner``: two scanners with diffusivity/SNR offsets, unevenly
        split between controls and patients (a study-design confound)
======= ================================================================

A realism may also name groups: ``"acquisition"`` or ``"L0+acquisition"``
is L0 with the acquisition group only; ``"L2+scanner"`` adds the scanner
split to L2.

:data:`EFFECTS` holds, per field, its group, its value when the group is on
and when it is off, the unit, the source and how confident we are in the
value. The book's Data page prints it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["GROUPS", "LEVELS", "Effect", "EFFECTS", "Band", "ACCEPTANCE", "parse_realism", "effect_defaults",
           "group_active", "effects_table"]

#: Effect groups in level order: level ``Lk`` switches on the first k groups.
GROUPS = ("population", "acquisition", "tumour", "scanner")
#: Named levels.
LEVELS = {f"L{k}": frozenset(GROUPS[:k]) for k in range(len(GROUPS) + 1)}


@dataclass(frozen=True)
class Effect:
    """One simulator effect: a ``CohortConfig`` field and its literature value.

    Attributes
    ----------
    field : str
        The ``CohortConfig`` field.
    group : str
        One of :data:`GROUPS`.
    on, off : Any
        The field's value when its group is switched on / off (``off`` keeps L0).
    unit : str
    what : str
        What the value means, in a few words.
    source : str
        Where the value comes from (literature, measured range).
    confidence : str
        ``high`` (many consistent studies), ``medium`` (a typical range with
        a wide spread between studies) or ``low`` (an educated choice).
    """

    field: str
    group: str
    on: Any
    off: Any
    unit: str
    what: str
    source: str
    confidence: str


EFFECTS: tuple[Effect, ...] = (
    # -- population (L1) -------------------------------------------------------
    Effect("axial_scale_sd", "population", 0.03, 0.0, "relative sd",
           "between-subject spread of the axial diffusivity (whole brain)",
           "between-subject CV of WM AD 2-4% in healthy adults (Westlye et al. 2010, Cereb Cortex)", "medium"),
    Effect("radial_scale_sd", "population", 0.05, 0.0, "relative sd",
           "between-subject spread of the radial diffusivity (whole brain)",
           "between-subject CV of WM RD 4-7% in healthy adults (Westlye et al. 2010)", "medium"),
    Effect("tract_scale_sd", "population", 0.04, 0.0, "relative sd",
           "per-subject, per-region factor on the diffusivities (smooth, ~40 mm)",
           "tract-wise FA/MD CV 5-10% vs 3-5% whole-WM (TBSS/tractography cohorts)", "medium"),
    Effect("head_volume_cv", "population", 0.10, 0.0, "CV of volume",
           "between-subject spread of intracranial/brain volume (isotropic scale)",
           "ICV CV 8-12% in adults (e.g. UK Biobank, Buckner et al. 2004)", "high"),
    Effect("ventricle_volume_cv", "population", 0.40, 0.0, "CV of volume",
           "between-subject spread of the lateral ventricles (on top of age)",
           "lateral ventricle volume CV 30-50% in adults (Fjell et al. 2009)", "medium"),
    Effect("age_range", "population", (25.0, 80.0), None, "years",
           "ages drawn uniformly in this range (None: no age effects)",
           "glioma patients' median age ~50-60; controls matched (paper: adults)", "low"),
    Effect("age_radial_slope", "population", 0.004, 0.0, "per year",
           "relative change of the radial diffusivity per year from age 45",
           "WM RD +0.3-0.5%/year, AD +0.1%/year, FA -0.2-0.3%/year after 40 "
           "(Sullivan & Pfefferbaum 2006; Westlye et al. 2010)", "medium"),
    Effect("age_axial_slope", "population", 0.001, 0.0, "per year",
           "relative change of the axial diffusivity per year from age 45", "as age_radial_slope", "medium"),
    Effect("wmh_per_decade", "population", 1.5, 0.0, "lesions per decade over 40",
           "mean count of white-matter hyperintensities (MD x1.3-1.6, FA x0.6-0.8, FLAIR bright)",
           "WMH prevalence >50% over 60, load rising with age (Wardlaw et al. 2013, STRIVE)", "medium"),
    Effect("incidental_rate", "population", 0.08, 0.0, "fraction of subjects",
           "old lacunar infarct (CSF-like cavity, 3-12 mm, gliotic rim) in deep GM/WM",
           "silent infarcts in 7% of adults 45+ (Vernooij et al. 2007, NEJM)", "high"),
    # -- acquisition (L2) ------------------------------------------------------
    Effect("snr_cv", "acquisition", 0.15, 0.0, "CV",
           "between-subject spread of the b0 SNR (log-normal; 0: snr_jitter applies)",
           "b0 SNR CV 10-20% across sessions/subjects at one site (QC reports, e.g. eddy QUAD)", "medium"),
    Effect("noise_map_sd", "acquisition", 0.15, 0.0, "relative sd",
           "spatial variation of the noise level across the head (coil sensitivity, g-factor)",
           "g-factor 1.0-1.4 at acceleration 2 with 32-channel coils (Pruessmann et al. 1999)", "medium"),
    Effect("motion_mm", "acquisition", 0.3, 0.0, "mm rms",
           "per-volume residual rigid motion after correction (translation; rotation alike in mm at 60 mm)",
           "residual motion 0.1-0.5 mm after eddy/motion correction (Andersson & Sotiropoulos 2016)", "medium"),
    Effect("outlier_slice_rate", "acquisition", (0.005, 0.010), (0.0, 0.0), "fraction of slices",
           "(controls, patients): diffusion-weighted slices with signal dropout x0.2-0.7",
           "eddy flags ~0.5-1% of slices as outliers, more in patients (Andersson et al. 2016)", "medium"),
    Effect("gibbs_kspace_fraction", "acquisition", 0.8, 1.0, "fraction of k-space",
           "in-plane k-space kept (zero-filled to the grid): ringing at sharp edges",
           "partial Fourier / zero-filled reconstruction; ringing (Kellner et al. 2016)", "medium"),
    Effect("vibration_rate", "acquisition", 0.1, 0.0, "fraction of subjects",
           "posterior signal loss in volumes with a left-right gradient",
           "table vibration artefact on some scanners (Gallichan et al. 2010)", "low"),
    Effect("distortion_spread", "acquisition", 0.4, 0.0, "relative",
           "per-subject factor U(1 - s, 1 + s) on the EPI distortion peak",
           "B0 inhomogeneity varies with head size/shim (typical peaks 2-8 mm at 3T)", "low"),
    # -- tumour (L3) -----------------------------------------------------------
    Effect("tumour_value_cv", "tumour", 0.2, 0.0, "CV",
           "between-patient spread of the compartments' MD ratios to normal WM, drawn around the grade's "
           "literature ratio (pure compartment; partial volume with neighbours damps a measured ratio's "
           "spread to about 0.75 of it, so 0.2 gives the measured 10-20%)",
           "ADC ratios tumour/NAWM: WHO II 1.6-2.2, GBM enhancing rim ~1.26, oedema ~1.7 "
           "(Sugahara et al. 1999; Kono et al. 2001; Server et al. 2009); published ratios spread 10-20% "
           "between patients", "medium"),
    Effect("tumour_texture_sd", "tumour", 0.2, 0.0, "relative sd",
           "texture (smooth random field, ~8 mm) of the compartments inside the tumour",
           "heterogeneous ADC within gliomas (histogram analyses)", "low"),
    Effect("haemorrhage_rate", "tumour", 0.25, 0.0, "fraction of GBM",
           "intratumoural haemorrhage (dark b0, low ADC, bright T1w)", "haemorrhage in ~20-30% of GBM", "low"),
    Effect("cyst_rate", "tumour", 0.2, 0.0, "fraction of WHO II/III",
           "cyst of free water inside the tumour", "cystic parts in ~20% of lower-grade gliomas", "low"),
    Effect("multifocal_rate", "tumour", 0.1, 0.0, "fraction of patients",
           "a second, smaller tumour focus", "multifocal glioma in ~5-20% (GBM more often)", "medium"),
    Effect("followup_treatment", "tumour", True, False, "",
           "follow-up with resection cavity, gliosis rim and radiation change",
           "post-treatment FLAIR changes (RANO criteria, Wen et al. 2010)", "high"),
    Effect("remote_recurrence_rate", "tumour", 0.15, 0.0, "fraction of follow-ups",
           "recurrence that also appears outside the simulated infiltration zone",
           "distant/multifocal recurrence in ~10-20% of GBM", "medium"),
    # -- scanner (L4) ----------------------------------------------------------
    Effect("scanner_offset", "scanner", (0.04, 0.10), (0.0, 0.0), "relative",
           "second scanner: (diffusivity offset, SNR reduction)",
           "inter-scanner DTI differences 3-5% (Vollmar et al. 2010)", "medium"),
    Effect("scanner_share", "scanner", (0.3, 0.7), (0.0, 0.0), "fraction",
           "(controls, patients) imaged on the second scanner", "study design (a confound)", "low"),
)

_BY_FIELD = {e.field: e for e in EFFECTS}


def parse_realism(realism: str) -> frozenset[str]:
    """The groups a realism string switches on.

    Parameters
    ----------
    realism : str
        A level (``"L0"``...``"L4"``), group names, or a level plus groups,
        joined by ``+`` (``"L0+acquisition"``, ``"L2+scanner"``).

    Raises
    ------
    ValueError
        For an unknown level or group, naming the accepted ones.
    """
    if not isinstance(realism, str) or not realism.strip():
        raise ValueError(f"cohort.realism must be a level {sorted(LEVELS)} or groups {list(GROUPS)} "
                         f"joined by '+', got {realism!r}")
    groups: set[str] = set()
    for part in realism.replace(" ", "").split("+"):
        if part in LEVELS:
            groups |= LEVELS[part]
        elif part in GROUPS:
            groups.add(part)
        else:
            raise ValueError(f"cohort.realism: unknown part {part!r} in {realism!r}; use a level "
                             f"{sorted(LEVELS)} and/or groups {list(GROUPS)} joined by '+'")
    return frozenset(groups)


def effect_defaults(realism: str) -> dict[str, Any]:
    """Field -> value for every effect under ``realism``."""
    groups = parse_realism(realism)
    return {e.field: (e.on if e.group in groups else e.off) for e in EFFECTS}


def group_active(config, group: str) -> bool:
    """Whether any effect of ``group`` in ``config`` differs from its off (L0) value.

    A written field switches its effect on even when its group is off, so
    this looks at the values, not at ``config.groups``.
    """
    if group not in GROUPS:
        raise ValueError(f"unknown realism group {group!r}; groups: {list(GROUPS)}")
    return any(getattr(config, e.field) != e.off for e in EFFECTS if e.group == group)


def effects_table():
    """:data:`EFFECTS` as a pandas DataFrame (for the book)."""
    import pandas as pd

    level = {g: f"L{k + 1}" for k, g in enumerate(GROUPS)}
    return pd.DataFrame([
        {"level": level[e.group], "group": e.group, "field": e.field, "value": e.on, "unit": e.unit,
         "effect": e.what, "source": e.source, "confidence": e.confidence}
        for e in EFFECTS
    ])


@dataclass(frozen=True)
class Band:
    """A literature range that a simulated cohort's measured quantity must fall in.

    Attributes
    ----------
    low, high : float
        Inclusive bounds (``high`` may be ``inf``).
    unit : str
    how : str
        How the quantity is measured on a cohort (dipy DTI fit, masks).
    source : str
    groups : frozenset of str
        The band applies when all these realism groups are on.
    """

    low: float
    high: float
    unit: str
    how: str
    source: str
    groups: frozenset = frozenset()


_POP, _ACQ, _TUM = frozenset({"population"}), frozenset({"acquisition"}), frozenset({"tumour"})
#: Acceptance bands, measured at 2.4 mm against an independent DTI fit (dipy, WLS)
#: by :mod:`dmrilib.simulate.qc`. Never tuned to the paper's AUROC or Dice.
ACCEPTANCE: dict[str, Band] = {
    "wm_fa_median": Band(0.42, 0.50, "", "median FA over voxels whose largest tissue fraction is WM, per control, "
                         "averaged over controls", "whole-WM FA of healthy adults at 2-2.5 mm", _POP),
    "wm_fa_cv": Band(0.03, 0.06, "CV", "between-control CV of the median WM FA",
                     "whole-WM FA CV 3-5% (per tract 5-10%)", _POP),
    "wm_md_cv": Band(0.03, 0.06, "CV", "between-control CV of the median WM MD", "whole-WM MD CV 3-6%", _POP),
    "brain_volume_cv": Band(0.08, 0.12, "CV", "between-control CV of the brain volume (GM + WM + CSF fractions; "
                            "a field of view covering the whole brain)",
                            "intracranial volume CV 8-12%", _POP),
    "csf_volume_cv": Band(0.30, float("inf"), "CV", "between-control CV of the lateral ventricles' volume (CSF label "
                          "within 12 mm of their centre lines, an MNI atlas region)",
                          "ventricle volume CV 30-50%", _POP),
    "ventricle_md": Band(2.6e-3, 3.3e-3, "mm^2/s", "median MD of voxels with CSF fraction > 0.9",
                         "free water at 37 C 3.0e-3; ventricles 2.6-3.3e-3 at 2-2.5 mm", frozenset()),
    "b0_snr_median": Band(20.0, 40.0, "", "median over subjects of mean WM b0 / background noise sigma",
                          "clinical 3T DWI at 2-2.5 mm", _ACQ),
    "b0_snr_cv": Band(0.10, 0.20, "CV", "between-subject CV of the b0 SNR", "QC reports of clinical cohorts", _ACQ),
    "outlier_slice_fraction": Band(0.002, 0.02, "fraction", "diffusion-weighted brain slices with dropout",
                                   "eddy outlier detection, clinical cohorts", _ACQ),
    "motion_rms_mm": Band(0.1, 0.5, "mm", "rms per-volume residual displacement", "after eddy correction", _ACQ),
    "lesion_md_ratio_II": Band(1.6, 2.2, "ratio", "MD of WHO II visible tumour / contralateral normal WM",
                               "low-grade glioma ADC ratio (Server et al. 2009)", _TUM),
    "lesion_md_ratio_IV_enhancing": Band(1.0, 1.5, "ratio", "MD of GBM enhancing rim / normal WM (~1.26)",
                                         "Sugahara et al. 1999; Kono et al. 2001", _TUM),
    "lesion_md_ratio_IV_edema": Band(1.4, 2.0, "ratio", "MD of GBM oedema / normal WM (~1.7)",
                                     "peritumoral oedema ADC ~1.3e-3", _TUM),
    "lesion_md_ratio_cv": Band(0.10, 0.20, "CV", "between-patient CV of a compartment's MD ratio",
                               "spread of published ADC ratios", _TUM),
}
