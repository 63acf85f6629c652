"""Ground-truth tumour masks from structural MRI, and how wrong they are.

The paper scores every anomaly map against tumour masks made by a U-Net
(T1w, FLAIR and a foreground mask in; trained on BraTS) on the structural
scans, carried into diffusion space through an ANTs SyN registration of the
T1w with nearest-neighbour interpolation. On a simulated cohort the true
lesion and the true structural <-> diffusion map are known, so this package
reproduces that pipeline *and* measures its segmentation and registration
errors.

The API at a glance::

    SegConfig, RegConfig                 settings (profile sections groundtruth, registration)
    SegUNet, seg_loss                    3D U-Net (T1w, FLAIR, foreground) -> logits; soft Dice + BCE
    training_plan, simulate_training_set simulated training subjects outside the cohort
    train_segmentation, load_segmentation  seeded, resumable training; checkpoints
    foreground_mask, network_input, segment  inference on one subject
    register_structural_to_dwi           ANTs rigid/affine + SyN, returns a Registration
    warp_to_dwi, registration_error_mm   carry masks over; error (mm) against the true map
    run_groundtruth_cohort               all of it over a cohort -> masks + tidy table
    inputs_from_bids                     a cohort's inputs (and truth, if simulated) from BIDS

Names are imported on first use (PEP 562): the settings need neither torch
nor ANTs.
"""
from __future__ import annotations

_API = {
    "dmrilib.groundtruth.config": ("SegConfig", "RegConfig", "TRAINING_FIELDS"),
    "dmrilib.groundtruth.unet": ("SegUNet", "seg_loss"),
    "dmrilib.groundtruth.segmentation": (
        "TrainingSubject", "TrainingSet", "Segmentation", "SEED_KEY", "training_seeds", "training_plan",
        "simulate_training_set", "foreground_mask", "network_input", "train_segmentation", "load_segmentation",
        "segment",
    ),
    "dmrilib.groundtruth.registration": (
        "Registration", "register_structural_to_dwi", "warp_to_dwi", "registration_error_mm", "voxel_centres_mm",
    ),
    "dmrilib.groundtruth.bids": ("inputs_from_bids", "structural_files"),
    "dmrilib.groundtruth.cohort": (
        "GroundTruthInput", "GroundTruthResult", "TABLE_COLUMNS", "inputs_from_simulation", "run_groundtruth_cohort",
    ),
    # the simulator's own accessor (here too for the ground-truth training set and truth)
    "dmrilib.simulate.subject": ("structural_lesion_of",),
}
_WHERE = {name: module for module, names in _API.items() for name in names}

__all__ = [name for names in _API.values() for name in names]


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dmrilib.groundtruth' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
