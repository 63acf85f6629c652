"""Anomaly detection in diffusion MRI: data, models, noise, metrics, figures.

A reproduction of Weninger, Ecke et al., "Diffusion MRI anomaly detection in
glioma patients", Sci Rep 2023 (doi:10.1038/s41598-023-47563-1).

The API at a glance::

    load_dwi, find_bids_dwi, describe      read and check DWI / BIDS data   (dmrilib.io)
    attenuation, NetworkGrid, dti_maps     network input, crop/pad, DTI      (dmrilib.preprocess)
    CohortConfig, simulate_cohort          simulated glioma cohort           (dmrilib.simulate)
    prepare_cohort, load_prepared          cohort -> network-grid arrays      (dmrilib.dataset)
    JoodConfig, add_jood                   just-out-of-distribution noise    (dmrilib.noise)
    DAE, RecDiscNet, build_model           the two anomaly models            (dmrilib.models)
    train_run, make_folds, load_checkpoint training with cross-validation    (dmrilib.train)
    predict_maps, predict_dwi              anomaly maps                      (dmrilib.scoring)
    auroc, dice, THRESHOLD_RULES,
    evaluate_map                           metrics and threshold rules       (dmrilib.metrics)
    NormativeBaseline                      voxelwise DTI z-score baseline    (dmrilib.baselines)
    load_profile                           run profiles configs/*.yaml       (dmrilib.config)

Job-level functions used by the notebooks are in :mod:`dmrilib.pipeline`,
figures in :mod:`dmrilib.plotting`, the paper's published numbers (for the
comparison only) in :mod:`dmrilib.published`.
"""
__version__ = "0.1.0"

# Names are imported on first use (PEP 562) so that `import dmrilib` and the
# `dmri` command start instantly; torch, dipy and nilearn load only when needed.
_API = {
    "dmrilib.config": ("ConfigError", "load_profile"),
    "dmrilib.io": ("DwiInputError", "DwiVolume", "describe", "find_bids_dwi", "load_dwi"),
    "dmrilib.preprocess": ("GridCrop", "NetworkGrid", "attenuation", "dti_maps"),
    "dmrilib.dataset": ("PrepareConfig", "load_prepared", "prepare_cohort"),
    "dmrilib.simulate": ("CohortConfig", "simulate_cohort"),
    "dmrilib.noise": ("JoodConfig", "add_jood"),
    "dmrilib.models": ("DAE", "ModelConfig", "RecDiscNet", "build_model"),
    "dmrilib.train": ("TrainConfig", "load_checkpoint", "make_folds", "train_run"),
    "dmrilib.scoring": ("predict_dwi", "predict_maps"),
    "dmrilib.metrics": ("THRESHOLD_RULES", "EvalConfig", "auroc", "dice", "evaluate_map"),
    "dmrilib.baselines": ("NormativeBaseline",),
}
_WHERE = {name: module for module, names in _API.items() for name in names}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dmrilib' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "__version__",
    "ConfigError",
    "load_profile",
    "DwiInputError",
    "DwiVolume",
    "describe",
    "find_bids_dwi",
    "load_dwi",
    "GridCrop",
    "NetworkGrid",
    "attenuation",
    "dti_maps",
    "PrepareConfig",
    "load_prepared",
    "prepare_cohort",
    "CohortConfig",
    "simulate_cohort",
    "JoodConfig",
    "add_jood",
    "DAE",
    "ModelConfig",
    "RecDiscNet",
    "build_model",
    "TrainConfig",
    "load_checkpoint",
    "make_folds",
    "train_run",
    "predict_dwi",
    "predict_maps",
    "THRESHOLD_RULES",
    "EvalConfig",
    "auroc",
    "dice",
    "evaluate_map",
    "NormativeBaseline",
]
