"""The training loop of the anomaly models, in named steps, and resume.

One call of :func:`train_run` trains one (model, variant, fold) and writes a
run folder::

    checkpoint-best.pt   weights of the selected epoch (lowest validation loss, or the last one)
    checkpoint-last.pt   weights + optimiser/scheduler state + log after the last epoch
    log.csv              epoch, train_loss, val_loss, lr, epoch_time_s
    run.json             config hash, seed, provenance, best epoch/loss, wall time, device

Killing a run and calling :func:`train_run` again continues after the last
finished epoch. Every random draw of an epoch comes from generators seeded by
``(seed, epoch)``, so a resumed run on CPU ends with exactly the weights of an
uninterrupted one.

Training copies and visiting order
----------------------------------
RecDiscNet's training copies follow ``train_config.jood_copies``:
``fixed`` disturbs ``copies_per_subject`` copies of each training
subject once, before the first epoch, each subject from its own
generator seeded by ``(seed, "copies", subject id)`` (so a copy does not
depend on the fold's order, and a resumed run rebuilds the same ones);
they are kept in the stored dtype of ``volumes`` (float16 stays
float16) with boolean patch masks, shuffled once and visited in that
order every epoch, as the authors' ``Dataset.py`` (copies made when the
dataset is built, one shuffle) and ``Dataloader.py`` (``shuffle=False``)
do. ``fresh`` disturbs every batch anew.

The visiting order follows ``train_config.shuffle`` (fidelity row 19).
``fixed`` (the authors' code, ``Dataloader.py`` with ``shuffle=False``):
the DAE visits ``train_ids`` in the order given every epoch (sorted under
``fold_split="contiguous"``, as the authors' sorted subject list);
RecDiscNet with ``fresh`` copies visits its ``copies_per_subject``
passes over the subjects in one order drawn once per run from a
generator seeded by ``(seed, "fresh-order")``. ``every_epoch``: a new
order every epoch from ``(seed, "order", epoch)`` (this package's
earlier behaviour). RecDiscNet's ``fixed`` copies always follow their
single shuffle, whatever ``shuffle`` says.
Validation always uses ``val_copies`` fixed copies per subject.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dmrilib._atomic import write_csv_atomic
# Checkpoints, devices and seeds live in dmrilib.checkpoint (inference imports
# them from there, not the trainer); re-exported here for older imports.
from dmrilib.checkpoint import (CHECKPOINT_FORMAT, CheckpointMismatchError, checkpoint_meta,
                                checkpoint_provenance, cpu_state, derive_seed, device_record, load_checkpoint,
                                payload_sha256, read_checkpoint, resolve_device, resume, run_hash, save_checkpoint,
                                save_resume_point, seeded_generator)
# Settings and folds are torch-free (dmrilib.crossval): jobs that only read
# them (evaluation, baselines) do not import torch.
from dmrilib.crossval import Fold, TrainConfig, make_folds, read_folds, write_folds
from dmrilib.models import MODELS, ModelConfig, build_model, dae_loss, recdisc_loss
from dmrilib.noise import JoodConfig, add_jood
from dmrilib.records import TrainRecord, write_record
from dmrilib.variants import DAE, RECDISC

__all__ = [
    "TrainConfig",
    "Fold",
    "make_folds",
    "write_folds",
    "read_folds",
    "train_run",
    "load_checkpoint",
    "read_checkpoint",
    "checkpoint_meta",
    "run_hash",
    "resolve_device",
    "CheckpointMismatchError",
    "save_checkpoint",
    "payload_sha256",
    "checkpoint_provenance",
    "derive_seed",
    "seeded_generator",
]

_LOG_FIELDS = ("epoch", "train_loss", "val_loss", "lr", "epoch_time_s")


def _build(model: str, variant: str, model_config: ModelConfig, in_channels: int, grid: Sequence[int],
           seed: int) -> nn.Module:
    # nn.Module initialisers draw from the global RNG; fork it so the caller's state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        return build_model(model, variant, model_config, in_channels, grid=grid)


def _meta_config(model: str, variant: str, model_config: ModelConfig, in_channels: int,
                 grid: Sequence[int]) -> dict[str, Any]:
    return {"model": model, "variant": variant, "model_config": json.loads(json.dumps(dataclasses.asdict(model_config))),
            "in_channels": int(in_channels), "grid": [int(g) for g in grid]}


def _plain(obj: Any) -> Any:
    """numpy scalars/arrays and tuples -> JSON types, so a record loads with ``weights_only=True``."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


