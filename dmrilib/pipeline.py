"""Job-level functions: one per notebook of the workflow.

Each function reads its inputs from and writes its outputs under
``<results>/<profile>/`` (every path from :class:`dmrilib.layout.ResultsLayout`;
see ``ARCHITECTURE.md``), records the config hash, seed and package
versions, and writes every file atomically. Notebooks call exactly one of
these and plot; the logic lives here so it is tested.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from dmrilib._atomic import atomic_path, write_json_atomic
from dmrilib.config import Profile, config_hash, provenance
from dmrilib.integrity import check_finite, load_npy, save_npy, sha256_file, sidecar_path
from dmrilib.layout import ResultsLayout, RunFiles
from dmrilib.records import RUN_TABLE_FIELDS, EvalRecord, MapsRecord, TrainRecord, read_record, write_record
from dmrilib.variants import BASELINE, BASELINE_VARIANT, DAE, MODELS, RECDISC, did_you_mean

__all__ = [
    "results_root",
    "run_dir",
    "run_cohort",
    "run_train",
    "run_train_stack",
    "predict_run",
    "run_evaluate",
    "run_baseline",
    "run_groundtruth",
    "pipeline_lesions",
    "run_aggregate",
    "run_followup",
    "run_figures",
    "cohort_overview",
    "plot_training_log",
    "load_tables",
    "DICE_RULE_TABLES",
]

#: The paper's Tables 3-6: threshold rule of each.
DICE_RULE_TABLES = {"table3": "fixed", "table4": "otsu", "table5": "pool_max", "table6": "dice_optimal"}


def results_root(profile: Profile, results: str | Path = "results") -> Path:
    """``<results>/<profile name>``: where every output of a profile goes (:attr:`ResultsLayout.root`)."""
    return ResultsLayout.of(profile, results).root


def run_dir(profile: Profile, model: str, variant: str, fold: int, results: str | Path = "results") -> Path:
    """Folder of one (model, variant, fold) run (:meth:`ResultsLayout.run`)."""
    return ResultsLayout.of(profile, results).run(model, variant, int(fold))


# --------------------------------------------------------------------------- cohort

def run_cohort(profile: Profile, results: str | Path = "results", *, bids_root: str | Path | None = None,
               progress: bool = True, n_jobs: int | None = None) -> tuple[Path, Path]:
    """Simulate the profile's cohort (or register a real BIDS dataset) and prepare its arrays.

    Re-runnable whatever a previous run left: ``cohort/`` is this pipeline's
    own folder, so a cohort of this config is completed (a workflow manager
    deletes ``dataset_description.json`` before re-running the job) and one
    of another config is replaced; a folder that is not a simulated cohort is
    refused, never deleted.

    Parameters
    ----------
    profile : Profile
    results : path-like
        Results root.
    bids_root : path-like, optional
        A real BIDS dataset to use instead of simulating one.
    n_jobs : int, optional
        Worker processes for simulating and preparing (default: up to 2).

    Returns
    -------
    (cohort_dir, prepared_dir) : tuple of Path
    """
    from dmrilib.dataset import prepare_cohort

    layout = ResultsLayout.of(profile, results)
    cohort_dir = layout.cohort
    for folder in (cohort_dir, layout.prepared):
        # Workflow managers create output folders before the job runs; an
        # empty one is not a previous result.
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    prepare = profile.prepare
    if bids_root is None:
        from dmrilib.simulate import simulate_cohort
        from dmrilib.study import is_bids_study

        _forget_external(layout)
        if is_bids_study(cohort_dir):
            # a BIDS dataset staged here by an earlier run: symbolic links and derived masks only
            shutil.rmtree(cohort_dir)
        simulate_cohort(profile.cohort, cohort_dir, progress=progress, n_jobs=n_jobs, replace=True)
        source = cohort_dir
    else:
        from dmrilib.study import STAGED_PIPELINE, plan_bids, stage_bids

        # Every check first (dmri info prints the same plan): nothing is written for a bad dataset.
        plan = plan_bids(bids_root, profile)
        source = stage_bids(plan, profile, cohort_dir, segmentation_dir=layout.segmentation, progress=progress)
        prepare = dataclasses.replace(prepare, pipeline=STAGED_PIPELINE)
    prepared_dir = prepare_cohort(source, prepare, layout.prepared, progress=progress, n_jobs=n_jobs)
    return cohort_dir, Path(prepared_dir)


def _forget_external(layout: ResultsLayout) -> None:
    """Remove the record of an external dataset that a previous run wrote (its only file)."""
    cohort_dir, desc = layout.cohort, layout.cohort_description
    if cohort_dir.is_dir() and [p.name for p in cohort_dir.iterdir()] == [desc.name]:
        try:
            external = "SourceDatasets" in json.loads(desc.read_text())
        except (OSError, ValueError, TypeError):
            external = False
        if external:
            desc.unlink()
            cohort_dir.rmdir()


def cohort_overview(profile: Profile, results: str | Path = "results") -> pd.DataFrame:
    """Participants of the prepared cohort with their lesion volumes (voxels on the network grid)."""
    from dmrilib.dataset import load_prepared

    prepared = load_prepared(ResultsLayout.of(profile, results).prepared)
    table = prepared.participants.copy()
    table["lesion_voxels"] = prepared.lesion.reshape(len(prepared.subjects), -1).sum(axis=1)
    table["infiltration_voxels"] = prepared.infiltration.reshape(len(prepared.subjects), -1).sum(axis=1)
    return table


# --------------------------------------------------------------------------- training

def _folds(profile: Profile, prepared, results: str | Path):
    from dmrilib.crossval import make_folds, write_folds

    split = profile.train.fold_split
    folds = make_folds(prepared.healthy_ids(), profile.train.n_folds, seed=profile.seed, split=split)
    write_folds(folds, ResultsLayout.of(profile, results).folds_file, split=split, seed=profile.seed)
    return folds


def _fold(profile: Profile, prepared, fold: int, results: str | Path):
    folds = _folds(profile, prepared, results)
    if not 0 <= fold < len(folds):
        raise ValueError(f"fold {fold} does not exist: profile {profile.name!r} has {len(folds)} folds (0..{len(folds) - 1}).")
    return folds[fold]


def _set_threads(threads: int) -> None:
    # The workflow decides how many cores a job gets; 0 leaves torch's default.
    if threads and threads > 0:
        import torch

        torch.set_num_threads(int(threads))


def run_train(profile: Profile, model: str, variant: str, fold: int, results: str | Path = "results",
              *, threads: int = 0, progress: bool = True) -> dict[str, Any]:
    """Train one (model, variant, fold) on the fold's healthy training subjects.

    Resumes from ``checkpoint-last.pt`` when the run folder has one, and ends
    by storing the best checkpoint's maps (:func:`predict_run`). Returns the
    run record (``run.json``). RecDiscNet's JOOD patch centres are confined to
    each subject's brain eroded by a 3x3x3 cube without CSF, as in the
    authors' code (the rule region of :func:`dmrilib.metrics.evaluation_regions`
    ``eroded_brain_no_csf``; used by ``train.jood_geometry: centred``).
    """
    from dmrilib import metrics
    from dmrilib.dataset import load_prepared
    from dmrilib.train import train_run

    _set_threads(threads)
    _check_variant(profile, model, variant)
    layout = ResultsLayout.of(profile, results)
    prepared = load_prepared(layout.prepared)
    f = _fold(profile, prepared, fold, results)
    ids = list(f.train) + list(f.val)
    idx = prepared.index(ids)
    regions = None
    if model == RECDISC:
        regions = np.stack([metrics.evaluation_regions(prepared.brain_mask[j], prepared.eval_mask[j],
                                                       "eroded_brain_no_csf")[1] for j in idx])
    run = train_run(
        prepared.attenuation.stored[idx],
        np.asarray(prepared.brain_mask[idx], dtype=bool),
        ids,
        train_ids=list(f.train),
        val_ids=list(f.val),
        model=model,
        variant=variant,
        model_config=profile.model,
        train_config=profile.train,
        out_dir=layout.run(model, variant, int(fold)),
        acquisition=prepared.acquisition(ids),  # lets dmri predict refuse data unlike the training data
        jood_regions=regions,
        progress=progress,
    )
    # Predict while the data are loaded: the evaluate job then only evaluates.
    predict_run(profile, model, variant, fold, results, prepared=prepared)
    return run


def run_train_stack(profile: Profile, model: str, variant: str, folds: Sequence[int],
                    results: str | Path = "results", *, threads: int = 0,
                    progress: bool = True) -> list[dict[str, Any]]:
    """Train several folds of one DAE configuration at once, as stacked models on one device.

    The job of the workflow's ``train.stack_folds`` (:func:`dmrilib.stack.train_stacked`):
    each fold gets the run folder, checkpoints, ``run.json`` and stored
    maps that :func:`run_train` gives it, with the same config hash; the
    weights agree with separate runs to float32 rounding, not bit for bit.
    The prepared cohort is loaded once for all folds.

    Parameters
    ----------
    profile : Profile
    model : str
        The DAE; RecDiscNet trains one fold at a time.
    variant : str
        A variant of the profile.
    folds : sequence of int
        Folds of the profile's split, each once. A single fold is exactly
        :func:`run_train`.
    results : path-like
        Results root.
    threads : int
        CPU threads for torch; 0 keeps its default.
    progress : bool
        A progress bar over epochs.

    Returns
    -------
    list of dict
        Each fold's run record (``run.json``), in the order of ``folds``.

    Raises
    ------
    ValueError
        For no folds, a fold named twice or not in the split, RecDiscNet
        with several folds, or folds of unequal sizes
        (:func:`dmrilib.stack.train_stacked`).
    """
    from dmrilib.dataset import load_prepared
    from dmrilib.stack import StackMember, train_stacked

    folds = [int(f) for f in folds]
    if not folds:
        raise ValueError("run_train_stack: no folds given; name at least one, e.g. [0, 1, 2].")
    if len(set(folds)) != len(folds):
        raise ValueError(f"run_train_stack: folds {folds} name a fold more than once; name each once.")
    if len(folds) == 1:
        return [run_train(profile, model, variant, folds[0], results, threads=threads, progress=progress)]
    _check_variant(profile, model, variant)
    if model != DAE:
        raise ValueError(f"run_train_stack: only {DAE!r} runs train several folds at once, got {model!r}; "
                         "train RecDiscNet one fold at a time (run_train).")
    _set_threads(threads)
    layout = ResultsLayout.of(profile, results)
    prepared = load_prepared(layout.prepared)
    split = _folds(profile, prepared, results)
    wrong = [f for f in folds if not 0 <= f < len(split)]
    if wrong:
        raise ValueError(f"folds {wrong} do not exist: profile {profile.name!r} has {len(split)} folds "
                         f"(0..{len(split) - 1}).")
    members, ids = [], []
    for fold in folds:
        f = split[fold]
        own = list(f.train) + list(f.val)
        ids += [s for s in own if s not in ids]
        members.append(StackMember(train_ids=tuple(f.train), val_ids=tuple(f.val),
                                   out_dir=layout.run(model, variant, fold),
                                   acquisition=prepared.acquisition(own)))  # what run_train records
    idx = prepared.index(ids)
    runs = train_stacked(prepared.attenuation.stored[idx], np.asarray(prepared.brain_mask[idx], dtype=bool), ids,
                         members=members, model=model, variant=variant, model_config=profile.model,
                         train_config=profile.train, progress=progress)
    # Predict while the data are loaded, as run_train does: the evaluate jobs then only evaluate.
    for fold in folds:
        predict_run(profile, model, variant, fold, results, prepared=prepared)
    return runs


def _check_variant(profile: Profile, model: str, variant: str) -> None:
    if model not in MODELS:
        raise ValueError(f"model must be {DAE!r} or {RECDISC!r}, got {model!r}.{did_you_mean(model, MODELS)}")
    known = profile.variants.get(model, ())
    if variant not in known:
        raise ValueError(f"variant {variant!r} is not in profile {profile.name!r} for {model}; known: {list(known)}."
                         f"{did_you_mean(variant, known)}")


def plot_training_log(profile: Profile, model: str, variant: str, fold: int, results: str | Path = "results"):
    """Training and validation loss per epoch of one run (a matplotlib Figure)."""
    import matplotlib.pyplot as plt

    log = pd.read_csv(ResultsLayout.of(profile, results).run_files(model, variant, int(fold)).train_log)
    fig, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
    for col in ("train_loss", "val_loss"):
        if col in log:
            ax.plot(log["epoch"], log[col], marker="o", ms=3, label=col.replace("_", " "))
    ax.set(xlabel="epoch", ylabel="loss", yscale="log", title=f"{model} {variant} fold {fold}")
    ax.legend()
    return fig


# --------------------------------------------------------------------------- evaluation

def _score_maps(profile: Profile, prepared, maps_test: np.ndarray, test_ids: list[str], *, key: dict[str, Any],
                threshold_model: str, healthy: dict[str, float],
                lesions: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Dice rows (every rule) and detection rows (AUROC, AP) of the test maps.

    ``lesions`` (one per test subject) replaces the prepared cohort's exact
    lesion masks, e.g. with the ground-truth pipeline's masks. Scores and
    rules see the regions ``evaluate.threshold_region`` names
    (:func:`dmrilib.metrics.evaluation_regions` of the brain and WM+GM masks).
    """
    from dmrilib import metrics

    cfg = profile.evaluate
    dice_rows, det_rows = [], []
    for i, (subject, j) in enumerate(zip(test_ids, prepared.index(test_ids))):
        truth = np.asarray(prepared.lesion[j] if lesions is None else lesions[i], dtype=bool)
        mask, region = metrics.evaluation_regions(prepared.brain_mask[j], prepared.eval_mask[j],
                                                  cfg.threshold_region)
        for row in metrics.evaluate_map(maps_test[i], truth, mask, model=threshold_model, config=cfg,
                                        healthy_thresholds=healthy, brain_mask=region):
            dice_rows.append({**key, "subject": subject, **row})
        det_rows.append({**key, "subject": subject, **metrics.detection_scores(maps_test[i], truth, mask)})
    return pd.DataFrame(dice_rows), pd.DataFrame(det_rows)


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _evaluate_maps(profile: Profile, prepared, *, model: str, variant: str, fold: int,
                   maps_test: np.ndarray, test_ids: list[str], maps_val: np.ndarray, val_ids: list[str],
                   out_dir: Path, threshold_model: str, extra: dict[str, Any], results: str | Path) -> dict[str, Any]:
    """Evaluate test maps with every rule; healthy-FPR thresholds come from the validation maps.

    Scores against the simulator's exact lesions (``eval-dice.csv``,
    ``eval-auroc.csv``) and, when the ground-truth job has run, also against
    its pipeline masks (``eval-dice-pipeline.csv``, ``eval-auroc-pipeline.csv``).
    """
    from dmrilib import metrics

    cfg = profile.evaluate
    files = RunFiles(out_dir)
    for path, maps in ((files.maps_test, maps_test), (files.maps_val, maps_val)):
        check_finite(path, maps)  # NaN would give AUROC/Dice numbers that mean nothing
    # healthy-FPR thresholds flag a fraction of the validation subjects' voxels of the same evaluation mask
    val_masks = np.stack([metrics.evaluation_regions(prepared.brain_mask[j], prepared.eval_mask[j],
                                                     cfg.threshold_region)[0] for j in prepared.index(val_ids)])
    healthy = metrics.healthy_fpr_thresholds(maps_val, val_masks, cfg.healthy_fprs)
    key = {"model": model, "variant": variant, "fold": int(fold)}
    common = dict(key=key, threshold_model=threshold_model, healthy=healthy)
    # Patients of a BIDS dataset without a lesion mask (bids.missing_lesion: maps_only) have maps, not scores.
    scored = scored_patients(prepared, test_ids)
    keep = [test_ids.index(s) for s in scored]
    maps_test, test_ids = maps_test[keep], scored
    if scored:
        dice, det = _score_maps(profile, prepared, maps_test, test_ids, **common)
    else:
        dice, det = pd.DataFrame(columns=["rule", "dice_post"]), pd.DataFrame(columns=["auroc"])
    _write_csv(files.eval_dice, dice)
    _write_csv(files.eval_auroc, det)
    truth_pipeline = None
    layout = ResultsLayout.of(profile, results)
    groundtruth = layout.read_groundtruth_record()
    if groundtruth is not None and scored:
        pipeline_masks = layout.read_pipeline_masks(test_ids, groundtruth)
        dice_p, det_p = _score_maps(profile, prepared, maps_test, test_ids, lesions=pipeline_masks, **common)
        _write_csv(files.eval_dice_pipeline, dice_p)
        _write_csv(files.eval_auroc_pipeline, det_p)
        truth_pipeline = {
            "auroc_mean": float(det_p["auroc"].mean()),
            "dice_post_mean_by_rule": dice_p.groupby("rule")["dice_post"].mean().round(4).to_dict(),
            "groundtruth_hash": groundtruth["config_hash"],
        }
    record = EvalRecord(
        **key,
        n_test=len(test_ids),
        auroc_mean=float(det["auroc"].mean()) if scored else None,
        healthy_fpr_thresholds=healthy,
        dice_post_mean_by_rule=dice.groupby("rule")["dice_post"].mean().round(4).to_dict() if scored else {},
        evaluation={k: getattr(cfg, k) for k in ("fidelity", "threshold_region", "pool_size", "pool_stride")},
        config_hash=config_hash(profile.evaluate, profile.prepare),
        seed=profile.seed,
        provenance=provenance(),
        truth_pipeline=truth_pipeline,
        **extra,
    )
    return write_record(files.eval_record, record)


