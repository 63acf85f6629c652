"""Run records: the JSON files the jobs write beside their outputs, with one key set each.

A job's record says what it did, from which configuration, how long it took
and on what device. Before this module, the writers and the readers spelled
the keys themselves and drifted apart (``wall_seconds`` in ``run.json``,
``train_time_s`` in ``runs.csv``, ``seconds_segment`` in the ground truth's
timings), and a renamed key silently became an empty column. Now each
record is a frozen dataclass: the writer builds it (an unknown or missing
field is a ``TypeError`` at the writer), the reader gets it back checked,
and every duration is in seconds under a key ending in :data:`TIME_SUFFIX`.

- :class:`TrainRecord`: ``run.json`` of a trained run (:func:`dmrilib.train.train_run`);
- :class:`MapsRecord`: ``maps.json`` of a run's stored anomaly maps (:func:`dmrilib.pipeline.predict_run`);
- :class:`EvalRecord`: ``eval.json`` of an evaluated run (the evaluate and baseline jobs);
- :class:`SegmentationRecord`: ``run.json`` of the ground truth's U-Net
  (:func:`dmrilib.groundtruth.segmentation.train_segmentation`).

Where each file lives is :mod:`dmrilib.layout`'s business.
The module is torch-free, so the book and the pipeline read records
without importing the trainers.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, TypeVar

from dmrilib._atomic import write_json_atomic

__all__ = [
    "TIME_SUFFIX",
    "EvalRecord",
    "MapsRecord",
    "RecordError",
    "SegmentationRecord",
    "TrainRecord",
    "read_record",
    "time_key",
    "LEGACY_KEYS",
    "LEGACY_LOG_KEYS",
    "LEGACY_STUDY_KEYS",
    "upgrade_keys",
    "write_record",
]

#: Every duration a job records is in seconds, under a key that ends so.
TIME_SUFFIX = "_time_s"

#: Keys of records and resume checkpoints written before the key set was unified -> their key now.
LEGACY_KEYS = {"wall_seconds": "train_time_s"}

#: Likewise for the rows of a training log (``log.csv``, and the log a resume checkpoint carries).
LEGACY_LOG_KEYS = {"seconds": "epoch_time_s"}

#: Likewise for a staged BIDS study's ``study.json`` and its subjects' entries.
LEGACY_STUDY_KEYS = {"seconds": "stage_time_s", "registration_seconds": "register_time_s"}


class RecordError(ValueError):
    """A run record that cannot be read: not JSON, or not the fields its kind has."""


def time_key(what: str) -> str:
    """The key of a duration: ``time_key("train") == "train_time_s"``.

    Parameters
    ----------
    what : str
        The step timed, in snake_case (``"train"``, ``"predict"``, ``"segment"``).

    Returns
    -------
    str
    """
    if not what or not what.replace("_", "").isalnum() or what != what.lower():
        raise ValueError(f"time_key: {what!r} is not a snake_case step name.")
    return f"{what}{TIME_SUFFIX}"


@dataclass(frozen=True)
class TrainRecord:
    """``run.json`` of one trained run (:func:`dmrilib.train.train_run`).

    ``tables/runs.csv`` takes its columns from these fields by name
    (:data:`RUN_TABLE_FIELDS`).
    """

    model: str
    variant: str
    config_hash: str
    seed: int
    epochs: int
    best_epoch: int
    best_val_loss: float
    train_time_s: float
    device: str
    device_name: str
    parameters: int
    train_ids: list[str]
    val_ids: list[str]
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    grid: list[int]
    in_channels: int
    acquisition: dict[str, Any] | None
    provenance: dict[str, Any]


#: The fields of :class:`TrainRecord` that ``tables/runs.csv`` shows, in its column order.
RUN_TABLE_FIELDS = ("config_hash", "seed", "epochs", "best_epoch", "best_val_loss", "train_time_s", "device",
                    "parameters")


@dataclass(frozen=True)
class SegmentationRecord:
    """``run.json`` of the ground-truth segmentation U-Net (:func:`~dmrilib.groundtruth.segmentation.train_segmentation`)."""

    config_hash: str
    seed: int
    epochs: int
    final_train_loss: float
    train_time_s: float
    device: str
    device_name: str
    parameters: int
    subject_ids: list[str]
    grid: list[int]
    segmentation_config: dict[str, Any]
    checkpoint: str
    provenance: dict[str, Any]


@dataclass(frozen=True)
class MapsRecord:
    """``maps.json``: which checkpoint and subjects the stored anomaly maps come from.

    ``identity`` holds the run's identity, the checkpoint's and the test and
    validation subject ids; a stored map is reused only when it matches.
    """

    identity: dict[str, Any]
    sha256: dict[str, str]
    checkpoint_config_hash: str
    checkpoint_epoch: int | None
    predict_time_s: float

    @property
    def test_ids(self) -> list[str] | None:
        """The patients of ``maps-test.npy``, in order (None in an identity without them)."""
        ids = self.identity.get("test_ids")
        return None if ids is None else list(ids)


@dataclass(frozen=True)
class EvalRecord:
    """``eval.json``: the summary of one evaluated run (a model's fold or the baseline's).

    ``train_config_hash`` and ``predict_time_s`` belong to a trained model,
    ``fit_time_s`` to the baseline; ``truth_pipeline`` is there once the
    ground-truth job has run.
    """

    model: str
    variant: str
    fold: int
    n_test: int
    auroc_mean: float | None
    healthy_fpr_thresholds: dict[str, Any]
    dice_post_mean_by_rule: dict[str, float]
    evaluation: dict[str, Any]
    config_hash: str
    seed: int
    provenance: dict[str, Any]
    train_config_hash: str | None = None
    predict_time_s: float | None = None
    fit_time_s: float | None = None
    truth_pipeline: dict[str, Any] | None = None


Record = TypeVar("Record", TrainRecord, SegmentationRecord, MapsRecord, EvalRecord)


def write_record(path: str | os.PathLike, record: TrainRecord | SegmentationRecord | MapsRecord | EvalRecord
                 ) -> dict[str, Any]:
    """Write a record as JSON (atomically: a temporary file, then a rename) and return its dict.

    Parameters
    ----------
    path : path-like
        Where to write.
    record : TrainRecord, SegmentationRecord, MapsRecord or EvalRecord

    Returns
    -------
    dict
        The record as written (``dataclasses.asdict``); optional fields left
        at None are not written.
    """
    if not dataclasses.is_dataclass(record) or isinstance(record, type):
        raise TypeError(f"write_record: expected a record instance, got {type(record).__name__}.")
    data = dataclasses.asdict(record)
    optional = {f.name for f in dataclasses.fields(record) if f.default is None}
    data = {k: v for k, v in data.items() if not (k in optional and v is None)}
    write_json_atomic(Path(path), data)
    return data


def upgrade_keys(data: Mapping[str, Any], legacy: Mapping[str, str] = LEGACY_KEYS) -> dict[str, Any]:
    """The mapping with the keys of older dmrilib versions renamed.

    Parameters
    ----------
    data : mapping
        A record, a resume checkpoint's payload or a log row, as read.
    legacy : mapping, default :data:`LEGACY_KEYS`
        Old key -> key now (:data:`LEGACY_LOG_KEYS` for log rows, :data:`LEGACY_STUDY_KEYS` for ``study.json``).

    Returns
    -------
    dict
    """
    return {legacy.get(k, k): v for k, v in data.items()}


def record_from_dict(kind: type[Record], data: Mapping[str, Any], *, source: str | os.PathLike = "<record>") -> Record:
    """Build a record of ``kind`` from a mapping, renaming legacy keys (:data:`LEGACY_KEYS`).

    Raises
    ------
    RecordError
        Naming ``source``, if a field is missing or a key is not one of the kind's fields.
    """
    data = upgrade_keys(data)
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - set(fields))
    required = [name for name, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if unknown or missing:
        problem = "; ".join(part for part in (f"unknown keys {unknown}" if unknown else "",
                                              f"missing keys {missing}" if missing else "") if part)
        raise RecordError(f"{source}: not a {kind.__name__} ({problem}). It was written by another version of "
                          "dmrilib or edited by hand: delete it and run its job again.")
    return kind(**data)


def read_record(path: str | os.PathLike, kind: type[Record]) -> Record:
    """Read a record written by :func:`write_record` (or by an older dmrilib).

    Parameters
    ----------
    path : path-like
        The JSON file.
    kind : type
        :class:`TrainRecord`, :class:`SegmentationRecord`, :class:`MapsRecord` or :class:`EvalRecord`.

    Returns
    -------
    record of ``kind``

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    RecordError
        If the file is not JSON or not a record of ``kind``; the message names the file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); delete it and run its job "
                          "again.") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path}: a {kind.__name__} is a JSON object, found {type(data).__name__}.")
    return record_from_dict(kind, data, source=path)
