"""Anomaly maps from trained networks.

* DAE: ``|sum over channels (input - reconstruction)|`` (absolute value after
  the channel sum, which cancels uncorrelated per-channel noise);
* RecDiscNet: ``sigmoid(logits)`` of the discriminative U-Net.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dmrilib._atomic import atomic_path
from dmrilib.models import DAE, RecDiscNet

__all__ = ["anomaly_map", "predict_maps", "predict_dwi"]


def anomaly_map(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Voxelwise anomaly score of a batch.

    Parameters
    ----------
    model : DAE or RecDiscNet
        Used in eval mode (the caller's mode is restored afterwards).
    batch : Tensor, shape (B, C, X, Y, Z)
        Attenuation in [0, 1], on the model's device.

    Returns
    -------
    Tensor, shape (B, X, Y, Z), float32
        Higher means more anomalous; RecDiscNet scores lie in [0, 1].
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(model, DAE):
                rec = model(batch).reconstruction
                return (batch.float() - rec.float()).sum(dim=1).abs()
            if isinstance(model, RecDiscNet):
                return torch.sigmoid(model(batch).logits.float())[:, 0]
    finally:
        model.train(was_training)
    raise TypeError(f"anomaly_map: expected a DAE or RecDiscNet, got {type(model).__name__}.")


def predict_maps(checkpoint_path: str | os.PathLike | tuple[nn.Module, dict[str, Any]], volumes: np.ndarray, *,
                 batch_size: int = 4, device: str = "auto") -> np.ndarray:
    """Anomaly maps of many subjects from a checkpoint.

    Parameters
    ----------
    checkpoint_path : path-like, or (model, meta) from :func:`dmrilib.train.load_checkpoint`
    volumes : ndarray, shape (S, C, X, Y, Z)
        Attenuation on the checkpoint's grid (float32 or a float16 memmap;
        read one batch at a time).
    batch_size : int
    device : {"auto", "cpu", "cuda"}

    Returns
    -------
    ndarray of float32, shape (S, X, Y, Z)
    """
    from dmrilib.train import load_checkpoint, resolve_device

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
    maps = np.empty((volumes.shape[0], *volumes.shape[2:]), dtype=np.float32)
    for start in range(0, volumes.shape[0], batch_size):
        chunk = np.asarray(volumes[start:start + batch_size], dtype=np.float32)
        maps[start:start + len(chunk)] = anomaly_map(net, torch.from_numpy(chunk).to(dev)).cpu().numpy()
    return maps


def predict_dwi(checkpoint_path: str | os.PathLike, dwi_path: str | os.PathLike,
                bval_path: str | os.PathLike | None = None, bvec_path: str | os.PathLike | None = None,
                mask_path: str | os.PathLike | None = None, *, out_path: str | os.PathLike,
                device: str = "auto", b0_threshold: float = 50.0, target_bvalue: float | None = 1000.0,
                bvalue_tolerance: float = 100.0) -> Path:
    """Score a new subject's DWI and write the anomaly map as NIfTI.

    The DWI is read and validated (:func:`dmrilib.io.load_dwi`), turned into
    attenuation (:func:`dmrilib.preprocess.attenuation`), cropped/padded to the
    checkpoint's grid (centred on the brain mask), scored, mapped back onto
    the input grid (zero outside the brain and the crop) and written with the
    input's affine.

    Parameters
    ----------
    checkpoint_path : path-like
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
    b0_threshold, target_bvalue, bvalue_tolerance : float
        Shell selection, passed to :func:`dmrilib.io.load_dwi`.

    Returns
    -------
    Path
        ``out_path``.
    """
    import nibabel as nib

    from dmrilib import io as dio
    from dmrilib import preprocess
    from dmrilib.train import load_checkpoint, resolve_device

    dev = resolve_device(device)
    net, meta = load_checkpoint(checkpoint_path, map_location=dev)
    dwi = dio.load_dwi(dwi_path, bval=bval_path, bvec=bvec_path, b0_threshold=b0_threshold,
                       target_bvalue=target_bvalue, bvalue_tolerance=bvalue_tolerance)
    mask = dio.load_mask(mask_path, dwi) if mask_path is not None else preprocess.brain_mask_from_b0(dwi)
    att = preprocess.attenuation(dwi, mask=mask)  # (X, Y, Z, C) float32 in [0, 1], zero outside the brain
    if att.shape[-1] != int(meta["in_channels"]):
        raise ValueError(f"{dwi_path}: {att.shape[-1]} diffusion-weighted volumes after shell selection, but the "
                         f"checkpoint expects {meta['in_channels']}. Select the matching shell (target_bvalue).")
    crop = preprocess.NetworkGrid(tuple(meta["grid"])).crop_for(mask)
    volume = np.moveaxis(crop.to_grid(att), -1, 0)[None]  # (1, C, X, Y, Z)
    score = predict_maps((net, meta), volume, batch_size=1, device=str(dev))[0]
    score *= crop.to_grid(mask)  # the networks only ever saw brain: report brain only
    out = Path(out_path)
    with atomic_path(out) as tmp:
        nib.save(crop.to_nifti(score.astype(np.float32), dwi.affine), tmp)
    return out