class _Step:
    """Loss of one batch for either model (the part ``torch.compile`` may wrap)."""

    def __init__(self, model_name: str, net: nn.Module, config: TrainConfig, jood: JoodConfig | None,
                 device: torch.device) -> None:
        self.model_name = model_name
        self.net = net
        self.config = config
        self.jood = jood
        self.device = device
        self.memory_format = torch.channels_last_3d if config.channels_last else torch.contiguous_format
        self.autocast = config.precision == "bf16"

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format)

    def loss(self, clean: torch.Tensor, *, disturbed: torch.Tensor | None = None,
             patch_mask: torch.Tensor | None = None, latent_noise: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            if self.model_name == DAE:
                out = self.net(self._prep(clean), latent_noise)
                return dae_loss(out, clean, cfg.kl_weight, kl_reduction=cfg.kl_reduction)
            assert disturbed is not None and patch_mask is not None
            out = self.net(self._prep(disturbed))
            return recdisc_loss(out, clean, patch_mask, mse_weight=cfg.recon_weight,
                                bce_weight=cfg.bce_weight, pos_weight=cfg.bce_pos_weight)


def _bool_rows(masks: np.ndarray, rows: Sequence[int], device: torch.device) -> torch.Tensor:
    """Rows of a (S, X, Y, Z) mask array as a bool tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(masks[rows]).astype(bool)).to(device)


def _rows(masks: torch.Tensor | None, j: int) -> torch.Tensor | None:
    return None if masks is None else masks[j:j + 1]


def _window(grid: Sequence[int], crop: Sequence[int],
            generator: torch.Generator) -> tuple[tuple[Any, ...], tuple[int, int, int]]:
    """A random ``crop``-sized window of ``grid`` and the grid centre in the window's coordinates.

    The offsets come from the CPU generator: no device sync.
    """
    offsets = [int(torch.randint(0, g - n + 1, (), generator=generator)) for g, n in zip(grid, crop)]
    window = (Ellipsis, *(slice(o, o + n) for o, n in zip(offsets, crop)))
    centre = tuple(g // 2 - o for g, o in zip(grid, offsets))
    return window, centre  # type: ignore[return-value]


def _fixed_copies(data: torch.Tensor, brain: torch.Tensor, centre: torch.Tensor | None, ids: Sequence[str],
                  copies: int, jood: JoodConfig, *, seed: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``copies`` disturbed copies of every subject, drawn once (``jood_copies="fixed"``).

    Parameters
    ----------
    data : Tensor, shape (N, C, X, Y, Z)
        Clean volumes in their stored dtype (e.g. float16), on ``device``.
    brain, centre : Tensor of bool, shape (N, X, Y, Z)
        ``brain_mask`` and ``centre_region`` of :func:`dmrilib.noise.add_jood`
        (``centre`` may be None).
    ids : sequence of str, length N
        Subject ids: subject ``ids[j]`` draws from a generator seeded by
        ``(seed, "copies", ids[j])``, so its copies do not depend on the
        other subjects or their order.
    copies : int
    jood : JoodConfig
    seed : int
    device : torch.device

    Returns
    -------
    disturbed : Tensor, shape (N * copies, C, X, Y, Z)
        In the dtype of ``data``; row ``j * copies + k`` is copy ``k`` of ``ids[j]``.
    patch_mask : Tensor of bool, shape (N * copies, X, Y, Z)
    """
    n = data.shape[0]
    disturbed = torch.empty((n * copies, *data.shape[1:]), dtype=data.dtype, device=device)
    patch_mask = torch.empty((n * copies, *data.shape[2:]), dtype=torch.bool, device=device)
    for j, sid in enumerate(ids):
        gen = seeded_generator(device, seed, "copies", str(sid))
        for k in range(copies):
            # the stored dtype goes in, so the mask marks exactly what changed in the stored copy
            d, m = add_jood(data[j:j + 1], brain[j:j + 1], jood, gen, centre_region=_rows(centre, j))
            disturbed[j * copies + k] = d[0]
            patch_mask[j * copies + k] = m[0]
    return disturbed, patch_mask


def train_run(volumes: np.ndarray, brain_masks: np.ndarray, subject_ids: Sequence[str], *,
              train_ids: Sequence[str], val_ids: Sequence[str], model: str, variant: str,
              model_config: ModelConfig, train_config: TrainConfig, out_dir: str | os.PathLike,
              acquisition: Mapping[str, Any] | None = None, jood_regions: np.ndarray | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Train one (model, variant, fold) and write its run folder.

    The training copies and visiting order are described in the module docstring.

    Parameters
    ----------
    volumes : ndarray, shape (S, C, X, Y, Z)
        Attenuation in [0, 1] on the network grid (float32, or a float16
        memmap: only the subjects used are read, once).
    brain_masks : ndarray of bool, shape (S, X, Y, Z)
        Brain masks (the ``brain_mask`` of :func:`dmrilib.noise.add_jood`).
    subject_ids : sequence of str, length S
        Ids of the rows of ``volumes``.
    train_ids, val_ids : sequence of str
        Subjects to train on and to select the best epoch with (a fold).
    model : {"dae", "recdisc"}
    variant : str
        ``lsd512-sigmoid`` style for the DAE, JOOD variant for RecDiscNet.
    model_config : ModelConfig
    train_config : TrainConfig
    out_dir : path-like
        Run folder; an existing run of the same configuration is resumed, one
        of another configuration is refused.
    acquisition : mapping, optional
        What the training data look like on the scanner, stored in every
        checkpoint and in ``run.json`` so that :func:`dmrilib.scoring.predict_dwi`
        can refuse data of another geometry or gradient scheme: see
        :meth:`dmrilib.dataset.PreparedCohort.acquisition` (voxel size range,
        orientations, input shapes, network grid, b-value, gradient
        directions in channel order). Not part of the config hash. Without
        it, ``predict_dwi`` refuses the checkpoint.
    jood_regions : ndarray of bool, shape (S, X, Y, Z), optional
        Where JOOD patch centres may lie (RecDiscNet): the ``centre_region``
        of :func:`dmrilib.noise.add_jood`, in the authors' code the brain
        mask eroded by a 3x3x3 cube without CSF
        (:func:`dmrilib.metrics.evaluation_regions` ``eroded_brain_no_csf``).
        None leaves the choice to ``add_jood`` (the brain mask).
    progress : bool
        Show a tqdm progress bar over epochs.

    Returns
    -------
    dict
        The content of ``run.json`` (``train_config`` holds every switched
        key of :mod:`dmrilib.fidelity` as resolved).

    Raises
    ------
    ValueError
        For inconsistent inputs; :class:`CheckpointMismatchError` when
        ``out_dir`` holds a run of another configuration.
    """
    cfg = train_config
    ids, in_channels, grid, crop = _check_inputs(volumes, brain_masks, subject_ids, jood_regions, train_ids=train_ids,
                                                 val_ids=val_ids, model=model, model_config=model_config, cfg=cfg)
    chash = run_hash(model, variant, model_config, cfg, in_channels=in_channels, grid=grid,
                     train_ids=train_ids, val_ids=val_ids)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    device, net, optimizer, scheduler = _setup(model, variant, model_config, cfg, in_channels, grid)
    jood = JoodConfig.from_train_config(variant, cfg) if model == RECDISC else None
    point = resume(out / "checkpoint-last.pt", expected_format=CHECKPOINT_FORMAT, expected_hash=chash, net=net,
                   optimizer=optimizer, scheduler=scheduler, device=device, trainer="train_run")
    best = _Best(float(point.payload.get("best_val_loss", math.inf)), int(point.payload.get("best_epoch", -1)))

    fold = _FoldData.resident(volumes, brain_masks, jood_regions, ids, train_ids, val_ids, device)
    step = _Step(model, net, cfg, jood, device)
    loss_fn = compiled(step.loss, cfg)
    val_batches = _validation_batches(fold, val_ids, jood, cfg, device)
    pool = _TrainingPool.build(model, fold, train_ids, jood, cfg, device)

    meta = {"format": CHECKPOINT_FORMAT, **_meta_config(model, variant, model_config, in_channels, grid),
            "config_hash": chash, "seed": cfg.seed}
    acquisition = _plain(dict(acquisition)) if acquisition is not None else None
    rows, wall = point.log, point.train_time_s
    bar = _progress_bar(progress, cfg.epochs, point.start_epoch, f"{model} {variant}")
    for epoch in range(point.start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        total, lr = _train_epoch(epoch, pool, fold, net, optimizer, scheduler, loss_fn, jood, cfg, grid, crop,
                                 device, model)
        validate = (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs
        val_loss = _validation_loss(net, loss_fn, val_batches, device) if validate else math.nan
        train_loss = float(total.item()) / pool.n_train  # the one host sync per epoch
        seconds = time.perf_counter() - t0
        wall += seconds
        rows.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr, "epoch_time_s": seconds})
        _save_epoch(out, {**meta, "epoch": epoch, "val_loss": val_loss, "acquisition": acquisition}, best, net,
                    optimizer, scheduler, rows, wall, cfg, validate=validate)
        write_csv_atomic(out / "log.csv", rows, _LOG_FIELDS)
        _advance(bar, train=f"{train_loss:.4g}", val=f"{val_loss:.4g}")
    _close(bar)

    return _record(out, meta, cfg, best, wall, device, net, train_ids=train_ids, val_ids=val_ids,
                   acquisition=acquisition)


def compiled(fn: Any, cfg: TrainConfig) -> Any:
    """``fn`` under ``torch.compile`` (``cfg.compile_mode``, fixed shapes) when ``cfg.compile``, else ``fn``.

    With ``reduce-overhead`` (CUDA graphs) every call starts a new step for
    the graph trees (``torch.compiler.cudagraph_mark_step_begin``): the
    caller has used the previous call's outputs by then, and without the
    mark a training loop that calls ``backward`` between calls may find them
    overwritten.
    """
    if not cfg.compile:
        return fn
    fast = torch.compile(fn, mode=cfg.compile_mode, dynamic=False)
    if cfg.compile_mode != "reduce-overhead":
        return fast

    def step(*args: Any, **kwargs: Any) -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        return fast(*args, **kwargs)

    return step


def _setup(model: str, variant: str, model_config: ModelConfig, cfg: TrainConfig, in_channels: int,
           grid: Sequence[int]) -> tuple[torch.device, nn.Module, torch.optim.Optimizer, Any]:
    """Threads, device, the seeded network on it, its Adam optimiser and exponential lr schedule."""
    if cfg.num_threads is not None:
        torch.set_num_threads(int(cfg.num_threads))
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        # cuDNN's algorithm search: a runtime choice (a run's shapes are fixed), global to the process
        torch.backends.cudnn.benchmark = bool(cfg.cudnn_benchmark)
    net = _build(model, variant, model_config, in_channels, grid, cfg.seed)
    net.to(device=device, memory_format=torch.channels_last_3d if cfg.channels_last else torch.contiguous_format)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=device.type == "cuda" or None)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_gamma)
    return device, net, optimizer, scheduler


def _record(out: Path, meta: Mapping[str, Any], cfg: TrainConfig, best: _Best, wall: float, device: torch.device,
            net: nn.Module, *, train_ids: Sequence[str], val_ids: Sequence[str],
            acquisition: dict[str, Any] | None) -> dict[str, Any]:
    """Write and return ``run.json`` of :func:`train_run`."""
    chash = meta["config_hash"]
    record = TrainRecord(
        model=meta["model"], variant=meta["variant"], config_hash=chash, seed=cfg.seed,
        epochs=cfg.epochs, best_epoch=best.epoch, best_val_loss=best.loss,
        train_time_s=wall, **device_record(device, net),
        train_ids=list(train_ids), val_ids=list(val_ids),
        model_config=meta["model_config"], train_config=dataclasses.asdict(cfg),
        grid=list(meta["grid"]), in_channels=meta["in_channels"], acquisition=acquisition,
        provenance=checkpoint_provenance(chash, cfg.seed),
    )
    return write_record(out / "run.json", record)


def _check_inputs(volumes: np.ndarray, brain_masks: np.ndarray, subject_ids: Sequence[str],
                  jood_regions: np.ndarray | None, *, train_ids: Sequence[str], val_ids: Sequence[str], model: str,
                  model_config: ModelConfig, cfg: TrainConfig
                  ) -> tuple[list[str], int, tuple[int, ...], tuple[int, int, int] | None]:
    """Inputs check of :func:`train_run`: ids, channels, grid and RecDiscNet crop, or a ValueError."""
    if model not in MODELS:
        raise ValueError(f"train_run: unknown model {model!r}; choose one of {MODELS}.")
    ids = [str(s) for s in subject_ids]
    if volumes.ndim != 5 or volumes.shape[0] != len(ids):
        raise ValueError(f"train_run: volumes must be (S, C, X, Y, Z) with S = len(subject_ids) = {len(ids)}, "
                         f"got shape {tuple(volumes.shape)}.")
    if tuple(brain_masks.shape) != (volumes.shape[0],) + tuple(volumes.shape[2:]):
        raise ValueError(f"train_run: brain_masks must have shape (S, X, Y, Z) = "
                         f"{(volumes.shape[0],) + tuple(volumes.shape[2:])}, got {tuple(brain_masks.shape)}.")
    if jood_regions is not None and tuple(jood_regions.shape) != tuple(brain_masks.shape):
        raise ValueError(f"train_run: jood_regions must have the shape of brain_masks {tuple(brain_masks.shape)}, "
                         f"got {tuple(jood_regions.shape)}.")
    missing = sorted(set(train_ids) - set(ids) | set(val_ids) - set(ids))
    if missing:
        raise ValueError(f"train_run: ids {missing} are not in subject_ids.")
    if not train_ids or not val_ids:
        raise ValueError("train_run: train_ids and val_ids must both be non-empty.")
    if set(train_ids) & set(val_ids):
        raise ValueError(f"train_run: subjects {sorted(set(train_ids) & set(val_ids))} are in both train and val.")
    in_channels, grid = int(volumes.shape[1]), tuple(int(g) for g in volumes.shape[2:])
    divisor = model_config.divisor(model)
    if any(g % divisor for g in grid):
        raise ValueError(f"train_run: grid {grid} is not divisible by {divisor} as {model} with this model "
                         "config needs; change prepare.grid or the model depth/widths.")
    crop = cfg.recdisc_crop if model == RECDISC else None
    if crop is not None and any(c > g or c % divisor for c, g in zip(crop, grid)):
        raise ValueError(f"train_run: train.recdisc_crop {crop} must fit in the grid {grid} and be divisible "
                         f"by {divisor}.")
    return ids, in_channels, grid, crop


@dataclasses.dataclass
class _Best:
    """The selected epoch so far (``checkpoint-best.pt``)."""

    loss: float
    epoch: int


@dataclasses.dataclass
class _FoldData:
    """The fold's subjects, resident on the device in their stored dtype (masks as bool)."""

    train: torch.Tensor
    val: torch.Tensor
    brain_train: torch.Tensor
    brain_val: torch.Tensor
    centre_train: torch.Tensor | None
    centre_val: torch.Tensor | None

    @classmethod
    def resident(cls, volumes: np.ndarray, brain_masks: np.ndarray, jood_regions: np.ndarray | None,
                 ids: Sequence[str], train_ids: Sequence[str], val_ids: Sequence[str],
                 device: torch.device) -> _FoldData:
        index = {s: i for i, s in enumerate(ids)}
        tr_idx = [index[s] for s in train_ids]
        va_idx = [index[s] for s in val_ids]
        return cls(torch.from_numpy(np.ascontiguousarray(volumes[tr_idx])).to(device),
                   torch.from_numpy(np.ascontiguousarray(volumes[va_idx])).to(device),
                   _bool_rows(brain_masks, tr_idx, device), _bool_rows(brain_masks, va_idx, device),
                   _bool_rows(jood_regions, tr_idx, device) if jood_regions is not None else None,
                   _bool_rows(jood_regions, va_idx, device) if jood_regions is not None else None)


_ValBatch = tuple[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"]


def _validation_batches(fold: _FoldData, val_ids: Sequence[str], jood: JoodConfig | None, cfg: TrainConfig,
                        device: torch.device) -> list[_ValBatch]:
    """Fixed disturbed validation copies: one generator per validation subject id.

    So the validation loss is comparable across epochs and does not depend on fold order.
    """
    batches: list[_ValBatch] = []
    for j, sid in enumerate(val_ids):
        clean = fold.val[j:j + 1].float()
        if jood is None:
            batches.append((clean, None, None))
            continue
        gen = seeded_generator(device, cfg.seed, "val", sid)
        for _ in range(cfg.val_copies):
            disturbed, mask = add_jood(clean, fold.brain_val[j:j + 1], jood, gen,
                                       centre_region=_rows(fold.centre_val, j))
            batches.append((clean, disturbed, mask))
    return batches


@dataclasses.dataclass
class _TrainingPool:
    """What one epoch visits: ``n_train`` positions, in ``fixed_order`` or a new order each epoch.

    With ``fixed`` (RecDiscNet, ``jood_copies="fixed"``) a position indexes
    the pool of disturbed copies (subject = position // copies); otherwise a
    subject position in ``train_ids``.
    """

    n_train: int
    copies: int
    fixed: bool
    fixed_order: torch.Tensor | None = None
    disturbed: torch.Tensor | None = None
    patch_mask: torch.Tensor | None = None

    @classmethod
    def build(cls, model: str, fold: _FoldData, train_ids: Sequence[str], jood: JoodConfig | None,
              cfg: TrainConfig, device: torch.device) -> _TrainingPool:
        n_subjects = fold.train.shape[0]
        copies = cfg.copies_per_subject if model == RECDISC else 1
        pool = cls(n_subjects * copies, copies, model == RECDISC and cfg.jood_copies == "fixed")
        cpu = torch.device("cpu")
        if pool.fixed:
            # Made once per run (and again, identically, on resume); visited in one fixed order.
            pool.disturbed, pool.patch_mask = _fixed_copies(fold.train, fold.brain_train, fold.centre_train,
                                                            train_ids, copies, jood,  # type: ignore[arg-type]
                                                            seed=cfg.seed, device=device)
            pool.fixed_order = torch.randperm(pool.n_train,
                                              generator=seeded_generator(cpu, cfg.seed, "copies-order")).to(device)
        elif cfg.shuffle == "fixed":
            # Row 19, code: one order for the whole run. DAE: train_ids as given; RecDiscNet (fresh copies): one
            # seeded shuffle of its passes over the subjects. One host-to-device copy per run.
            once = torch.arange(pool.n_train) if model == DAE else \
                torch.randperm(pool.n_train, generator=seeded_generator(cpu, cfg.seed, "fresh-order"))
            pool.fixed_order = (once % n_subjects).to(device)
        return pool

    def order(self, cpu_gen: torch.Generator, device: torch.device) -> torch.Tensor:
        """This epoch's visiting order (a fresh one drawn from ``cpu_gen`` unless the order is fixed)."""
        if self.fixed_order is not None:
            return self.fixed_order
        # one host-to-device copy per epoch instead of one (blocking) copy per step
        n_subjects = self.n_train // self.copies
        return (torch.randperm(self.n_train, generator=cpu_gen) % n_subjects).to(device)


def _train_epoch(epoch: int, pool: _TrainingPool, fold: _FoldData, net: nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: Any, loss_fn: Any, jood: JoodConfig | None,
                 cfg: TrainConfig, grid: Sequence[int], crop: Sequence[int] | None, device: torch.device,
                 model: str) -> tuple[torch.Tensor, float]:
    """One epoch of :func:`train_run`: the summed training loss (on the device) and the epoch's lr."""
    cpu_gen = seeded_generator(torch.device("cpu"), cfg.seed, "order", epoch)
    dev_gen = seeded_generator(device, cfg.seed, "noise", epoch)
    order = pool.order(cpu_gen, device)
    net.train()
    total = torch.zeros((), device=device)
    for start in range(0, pool.n_train, cfg.batch_size):
        sel = order[start:start + cfg.batch_size]
        clean = fold.train.index_select(
            0, torch.div(sel, pool.copies, rounding_mode="floor") if pool.fixed else sel).float()
        optimizer.zero_grad(set_to_none=True)
        if model == DAE:
            eps = torch.randn(clean.shape[0], net.lsd, generator=dev_gen, device=device)  # type: ignore[arg-type]
            loss = loss_fn(clean, latent_noise=eps)
        elif pool.fixed:
            disturbed = pool.disturbed.index_select(0, sel).float()  # type: ignore[union-attr]
            mask = pool.patch_mask.index_select(0, sel)  # type: ignore[union-attr]
            if crop is not None:
                window, _ = _window(grid, crop, cpu_gen)
                clean, disturbed, mask = clean[window], disturbed[window], mask[window]
            loss = loss_fn(clean, disturbed=disturbed, patch_mask=mask)
        else:
            loss, clean = _fresh_copy_loss(clean, sel, fold, loss_fn, jood, grid, crop, cpu_gen, dev_gen)
        loss.backward()
        optimizer.step()
        total += loss.detach() * clean.shape[0]
    lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    return total, lr


def _fresh_copy_loss(clean: torch.Tensor, sel: torch.Tensor, fold: _FoldData, loss_fn: Any,
                     jood: JoodConfig | None, grid: Sequence[int], crop: Sequence[int] | None,
                     cpu_gen: torch.Generator, dev_gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """RecDiscNet loss of a batch disturbed anew (``jood_copies="fresh"``), and the clean batch it saw."""
    brain = fold.brain_train.index_select(0, sel)
    centre = fold.centre_train.index_select(0, sel) if fold.centre_train is not None else None
    grid_centre = None
    if crop is not None:
        # patches are placed as on the whole volume (centred geometry counts from its centre)
        window, grid_centre = _window(grid, crop, cpu_gen)
        clean, brain = clean[window], brain[window]
        centre = centre[window] if centre is not None else None
    disturbed, mask = add_jood(clean, brain, jood, dev_gen, centre_region=centre,  # type: ignore[arg-type]
                               grid_centre=grid_centre)
    return loss_fn(clean, disturbed=disturbed, patch_mask=mask), clean


def _validation_loss(net: nn.Module, loss_fn: Any, val_batches: Sequence[_ValBatch], device: torch.device) -> float:
    """Mean loss over the fixed validation batches."""
    net.eval()
    val_total = torch.zeros((), device=device)
    with torch.no_grad():
        for clean, disturbed, mask in val_batches:
            val_total += loss_fn(clean, disturbed=disturbed, patch_mask=mask)
    return float(val_total.item()) / len(val_batches)


def _save_epoch(out: Path, common: dict[str, Any], best: _Best, net: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Any, rows: list[dict[str, Any]], wall: float, cfg: TrainConfig, *,
                validate: bool) -> None:
    """Save the epoch: ``checkpoint-best.pt`` when it is selected (``best`` updated), the resume point when due."""
    epoch, val_loss = common["epoch"], common["val_loss"]
    save_last = (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs
    selected = cfg.selection == "last" or (validate and (val_loss < best.loss or not math.isfinite(best.loss)))
    if save_last or selected:
        state = cpu_state(net)
    if selected:
        best.loss, best.epoch = val_loss, epoch
        save_checkpoint(out / "checkpoint-best.pt", {**common, "state_dict": state,
                                                     "provenance": checkpoint_provenance(common["config_hash"],
                                                                                         cfg.seed)})
    if save_last:
        save_resume_point(out / "checkpoint-last.pt", common, state=state, optimizer=optimizer,
                          scheduler=scheduler, extra={"best_val_loss": best.loss, "best_epoch": best.epoch},
                          log=rows, train_time_s=wall, seed=cfg.seed)


def _progress_bar(progress: bool, epochs: int, start_epoch: int, desc: str) -> Any:
    """A tqdm bar over epochs (None without ``progress``)."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=epochs, initial=start_epoch, desc=desc, unit="epoch")


def _advance(bar: Any, **postfix: str) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix(**postfix)


def _close(bar: Any) -> None:
    if bar is not None:
        bar.close()