def scored_patients(prepared, patients: list[str]) -> list[str]:
    """The patients that have a lesion mask, in the given order (all of them in a simulated cohort).

    A patient of a BIDS dataset without one (``bids.missing_lesion:
    maps_only``, or no masks at all) gets anomaly maps but no scores.
    """
    present = prepared.meta.get("labels_present", {})
    return [s for s in patients if "lesion" in present.get(s, ("lesion",))]


def _checkpoint_id(ckpt: Path) -> dict[str, Any]:
    # The file's sha256, not its size and time: a checkpoint copied in from
    # another run (cp gives it a new time) or restored with its old time is
    # recognised as another file either way. Torch-free and ~0.1 s per 100 MB.
    return {"name": ckpt.name, "sha256": sha256_file(ckpt)}


def _run_identity(profile: Profile, prepared, model: str, variant: str, fold: int, f) -> dict[str, Any]:
    """What a run's maps depend on, computable without torch (the run hash needs ``profile.model``)."""
    return {"model": model, "variant": variant, "fold": int(fold), "train_ids": list(f.train), "val_ids": list(f.val),
            "in_channels": int(prepared.attenuation.shape[1]), "grid": [int(g) for g in prepared.grid],
            "settings": config_hash(profile.seed, profile.sections.get("model") or {},
                                    profile.sections.get("train") or {})}


