"""The ground-truth pipeline over a cohort: segment, register, carry over, score.

Decoupled from files and the results layout: it takes per-subject arrays
(:class:`GroundTruthInput`) and returns masks on the diffusion grid plus a
tidy table. When the truth is known (simulated data), the table measures
each step's error separately (one row per subject):

- ``dice_segmentation``: predicted vs true lesion on the structural grid;
- ``reg_error_mean_mm``, ``reg_error_median_mm``, ``reg_error_p95_mm``:
  distance between the estimated and the true structural position of the
  diffusion voxels inside the brain;
- ``dice_pipeline``: the carried-over predicted mask vs the exact
  diffusion-grid lesion (what the paper's evaluation rests on);
- ``dice_true_transform``: the predicted mask carried with the TRUE
  transform, vs the same (segmentation error without registration error);
- ``dice_true_mask``: the true structural lesion carried with the estimated
  transform (registration error without segmentation error);
- ``dice_resampling``: the true structural lesion carried with the true
  transform (the floor set by resampling between the two grids);
- ``lesion_voxels``, ``pipeline_voxels``: sizes of the true and the
  carried-over masks on the diffusion grid.

Wall times (``segment_time_s``, ``register_time_s``) are a separate table
(:attr:`GroundTruthResult.timings`): they differ between identical runs, and
the results table should not.
"""
from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from dmrilib._workers import process_pool
from dmrilib.groundtruth.config import RegConfig, SegConfig
from dmrilib.groundtruth.registration import (Registration, register_structural_to_dwi, registration_error_mm,
                                              voxel_centres_mm, warp_to_dwi)
from dmrilib.metrics import dice

# torch is imported only where the network runs (segmentation), so that
# registration worker processes start without it.

__all__ = ["GroundTruthInput", "GroundTruthResult", "inputs_from_simulation", "run_groundtruth_cohort",
           "TABLE_COLUMNS", "TIMING_COLUMNS"]

#: Columns of :attr:`GroundTruthResult.table`, in order.
TABLE_COLUMNS = ("subject", "dice_segmentation", "reg_error_mean_mm", "reg_error_median_mm", "reg_error_p95_mm",
                 "dice_pipeline", "dice_true_transform", "dice_true_mask", "dice_resampling",
                 "lesion_voxels", "pipeline_voxels")
#: Columns of :attr:`GroundTruthResult.timings` (wall seconds per step), in order.
TIMING_COLUMNS = ("subject", "segment_time_s", "register_time_s")


@dataclass
class GroundTruthInput:
    """One subject's images (and, when known, its truth) for the ground-truth pipeline.

    Parameters
    ----------
    subject : str
        Subject id (e.g. ``"sub-P01"``).
    t1w, flair : ndarray (X', Y', Z')
        Structural images on one grid.
    structural_affine : ndarray (4, 4)
        Their voxel -> scanner mm (RAS) affine.
    b0 : ndarray (X, Y, Z)
        Mean b0 of the DWI (the registration's fixed image).
    dwi_affine : ndarray (4, 4)
        The diffusion grid's affine.
    brain_mask : ndarray of bool (X, Y, Z), optional
        Diffusion-grid brain mask: where the registration error is measured.
    structural_lesion : ndarray of bool (X', Y', Z'), optional
        True visible lesion on the structural grid.
    lesion : ndarray of bool (X, Y, Z), optional
        True visible lesion on the diffusion grid.
    dwi_to_structural : ndarray (X, Y, Z, 3), optional
        True structural mm of every diffusion voxel centre.
    """

    subject: str
    t1w: np.ndarray
    flair: np.ndarray
    structural_affine: np.ndarray
    b0: np.ndarray
    dwi_affine: np.ndarray
    brain_mask: np.ndarray | None = None
    structural_lesion: np.ndarray | None = None
    lesion: np.ndarray | None = None
    dwi_to_structural: np.ndarray | None = None


