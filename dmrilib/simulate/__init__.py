"""Simulated glioma diffusion MRI cohort with exact ground truth.

Real anatomy (nilearn's MNI152 templates) and a real gradient scheme (dipy's
``small_64D``), prescribed fibre tracts, a multi-compartment diffusion
signal with Rician noise, subject variability, and gliomas with necrosis,
enhancing rim, edema, an invisible infiltration zone, mass effect and
follow-up growth. :func:`simulate_cohort` writes it as a BIDS dataset.
"""
from dmrilib.simulate.bids import PIPELINE, verify_manifest, write_manifest, write_nifti
from dmrilib.simulate.cohort import SubjectPlan, cohort_plan, simulate_cohort
from dmrilib.simulate.config import CohortConfig
from dmrilib.simulate.fibres import fibre_field
from dmrilib.simulate.signal import small64d_scheme
from dmrilib.simulate.subject import SimulatedSubject, simulate_subject

__all__ = [
    "CohortConfig",
    "simulate_cohort",
    "simulate_subject",
    "SimulatedSubject",
    "SubjectPlan",
    "cohort_plan",
    "write_manifest",
    "verify_manifest",
    "write_nifti",
    "small64d_scheme",
    "fibre_field",
    "PIPELINE",
]