def predict_run(profile: Profile, model: str, variant: str, fold: int, results: str | Path = "results",
                *, prepared=None, device: str = "auto",
                threads: int = 0) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """Anomaly maps of a trained run: the patients and the fold's validation healthy subjects.

    The maps are stored beside the checkpoint (``maps-test.npy``,
    ``maps-val.npy``, float16, each with a ``.sha256`` sidecar) with a record
    (``maps.json``) of the run, the checkpoint file (its sha256) and the maps'
    sha256. A later call reuses them only while that record matches this run
    and this checkpoint file; maps made by another checkpoint or for another
    run are not used but predicted again. Before predicting, the checkpoint
    must be this run's: its model, variant and config hash (:func:`dmrilib.checkpoint.run_hash`
    of the profile's settings and the fold) are checked. Maps are always
    returned as stored (float16 values), so evaluation gives the same numbers
    whether they were just predicted or read. torch is imported (and
    ``threads`` applied) only when maps must be predicted.

    Returns
    -------
    maps_test, test_ids, maps_val, val_ids

    Raises
    ------
    FileNotFoundError
        If the run has no ``checkpoint-best.pt``.
    dmrilib.checkpoint.CheckpointMismatchError
        If the checkpoint belongs to another run (model, variant or config hash).
    dmrilib.integrity.IntegrityError
        If the checkpoint or a stored map is corrupted (sha256 mismatch) or a
        map holds NaN or infinite values.
    """
    from dmrilib.dataset import load_prepared

    layout = ResultsLayout.of(profile, results)
    if prepared is None:
        prepared = load_prepared(layout.prepared)
    f = _fold(profile, prepared, fold, results)
    files = layout.run_files(model, variant, int(fold))
    out, ckpt = files.folder, files.checkpoint_best
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no trained checkpoint; run the train job for {model}/{variant} fold {fold} first.")
    test_ids, val_ids = prepared.patient_ids(), list(f.val)
    ident = {"run": _run_identity(profile, prepared, model, variant, fold, f), "checkpoint": _checkpoint_id(ckpt),
             "test_ids": test_ids, "val_ids": val_ids}
    record_path = files.maps_record
    paths = (files.maps_test, files.maps_val)
    remedy = f"Delete {out / 'maps*'} and run the evaluate job again to predict them anew."
    if record_path.is_file() and all(p.is_file() for p in paths):
        record = read_record(record_path, MapsRecord)
        if record.identity == ident:
            hashes = record.sha256
            maps = [load_npy(p, sha256=hashes.get(p.name), what_to_do=remedy).astype(np.float32) for p in paths]
            return maps[0], test_ids, maps[1], val_ids
    from dmrilib.scoring import predict_maps
    from dmrilib.checkpoint import load_checkpoint, run_hash

    _set_threads(threads)
    t0 = time.perf_counter()
    expected_hash = run_hash(model, variant, profile.model, profile.train, in_channels=ident["run"]["in_channels"],
                             grid=prepared.grid, train_ids=list(f.train), val_ids=list(f.val))
    net, meta = load_checkpoint(ckpt, expected_hash=expected_hash, expected={"model": model, "variant": variant})
    maps, hashes = [], {}
    for ids, path in zip((test_ids, val_ids), paths):
        m = predict_maps((net, meta), prepared.attenuation.stored[prepared.index(ids)], device=device,
                         subjects=ids).astype(np.float16)
        if not np.isfinite(m).all():
            raise ValueError(f"{ckpt}: predicts NaN or infinite scores for {int((~np.isfinite(m)).sum())} voxels "
                             "(training diverged?). Check log.csv and retrain the run, e.g. with a lower train.lr.")
        hashes[path.name] = save_npy(path, m)
        maps.append(m.astype(np.float32))
    write_record(record_path, MapsRecord(identity=ident, sha256=hashes, checkpoint_config_hash=meta["config_hash"],
                                         checkpoint_epoch=meta.get("epoch"),
                                         predict_time_s=round(time.perf_counter() - t0, 2)))
    return maps[0], test_ids, maps[1], val_ids