def inputs_from_simulation(subject, label: str, *, b0_threshold: float = 50.0) -> GroundTruthInput:
    """A :class:`GroundTruthInput` (with truth) from a :class:`~dmrilib.simulate.SimulatedSubject`.

    The mean b0 averages the volumes with ``b <= b0_threshold``.
    """
    from dmrilib.simulate.subject import structural_lesion_of

    if subject.t1w is None or subject.flair is None:
        raise ValueError(f"{label}: the simulated subject has no structural images (simulate with structural=True).")
    is_b0 = np.asarray(subject.bvals) <= b0_threshold
    if not is_b0.any():
        raise ValueError(f"{label}: no b0 volume (b <= {b0_threshold}) in the DWI.")
    b0 = subject.dwi[..., is_b0].mean(axis=3, dtype=np.float32)
    true_map = getattr(subject, "dwi_to_structural", None)
    if true_map is None and subject.t1w.shape == subject.lesion.shape:
        # Without a separate structural grid the structural images are sampled
        # on the diffusion grid in the same head pose: the map is the identity.
        true_map = voxel_centres_mm(subject.lesion.shape, subject.affine).astype(np.float32)
    return GroundTruthInput(
        subject=label, t1w=subject.t1w, flair=subject.flair, structural_affine=subject.structural_affine,
        b0=b0, dwi_affine=subject.affine, brain_mask=subject.brain_mask,
        structural_lesion=structural_lesion_of(subject), lesion=subject.lesion, dwi_to_structural=true_map)


@dataclass
class GroundTruthResult:
    """What :func:`run_groundtruth_cohort` returns.

    ``masks`` holds the pipeline's tumour mask of each subject on its
    diffusion grid (bool), ``structural_masks`` the segmentation on the
    structural grid, ``table`` one row per subject (:data:`TABLE_COLUMNS`),
    ``registrations`` the registrations when asked for (``keep_registrations``),
    ``timings`` the wall times of each subject's steps (:data:`TIMING_COLUMNS`).
    """

    masks: dict[str, np.ndarray]
    structural_masks: dict[str, np.ndarray]
    table: pd.DataFrame
    registrations: dict[str, Registration]
    timings: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(TIMING_COLUMNS)))


def run_groundtruth_cohort(inputs: Iterable[GroundTruthInput], network: Any, *,
                           seg_config: SegConfig | None = None, reg_config: RegConfig | None = None,
                           n_jobs: int = 1, keep_registrations: bool = False,
                           progress: bool = True) -> GroundTruthResult:
    """Segment each subject's structural images, register T1w -> diffusion, carry the mask over.

    Parameters
    ----------
    inputs : iterable of GroundTruthInput
        One per subject (a generator is fine: subjects are read one at a time
        and at most ``2 * n_jobs`` wait for their registration).
    network : SegUNet or path-like
        Trained network, or its checkpoint / run folder (:func:`load_segmentation`).
    seg_config : SegConfig, optional
        Inference settings (``threshold``, ``keep_largest``, ``precision``, ``device``).
    reg_config : RegConfig, optional
        Registration settings and how masks are carried over (``interpolation``).
    n_jobs : int
        Processes that register subjects in parallel (segmentation runs in
        this process). Each registration is seeded and single-threaded by
        default, so the result does not depend on ``n_jobs``. Workers are
        started with ``spawn`` (ITK's thread pool does not survive a fork)
        and each pays the ANTs import (a few seconds) once.
    keep_registrations : bool
        Return every :class:`Registration` (dense maps; memory grows with the cohort).
    progress : bool
        Show a tqdm progress bar over subjects.

    Returns
    -------
    GroundTruthResult
        Truth-dependent columns are NaN where the truth is not given.
    """
    from tqdm.auto import tqdm

    from dmrilib.groundtruth.segmentation import load_segmentation, segment
    from dmrilib.groundtruth.unet import SegUNet
    from dmrilib.checkpoint import resolve_device

    seg = seg_config if seg_config is not None else SegConfig()
    reg = reg_config if reg_config is not None else RegConfig()
    if isinstance(n_jobs, bool) or int(n_jobs) != n_jobs or n_jobs < 1:
        raise ValueError(f"run_groundtruth_cohort: n_jobs must be a positive integer, got {n_jobs!r}.")
    if isinstance(network, SegUNet):
        net = network
    else:
        net, _ = load_segmentation(network, map_location=resolve_device(seg.device))
    result = GroundTruthResult(masks={}, structural_masks={}, table=pd.DataFrame(), registrations={})
    rows: list[dict] = []
    timings: list[dict] = []
    pending: deque[tuple[str, float, Future]] = deque()

    def collect(subject: str, t_seg: float, out: tuple) -> None:
        carried, row, registration, t_reg = out
        result.masks[subject] = carried
        if registration is not None:
            result.registrations[subject] = registration
        rows.append(row)
        timings.append({"subject": subject, "segment_time_s": t_seg, "register_time_s": t_reg})

    pool = None
    if n_jobs > 1:
        pool = process_pool(int(n_jobs), "spawn")
    try:
        bar = tqdm(inputs, desc="ground truth", unit="subject", disable=not progress)
        for item in bar:
            if item.subject in result.structural_masks:
                raise ValueError(f"run_groundtruth_cohort: subject {item.subject!r} appears twice.")
            t0 = time.perf_counter()
            predicted = segment(net, item.t1w, item.flair, threshold=seg.threshold, keep_largest=seg.keep_largest,
                                precision=seg.precision).mask
            t_seg = time.perf_counter() - t0
            result.structural_masks[item.subject] = predicted
            if pool is None:
                collect(item.subject, t_seg, _register_and_score(item, predicted, reg, keep_registrations))
                continue
            pending.append((item.subject, t_seg, pool.submit(_register_and_score, item, predicted, reg,
                                                             keep_registrations)))
            while len(pending) > 2 * n_jobs:
                subject, t, fut = pending.popleft()
                collect(subject, t, fut.result())
        while pending:
            subject, t, fut = pending.popleft()
            collect(subject, t, fut.result())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    result.table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    result.timings = pd.DataFrame(timings, columns=list(TIMING_COLUMNS))
    return result


