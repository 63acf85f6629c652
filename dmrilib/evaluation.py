"""Evaluation of anomaly maps stored as NIfTI files against a BIDS cohort's ground truth.

The file front end of :mod:`dmrilib.metrics` (which works on arrays only):
``dmri evaluate`` reads each map and its subject's masks here, checks them
all, and scores them with :func:`dmrilib.metrics.evaluate_map`. Truth files
are found with :func:`dmrilib.io.bids_files`, the package's one BIDS lister.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from dmrilib._atomic import atomic_path
from dmrilib.io import bids_files, bids_name
from dmrilib.metrics import EvalConfig, detection_scores, evaluate_map, evaluation_regions

__all__ = ["evaluate_nifti_maps"]

_MAP_RE = re.compile(r"^sub-(?P<label>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?_.*anomaly.*\.nii\.gz$")


def _truth_file(truth_root: Path, label: str, ses: str | None, desc: str, *, required: bool = True) -> Path | None:
    """The subject's ``desc-<desc>_mask.nii.gz`` under ``derivatives/simulation`` (session folder first)."""
    subject = truth_root / "derivatives" / "simulation" / f"sub-{label}"
    # sessions are optional in BIDS: look in ses-<ses>/dwi first, then in dwi/
    candidates = [subject / f"ses-{ses}" / "dwi"] if ses else []
    candidates.append(subject / "dwi")
    for folder in candidates:
        hits = bids_files(folder, subject=label, desc=desc, suffix="mask", extensions=(".nii.gz",))
        if hits:
            return hits[0]
    if not required:
        return None
    expected = candidates[0] / bids_name({"sub": label, "ses": ses, "space": "dwi", "desc": desc}, "mask", ".nii.gz")
    raise FileNotFoundError(
        f"{expected}: no {desc} mask for the map of sub-{label}. "
        "Check that --truth points at the BIDS root that holds derivatives/simulation/."
    )


def _map_files(maps_dir: Path) -> list[Path]:
    """The maps of a folder, ``sub-<label>[_ses-<ses>]_*anomaly*.nii.gz``, sorted; none is an error."""
    if not maps_dir.is_dir():
        raise FileNotFoundError(f"{maps_dir}: maps folder does not exist.")
    files = sorted(p for p in maps_dir.glob("sub-*.nii.gz") if _MAP_RE.match(p.name))
    if not files:
        raise FileNotFoundError(f"{maps_dir}: no maps named sub-<label>[_ses-<ses>]_*anomaly*.nii.gz.")
    return files


def _truth_paths(path: Path, truth_root: Path, config: EvalConfig) -> tuple[str, dict[str, Path]]:
    """The subject of a map and its truth files (``lesion``, ``wmgm``, and ``brain`` when present)."""
    m = _MAP_RE.match(path.name)
    label, ses = m["label"], m["ses"] or "pre"
    paths = {d: _truth_file(truth_root, label, ses, d) for d in ("lesion", "wmgm")}
    brain_path = _truth_file(truth_root, label, ses, "brain", required=False)
    if brain_path is None and config.threshold_region == "eroded_brain_no_csf":
        raise FileNotFoundError(
            f"{paths['wmgm'].parent}: no desc-brain_mask for the map of sub-{label}; "
            "evaluate.threshold_region 'eroded_brain_no_csf' erodes the brain mask. Add it, "
            "or set evaluate.threshold_region: wmgm (rules and scores inside the wmgm mask)."
        )
    if brain_path is not None:
        paths["brain"] = brain_path
    return f"sub-{label}", paths