def run_evaluate(profile: Profile, model: str, variant: str, fold: int, results: str | Path = "results",
                 *, threads: int = 0, device: str = "auto") -> dict[str, Any]:
    """Predict the anomaly maps of one trained run (or reuse them) and evaluate them.

    Uses :func:`predict_run` (the train job already stores the maps of its
    best checkpoint), then writes ``eval-dice.csv``, ``eval-auroc.csv`` and
    ``eval.json``; healthy-FPR thresholds come from the validation maps.
    """
    from dmrilib.dataset import load_prepared

    _check_variant(profile, model, variant)
    layout = ResultsLayout.of(profile, results)
    prepared = load_prepared(layout.prepared)
    maps_test, test_ids, maps_val, val_ids = predict_run(profile, model, variant, fold, results,
                                                         prepared=prepared, device=device, threads=threads)
    files = layout.run_files(model, variant, int(fold))
    run = read_record(files.run_record, TrainRecord)
    return _evaluate_maps(profile, prepared, model=model, variant=variant, fold=fold,
                          maps_test=maps_test, test_ids=test_ids, maps_val=maps_val, val_ids=val_ids,
                          out_dir=files.folder, threshold_model=model, results=results,
                          extra={"train_config_hash": run.config_hash,
                                 "predict_time_s": read_record(files.maps_record, MapsRecord).predict_time_s})