def _register_and_score(item: GroundTruthInput, predicted: np.ndarray, reg: RegConfig,
                        keep: bool) -> tuple[np.ndarray, dict, Registration | None, float]:
    """Register one subject, carry its predicted mask over and score it (runs in a worker).

    Returns the carried-over mask, the table row, the registration (if
    ``keep``) and the registration's wall seconds.
    """
    registration = register_structural_to_dwi(item.t1w, item.b0, t1w_affine=item.structural_affine,
                                              dwi_affine=item.dwi_affine, config=reg)
    carried = registration.warp(predicted, reg.interpolation)
    row = _scores(item, predicted, carried, registration, reg.interpolation)
    return carried, row, registration if keep else None, registration.seconds


def _scores(item: GroundTruthInput, predicted: np.ndarray, carried: np.ndarray, registration: Registration,
            interpolation: str) -> dict:
    nan = math.nan
    row = {"subject": item.subject, "pipeline_voxels": int(carried.sum()),
           "lesion_voxels": int(item.lesion.sum()) if item.lesion is not None else nan}
    if item.structural_lesion is not None:
        row["dice_segmentation"] = dice(predicted, item.structural_lesion)
    if item.dwi_to_structural is not None and item.brain_mask is not None:
        err = registration_error_mm(registration.dwi_to_structural, item.dwi_to_structural, item.brain_mask)
        row.update(reg_error_mean_mm=err["mean"], reg_error_median_mm=err["median"], reg_error_p95_mm=err["p95"])
    if item.lesion is not None:
        row["dice_pipeline"] = dice(carried, item.lesion)
        if item.dwi_to_structural is not None:
            truth_map = item.dwi_to_structural
            row["dice_true_transform"] = dice(
                warp_to_dwi(predicted, item.structural_affine, truth_map, interpolation=interpolation), item.lesion)
            if item.structural_lesion is not None:
                row["dice_resampling"] = dice(warp_to_dwi(item.structural_lesion, item.structural_affine, truth_map,
                                                          interpolation=interpolation), item.lesion)
        if item.structural_lesion is not None:
            row["dice_true_mask"] = dice(registration.warp(item.structural_lesion, interpolation), item.lesion)
    return {c: row.get(c, nan) for c in TABLE_COLUMNS}
