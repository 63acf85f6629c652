"""Cross-validation folds, the training loop, checkpoints and resume.

One call of :func:`train_run` trains one (model, variant, fold) and writes a
run folder::

    checkpoint-best.pt   weights of the selected epoch (lowest validation loss, or the last one)
    checkpoint-last.pt   weights + optimiser/scheduler state + log after the last epoch
    log.csv              epoch, train_loss, val_loss, lr, seconds
    run.json             config hash, seed, provenance, best epoch/loss, wall time, device

Killing a run and calling :func:`train_run` again continues after the last
finished epoch. Every random draw of an epoch comes from generators seeded by
``(seed, epoch)``, so a resumed run on CPU ends with exactly the weights of an
uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dmrilib._atomic import atomic_path, write_csv_atomic, write_json_atomic
from dmrilib.config import config_hash, provenance
# Settings and folds are torch-free (dmrilib.crossval): jobs that only read
# them (evaluation, baselines) do not import torch.
from dmrilib.crossval import Fold, TrainConfig, make_folds, read_folds, write_folds
from dmrilib.integrity import IntegrityError
from dmrilib.models import MODELS, ModelConfig, build_model, dae_loss, recdisc_loss
from dmrilib.noise import JoodConfig, add_jood
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

_CHECKPOINT_FORMAT = "dmrilib-checkpoint/1"
#: Payload entry holding the sha256 of the rest of the payload (see :func:`payload_sha256`).
_SHA_KEY = "payload_sha256"
#: TrainConfig fields that change speed, not results: left out of the run hash
#: so a run started on one machine can be resumed on another.
_RUNTIME_FIELDS = ("device", "compile", "num_threads", "checkpoint_every")
_LOG_FIELDS = ("epoch", "train_loss", "val_loss", "lr", "seconds")


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by another configuration than the one asked for."""


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU; use 'auto' or 'cpu'.")
    return torch.device(device)