def run_baseline(profile: Profile, fold: int, results: str | Path = "results") -> dict[str, Any]:
    """Normative FA/MD z-score baseline of one fold, evaluated like the models."""
    from dmrilib.baselines import NormativeBaseline
    from dmrilib.dataset import load_prepared

    layout = ResultsLayout.of(profile, results)
    prepared = load_prepared(layout.prepared)
    f = _fold(profile, prepared, fold, results)
    t0 = time.perf_counter()
    train_idx = prepared.index(list(f.train))
    baseline = NormativeBaseline().fit(np.asarray(prepared.fa[train_idx]), np.asarray(prepared.md[train_idx]),
                                       np.asarray(prepared.brain_mask[train_idx]))
    test_ids, val_ids = prepared.patient_ids(), list(f.val)

    def score(ids):
        idx = prepared.index(ids)
        return np.stack([baseline.score(prepared.fa[i], prepared.md[i]) for i in idx]).astype(np.float32)

    # Stored as float16 like the model maps; evaluate exactly what is stored.
    maps_test, maps_val = (score(ids).astype(np.float16) for ids in (test_ids, val_ids))
    files = layout.run_files(BASELINE, BASELINE_VARIANT, int(fold))
    save_npy(files.maps_test, maps_test)
    save_npy(files.maps_val, maps_val)
    maps_test, maps_val = maps_test.astype(np.float32), maps_val.astype(np.float32)
    return _evaluate_maps(profile, prepared, model=BASELINE, variant=BASELINE_VARIANT, fold=fold,
                          maps_test=maps_test, test_ids=test_ids, maps_val=maps_val, val_ids=val_ids,
                          out_dir=files.folder, threshold_model=BASELINE_VARIANT, results=results,
                          extra={"fit_time_s": round(time.perf_counter() - t0, 2)})


# --------------------------------------------------------------------------- ground truth

