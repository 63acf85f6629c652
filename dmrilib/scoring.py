"""Anomaly maps from trained networks.

* DAE, ``dae_map="mean_normalised"`` (the authors' ``postprocessing.py``):
  ``|mean over channels (input - reconstruction / max reconstruction)|``,
  the maximum taken over the subject's whole reconstruction (all channels
  and voxels); the fixed 0.3 threshold is on this scale.
* DAE, ``dae_map="abs_sum"`` (this package's reading of the paper):
  ``|sum over channels (input - reconstruction)|`` (absolute value after the
  channel sum, which cancels uncorrelated per-channel noise).
* RecDiscNet: ``sigmoid(logits)`` of the discriminative U-Net.

The DAE decodes either its posterior mean or, like the authors' code, a draw
from the posterior (``dae_test_latent="sample"``); the draws come from one
CPU generator per subject (:func:`latent_generator`), so a map does not
depend on the batch size or the device.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn

from dmrilib._atomic import atomic_path
from dmrilib.models import DAE, DAE_MAPS, DAE_TEST_LATENTS, ModelConfig, RecDiscNet

__all__ = ["anomaly_map", "predict_maps", "predict_dwi", "latent_generator"]


def latent_generator(seed: int, subject: Any) -> torch.Generator:
    """The CPU generator of one subject's test-time latent draw.

    Seeded with ``derive_seed(seed, "test_latent", subject)``
    (:func:`dmrilib.checkpoint.derive_seed`): ``seed`` is the checkpoint's run
    seed, ``subject`` any printable key of the subject (its position in
    :func:`predict_maps`' volumes, or its id).
    """
    from dmrilib.checkpoint import derive_seed

    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, "test_latent", subject))


def _latent_noise(generator: torch.Generator | Sequence[torch.Generator], batch: int, lsd: int,
                  device: torch.device) -> torch.Tensor:
    """(B, lsd) standard-normal draws, one ``randn(lsd)`` call per subject (batch-size independent)."""
    gens = [generator] * batch if isinstance(generator, torch.Generator) else list(generator)
    if len(gens) != batch:
        raise ValueError(f"anomaly_map: {len(gens)} generators for a batch of {batch} subjects; pass one per "
                         "subject or a single generator.")
    eps = torch.stack([torch.randn(lsd, generator=g, dtype=torch.float32) for g in gens])
    return eps.to(device)


def anomaly_map(model: nn.Module, batch: torch.Tensor, *,
                dae_map: Literal["mean_normalised", "abs_sum"] = "mean_normalised",
                dae_test_latent: Literal["sample", "mean"] = "sample",
                generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Voxelwise anomaly score of a batch.

    Parameters
    ----------
    model : DAE or RecDiscNet
        Used in eval mode (the caller's mode is restored afterwards).
    batch : Tensor, shape (B, C, X, Y, Z)
        Attenuation in [0, 1], on the model's device.
    dae_map : {"mean_normalised", "abs_sum"}
        DAE only: ``mean_normalised`` (the authors' code)
        ``|mean_c(x - x_hat / max(x_hat))|`` with the maximum over each
        subject's whole reconstruction (left unnormalised when that maximum
        is not positive); ``abs_sum`` (paper) ``|sum_c(x - x_hat)|``.
    dae_test_latent : {"sample", "mean"}
        DAE only: decode a draw ``mu + exp(logvar / 2) * eps`` from the
        posterior (the authors' code) or the mean ``mu`` (paper).
    generator : torch.Generator or sequence of them, optional
        Source of ``eps`` for ``sample`` (required then): one CPU generator
        for the whole batch (each subject in turn draws ``randn(lsd)``, so
        splitting the batch with the same generator gives the same maps),
        or one per subject (:func:`latent_generator`).

    Returns
    -------
    Tensor, shape (B, X, Y, Z), float32
        Higher means more anomalous; RecDiscNet scores lie in [0, 1].
    """
    if dae_map not in DAE_MAPS:
        raise ValueError(f"anomaly_map: dae_map must be one of {list(DAE_MAPS)}, got {dae_map!r}.")
    if dae_test_latent not in DAE_TEST_LATENTS:
        raise ValueError(f"anomaly_map: dae_test_latent must be one of {list(DAE_TEST_LATENTS)}, "
                         f"got {dae_test_latent!r}.")
    if not isinstance(model, (DAE, RecDiscNet)):
        raise TypeError(f"anomaly_map: expected a DAE or RecDiscNet, got {type(model).__name__}.")
    if isinstance(model, DAE) and dae_test_latent == "sample" and generator is None:
        raise ValueError("anomaly_map: dae_test_latent='sample' draws the latent from the posterior and needs a "
                         "generator (e.g. dmrilib.scoring.latent_generator(seed, subject) per subject); pass "
                         "one, or dae_test_latent='mean'.")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(model, RecDiscNet):
                return torch.sigmoid(model(batch).logits.float())[:, 0]
            noise = None
            if dae_test_latent == "sample":
                noise = _latent_noise(generator, batch.shape[0], model.lsd, batch.device)
            rec = model(batch, noise).reconstruction.float()
            x = batch.float()
            if dae_map == "abs_sum":
                return (x - rec).sum(dim=1).abs()
            peak = rec.amax(dim=(1, 2, 3, 4), keepdim=True)
            peak = torch.where(peak > 0, peak, torch.ones_like(peak))
            return (x - rec / peak).mean(dim=1).abs()
    finally:
        model.train(was_training)


def predict_maps(checkpoint_path: str | os.PathLike | tuple[nn.Module, dict[str, Any]], volumes: np.ndarray, *,
                 batch_size: int = 4, device: str = "auto", subjects: Sequence[Any] | None = None) -> np.ndarray:
    """Anomaly maps of many subjects from a checkpoint.

    The DAE map and test-time latent are the checkpoint's
    (``meta["model_config"]``, see :meth:`dmrilib.models.ModelConfig.from_meta`:
    checkpoints older than these switches score with ``abs_sum`` and the
    posterior mean, as they did). Sampled latents come from
    :func:`latent_generator` with the checkpoint's ``seed`` and the
    subject's key, so the maps do not depend on ``batch_size`` or the device.

    Parameters
    ----------
    checkpoint_path : path-like, or (model, meta) from :func:`dmrilib.checkpoint.load_checkpoint`
    volumes : ndarray, shape (S, C, X, Y, Z)
        Attenuation on the checkpoint's grid (float32 or a float16 memmap;
        read one batch at a time).
    batch_size : int
    device : {"auto", "cpu", "cuda"}
    subjects : sequence, optional
        One printable key per volume (e.g. subject ids) that seeds its latent
        draw; default its position ``0..S-1``. Pass ids when the same subject
        appears at different positions in different calls.

    Returns
    -------
    ndarray of float32, shape (S, X, Y, Z)
    """
    from dmrilib.checkpoint import load_checkpoint, resolve_device

    dev = resolve_device(device)
    if isinstance(checkpoint_path, tuple):
        net, meta = checkpoint_path
        net.to(dev)
    else:
        net, meta = load_checkpoint(checkpoint_path, map_location=dev)
    expected = (int(meta["in_channels"]), *(int(g) for g in meta["grid"]))
    if volumes.ndim != 5 or tuple(volumes.shape[1:]) != expected:
        raise ValueError(f"predict_maps: volumes must be (S, {', '.join(map(str, expected))}) to match the "
                         f"checkpoint, got {tuple(volumes.shape)}. Prepare them on the checkpoint's grid.")
    if batch_size < 1:
        raise ValueError(f"predict_maps: batch_size must be positive, got {batch_size}.")
    keys = list(range(volumes.shape[0])) if subjects is None else list(subjects)
    if len(keys) != volumes.shape[0]:
        raise ValueError(f"predict_maps: {len(keys)} subject keys for {volumes.shape[0]} volumes.")
    config = ModelConfig.from_meta(meta["model_config"])
    seed = int(meta.get("seed", 0))
    maps = np.empty((volumes.shape[0], *volumes.shape[2:]), dtype=np.float32)
    for start in range(0, volumes.shape[0], batch_size):
        chunk = np.asarray(volumes[start:start + batch_size], dtype=np.float32)
        gens = [latent_generator(seed, key) for key in keys[start:start + len(chunk)]]
        maps[start:start + len(chunk)] = anomaly_map(
            net, torch.from_numpy(chunk).to(dev), dae_map=config.dae_map,
            dae_test_latent=config.dae_test_latent, generator=gens).cpu().numpy()
    return maps


#: Largest relative difference per axis between the input's voxel size and the training range.
VOXEL_TOLERANCE = 0.05
#: Largest angle (degrees, up to sign) between an input gradient direction and its training direction.
DIRECTION_TOLERANCE_DEG = 5.0
_RESAMPLE_HINT = ("dmri predict does not resample or reorient: bring the DWI (with its mask and b-vectors) to "
                  "the training grid first, e.g. with nilearn.image.resample_img, dipy.align.reslice or "
                  "mrtrix3 mrgrid/mrconvert, then run it again.")


def _mm(values) -> str:
    return " x ".join(f"{float(v):.3g}" for v in values)


def _training_acquisition(checkpoint_path, meta: dict[str, Any], dwi_path) -> dict[str, Any]:
    from dmrilib.checkpoint import CheckpointMismatchError

    acq = meta.get("acquisition")
    if not acq:
        raise CheckpointMismatchError(
            f"{checkpoint_path}: records no training acquisition (voxel size, orientation, gradient directions): "
            f"it was written by an older dmrilib or trained without one, so dmri predict cannot check that "
            f"{Path(dwi_path).name} matches the data it was trained on. Retrain the run with this version "
            "(make book, or dmri train) and use its checkpoint."
        )
    return acq


def _check_geometry(dwi, acq: dict[str, Any], voxel_tolerance: float) -> None:
    import nibabel as nib

    from dmrilib.io import DwiInputError

    lo, hi = np.asarray(acq["voxel_size_min"], float), np.asarray(acq["voxel_size_max"], float)
    voxel = np.asarray(dwi.voxel_size, float)
    if np.any(voxel < lo * (1 - voxel_tolerance)) or np.any(voxel > hi * (1 + voxel_tolerance)):
        trained = _mm(lo) if np.allclose(lo, hi) else f"{_mm(lo)} to {_mm(hi)}"
        raise DwiInputError(
            f"{dwi.path.name}: voxel size {_mm(voxel)} mm, but the checkpoint was trained on {trained} mm "
            f"(tolerance {voxel_tolerance:.0%}): the network would see anatomy at another scale. "
            f"Resample to {_mm(lo)} mm in orientation {acq['orientations'][0]}. {_RESAMPLE_HINT}"
        )
    codes = "".join(nib.aff2axcodes(dwi.affine))
    if codes not in acq["orientations"]:
        raise DwiInputError(
            f"{dwi.path.name}: orientation {codes} (voxel axes from the affine), but the checkpoint was trained "
            f"on {'/'.join(acq['orientations'])}: the network would see the brain flipped or turned. "
            f"Reorient to {acq['orientations'][0]}, and permute/flip the b-vectors with it. {_RESAMPLE_HINT}"
        )


def _resampled_attenuation(dwi, mask: np.ndarray, acq: dict[str, Any], bvalue_tolerance: float) -> np.ndarray:
    """The shell's attenuation resampled to the checkpoint's direction set, as prepare did for training."""
    from dmrilib import preprocess
    from dmrilib.directions import resample_shell, target_directions
    from dmrilib.io import DwiInputError

    dw = ~dwi.is_b0
    bvalue = float(np.mean(dwi.bvals[dw]))
    if abs(bvalue - float(acq["bvalue"])) > bvalue_tolerance:
        raise DwiInputError(
            f"{dwi.bval_path.name}: the scored shell has b = {bvalue:.0f} s/mm^2, but the checkpoint was trained "
            f"on b = {float(acq['bvalue']):.0f}. Select the training shell (target_bvalue) or train on this shell.")
    att = preprocess.attenuation(dwi, mask=mask)
    try:
        out = resample_shell(att, np.asarray(dwi.bvecs, float)[dw], target_directions(acq["directions"]),
                             sh_order=acq.get("sh_order"))
    except ValueError as exc:
        raise DwiInputError(f"{dwi.bvec_path.name}: {exc}") from exc
    return np.clip(out, 0, 1) * mask[..., None]


def _channel_order(dwi, acq: dict[str, Any], direction_tolerance_deg: float, bvalue_tolerance: float) -> np.ndarray:
    """Input channel of each training channel (identity, or a reordering of the same directions)."""
    from scipy.optimize import linear_sum_assignment

    from dmrilib.io import DwiInputError

    dw = ~dwi.is_b0
    vecs = np.asarray(dwi.bvecs, float)[dw]
    n = len(vecs)
    bvalue = float(np.mean(dwi.bvals[dw]))
    if abs(bvalue - float(acq["bvalue"])) > bvalue_tolerance:
        raise DwiInputError(
            f"{dwi.bval_path.name}: the scored shell has b = {bvalue:.0f} s/mm^2, but the checkpoint was trained "
            f"on b = {float(acq['bvalue']):.0f}. Select the training shell (target_bvalue) or train on this shell."
        )
    cos_tol = np.cos(np.radians(direction_tolerance_deg))
    worst: tuple[int, float] | None = None
    for scheme in acq["gradient_schemes"]:
        train = np.asarray(scheme, float)
        if train.shape != vecs.shape:
            continue
        # |cos|: diffusion is antipodally symmetric, so g and -g are the same measurement
        dots = np.abs(vecs @ train.T)
        if np.all(np.diag(dots) >= cos_tol):
            return np.arange(n)
        rows, cols = linear_sum_assignment(-dots)
        matched = dots[rows, cols]
        if np.all(matched >= cos_tol):
            order = np.empty(n, dtype=int)
            order[cols] = rows
            return order
        miss = (int((matched < cos_tol).sum()), float(np.degrees(np.arccos(np.clip(matched.min(), 0, 1)))))
        worst = miss if worst is None or miss < worst else worst
    detail = (f"{worst[0]} of {n} directions have no training direction within {direction_tolerance_deg:g} "
              f"degrees (up to sign; worst {worst[1]:.0f} degrees)" if worst is not None else
              f"{n} directions here, {len(acq['gradient_schemes'][0])} in training")
    raise DwiInputError(
        f"{dwi.bvec_path.name}: the gradient directions differ from the checkpoint's training scheme: {detail}. "
        "Each input channel of the network is one gradient direction, so data of another scheme cannot be "
        "scored. Check that this .bvec belongs to the image (FSL convention: image axes), or train on data "
        "with this scheme."
    )


def _check_brain_fits(dwi, mask: np.ndarray, crop, acq: dict[str, Any], mask_path) -> None:
    from dmrilib.io import DwiInputError

    n_brain = int(mask.sum())
    kept = float(crop.to_grid(mask).sum()) / max(n_brain, 1)
    required = min(0.99, acq.get("brain_fraction_min") or 0.99)
    if kept < required - 1e-9:
        where = Path(mask_path).name if mask_path is not None else f"{dwi.path.name} (brain mask from its b0)"
        raise DwiInputError(
            f"{where}: only {kept:.0%} of the {n_brain}-voxel brain mask fits in the network grid "
            f"{'x'.join(map(str, crop.grid_shape))} (the checkpoint needs {required:.0%}); the rest would be "
            "written as 0, unscored. Check the voxel size and the mask (non-brain blobs in an automatic mask "
            "spread it out: pass a brain mask), or use a checkpoint trained on a larger prepare.grid."
        )


def predict_dwi(checkpoint_path: str | os.PathLike, dwi_path: str | os.PathLike,
                bval_path: str | os.PathLike | None = None, bvec_path: str | os.PathLike | None = None,
                mask_path: str | os.PathLike | None = None, *, out_path: str | os.PathLike,
                device: str = "auto", b0_threshold: float = 50.0, target_bvalue: float | None = None,
                bvalue_tolerance: float = 100.0, voxel_tolerance: float = VOXEL_TOLERANCE,
                direction_tolerance_deg: float = DIRECTION_TOLERANCE_DEG) -> Path:
    """Score a new subject's DWI and write the anomaly map as NIfTI.

    The DWI is read and validated (:func:`dmrilib.io.load_dwi`) and checked
    against the training data recorded in the checkpoint (its
    ``acquisition``, see :meth:`dmrilib.dataset.PreparedCohort.acquisition`):

    * voxel size within ``voxel_tolerance`` (relative, per axis) of the
      training range, and the same orientation (axis codes of the affine,
      e.g. RAS). Nothing is resampled or reoriented: a mismatch is an error
      that says how to resample (nilearn, dipy, mrtrix3);
    * the same shell and gradient directions in the same order, up to sign
      (``g`` and ``-g`` measure the same diffusion) and ``direction_tolerance_deg``.
      The same directions in another order are reordered to the training
      order, so the map does not depend on the order of the volumes in the
      file; other directions are an error;
    * the brain mask fits in the network grid (at least 99% of it, or as
      much as the training subjects' least), since the rest would be
      written as 0 without being scored.

    It is then turned into attenuation (:func:`dmrilib.preprocess.attenuation`),
    cropped/padded to the checkpoint's grid (centred on the brain mask),
    scored as the checkpoint's config says (:func:`predict_maps`; a sampled
    DAE latent is seeded by the run's seed and the DWI's file name), mapped
    back onto the input grid (zero outside the brain) and written with the
    input's affine.

    Parameters
    ----------
    checkpoint_path : path-like
        A checkpoint of :func:`dmrilib.train.train_run` that records its
        training acquisition (older checkpoints are refused: retrain).
    dwi_path : path-like
        4D NIfTI.
    bval_path, bvec_path : path-like, optional
        FSL gradient files (default: beside the image).
    mask_path : path-like, optional
        Brain mask on the DWI grid (default: :func:`dmrilib.preprocess.brain_mask_from_b0`).
        The map is zero outside it.
    out_path : path-like
        Output ``.nii.gz`` (written atomically).
    device : {"auto", "cpu", "cuda"}
    b0_threshold, bvalue_tolerance : float
        Shell selection, passed to :func:`dmrilib.io.load_dwi`.
    target_bvalue : float, optional
        Shell to score; default: the checkpoint's training b-value.
    voxel_tolerance : float
        Relative voxel-size difference accepted per axis (default 5%).
    direction_tolerance_deg : float
        Angle accepted between a gradient direction and its training
        direction, up to sign (default 5 degrees).

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    DwiInputError
        For malformed input and for input of another voxel size,
        orientation, shell or gradient scheme, or a brain that does not
        fit the grid; nothing is written then.
    CheckpointMismatchError
        For a checkpoint without a training acquisition record.
    IntegrityError
        For a corrupted checkpoint.
    """
    from dmrilib import io as dio
    from dmrilib import preprocess
    from dmrilib.checkpoint import load_checkpoint, resolve_device

    dev = resolve_device(device)
    net, meta = load_checkpoint(checkpoint_path, map_location=dev)
    acq = _training_acquisition(checkpoint_path, meta, dwi_path)
    if target_bvalue is None:
        target_bvalue = float(acq["bvalue"])
    dwi = dio.load_dwi(dwi_path, bval=bval_path, bvec=bvec_path, b0_threshold=b0_threshold,
                       target_bvalue=target_bvalue, bvalue_tolerance=bvalue_tolerance)
    _check_geometry(dwi, acq, voxel_tolerance)
    mask = dio.load_mask(mask_path, dwi) if mask_path is not None else preprocess.brain_mask_from_b0(dwi)
    att = _training_channels(dwi, mask, acq, meta["in_channels"], target_bvalue=target_bvalue,
                             direction_tolerance_deg=direction_tolerance_deg, bvalue_tolerance=bvalue_tolerance)
    crop = preprocess.NetworkGrid(tuple(meta["grid"])).crop_for(mask)
    _check_brain_fits(dwi, mask, crop, acq, mask_path)
    score = _brain_score((net, meta), att, mask, crop, device=dev, key=Path(dwi_path).name)
    return _write_map(score, crop, dwi.affine, out_path)


def _training_channels(dwi, mask: np.ndarray, acq: dict[str, Any], in_channels: Any, *, target_bvalue: float,
                       direction_tolerance_deg: float, bvalue_tolerance: float) -> np.ndarray:
    """The shell's attenuation ``(X, Y, Z, C)`` in the checkpoint's channels: resampled, or reordered."""
    from dmrilib import preprocess
    from dmrilib.io import DwiInputError

    if acq.get("directions"):
        # trained on shells resampled to a fixed direction set (prepare.directions): resample this one alike
        att = _resampled_attenuation(dwi, mask, acq, bvalue_tolerance)
    else:
        att = None
    n_dw = int((~dwi.is_b0).sum()) if att is None else att.shape[-1]
    if n_dw != int(in_channels):
        raise DwiInputError(
            f"{dwi.path.name}: {n_dw} diffusion-weighted volumes at b = {target_bvalue:g} after shell selection, "
            f"but the checkpoint expects {in_channels}. Select the matching shell (target_bvalue).")
    if att is None:
        order = _channel_order(dwi, acq, direction_tolerance_deg, bvalue_tolerance)
        att = preprocess.attenuation(dwi, mask=mask)[..., order]  # (X, Y, Z, C) in training channel order
    return att


def _brain_score(checkpoint: tuple[nn.Module, dict[str, Any]], att: np.ndarray, mask: np.ndarray, crop, *,
                 device: torch.device, key: str) -> np.ndarray:
    """The anomaly map on the network grid, zero outside the brain; ``key`` seeds a sampled DAE latent."""
    volume = np.moveaxis(crop.to_grid(att), -1, 0)[None]  # (1, C, X, Y, Z)
    # A sampled DAE latent (dae_test_latent="sample") is seeded by the file name: same file, same map.
    score = predict_maps(checkpoint, volume, batch_size=1, device=str(device), subjects=[key])[0]
    score *= crop.to_grid(mask)  # the networks only ever saw brain: report brain only
    return score


def _write_map(score: np.ndarray, crop, affine: np.ndarray, out_path: str | os.PathLike) -> Path:
    """Write the map back on the input grid with the input's affine (atomically)."""
    import nibabel as nib

    out = Path(out_path)
    with atomic_path(out) as tmp:
        nib.save(crop.to_nifti(score.astype(np.float32), affine), tmp)
    return out
