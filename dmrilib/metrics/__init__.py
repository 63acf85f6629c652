"""Evaluation of anomaly maps: AUROC, threshold rules, Dice, tables, statistics.

Everything here works on plain numpy arrays (one map, one ground truth, one
evaluation mask) and on tidy :class:`pandas.DataFrame` tables, so it is
independent of the models that produced the maps. Maps stored as NIfTI files are
read, checked and scored by :mod:`dmrilib.evaluation`; nothing here reads a file.

Import from ``dmrilib.metrics``; the code lives in four modules by concern:
:mod:`~dmrilib.metrics.config` (:class:`EvalConfig`),
:mod:`~dmrilib.metrics.detection` (ROC, AUROC, regions, Dice, post-processing),
:mod:`~dmrilib.metrics.thresholds` (the rules, :func:`evaluate_map`) and
:mod:`~dmrilib.metrics.statistics` (figures' data, bootstrap, tables, tests).

Conventions
-----------
* A voxel is flagged when ``score >= threshold`` (every rule, every function).
* Detection metrics and Dice are computed inside the evaluation ``mask``.
* Otsu, the pooled-maximum rule and the binary map that is post-processed use
  the rule region (``brain_mask``, which defaults to ``mask``); the map is
  taken as zero outside it.
* Which voxels these are is ``EvalConfig.threshold_region``
  (:func:`evaluation_regions`): the authors' code scores everything inside the
  brain mask eroded by a 3x3x3 cube without CSF (``eroded_brain_no_csf``, the
  default); ``brain`` applies the rules on the whole brain (CSF included) and
  scores inside white + grey matter; ``wmgm`` uses white + grey matter for both.
* Post-processing is a morphological opening with a cubic element (paper:
  3x3x3), optionally followed by removing connected components smaller than
  ``min_component_size`` voxels (26-connectivity).
* Dice of two empty sets is 1 (perfect agreement); a supervised rule on a map
  whose mask holds no lesion voxel gives a NaN threshold and NaN Dice.

Threshold rules (:data:`THRESHOLD_RULES`)
-----------------------------------------
``fixed``         per-model constant (paper: DAE 0.3, RecDiscNet 0.5)
``otsu``          Otsu's method (256-bin histogram) on the map inside the rule region
``pool_max``      maximum of the mean-pooled map (cube of ``pool_size`` voxels,
                  non-overlapping blocks or a sliding window: ``pool_stride``)
``youden``        maximum of TPR - FPR on the ROC (supervised)
``dice_optimal``  maximum of the unprocessed Dice (supervised, oracle)

and, beyond the paper, ``healthy_fpr_<percent>`` rows (e.g. ``healthy_fpr_05``)
from thresholds that flag a fraction of the validation healthy subjects' voxels
(:func:`healthy_fpr_thresholds`): unsupervised and free of test-label leakage.

Tables (:func:`summarise` and everything built on it) report a mean and an SD
per group as set by ``EvalConfig.aggregate``: ``per_fold`` (the authors' code)
takes the patients' mean and population SD within each fold and averages both
over folds; ``pooled`` takes mean and sample SD over all patient x fold rows.

``EvalConfig.fidelity`` (``code`` or ``paper``) sets the defaults of
``threshold_region``, ``pool_stride`` and ``aggregate`` (:mod:`dmrilib.fidelity`);
a key given explicitly wins.
"""
from __future__ import annotations

from dmrilib.metrics.config import THRESHOLD_REGIONS, EvalConfig
from dmrilib.metrics.detection import (auroc, average_precision, detection_scores, dice, evaluation_regions, opening,
                                       pooled_maximum, postprocess, roc_curve)
from dmrilib.metrics.statistics import (best_auroc_variant, best_variants, bootstrap_ci, followup_colocalisation,
                                        paired_wilcoxon, score_densities, summarise, summarise_by_group, table_auroc,
                                        table_dice)
from dmrilib.metrics.thresholds import (THRESHOLD_RULES, Threshold, ThresholdRule, evaluate_map,
                                        healthy_fpr_thresholds)

__all__ = [
    "EvalConfig",
    "THRESHOLD_REGIONS",
    "evaluation_regions",
    "Threshold",
    "ThresholdRule",
    "THRESHOLD_RULES",
    "auroc",
    "roc_curve",
    "average_precision",
    "detection_scores",
    "dice",
    "opening",
    "postprocess",
    "pooled_maximum",
    "evaluate_map",
    "healthy_fpr_thresholds",
    "score_densities",
    "followup_colocalisation",
    "bootstrap_ci",
    "summarise",
    "best_variants",
    "best_auroc_variant",
    "table_auroc",
    "table_dice",
    "summarise_by_group",
    "paired_wilcoxon",
]