def run_groundtruth(profile: Profile, results: str | Path = "results", *, bids_root: str | Path | None = None,
                    threads: int = 0, progress: bool = True) -> pd.DataFrame:
    """The paper's ground-truth pipeline on the cohort's patients, and its error.

    Simulates the segmentation training set (patients outside the cohort),
    trains the U-Net (resumable), segments every patient's T1w/FLAIR,
    registers the T1w to the DWI (ANTs) and carries the mask over; writes to
    ``groundtruth/``: ``segmentation/`` (the U-Net run), ``subjects.csv``
    (per patient: segmentation Dice, registration error in mm, Dice of the
    carried-over mask against the exact lesion, ...), ``timings.csv`` (wall
    seconds per patient and step: kept out of ``subjects.csv`` so that
    identical runs give identical tables), ``lesion-pipeline.npy`` (the masks
    on the network grid, patients in ``groundtruth.json`` order) and
    ``groundtruth.json`` (config hash, seed, provenance, stage timings).

    Parameters
    ----------
    bids_root : path-like, optional
        Real BIDS dataset to read instead of the simulated cohort.
    threads : int
        CPU threads for torch and registration worker processes (0: one).

    Returns
    -------
    pandas.DataFrame
        The per-patient table.
    """
    from dmrilib.dataset import load_prepared
    from dmrilib.groundtruth import (inputs_from_bids, run_groundtruth_cohort, simulate_training_set,
                                     train_segmentation)

    from dmrilib.study import read_study

    layout = ResultsLayout.of(profile, results)
    study = read_study(layout.cohort)
    if study is not None:
        return _groundtruth_of_study(profile, layout, study)
    seg_cfg, reg_cfg = profile.groundtruth, profile.registration
    workers = max(int(threads), 1)
    _set_threads(threads)
    t0 = time.perf_counter()
    training = simulate_training_set(profile.cohort, seg_cfg, n_jobs=workers, progress=progress)
    t_sim = time.perf_counter() - t0
    seg_run = train_segmentation(training.images, training.targets, config=seg_cfg, out_dir=layout.segmentation,
                                 subject_ids=training.subject_ids, progress=progress)
    t_train = time.perf_counter() - t0 - t_sim
    prepared = load_prepared(layout.prepared)
    patients = prepared.patient_ids()
    source = Path(bids_root) if bids_root else layout.cohort
    result = run_groundtruth_cohort(inputs_from_bids(source, patients), layout.segmentation,
                                    seg_config=seg_cfg, reg_config=reg_cfg, n_jobs=workers, progress=progress)
    t_cohort = time.perf_counter() - t0 - t_sim - t_train
    idx = prepared.index(patients)
    on_grid = np.stack([prepared.crops[j].to_grid(result.masks[s]) for s, j in zip(patients, idx)]).astype(np.uint8)
    save_npy(layout.groundtruth_masks, on_grid)
    table = result.table
    _write_csv(layout.groundtruth_subjects, table)
    _write_csv(layout.groundtruth_timings, result.timings)
    write_json_atomic(layout.groundtruth_record, {
        "subjects": patients,
        "config_hash": config_hash(seg_cfg, reg_cfg, profile.sections["cohort"], profile.sections["prepare"]),
        "segmentation_config_hash": seg_run.get("config_hash"),
        "seed": profile.seed,
        "n_training_subjects": len(training.subject_ids),
        "time_s": {"simulate_training_set": round(t_sim, 1), "train_segmentation": round(t_train, 1),
                   "segment_and_register": round(t_cohort, 1)},
        "summary": table.drop(columns=["subject"]).mean(numeric_only=True).round(4).to_dict(),
        "provenance": provenance(),
    })
    return table


def _groundtruth_of_study(profile: Profile, layout: ResultsLayout, study: dict[str, Any]) -> pd.DataFrame:
    """On a BIDS dataset there is no exact truth to score a mask pipeline against.

    The lesion masks are the dataset's own (or, where it has none, the
    U-Net's, carried over when the cohort was staged: ``study.json`` says
    which). The record lists where each patient's mask came from and holds no
    pipeline masks, so evaluation scores against those masks only.
    """
    for stale in (layout.groundtruth_masks, sidecar_path(layout.groundtruth_masks)):  # of an earlier simulated run
        stale.unlink(missing_ok=True)
    table = pd.DataFrame([{k: r.get(k) for k in ("subject", "lesion_source", "lesion_file", "lesion_voxels")}
                          for r in study["subjects"] if r["group"] == "patient"])
    _write_csv(layout.groundtruth_subjects, table)
    write_json_atomic(layout.groundtruth_record, {
        "mode": "bids",
        "subjects": table["subject"].tolist(),
        "lesion_sources": dict(zip(table["subject"], table["lesion_source"])),
        "config_hash": config_hash(profile.bids, profile.registration),
        "seed": profile.seed,
        "provenance": provenance(),
    })
    return table


def pipeline_lesions(profile: Profile, results: str | Path, subjects: list[str]) -> np.ndarray | None:
    """The ground-truth pipeline's masks (network grid) of ``subjects``, or None before that job has run.

    See :meth:`dmrilib.layout.ResultsLayout.read_pipeline_masks`.
    """
    return ResultsLayout.of(profile, results).read_pipeline_masks(subjects)


# --------------------------------------------------------------------------- aggregation