def run_hash(model: str, variant: str, model_config: ModelConfig, train_config: TrainConfig, *,
             in_channels: int, grid: Sequence[int], train_ids: Sequence[str], val_ids: Sequence[str]) -> str:
    """Config hash of one training run (runtime-only settings excluded)."""
    train = {k: v for k, v in dataclasses.asdict(train_config).items() if k not in _RUNTIME_FIELDS}
    return config_hash({"model": model, "variant": variant, "model_config": model_config, "train": train,
                        "in_channels": int(in_channels), "grid": [int(g) for g in grid],
                        "train_ids": list(train_ids), "val_ids": list(val_ids)})


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived from any printable parts.

    The seed is the SHA-256 of ``repr(parts)``, first 8 bytes read
    little-endian and shifted right by one bit, so it is the same in every
    process and Python session (unlike ``hash``, which is salted per
    process). Each random stream of a run gets its own seed from the run's
    seed and a name, e.g. ``derive_seed(seed, "order", epoch)``.

    Parameters
    ----------
    *parts : Any
        Values whose ``repr`` is stable (ints, strings, tuples of them).

    Returns
    -------
    int
        A seed in ``[0, 2**63)``, accepted by ``torch.manual_seed`` and
        ``numpy.random.default_rng``.

    See Also
    --------
    seeded_generator
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seeded_generator(device: torch.device, *parts: Any) -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``derive_seed(*parts)``.

    Parameters
    ----------
    device : torch.device
        Device the generator draws on (it must match the tensors it fills).
    *parts : Any
        Passed to :func:`derive_seed`.

    Returns
    -------
    torch.Generator

    See Also
    --------
    derive_seed
    """
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))


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


def _digest(obj: Any, h: Any) -> None:
    # Tensors by dtype, shape and raw bytes; containers in a fixed order; other
    # values by type and repr (exact for floats). Tagged so that no two
    # different payloads feed the same byte stream.
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for key in sorted(obj, key=repr):
            h.update(f"K{key!r}:".encode())
            _digest(obj[key], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}:".encode())
        for value in obj:
            _digest(value, h)
    else:
        h.update(f"V{type(obj).__name__}{obj!r}:".encode())


def payload_sha256(payload: dict[str, Any]) -> str:
    """sha256 of a checkpoint payload: every tensor's bytes and every other entry.

    :func:`save_checkpoint` stores it as ``payload_sha256`` and
    :func:`read_checkpoint` recomputes it, so a flipped byte anywhere in the
    weights, optimiser state or metadata is found on read. The hash does not
    depend on the device the tensors are on.
    """
    h = hashlib.sha256()
    _digest({k: v for k, v in payload.items() if k != _SHA_KEY}, h)
    return h.hexdigest()


def _verify_payload(path: Path, payload: dict[str, Any]) -> None:
    recorded = payload.get(_SHA_KEY)
    if recorded is None:
        warnings.warn(f"{path}: carries no payload sha256 (written before dmrilib recorded one), so it cannot "
                      "be checked for corruption. Retrain to get a checked checkpoint.", stacklevel=3)
        return
    actual = payload_sha256(payload)
    if actual != recorded:
        raise IntegrityError(f"{path}: content sha256 {actual[:12]}... does not match the {recorded[:12]}... "
                             "recorded when it was written: the file is corrupted (or was edited). "
                             "Restore it from a copy or retrain the run.")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically with ``torch.save``, with the sha256 of its payload.

    The payload goes to a temporary file beside ``path`` that then replaces
    it (:func:`dmrilib._atomic.atomic_path`), so a run killed while saving
    leaves the previous checkpoint intact. Missing parent folders are created.
    ``payload_sha256`` (:func:`payload_sha256`) is added, and checked by
    :func:`read_checkpoint`.

    Parameters
    ----------
    path : path-like
        Destination, e.g. ``<run>/checkpoint-last.pt``.
    payload : dict
        Plain types and tensors only (``state_dict`` etc.), so that it loads
        with ``torch.load(..., weights_only=True)``; see
        :func:`checkpoint_provenance`.
    """
    payload = {**payload, _SHA_KEY: payload_sha256(payload)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_failure(exc: BaseException) -> str:
    """What ``torch.load(..., weights_only=True)`` found wrong, without its advice.

    torch's message for a refused pickle suggests re-running with
    ``weights_only=False`` (arbitrary code execution for an untrusted file)
    or allow-listing globals; only its finding (e.g. ``Unsupported operand
    110``, ``Trying to load unsupported GLOBAL posix.system ...``) is kept.
    """
    advice = ("weights_only", "Weights only", "trust", "file an issue", "documentation", "safe_globals",
              "two options", "Alternatively")
    sentences = re.split(r"\n+|(?<=\.)\s+", str(exc))
    findings = [re.sub(r"^WeightsUnpickler error:\s*", "", t.strip()) for t in sentences
                if t.strip() and not any(a in t for a in advice)]
    findings = [t.rstrip(".") for t in findings if t]
    return f"{type(exc).__name__}: {findings[0]}" if findings else type(exc).__name__


def read_checkpoint(path: str | os.PathLike, *, expected_format: str, expected_hash: str | None = None,
                    expected: Mapping[str, Any] | None = None, map_location: str | torch.device = "cpu",
                    trainer: str = "the training function") -> dict[str, Any]:
    """Read and check a checkpoint file written by :func:`save_checkpoint` (``weights_only=True``).

    Checks, in order: the file loads, its ``format``, its payload sha256
    (a checkpoint without one, written by an older dmrilib, only warns), the
    ``expected`` entries, then the config hash.

    Parameters
    ----------
    path : path-like
    expected_format : str
        The ``format`` entry the checkpoint must carry (one per kind of network).
    expected_hash : str, optional
        Refuse the checkpoint unless its config hash equals this.
    expected : mapping, optional
        Entries the checkpoint must carry with these values, e.g.
        ``{"model": "dae", "variant": "lsd512-sigmoid"}``.
    map_location : str or torch.device
    trainer : str
        The function that writes such checkpoints, named in the missing-file error.

    Returns
    -------
    dict
        The whole payload (tensors included).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    IntegrityError
        If the file is unreadable (not a checkpoint, truncated, or holding
        objects ``weights_only=True`` refuses) or its content does not match
        its sha256.
    ValueError
        If it is a checkpoint of another kind.
    CheckpointMismatchError
        If an ``expected`` entry or the config hash differ.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint. Train the network first ({trainer}).")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        # Not chained: torch's text advises loading with weights_only=False,
        # which runs any code an untrusted file carries.
        raise IntegrityError(f"{path}: not a readable dmrilib checkpoint: the file is not one, or it is damaged "
                             f"({_load_failure(exc)}). Re-run the training job ({trainer}) to rebuild it.") from None
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        raise ValueError(f"{path}: not a checkpoint of this kind (format {expected_format!r} expected, "
                         f"found {payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}).")
    _verify_payload(path, payload)
    wrong = {k: (payload.get(k), v) for k, v in (expected or {}).items() if payload.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k} {found!r} (this run: {want!r})" for k, (found, want) in wrong.items())
        raise CheckpointMismatchError(
            f"{path}: was written for another run: {detail}. A checkpoint was copied or moved into the "
            "wrong run folder: put the right one back or retrain this run."
        )
    if expected_hash is not None and payload["config_hash"] != expected_hash:
        raise CheckpointMismatchError(
            f"{path}: written by config hash {payload['config_hash']}, expected {expected_hash}. "
            "It belongs to another configuration: choose the matching run folder or retrain."
        )
    return payload


def checkpoint_meta(payload: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint payload without its tensors (weights, optimiser and scheduler state)."""
    return {k: v for k, v in payload.items() if k not in ("state_dict", "optimizer", "scheduler")}


def load_checkpoint(path: str | os.PathLike, *, expected_hash: str | None = None,
                    expected: Mapping[str, Any] | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of a checkpoint (loaded with ``weights_only=True``, sha256 checked).

    Parameters
    ----------
    path : path-like
        ``checkpoint-best.pt`` or ``checkpoint-last.pt`` of a run.
    expected_hash : str, optional
        Refuse the checkpoint unless its config hash equals this.
    expected : mapping, optional
        Entries it must carry, e.g. ``{"model": "dae", "variant": "lsd512-sigmoid"}``.
    map_location : str or torch.device

    Returns
    -------
    model : nn.Module
        In eval mode, on ``map_location``.
    meta : dict
        Everything else in the checkpoint (``model``, ``variant``,
        ``model_config``, ``in_channels``, ``grid``, ``config_hash``, ``seed``,
        ``epoch``, ``acquisition``, ``payload_sha256``, ``provenance``, ...),
        without tensors. ``acquisition`` (None in checkpoints of older
        dmrilib versions) describes the training data; see :func:`train_run`.

    Raises
    ------
    FileNotFoundError, IntegrityError, ValueError, CheckpointMismatchError
        See :func:`read_checkpoint`.
    """
    payload = read_checkpoint(path, expected_format=_CHECKPOINT_FORMAT, expected_hash=expected_hash,
                              expected=expected, map_location=map_location, trainer="dmrilib.train.train_run")
    net = build_model(payload["model"], payload["variant"], ModelConfig.from_meta(payload["model_config"]),
                      payload["in_channels"], grid=payload["grid"])
    net.load_state_dict(payload["state_dict"])
    net.to(map_location).eval()
    return net, checkpoint_meta(payload)


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

    Notes
    -----
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

    Raises
    ------
    ValueError
        For inconsistent inputs; :class:`CheckpointMismatchError` when
        ``out_dir`` holds a run of another configuration.
    """
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
    cfg = train_config
    in_channels, grid = int(volumes.shape[1]), tuple(int(g) for g in volumes.shape[2:])
    divisor = model_config.divisor(model)
    if any(g % divisor for g in grid):
        raise ValueError(f"train_run: grid {grid} is not divisible by {divisor} as {model} with this model "
                         "config needs; change prepare.grid or the model depth/widths.")
    crop = cfg.recdisc_crop if model == RECDISC else None
    if crop is not None and any(c > g or c % divisor for c, g in zip(crop, grid)):
        raise ValueError(f"train_run: train.recdisc_crop {crop} must fit in the grid {grid} and be divisible "
                         f"by {divisor}.")
    chash = run_hash(model, variant, model_config, cfg, in_channels=in_channels, grid=grid,
                     train_ids=train_ids, val_ids=val_ids)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "checkpoint-last.pt", out / "checkpoint-best.pt"

    if cfg.num_threads is not None:
        torch.set_num_threads(int(cfg.num_threads))
    device = resolve_device(cfg.device)
    net = _build(model, variant, model_config, in_channels, grid, cfg.seed)
    jood = JoodConfig.from_train_config(variant, cfg) if model == RECDISC else None
    memory_format = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
    net.to(device=device, memory_format=memory_format)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=device.type == "cuda" or None)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_gamma)

    meta_config = _meta_config(model, variant, model_config, in_channels, grid)
    acquisition = _plain(dict(acquisition)) if acquisition is not None else None
    start_epoch, best_loss, best_epoch, rows, wall = 0, math.inf, -1, [], 0.0
    if last_path.exists():
        # The checked reader: a corrupted resume point would silently continue from bad weights.
        payload = read_checkpoint(last_path, expected_format=_CHECKPOINT_FORMAT, expected_hash=chash,
                                  map_location=device, trainer="train_run")
        net.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        start_epoch = int(payload["epoch"]) + 1
        best_loss, best_epoch = float(payload["best_val_loss"]), int(payload["best_epoch"])
        rows, wall = list(payload["log"]), float(payload["wall_seconds"])

    # Resident data: the fold's subjects go to the device once, in their stored dtype.
    index = {s: i for i, s in enumerate(ids)}
    tr_idx = [index[s] for s in train_ids]
    va_idx = [index[s] for s in val_ids]
    data_tr = torch.from_numpy(np.ascontiguousarray(volumes[tr_idx])).to(device)
    data_va = torch.from_numpy(np.ascontiguousarray(volumes[va_idx])).to(device)
    brain_tr = _bool_rows(brain_masks, tr_idx, device)
    brain_va = _bool_rows(brain_masks, va_idx, device)
    centre_tr = _bool_rows(jood_regions, tr_idx, device) if jood_regions is not None else None
    centre_va = _bool_rows(jood_regions, va_idx, device) if jood_regions is not None else None
    step = _Step(model, net, cfg, jood, device)
    loss_fn = torch.compile(step.loss) if cfg.compile else step.loss

    # Fixed disturbed validation copies: one generator per validation subject id, so
    # the validation loss is comparable across epochs and does not depend on fold order.
    val_batches: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
    for j, sid in enumerate(val_ids):
        clean = data_va[j:j + 1].float()
        if jood is None:
            val_batches.append((clean, None, None))
            continue
        gen = seeded_generator(device, cfg.seed, "val", sid)
        for _ in range(cfg.val_copies):
            disturbed, mask = add_jood(clean, brain_va[j:j + 1], jood, gen, centre_region=_rows(centre_va, j))
            val_batches.append((clean, disturbed, mask))

    copies = cfg.copies_per_subject if model == RECDISC else 1
    n_train = len(tr_idx) * copies
    fixed = model == RECDISC and cfg.jood_copies == "fixed"
    if fixed:
        # Made once per run (and again, identically, on resume); visited in one fixed order.
        dist_tr, mask_tr = _fixed_copies(data_tr, brain_tr, centre_tr, train_ids, copies, jood,  # type: ignore[arg-type]
                                         seed=cfg.seed, device=device)
        fixed_order = torch.randperm(n_train, generator=seeded_generator(torch.device("cpu"), cfg.seed,
                                                                         "copies-order")).to(device)
    elif cfg.shuffle == "fixed":
        # Row 19, code: one order for the whole run. DAE: train_ids as given; RecDiscNet (fresh copies): one
        # seeded shuffle of its passes over the subjects. One host-to-device copy per run.
        once = torch.arange(n_train) if model == DAE else \
            torch.randperm(n_train, generator=seeded_generator(torch.device("cpu"), cfg.seed, "fresh-order"))
        fixed_order = (once % len(tr_idx)).to(device)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs, initial=start_epoch, desc=f"{model} {variant}", unit="epoch")
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        cpu_gen = seeded_generator(torch.device("cpu"), cfg.seed, "order", epoch)
        dev_gen = seeded_generator(device, cfg.seed, "noise", epoch)
        if fixed:
            order = fixed_order  # position in the pool of copies: subject = position // copies
        elif cfg.shuffle == "fixed":
            order = fixed_order  # subject positions in train_ids, the same every epoch
        else:
            # one host-to-device copy per epoch instead of one (blocking) copy per step
            order = (torch.randperm(n_train, generator=cpu_gen) % len(tr_idx)).to(device)
        net.train()
        total = torch.zeros((), device=device)
        for start in range(0, n_train, cfg.batch_size):
            sel = order[start:start + cfg.batch_size]
            clean = data_tr.index_select(0, torch.div(sel, copies, rounding_mode="floor") if fixed else sel).float()
            optimizer.zero_grad(set_to_none=True)
            if model == DAE:
                eps = torch.randn(clean.shape[0], net.lsd, generator=dev_gen, device=device)  # type: ignore[union-attr]
                loss = loss_fn(clean, latent_noise=eps)
            elif fixed:
                disturbed, mask = dist_tr.index_select(0, sel).float(), mask_tr.index_select(0, sel)
                if crop is not None:
                    window, _ = _window(grid, crop, cpu_gen)
                    clean, disturbed, mask = clean[window], disturbed[window], mask[window]
                loss = loss_fn(clean, disturbed=disturbed, patch_mask=mask)
            else:
                brain = brain_tr.index_select(0, sel)
                centre = centre_tr.index_select(0, sel) if centre_tr is not None else None
                grid_centre = None
                if crop is not None:
                    # patches are placed as on the whole volume (centred geometry counts from its centre)
                    window, grid_centre = _window(grid, crop, cpu_gen)
                    clean, brain = clean[window], brain[window]
                    centre = centre[window] if centre is not None else None
                disturbed, mask = add_jood(clean, brain, jood, dev_gen, centre_region=centre,  # type: ignore[arg-type]
                                           grid_centre=grid_centre)
                loss = loss_fn(clean, disturbed=disturbed, patch_mask=mask)
            loss.backward()
            optimizer.step()
            total += loss.detach() * clean.shape[0]
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()

        validate = (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs
        val_loss = math.nan
        if validate:
            net.eval()
            val_total = torch.zeros((), device=device)
            with torch.no_grad():
                for clean, disturbed, mask in val_batches:
                    val_total += loss_fn(clean, disturbed=disturbed, patch_mask=mask)
            val_loss = float(val_total.item()) / len(val_batches)
        train_loss = float(total.item()) / n_train  # the one host sync per epoch
        seconds = time.perf_counter() - t0
        wall += seconds
        rows.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr, "seconds": seconds})

        common = {"format": _CHECKPOINT_FORMAT, **meta_config, "config_hash": chash, "seed": cfg.seed,
                  "epoch": epoch, "val_loss": val_loss, "acquisition": acquisition}
        save_last = (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs
        selected = cfg.selection == "last" or (validate and (val_loss < best_loss or not math.isfinite(best_loss)))
        if save_last or selected:
            state = {k: v.detach().to("cpu") for k, v in net.state_dict().items()}
        if selected:
            best_loss, best_epoch = val_loss, epoch
            save_checkpoint(best_path, {**common, "state_dict": state,
                                        "provenance": checkpoint_provenance(chash, cfg.seed)})
        if save_last:
            save_checkpoint(last_path, {**common, "state_dict": state, "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict(), "best_val_loss": best_loss,
                                        "best_epoch": best_epoch, "log": rows, "wall_seconds": wall,
                                        "provenance": checkpoint_provenance(chash, cfg.seed)})
        write_csv_atomic(out / "log.csv", rows, _LOG_FIELDS)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(train=f"{train_loss:.4g}", val=f"{val_loss:.4g}")
    if bar is not None:
        bar.close()

    record = {
        "model": model, "variant": variant, "config_hash": chash, "seed": cfg.seed,
        "epochs": cfg.epochs, "best_epoch": best_epoch, "best_val_loss": best_loss,
        "wall_seconds": wall, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "train_ids": list(train_ids), "val_ids": list(val_ids),
        "model_config": meta_config["model_config"], "train_config": dataclasses.asdict(cfg),
        "grid": list(grid), "in_channels": in_channels, "acquisition": acquisition,
        "provenance": checkpoint_provenance(chash, cfg.seed),
    }
    write_json_atomic(out / "run.json", record)
    return record


_PROV_CACHE: dict[str, Any] = {}


def checkpoint_provenance(config_hash: str, seed: int) -> dict[str, Any]:
    """:func:`dmrilib.config.provenance` plus a run's config hash and seed, as plain JSON types.

    Checkpoints and ``run.json`` carry this record. Every value is a JSON
    type (anything else is turned into its ``str``), because
    ``torch.load(..., weights_only=True)`` accepts nothing else. The
    environment part is computed once per process.

    Parameters
    ----------
    config_hash : str
        The run's config hash (e.g. from :func:`run_hash`).
    seed : int
        The run's seed.

    Returns
    -------
    dict
        The provenance keys with ``config_hash`` and ``seed`` added.
    """
    if "base" not in _PROV_CACHE:
        _PROV_CACHE["base"] = json.loads(json.dumps(provenance(), default=str))
    return {**_PROV_CACHE["base"], "config_hash": config_hash, "seed": seed}