def _load_case(path: Path, paths: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """A map with its lesion, WM+GM and (optional) brain masks, checked: one grid, finite where scored."""
    arr = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    truth = np.asarray(nib.load(paths["lesion"]).dataobj) > 0
    mask = np.asarray(nib.load(paths["wmgm"]).dataobj) > 0
    brain = np.asarray(nib.load(paths["brain"]).dataobj) > 0 if "brain" in paths else None
    for d, a in (("lesion", truth), ("wmgm", mask), ("brain", brain)):
        if a is not None and a.shape != arr.shape:
            raise ValueError(f"{path}: map shape {arr.shape} differs from {paths[d]} shape {a.shape}; "
                             "maps must be written on the input (DWI) grid.")
    if not np.isfinite(arr[mask]).all():
        raise ValueError(f"{path}: NaN/inf values inside the WM+GM mask.")
    if not mask.any():
        raise ValueError(f"{paths['wmgm']}: empty evaluation mask.")
    if brain is not None and not np.isfinite(arr[brain]).all():
        raise ValueError(f"{path}: NaN/inf values inside the brain mask {paths['brain']}.")
    return arr, truth, mask, brain


def _score_rows(subject: str, arr: np.ndarray, truth: np.ndarray, mask: np.ndarray, brain: np.ndarray | None, *,
                model: str, config: EvalConfig, variant: str, fold: int | None) -> list[dict]:
    """The table rows of one map: one per threshold rule, with its detection scores."""
    if brain is not None:
        mask, brain = evaluation_regions(brain, mask, config.threshold_region)
    det = detection_scores(arr, truth, mask)
    return [{"model": model, "variant": variant, "fold": fold, "subject": subject, **r, **det}
            for r in evaluate_map(arr, truth, mask, model=model, config=config, brain_mask=brain)]


def evaluate_nifti_maps(
    maps_dir: str | os.PathLike,
    truth_root: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    model: str,
    config: EvalConfig | None = None,
    variant: str = "",
    fold: int | None = None,
) -> Path:
    """Evaluate NIfTI anomaly maps against a BIDS cohort's simulated ground truth.

    Maps are ``<maps_dir>/sub-<label>[_ses-<ses>]_*anomaly*.nii.gz``; truth is
    read from ``<truth_root>/derivatives/simulation/sub-<label>/ses-<ses>/dwi/``
    (``desc-lesion_mask`` and ``desc-wmgm_mask``; ``ses`` defaults to ``pre``;
    a folder without session level, ``sub-<label>/dwi/``, is used when there is
    no session folder). The ``desc-brain_mask`` there and the ``wmgm`` mask
    give the evaluation mask and the region of the rules as
    ``config.threshold_region`` says (:func:`dmrilib.metrics.evaluation_regions`); the brain
    mask is required for ``eroded_brain_no_csf`` (the default) and optional
    otherwise (``brain`` then falls back to the ``wmgm`` mask). Every file is
    read and checked before anything is computed or written.

    Parameters
    ----------
    maps_dir, truth_root, out_path : path-like
        Folder of maps, BIDS root, output CSV.
    model : str
        ``"dae"``, ``"recdisc"`` or ``"normative"``.
    config : EvalConfig, optional
        Evaluation settings.
    variant : str, fold : int, optional
        Written into the table.

    Returns
    -------
    Path
        ``out_path``, a CSV of tidy rows ``model, variant, fold, subject, rule,
        threshold, supervised, dice, dice_post, auroc, ap``.

    Raises
    ------
    FileNotFoundError
        No maps, or a truth file missing (named in the message), including the
        brain mask under ``threshold_region: eroded_brain_no_csf``.
    ValueError
        A map whose shape differs from its truth files, or NaNs in the mask.

    See Also
    --------
    dmrilib.metrics.evaluate_map
    """
    config = config or EvalConfig()
    maps_dir, truth_root = Path(maps_dir), Path(truth_root)
    loaded = []
    for path in _map_files(maps_dir):
        subject, paths = _truth_paths(path, truth_root, config)
        loaded.append((subject, *_load_case(path, paths)))
    rows = [row for subject, arr, truth, mask, brain in loaded
            for row in _score_rows(subject, arr, truth, mask, brain, model=model, config=config, variant=variant,
                                   fold=fold)]
    df = pd.DataFrame(rows)
    with atomic_path(out_path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(out_path)
