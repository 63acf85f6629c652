"""Checkpoints, devices and seeds: what training writes and inference reads.

One module owns the checkpoint file format shared by the anomaly models
(:func:`dmrilib.train.train_run`) and the segmentation U-Net
(:func:`dmrilib.groundtruth.train_segmentation`):

- :func:`resolve_device`, :func:`derive_seed`, :func:`seeded_generator`:
  where a run computes and where each of its random streams comes from;
- :func:`save_checkpoint` (atomic, with :func:`payload_sha256`),
  :func:`read_checkpoint` (``torch.load(..., weights_only=True)``, format,
  sha256, expected entries, config hash), :func:`load_checkpoint` (the
  anomaly network rebuilt), :func:`checkpoint_meta`,
  :func:`checkpoint_provenance`, :class:`CheckpointMismatchError`;
- :func:`resume` and :func:`save_resume_point`: the resume point
  (``checkpoint-last.pt``) both training loops read and write, so they
  continue after the last finished epoch the same way (as MONAI keeps its
  checkpoint handlers apart from the trainer's iteration);
- :func:`run_hash`: the config hash of one anomaly-model training run.

Inference (:mod:`dmrilib.scoring`, :mod:`dmrilib.pipeline`'s prediction
path, :mod:`dmrilib.groundtruth`) imports this module, never the trainer.
:mod:`dmrilib.train` re-exports these names for older imports.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import nn

from dmrilib._atomic import atomic_path
from dmrilib.config import config_hash, provenance
from dmrilib.integrity import IntegrityError
from dmrilib.records import LEGACY_LOG_KEYS, upgrade_keys

if TYPE_CHECKING:
    from dmrilib.crossval import TrainConfig
    from dmrilib.models import ModelConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointMismatchError",
    "resolve_device",
    "derive_seed",
    "seeded_generator",
    "run_hash",
    "payload_sha256",
    "save_checkpoint",
    "read_checkpoint",
    "checkpoint_meta",
    "load_checkpoint",
    "checkpoint_provenance",
    "cpu_state",
    "ResumePoint",
    "resume",
    "save_resume_point",
    "device_record",
]

#: ``format`` entry of the anomaly-model checkpoints (:func:`dmrilib.train.train_run`).
CHECKPOINT_FORMAT = "dmrilib-checkpoint/1"
#: Payload entry holding the sha256 of the rest of the payload (see :func:`payload_sha256`).
_SHA_KEY = "payload_sha256"


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
    train = train_config.result_settings()
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
        dmrilib versions) describes the training data; see :func:`dmrilib.train.train_run`.

    Raises
    ------
    FileNotFoundError, IntegrityError, ValueError, CheckpointMismatchError
        See :func:`read_checkpoint`.
    """
    from dmrilib.models import ModelConfig, build_model  # the networks, only when one is rebuilt

    payload = read_checkpoint(path, expected_format=CHECKPOINT_FORMAT, expected_hash=expected_hash,
                              expected=expected, map_location=map_location, trainer="dmrilib.train.train_run")
    net = build_model(payload["model"], payload["variant"], ModelConfig.from_meta(payload["model_config"]),
                      payload["in_channels"], grid=payload["grid"])
    net.load_state_dict(payload["state_dict"])
    net.to(map_location).eval()
    return net, checkpoint_meta(payload)



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


def cpu_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The network's ``state_dict`` detached and copied to the CPU, as checkpoints store it."""
    return {k: v.detach().to("cpu") for k, v in net.state_dict().items()}


@dataclass
class ResumePoint:
    """Where a training loop continues: see :func:`resume`.

    ``payload`` is the whole resume checkpoint (empty for a fresh run), for
    entries only one loop keeps (e.g. ``best_val_loss``).
    """

    start_epoch: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    train_time_s: float = 0.0
    payload: dict[str, Any] = field(default_factory=dict)


def resume(path: str | os.PathLike, *, expected_format: str, expected_hash: str, net: nn.Module,
           optimizer: torch.optim.Optimizer, scheduler: Any, device: torch.device, trainer: str) -> ResumePoint:
    """Load a run's resume point (``checkpoint-last.pt``) into its network, optimiser and scheduler.

    The checked reader (:func:`read_checkpoint`, ``weights_only=True``), not
    a bare ``torch.load``: a corrupted resume point (one flipped byte) would
    otherwise continue silently from bad weights, and one of another
    configuration would continue another run.

    Parameters
    ----------
    path : path-like
        The resume checkpoint; a fresh run when there is no such file.
    expected_format, expected_hash : str
        The checkpoint kind and this run's config hash.
    net, optimizer, scheduler
        Built as for a fresh run; their state is replaced by the checkpoint's.
    device : torch.device
        Where the tensors are loaded.
    trainer : str
        The training function, named in error messages.

    Returns
    -------
    ResumePoint
        The epoch to start from, the log and wall time so far, the payload.

    Raises
    ------
    IntegrityError, ValueError, CheckpointMismatchError
        See :func:`read_checkpoint`.
    """
    path = Path(path)
    if not path.exists():
        return ResumePoint()
    payload = read_checkpoint(path, expected_format=expected_format, expected_hash=expected_hash,
                              map_location=device, trainer=trainer)
    net.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    # a resume point of an older dmrilib keeps its times under legacy keys
    payload = upgrade_keys(payload)
    log = [upgrade_keys(row, LEGACY_LOG_KEYS) for row in payload["log"]]
    return ResumePoint(int(payload["epoch"]) + 1, log, float(payload["train_time_s"]), payload)


def save_resume_point(path: str | os.PathLike, meta: Mapping[str, Any], *, state: Mapping[str, torch.Tensor],
                      optimizer: torch.optim.Optimizer, scheduler: Any, log: Sequence[Mapping[str, Any]],
                      train_time_s: float, seed: int, extra: Mapping[str, Any] | None = None) -> None:
    """Write a run's resume point: weights, optimiser and scheduler state, log and wall time so far.

    The payload is ``meta`` (``format``, ``config_hash``, ``epoch``, ...),
    ``state_dict`` (``state``, e.g. :func:`cpu_state`), ``optimizer``,
    ``scheduler``, ``extra``, ``log``, ``train_time_s`` and
    :func:`checkpoint_provenance`, saved by :func:`save_checkpoint`;
    :func:`resume` reads it back.
    """
    save_checkpoint(path, {**meta, "state_dict": state, "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), **(extra or {}), "log": log,
                           "train_time_s": train_time_s,
                           "provenance": checkpoint_provenance(meta["config_hash"], seed)})


def device_record(device: torch.device, net: nn.Module) -> dict[str, Any]:
    """``device``, ``device_name`` and ``parameters`` entries of a run's ``run.json``."""
    return {"device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "parameters": int(sum(p.numel() for p in net.parameters()))}
