"""Training settings and cross-validation folds: the torch-free part of training.

:mod:`dmrilib.train` re-exports these names; they live here so that jobs
which only need the settings or the folds (evaluation, baselines) do not
import torch.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from dmrilib._atomic import write_json_atomic

__all__ = ["TrainConfig", "Fold", "make_folds", "write_folds", "read_folds"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, folds and runtime settings (profile section ``train``).

    Parameters
    ----------
    epochs : int
        Training epochs (paper: 500).
    batch_size : int
        Volumes per step (paper: 4).
    lr : float
        Adam learning rate. The paper does not state it; 1e-4 is the default.
    lr_gamma : float
        ExponentialLR decay per epoch (paper: 0.95).
    n_folds : int
        Folds of the healthy subjects (paper: 7).
    copies_per_subject : int
        Disturbed copies of each training subject per epoch (RecDiscNet; paper: 4).
    val_copies : int
        Fixed disturbed copies of each validation subject (RecDiscNet).
    kl_weight : float
        Weight of the KL term of the DAE loss (paper: 1.22e-5).
    recon_weight, bce_weight, bce_pos_weight : float
        RecDiscNet loss ``recon_weight * MSE + bce_weight * BCE`` with the
        positive class weighted ``bce_pos_weight`` (authors' code: 5, 1, 20).
    jood_radius : (float, float)
        Ellipsoid semi-axis range in voxels (paper: 5 to 11 at 64x80x64).
    recdisc_crop : (int, int, int) or None
        Train RecDiscNet on random windows of this size instead of whole
        volumes (validation and prediction still use whole volumes). A CPU
        shortcut for small profiles; None (paper) trains on whole volumes.
        The DAE always trains on whole volumes (its latent is tied to the grid).
    selection : {"val_loss", "last"}
        Which epoch's weights become ``checkpoint-best.pt``: the lowest
        validation loss (paper) or the last epoch. With a handful of epochs
        the validation loss of the DAE is unreliable (its BatchNorm running
        statistics lag the weights, which change fast at a high learning
        rate): in the quick profile it picked epoch 0 of lsd32-linear (lesion
        AUROC 0.27) where the last epoch reached 0.95.
    val_every : int
        Compute the validation loss after every this many epochs and after
        the last one (paper: 1). Other epochs log NaN and are not candidates
        for ``selection="val_loss"``. With ``selection="last"`` the loss is
        only a diagnostic, and validating whole volumes each epoch is a
        sizeable part of a short CPU run.
    checkpoint_every : int
        Write ``checkpoint-last.pt`` (weights + optimiser state, the resume
        point) every this many epochs and after the last one. The best
        checkpoint is written whenever the validation loss improves.
    precision : {"fp32", "bf16"}
        ``bf16`` runs forward passes under bfloat16 autocast (losses in fp32).
    channels_last : bool
        Use the ``channels_last_3d`` memory format (fast on GPUs).
    compile : bool
        Wrap the model in ``torch.compile``.
    device : {"auto", "cpu", "cuda"}
        ``auto``: CUDA when available.
    num_threads : int or None
        CPU threads for torch (None: leave torch's setting alone).
    seed : int
        Seeds initial weights, shuffling, latent noise and JOOD patches.
    """

    epochs: int = 500
    batch_size: int = 4
    lr: float = 1e-4
    lr_gamma: float = 0.95
    n_folds: int = 7
    copies_per_subject: int = 4
    val_copies: int = 1
    kl_weight: float = 1.22e-5
    recon_weight: float = 5.0
    bce_weight: float = 1.0
    bce_pos_weight: float = 20.0
    jood_radius: tuple[float, float] = (5.0, 11.0)
    recdisc_crop: tuple[int, int, int] | None = None
    selection: Literal["val_loss", "last"] = "val_loss"
    val_every: int = 1
    checkpoint_every: int = 1
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "n_folds", "copies_per_subject", "val_copies", "val_every",
                     "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"train.{name} must be a positive integer, got {getattr(self, name)}.")
        if self.n_folds < 2:
            raise ValueError(f"train.n_folds must be at least 2 (one fold validates, the rest train), got {self.n_folds}.")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be positive, got {self.lr}.")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"train.lr_gamma must be in (0, 1], got {self.lr_gamma}.")
        for name in ("kl_weight", "recon_weight", "bce_weight", "bce_pos_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be non-negative, got {getattr(self, name)}.")
        if self.selection not in ("val_loss", "last"):
            raise ValueError(f"train.selection must be 'val_loss' or 'last', got {self.selection!r}.")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"train.precision must be 'fp32' or 'bf16', got {self.precision!r}.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}.")
        if self.num_threads is not None and int(self.num_threads) < 1:
            raise ValueError(f"train.num_threads must be positive or null, got {self.num_threads}.")
        radius = tuple(float(r) for r in self.jood_radius)
        if len(radius) != 2 or not 0 < radius[0] <= radius[1]:
            raise ValueError(f"train.jood_radius must be [min, max] voxels with 0 < min <= max, got {self.jood_radius}.")
        object.__setattr__(self, "jood_radius", radius)
        if self.recdisc_crop is not None:
            crop = tuple(int(c) for c in self.recdisc_crop)
            if len(crop) != 3 or min(crop) < 1:
                raise ValueError(f"train.recdisc_crop must be null or 3 positive sizes, got {self.recdisc_crop}.")
            object.__setattr__(self, "recdisc_crop", crop)


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: subject ids to train on and to validate on."""

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...]


def make_folds(subject_ids: Sequence[str], n_folds: int, seed: int) -> list[Fold]:
    """Split subjects into ``n_folds`` folds, deterministically from ``seed``.

    Subjects are shuffled once with ``numpy.random.default_rng(seed)`` and
    cut into ``n_folds`` near-equal validation groups (28 subjects, 7 folds:
    4 each); every subject validates in exactly one fold. Within a fold the ids
    keep the order of ``subject_ids``.

    Returns
    -------
    list of Fold
    """
    ids = [str(s) for s in subject_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("make_folds: subject_ids contains duplicates.")
    if not 2 <= n_folds <= len(ids):
        raise ValueError(f"make_folds: n_folds must be between 2 and the number of subjects ({len(ids)}), "
                         f"got {n_folds}.")
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = []
    for k, part in enumerate(np.array_split(order, n_folds)):
        val = set(part.tolist())
        folds.append(Fold(k, tuple(s for i, s in enumerate(ids) if i not in val),
                          tuple(s for i, s in enumerate(ids) if i in val)))
    return folds


def write_folds(folds: Sequence[Fold], path: str | os.PathLike, **extra: Any) -> Path:
    """Write folds as JSON (``{"folds": [{"index", "train", "val"}, ...], **extra}``), atomically."""
    record = {"folds": [dataclasses.asdict(f) for f in folds], **extra}
    return write_json_atomic(path, record)


def read_folds(path: str | os.PathLike) -> list[Fold]:
    """Read folds written by :func:`write_folds`."""
    data = json.loads(Path(path).read_text())
    return [Fold(int(f["index"]), tuple(f["train"]), tuple(f["val"])) for f in data["folds"]]