def _collect(profile: Profile, results: str | Path, name: str, *, required: bool = True) -> pd.DataFrame | None:
    """Every run's table ``name`` (a :class:`RunFiles` attribute, e.g. ``eval_dice``), concatenated."""
    layout = ResultsLayout.of(profile, results)
    # Only the profile's runs: after a variant or fold is removed from the
    # profile, its old run folder must not reach the tables.
    runs = [*profile.runs(), *((BASELINE, BASELINE_VARIANT, f) for f in profile.folds)]
    paths = [getattr(layout.run_files(m, v, int(f)), name) for m, v, f in runs]
    frames = [pd.read_csv(p) for p in sorted(paths) if p.is_file()]
    if not frames:
        if not required:
            return None
        raise FileNotFoundError(f"{layout.runs}: no {paths[0].name if paths else name} files; "
                                "run the evaluate jobs first.")
    return pd.concat(frames, ignore_index=True)


def _truth_comparison(dice: pd.DataFrame, det: pd.DataFrame, dice_p: pd.DataFrame,
                      det_p: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice (post-processed, per rule) and AUROC against exact vs pipeline masks, per configuration."""
    run = ["model", "variant", "fold", "subject"]
    d = dice.merge(dice_p, on=run + ["rule"], suffixes=("_exact", "_pipeline"))
    a = det.merge(det_p, on=run, suffixes=("_exact", "_pipeline"))
    out = (d.groupby(["model", "variant", "rule"], sort=False)
           .agg(dice_exact=("dice_post_exact", "mean"), dice_pipeline=("dice_post_pipeline", "mean"),
                n=("subject", "size"))
           .reset_index())
    auroc = (a.groupby(["model", "variant"], sort=False)
             .agg(auroc_exact=("auroc_exact", "mean"), auroc_pipeline=("auroc_pipeline", "mean")).reset_index())
    out = out.merge(auroc, on=["model", "variant"])
    out["dice_change"] = out["dice_pipeline"] - out["dice_exact"]
    out["auroc_change"] = out["auroc_pipeline"] - out["auroc_exact"]
    return out


def run_aggregate(profile: Profile, results: str | Path = "results") -> dict[str, pd.DataFrame]:
    """Build the paper's Tables 1-6 (plus extras) from every evaluated run.

    Means and SDs are taken as ``evaluate.aggregate`` says
    (:func:`dmrilib.metrics.summarise`: per fold then averaged over folds, or
    pooled over patient x fold rows). Writes ``tables/*.csv`` and
    ``tables/summary.json`` and returns the tables.
    """
    from dmrilib import metrics

    layout = ResultsLayout.of(profile, results)
    cfg = profile.evaluate
    dice = _collect(profile, results, "eval_dice")
    det = _collect(profile, results, "eval_auroc")
    models = dice[dice["model"].isin(list(MODELS))]
    tables: dict[str, pd.DataFrame] = {
        "dice_all": dice,
        "auroc_all": det,
        "table1": metrics.table_auroc(det, DAE, config=cfg),
        "table2": metrics.table_auroc(det, RECDISC, config=cfg),
        "auroc_baseline": metrics.table_auroc(det, BASELINE, config=cfg),
    }
    for name, rule in DICE_RULE_TABLES.items():
        tables[name] = metrics.table_dice(models, rule, config=cfg)
    extra_rules = sorted(set(dice["rule"]) - set(DICE_RULE_TABLES.values()))
    def per_rule(frame: pd.DataFrame, rules) -> pd.DataFrame:
        tables_ = [metrics.table_dice(frame, r, config=cfg).assign(rule=r) for r in rules]
        return pd.concat(tables_, ignore_index=True) if tables_ else pd.DataFrame()

    tables["dice_extra_rules"] = per_rule(models, extra_rules)
    tables["dice_baseline"] = per_rule(dice[dice["model"] == BASELINE], sorted(set(dice["rule"])))
    tables["runs"] = _runs_table(profile, results)
    dice_p = _collect(profile, results, "eval_dice_pipeline", required=False)
    det_p = _collect(profile, results, "eval_auroc_pipeline", required=False)
    if dice_p is not None and det_p is not None:
        tables["truth_comparison"] = _truth_comparison(dice, det, dice_p, det_p)
    gt_table = layout.groundtruth_subjects
    if gt_table.is_file():
        gt = pd.read_csv(gt_table)
        # Wall times (written here by older ground-truth jobs) differ between
        # identical runs; they live in groundtruth/timings.csv.
        tables["groundtruth"] = gt.drop(columns=[c for c in gt.columns if c.startswith("seconds_")])
    for name, table in tables.items():
        with atomic_path(layout.table(name)) as tmp:
            table.to_csv(tmp, index=False)
    wilcoxon = {rule: metrics.paired_wilcoxon(models, rule, config=cfg) for rule in DICE_RULE_TABLES.values()}
    write_json_atomic(layout.summary, {
        "profile": profile.name,
        "profile_hash": profile.hash(),
        "seed": profile.seed,
        "tables": sorted(tables),
        # how the tables' mean/sd were taken (per fold then averaged, or pooled) and the rules' region
        "evaluation": {k: getattr(cfg, k) for k in ("fidelity", "threshold_region", "pool_stride", "aggregate")},
        "wilcoxon_best_dae_vs_best_recdisc": wilcoxon,
        "provenance": provenance(),
    })
    return tables


def _profile_argument(profile: Profile) -> str:
    """What to pass as ``-p profile``: the name of a shipped profile, else the path of its file."""
    from dmrilib.config import PROFILES_DIR

    source = Path(profile.source)
    if not source.is_file() or source.resolve() == (PROFILES_DIR / f"{profile.name}.yaml").resolve():
        return profile.name
    return str(source.resolve())


def _runs_table(profile: Profile, results: str | Path) -> pd.DataFrame:
    layout = ResultsLayout.of(profile, results)
    rows = []
    for model, variant, fold in profile.runs():
        files = layout.run_files(model, variant, int(fold))
        run = read_record(files.run_record, TrainRecord) if files.run_record.is_file() else None
        ev = read_record(files.eval_record, EvalRecord) if files.eval_record.is_file() else None
        rows.append({
            "model": model, "variant": variant, "fold": fold,
            **{field: getattr(run, field, None) for field in RUN_TABLE_FIELDS},
            "auroc_mean": getattr(ev, "auroc_mean", None),
            "command": f"papermill notebooks/train.ipynb out.ipynb -p profile {_profile_argument(profile)} "
                       f"-p model {model} -p variant {variant} -p fold {fold}",
        })
    return pd.DataFrame(rows)


def load_tables(profile: Profile | str, results: str | Path = "results") -> dict[str, pd.DataFrame]:
    """Read every table written by :func:`run_aggregate` / :func:`run_followup`."""
    name = profile if isinstance(profile, str) else profile.name
    folder = ResultsLayout.of(name, results).tables
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no tables; run the workflow for profile {name!r} first (make book PROFILE={name}).")
    out = {}
    for p in sorted(folder.glob("*.csv")):
        try:
            out[p.stem] = pd.read_csv(p)
        except pd.errors.EmptyDataError:
            out[p.stem] = pd.DataFrame()
    return out


# --------------------------------------------------------------------------- follow-up

def best_variant(profile: Profile, model: str, results: str | Path = "results") -> str:
    """The variant of ``model`` with the highest mean AUROC (the paper's choice for follow-up)."""
    from dmrilib.metrics import best_auroc_variant

    return best_auroc_variant(pd.read_csv(ResultsLayout.of(profile, results).table("auroc_all")), model)


def run_followup(profile: Profile, results: str | Path = "results", *, model: str = DAE,
                 rule: str = "healthy_fpr_05") -> pd.DataFrame:
    """Follow-up colocalisation per patient for the best ``model`` configuration.

    The paper inspected the best DAE's maps visually; here the map is
    thresholded with an unsupervised rule (default: the 5% healthy-FPR
    threshold of the fold), opened, and the flagged volume outside the
    pre-operative lesion is compared with the follow-up lesion.
    """
    from dmrilib import metrics
    from dmrilib.dataset import load_prepared

    layout = ResultsLayout.of(profile, results)
    prepared = load_prepared(layout.prepared)
    variant = best_variant(profile, model, results)
    rows = []
    for fold in profile.folds:
        files = layout.run_files(model, variant, int(fold))
        # sha256 and finiteness checked: a corrupted map would give wrong colocalisation silently.
        job = "baseline" if model == BASELINE else "evaluate"
        maps = load_npy(files.maps_test, what_to_do=f"Delete {files.folder / 'maps*'} and run the {job} job of "
                        f"{model}/{variant} fold {fold} again.").astype(np.float32)
        dice = pd.read_csv(files.eval_dice)
        thr = dice[dice["rule"] == rule].set_index("subject")["threshold"]
        for i, subject in enumerate(prepared.patient_ids()):
            j = prepared.index([subject])[0]
            info = prepared.participants.iloc[j]
            if str(info.get("followup", "no")) != "yes":
                continue
            res = metrics.followup_colocalisation(
                maps[i], float(thr[subject]), np.asarray(prepared.lesion[j], bool),
                np.asarray(prepared.followup_lesion[j], bool),
                # the region the threshold rules and the opening saw (evaluate.threshold_region)
                metrics.evaluation_regions(prepared.brain_mask[j], prepared.eval_mask[j],
                                           profile.evaluate.threshold_region)[1],
                opening_size=profile.evaluate.opening_size)
            rows.append({"model": model, "variant": variant, "fold": fold, "rule": rule, "subject": subject,
                         "grade": info.get("grade"), "size_class": info.get("size_class"), **res})
    table = pd.DataFrame(rows)
    with atomic_path(layout.table("followup")) as tmp:
        table.to_csv(tmp, index=False)
    return table


# --------------------------------------------------------------------------- figures

def run_figures(profile: Profile, results: str | Path = "results") -> pd.DataFrame:
    """Render every figure to ``figures/*.png`` and list them in ``figures/figures.json``."""
    from dmrilib import figures

    layout = ResultsLayout.of(profile, results)
    records = figures.render_all(profile, layout.root)
    write_json_atomic(layout.figures_record, {
        "profile": profile.name, "profile_hash": profile.hash(), "figures": records, "provenance": provenance(),
    })
    return pd.DataFrame(records)


# --------------------------------------------------------------------------- export

def run_export(profile: Profile, results: str | Path = "results") -> pd.DataFrame:
    """Every patient's anomaly maps on its own DWI grid (a BIDS derivative) and an overlay figure each.

    See :func:`dmrilib.export.export_anomaly_maps`; the workflow runs it on a
    BIDS dataset (``make book BIDS=<root>``).
    """
    from dmrilib.export import export_anomaly_maps

    return export_anomaly_maps(profile, results)
