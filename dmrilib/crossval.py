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
from dmrilib.fidelity import resolve as resolve_fidelity

__all__ = ["TrainConfig", "Fold", "FOLD_SPLITS", "RUNTIME_FIELDS", "make_folds", "fold_sizes", "fold_stacks",
           "write_folds", "read_folds"]

#: How :func:`make_folds` cuts the subjects: the authors' slices or a seeded shuffle.
FOLD_SPLITS = ("contiguous", "random")
#: TrainConfig fields that change speed, not results: left out of a run's hash
#: (a run started on one machine resumes on another) and of the workflow's
#: stage hash (switching them re-runs nothing).
RUNTIME_FIELDS = ("device", "compile", "compile_mode", "cudnn_benchmark", "stack_folds", "num_threads",
                  "checkpoint_every")
#: ``mode`` values of ``torch.compile`` (``train.compile_mode``).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, folds and runtime settings (profile section ``train``).

    Keys that the article and the authors' code set differently
    (:mod:`dmrilib.fidelity`) default to None and take the value of the side
    named by ``fidelity`` (``code`` or ``paper``); a value given explicitly
    wins. The dataclass holds the resolved values, so every hash and run
    record names what was actually used.

    Parameters
    ----------
    fidelity : {"code", "paper"}
        Whose protocol fills the switched keys left unset: the authors' code
        (default) or the article's text. Set from the profile's top-level
        ``fidelity``.
    epochs : int, optional
        Training epochs. Code: 250 (``config.py``); paper: 500.
    batch_size : int
        Volumes per step (paper: 4).
    lr : float, optional
        Adam learning rate. Code: 1e-3 (``config.py``); paper: not stated, so
        ``paper`` gives the 1e-4 this package used before.
    lr_gamma : float
        ExponentialLR decay per epoch (paper: 0.95).
    n_folds : int
        Folds of the healthy subjects (paper: 7).
    fold_split : {"contiguous", "random"}, optional
        How the healthy subjects are cut into folds (:func:`make_folds`).
        Code: ``contiguous``, consecutive slices of the sorted subject list
        (``config.py``); paper: ``random`` ("7 random subsets"), a seeded
        shuffle.
    copies_per_subject : int
        Disturbed copies of each training subject per epoch (RecDiscNet; paper: 4).
    jood_copies : {"fixed", "fresh"}, optional
        When the training copies are disturbed (RecDiscNet). Code: ``fixed``,
        ``copies_per_subject`` copies of each training subject disturbed once
        per run, shuffled once and visited in that same order every epoch
        (``Dataset.py``, ``Dataloader.py``); paper: silent, so ``fresh`` gives
        this package's earlier behaviour: new disturbances and a new order
        every epoch.
    shuffle : {"fixed", "every_epoch"}, optional
        The order training volumes are visited in. Code: ``fixed``, the same
        order every epoch (``Dataloader.py``: ``shuffle=False``): the DAE
        visits ``train_ids`` in the order given, which :func:`make_folds`
        keeps sorted under ``fold_split="contiguous"`` as the authors'
        sorted subject list; RecDiscNet with ``jood_copies="fresh"`` draws
        one seeded order of its ``copies_per_subject`` passes over the
        subjects once per run and reuses it every epoch (with
        ``jood_copies="fixed"`` the copies always follow their single
        shuffle, whatever this key says). Paper: silent, so ``every_epoch``
        gives this package's earlier behaviour: a new seeded order every
        epoch (DAE, and RecDiscNet with fresh copies).
    val_copies : int, optional
        Fixed disturbed copies of each validation subject (RecDiscNet). Code: 4
        (``Dataset.py``); paper: not stated, so ``paper`` gives the 1 this
        package used before.
    kl_weight : float
        Weight of the KL term of the DAE loss (paper: 1.22e-5).
    kl_reduction : {"sum", "mean"}, optional
        How the DAE's KL term reduces over latent dimensions
        (:func:`dmrilib.models.dae_loss`). Code: ``sum`` (summed over latent
        dimensions, averaged over the batch); paper: ``mean`` (its
        ``1/2 1/n sum_j`` read as a mean over dimensions).
    recon_weight, bce_weight, bce_pos_weight : float
        RecDiscNet loss ``recon_weight * MSE + bce_weight * BCE`` with the
        positive class weighted ``bce_pos_weight`` (authors' code: 5, 1, 20).
    jood_radius : (float, float)
        Ellipsoid size range in voxels (paper: 5 to 11 at 64x80x64); see
        ``jood_geometry`` for what it bounds.
    jood_isotropic : {"per_patch", "per_voxel"}, optional
        The ``isotropic`` JOOD appearance. Code: ``per_patch``, one uniform
        value for the whole patch, the same in every voxel and direction
        (``anomaly_generation.py``); paper: ``per_voxel``, one value per voxel,
        the same in every direction.
    jood_geometry : {"centred", "anywhere"}, optional
        Where JOOD ellipsoids go and how they are shaped. Code: ``centred``,
        an integer half-size in ``jood_radius``, semi-axes half-size x
        U(0.5, 1), axis-aligned, the centre at the grid centre +- an offset in
        ``jood_centre_offset`` per axis and inside the eroded brain without
        CSF (``anomaly_generation.py``); paper: ``anywhere``, semi-axes
        U(``jood_radius``), rotated, the centre anywhere in the brain.
    jood_centre_offset : (float, float)
        Range ``[min, max]`` of the distance, per axis, of a ``centred``
        patch centre from the grid centre, in voxels of the paper's
        64x80x64 grid (authors' code: 4 to 20, with a random sign); how it
        applies to other grids is
        :meth:`dmrilib.noise.JoodConfig.from_train_config`'s. Not a fidelity key.
    jood_uniform_width : float, optional
        Width (max - min) of uniform JOOD noise. Code: 0.24, U(mean - sd,
        mean + sd) (``anomaly_generation.py``); paper: 0.12 (the range "set
        to the standard deviation").
    jood_mix : {"weighted", "thirds"}, optional
        How the ``mix`` appearance picks a patch's noise. Code: ``weighted``,
        isotropic (uniform) 34 %, random 33 %, directional 33 %
        (``anomaly_generation.py``); paper: not detailed, so ``thirds`` gives
        this package's earlier choice (appearance in thirds, normal or
        uniform in halves).
    jood_insertion : {"authors", "replace"}, optional
        How a JOOD patch enters the volume
        (:attr:`dmrilib.noise.JoodConfig.insertion`). Code: ``authors``, a
        positive noise value replaces the signal, a negative one is added to
        it, nothing is clipped, and the training target is the whole
        ellipsoid (``anomaly_generation.py``); paper: silent, so ``replace``
        gives this package's earlier behaviour: the patch replaced by the
        noise clipped to [0, 1], the target the voxels that changed.
    recdisc_crop : (int, int, int) or None
        Train RecDiscNet on random windows of this size instead of whole
        volumes (validation and prediction still use whole volumes). A CPU
        shortcut for small profiles; None (paper) trains on whole volumes.
        The DAE always trains on whole volumes (its latent is tied to the grid).
        With ``jood_copies="fixed"`` the copies are disturbed as whole
        volumes and the window is cut from the clean volume, the disturbed
        copy and the patch mask alike.
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
    compile_mode : {"default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"}
        The ``mode`` of ``torch.compile`` when ``compile`` is true
        (``reduce-overhead`` replays CUDA graphs: fewer kernel launches for
        the fixed-shape training steps on a GPU).
    cudnn_benchmark : bool
        Let cuDNN time its convolution algorithms for each new shape and keep
        the fastest (``torch.backends.cudnn.benchmark``; GPU only, the
        shapes of a run are fixed).
    stack_folds : int
        DAE only: train this many folds of one configuration at once on one
        device as stacked models (:mod:`dmrilib.stack`): the workflow then
        makes one job of each group of folds (folds of one size only:
        :func:`fold_stacks`). 1 (default): one run per job.
    device : {"auto", "cpu", "cuda"}
        ``auto``: CUDA when available.
    num_threads : int or None
        CPU threads for torch (None: leave torch's setting alone).
    seed : int
        Seeds initial weights, shuffling, latent noise and JOOD patches.
    """

    fidelity: Literal["code", "paper"] = "code"
    epochs: int | None = None
    batch_size: int = 4
    lr: float | None = None
    lr_gamma: float = 0.95
    n_folds: int = 7
    fold_split: Literal["contiguous", "random"] | None = None
    copies_per_subject: int = 4
    jood_copies: Literal["fixed", "fresh"] | None = None
    shuffle: Literal["fixed", "every_epoch"] | None = None
    val_copies: int | None = None
    kl_weight: float = 1.22e-5
    kl_reduction: Literal["sum", "mean"] | None = None
    recon_weight: float = 5.0
    bce_weight: float = 1.0
    bce_pos_weight: float = 20.0
    jood_radius: tuple[float, float] = (5.0, 11.0)
    jood_isotropic: Literal["per_patch", "per_voxel"] | None = None
    jood_geometry: Literal["centred", "anywhere"] | None = None
    jood_centre_offset: tuple[float, float] = (4.0, 20.0)
    jood_uniform_width: float | None = None
    jood_mix: Literal["weighted", "thirds"] | None = None
    jood_insertion: Literal["authors", "replace"] | None = None
    recdisc_crop: tuple[int, int, int] | None = None
    selection: Literal["val_loss", "last"] = "val_loss"
    val_every: int = 1
    checkpoint_every: int = 1
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    cudnn_benchmark: bool = False
    stack_folds: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # The switched keys hold the values actually used (and hashed); a key given explicitly wins.
        resolve_fidelity(self, "train")
        for name in ("epochs", "batch_size", "n_folds", "copies_per_subject", "val_copies", "val_every",
                     "checkpoint_every", "stack_folds"):
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
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"train.compile_mode must be one of {list(COMPILE_MODES)}, got {self.compile_mode!r}.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}.")
        if self.num_threads is not None and int(self.num_threads) < 1:
            raise ValueError(f"train.num_threads must be positive or null, got {self.num_threads}.")
        for name, allowed in (("fold_split", FOLD_SPLITS), ("jood_copies", ("fixed", "fresh")),
                              ("kl_reduction", ("sum", "mean")), ("jood_isotropic", ("per_patch", "per_voxel")),
                              ("jood_geometry", ("centred", "anywhere")), ("jood_mix", ("weighted", "thirds")),
                              ("shuffle", ("fixed", "every_epoch")), ("jood_insertion", ("authors", "replace"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"train.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}.")
        if not self.jood_uniform_width > 0:
            raise ValueError(f"train.jood_uniform_width must be positive, got {self.jood_uniform_width}.")
        radius = tuple(float(r) for r in self.jood_radius)
        if len(radius) != 2 or not 0 < radius[0] <= radius[1]:
            raise ValueError(f"train.jood_radius must be [min, max] voxels with 0 < min <= max, got {self.jood_radius}.")
        object.__setattr__(self, "jood_radius", radius)
        offset = tuple(float(r) for r in self.jood_centre_offset)
        if len(offset) != 2 or not 0 <= offset[0] <= offset[1]:
            raise ValueError(f"train.jood_centre_offset must be [min, max] voxels with 0 <= min <= max, "
                             f"got {self.jood_centre_offset}.")
        object.__setattr__(self, "jood_centre_offset", offset)
        if self.recdisc_crop is not None:
            crop = tuple(int(c) for c in self.recdisc_crop)
            if len(crop) != 3 or min(crop) < 1:
                raise ValueError(f"train.recdisc_crop must be null or 3 positive sizes, got {self.recdisc_crop}.")
            object.__setattr__(self, "recdisc_crop", crop)

    def result_settings(self) -> dict[str, Any]:
        """Every setting that decides a run's result: all fields but :data:`RUNTIME_FIELDS`."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_FIELDS}


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: subject ids to train on and to validate on."""

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...]


def make_folds(subject_ids: Sequence[str], n_folds: int, seed: int,
               split: Literal["contiguous", "random"] = "random") -> list[Fold]:
    """Split subjects into ``n_folds`` folds; every subject validates in exactly one.

    Parameters
    ----------
    subject_ids : sequence of str
        The healthy subjects (no duplicates).
    n_folds : int
        Between 2 and the number of subjects.
    seed : int
        Seeds the shuffle of ``split="random"``; unused by ``contiguous``.
    split : {"contiguous", "random"}
        ``contiguous`` (the authors' ``config.py``): the ids sorted and cut
        into ``n_folds`` consecutive near-equal slices; fold 0 validates the
        last slice (their ``run 1``: ``train[24:28]``) and fold ``k >= 1``
        the ``k``-th slice from the start (their ``run k + 1``), and trains
        on the rest in sorted order. ``random`` (the paper's "7 random
        subsets"): the ids shuffled once with
        ``numpy.random.default_rng(seed)`` and cut likewise; within a fold
        the ids keep the order of ``subject_ids``. With 28 subjects and 7
        folds both give 4 validation subjects per fold.

    Returns
    -------
    list of Fold
        In fold order. The patients are every fold's test set and are not
        part of a Fold.
    """
    ids = [str(s) for s in subject_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("make_folds: subject_ids contains duplicates.")
    parts = _validation_parts(len(ids), n_folds, seed, split, caller="make_folds")
    if split == "contiguous":
        ids = sorted(ids)
    folds = []
    for k, part in enumerate(parts):
        val = set(part.tolist())
        folds.append(Fold(k, tuple(s for i, s in enumerate(ids) if i not in val),
                          tuple(s for i, s in enumerate(ids) if i in val)))
    return folds


def _validation_parts(n_subjects: int, n_folds: int, seed: int, split: str, *, caller: str) -> list[np.ndarray]:
    """Positions of each fold's validation subjects (in the sorted ids for ``contiguous``)."""
    if not 2 <= n_folds <= n_subjects:
        raise ValueError(f"{caller}: n_folds must be between 2 and the number of subjects ({n_subjects}), "
                         f"got {n_folds}.")
    if split not in FOLD_SPLITS:
        raise ValueError(f"{caller}: split must be one of {list(FOLD_SPLITS)}, got {split!r}.")
    if split == "contiguous":
        slices = np.array_split(np.arange(n_subjects), n_folds)
        return [slices[-1], *slices[:-1]]
    return np.array_split(np.random.default_rng(seed).permutation(n_subjects), n_folds)


def fold_sizes(n_subjects: int, n_folds: int,
               split: Literal["contiguous", "random"] = "random") -> list[tuple[int, int]]:
    """How many subjects each fold of :func:`make_folds` trains and validates on, without the ids.

    The sizes do not depend on the seed, so the workflow knows them before
    the cohort exists (``train.stack_folds`` stacks only folds of one size).

    Returns
    -------
    list of (int, int)
        ``(n_train, n_val)`` per fold, in fold order.
    """
    n_subjects = int(n_subjects)
    parts = _validation_parts(n_subjects, int(n_folds), 0, split, caller="fold_sizes")
    return [(n_subjects - len(part), len(part)) for part in parts]


def fold_stacks(folds: Sequence[int], sizes: Sequence[tuple[int, int]], stack_folds: int) -> list[list[int]]:
    """Group folds into stacks of at most ``stack_folds`` folds of equal size (``train.stack_folds``).

    Stacked networks (:func:`dmrilib.stack.train_stacked`) step through
    their folds' batches together, so a stack holds only folds with the
    same numbers of training and validation subjects. Folds of each size
    keep the order of ``folds`` and are cut into groups of ``stack_folds``
    (the last group of a size may be smaller); groups are ordered by their
    first fold's place in ``folds``.

    Parameters
    ----------
    folds : sequence of int
        The folds to train (a profile's ``folds``), each once.
    sizes : sequence of (int, int)
        :func:`fold_sizes` of every fold of the split.
    stack_folds : int
        At least 1; 1 makes every fold its own group.

    Examples
    --------
    >>> fold_stacks(range(7), fold_sizes(30, 7), 3)
    [[0, 1], [2, 3, 4], [5, 6]]
    """
    folds = [int(f) for f in folds]
    if int(stack_folds) < 1:
        raise ValueError(f"fold_stacks: stack_folds must be at least 1, got {stack_folds}.")
    if len(set(folds)) != len(folds):
        raise ValueError(f"fold_stacks: folds {folds} name a fold more than once.")
    unknown = [f for f in folds if not 0 <= f < len(sizes)]
    if unknown:
        raise ValueError(f"fold_stacks: folds {unknown} do not exist; the split has {len(sizes)} folds "
                         f"(0..{len(sizes) - 1}).")
    by_size: dict[tuple[int, int], list[int]] = {}
    for fold in folds:
        by_size.setdefault(tuple(sizes[fold]), []).append(fold)
    groups = [same[i:i + int(stack_folds)] for same in by_size.values() for i in range(0, len(same), int(stack_folds))]
    return sorted(groups, key=lambda group: folds.index(group[0]))


def write_folds(folds: Sequence[Fold], path: str | os.PathLike, **extra: Any) -> Path:
    """Write folds as JSON (``{"folds": [{"index", "train", "val"}, ...], **extra}``), atomically."""
    record = {"folds": [dataclasses.asdict(f) for f in folds], **extra}
    return write_json_atomic(path, record)


def read_folds(path: str | os.PathLike) -> list[Fold]:
    """Read folds written by :func:`write_folds`."""
    data = json.loads(Path(path).read_text())
    return [Fold(int(f["index"]), tuple(f["train"]), tuple(f["val"])) for f in data["folds"]]
