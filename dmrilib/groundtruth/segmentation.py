"""Tumour segmentation from structural MRI: training set, training, inference.

The paper's tumour masks come from a U-Net (inputs T1w, FLAIR and a
foreground mask) trained on BraTS. With a simulated cohort we train our own
on simulated subjects that are *not* in the evaluation cohort
(:func:`training_plan`), with the visible lesion (necrosis + enhancing rim +
edema) on the structural grid as the target.

Training writes a run folder::

    checkpoint-last.pt   weights + optimiser/scheduler state + log (the resume point)
    log.csv              epoch, train_loss, lr, epoch_time_s
    run.json             config hash, seed, provenance, wall time, device

Every random draw of an epoch comes from generators seeded by
``(seed, epoch)``, so a resumed run on CPU ends with exactly the weights of an
uninterrupted one. :func:`train_segmentation` runs in named steps (inputs
check, resume, one epoch, save, record); the resume point is read and written
by :mod:`dmrilib.checkpoint`, as for the anomaly models.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage

from dmrilib._atomic import write_csv_atomic
from dmrilib.config import config_hash
from dmrilib.groundtruth.config import SegConfig
from dmrilib.groundtruth.unet import IN_CHANNELS, SegUNet, seg_loss
from dmrilib.records import SegmentationRecord, write_record
# Checkpoint plumbing (atomic saves, resume point, seeds, provenance) is
# dmrilib.checkpoint's, shared with the anomaly-model training.
from dmrilib.checkpoint import (checkpoint_meta, checkpoint_provenance, cpu_state, derive_seed, device_record,
                                read_checkpoint, resolve_device, resume, save_resume_point, seeded_generator)

__all__ = [
    "TrainingSubject",
    "TrainingSet",
    "Segmentation",
    "training_seeds",
    "training_plan",
    "simulate_training_set",
    "foreground_mask",
    "network_input",
    "train_segmentation",
    "load_segmentation",
    "segment",
    "SEED_KEY",
]

_CHECKPOINT_FORMAT = "dmrilib-segmentation/1"
_LOG_FIELDS = ("epoch", "train_loss", "lr", "epoch_time_s")
#: Spawn key of the training subjects' SeedSequence: the cohort's subjects use
#: the children ``0..n`` of ``SeedSequence(cohort.seed)`` (dmrilib.simulate.cohort_plan),
#: the segmentation training subjects the children of ``SeedSequence(cohort.seed,
#: spawn_key=(SEED_KEY,))``, a different stream. This is the first four bytes of
#: sha256("segmentation-training"), far above any cohort size.
SEED_KEY = int.from_bytes(hashlib.sha256(b"segmentation-training").digest()[:4], "little")
_SIZES = ("large", "medium", "small")


# ----------------------------------------------------------------------------- training subjects


@dataclass(frozen=True)
class TrainingSubject:
    """One simulated training subject of the segmentation network."""

    label: str
    grade: str | None
    size_class: str | None
    seed: int


def training_seeds(cohort_seed: int, n: int, *, exclude: Sequence[int] = ()) -> list[int]:
    """Seeds of the segmentation training subjects, from their own stream.

    ``SeedSequence(cohort_seed, spawn_key=(SEED_KEY,))`` spawns one child per
    subject; a child whose 32-bit seed equals one in ``exclude`` (the
    evaluation cohort's seeds) is skipped, so no training subject can ever be
    an evaluation subject, even by a 1-in-4-billion coincidence.

    Parameters
    ----------
    cohort_seed : int
        The cohort's seed (``CohortConfig.seed``).
    n : int
        Number of seeds.
    exclude : sequence of int
        Seeds that must not be returned.
    """
    if int(n) < 0:
        raise ValueError(f"training_seeds: n must be >= 0, got {n}.")
    taken = {int(s) for s in exclude}
    root = np.random.SeedSequence(int(cohort_seed), spawn_key=(SEED_KEY,))
    seeds: list[int] = []
    while len(seeds) < n:
        for child in root.spawn(n - len(seeds)):
            seed = int(child.generate_state(1)[0])
            if seed not in taken:
                seeds.append(seed)
                taken.add(seed)
    return seeds


def training_plan(cohort_config, config: SegConfig) -> list[TrainingSubject]:
    """The segmentation training subjects of a cohort: labels, grades, sizes, seeds.

    Patients cycle through the grades (IV, III, II) and, per grade, through the
    size classes, so every (grade, size) combination appears once in nine
    patients; then ``n_train_healthy`` healthy controls. Labels are
    ``segtrain-P01..`` and ``segtrain-H01..``.

    Parameters
    ----------
    cohort_config : dmrilib.simulate.CohortConfig
        The evaluation cohort (its seed and its subjects' seeds, which are excluded).
    config : SegConfig
    """
    from dmrilib.simulate import cohort_plan
    from dmrilib.simulate.config import GRADES

    n_p, n_h = config.n_train_patients, config.n_train_healthy
    exclude = [p.seed for p in cohort_plan(cohort_config)]
    seeds = training_seeds(cohort_config.seed, n_p + n_h, exclude=exclude)
    plan = [TrainingSubject(f"segtrain-P{i + 1:02d}", GRADES[i % 3], _SIZES[(i // 3) % 3], seeds[i])
            for i in range(n_p)]
    plan += [TrainingSubject(f"segtrain-H{i + 1:02d}", None, None, seeds[n_p + i]) for i in range(n_h)]
    return plan


@dataclass
class TrainingSet:
    """Network inputs and targets of the segmentation training subjects.

    ``images`` is float32 ``(S, 3, X, Y, Z)`` (see :func:`network_input`),
    ``targets`` bool ``(S, X, Y, Z)``: the visible lesion on the structural grid.
    """

    images: np.ndarray
    targets: np.ndarray
    subject_ids: list[str]
    seeds: list[int]
    affine: np.ndarray


def _simulate_training_subject(cohort_config, subject: TrainingSubject):
    from dmrilib.simulate import simulate_subject
    from dmrilib.simulate.subject import structural_lesion_of

    sim = simulate_subject(cohort_config, subject.seed, grade=subject.grade, size_class=subject.size_class,
                           structural=True)
    fg = foreground_mask(sim.t1w)
    return network_input(sim.t1w, sim.flair, fg), structural_lesion_of(sim), sim.structural_affine


def simulate_training_set(cohort_config, config: SegConfig, *, n_jobs: int = 1,
                          progress: bool = True) -> TrainingSet:
    """Simulate the segmentation training subjects (see :func:`training_plan`).

    Parameters
    ----------
    cohort_config : dmrilib.simulate.CohortConfig
        Geometry and contrasts as in the evaluation cohort.
    config : SegConfig
    n_jobs : int
        Worker processes (each subject is independent and seeded, so the
        result does not depend on ``n_jobs``).
    progress : bool
        Show a tqdm progress bar.
    """
    from tqdm.auto import tqdm

    plan = training_plan(cohort_config, config)
    if n_jobs > 1:
        with ProcessPoolExecutor(max_workers=int(n_jobs)) as pool:
            results = list(tqdm(pool.map(_simulate_training_subject, [cohort_config] * len(plan), plan),
                                total=len(plan), desc="segmentation training set", unit="subject",
                                disable=not progress))
    else:
        results = [_simulate_training_subject(cohort_config, s)
                   for s in tqdm(plan, desc="segmentation training set", unit="subject", disable=not progress)]
    return TrainingSet(images=np.stack([r[0] for r in results]), targets=np.stack([r[1] for r in results]),
                       subject_ids=[s.label for s in plan], seeds=[s.seed for s in plan], affine=results[0][2])


# ----------------------------------------------------------------------------- network input


def _check_volume(name: str, array, shape: tuple[int, ...] | None = None) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3D volume (X, Y, Z), got shape {array.shape}.")
    if shape is not None and array.shape != tuple(shape):
        raise ValueError(f"{name} has shape {array.shape} but the T1w has shape {tuple(shape)}; "
                         "T1w, FLAIR and masks must be on the same structural grid (resample first).")
    if array.dtype != bool and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values; replace them (e.g. with 0) first.")
    return array


def foreground_mask(t1w: np.ndarray) -> np.ndarray:
    """Foreground (head/brain) mask of a T1w image.

    Otsu's threshold over all voxels separates tissue from the dark
    background; holes are then filled (ventricles, dark necrosis inside the
    tumour) and only the largest connected component is kept. Sulcal CSF at
    the outer surface, dark on T1w, stays outside: the network still sees it
    in the T1w and FLAIR channels.

    Parameters
    ----------
    t1w : ndarray, shape (X, Y, Z)

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
    """
    from skimage.filters import threshold_otsu

    t1w = _check_volume("t1w", t1w)
    if np.ptp(t1w) == 0:
        return np.zeros(t1w.shape, bool)
    mask = t1w > threshold_otsu(t1w)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def network_input(t1w: np.ndarray, flair: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Stack T1w, FLAIR and the foreground mask into the network's input.

    Each image is divided by its median inside the foreground, so scanner
    scaling does not matter; the mask channel is 0/1.

    Returns
    -------
    ndarray, float32, shape (3, X, Y, Z)
    """
    t1w = _check_volume("t1w", t1w)
    flair = _check_volume("flair", flair, t1w.shape)
    foreground = _check_volume("foreground", foreground, t1w.shape).astype(bool)
    if not foreground.any():
        raise ValueError("foreground mask is empty: the T1w has no tissue above background (all one value?).")
    out = np.empty((IN_CHANNELS,) + t1w.shape, np.float32)
    for c, image in enumerate((t1w, flair)):
        scale = float(np.median(image[foreground]))
        out[c] = image / (scale if scale > 0 else 1.0)
    out[2] = foreground
    return out


def _pad_amount(shape: Sequence[int], divisor: int) -> list[int]:
    return [(-int(s)) % divisor for s in shape]


#: Voxels kept around the foreground when images are cut to its bounding box.
_BOX_MARGIN = 4


def _foreground_box(foreground: np.ndarray, margin: int = _BOX_MARGIN) -> tuple[slice, slice, slice]:
    """Bounding box (with a margin) of a foreground mask (any number of leading axes are merged).

    The network only ever sees the box: structural fields of view carry wide
    empty margins (the simulated grid adds room for head movement), and
    skipping them makes training windows land on tissue and inference faster.
    """
    mask = foreground.reshape((-1,) + foreground.shape[-3:]).any(axis=0)
    if not mask.any():
        return tuple(slice(0, s) for s in mask.shape)  # type: ignore[return-value]
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)  # type: ignore[return-value]


def _pad(x: np.ndarray, divisor: int) -> np.ndarray:
    """Zero-pad the last three axes at their end to multiples of ``divisor``."""
    extra = _pad_amount(x.shape[-3:], divisor)
    if not any(extra):
        return x
    return np.pad(x, [(0, 0)] * (x.ndim - 3) + [(0, e) for e in extra])


# ----------------------------------------------------------------------------- training


def _build(config: SegConfig) -> SegUNet:
    # nn.Module initialisers draw from the global RNG; fork it so the caller's state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "segmentation-init"))
        return SegUNet(IN_CHANNELS, config.widths, config.negative_slope, config.norm, config.stride)


def _data_digest(images: np.ndarray, targets: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (images, targets):
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:12]


def _windows(cfg: SegConfig, grid: tuple[int, int, int], sel: list[int], lesion_voxels: list[np.ndarray],
             gen: torch.Generator) -> list[tuple[slice, ...]]:
    """One training window per selected subject (offsets from the CPU generator)."""
    crop = cfg.crop
    out = []
    for i in sel:
        vox = lesion_voxels[i]
        lesion_centred = len(vox) and float(torch.rand((), generator=gen)) < cfg.lesion_crop_fraction
        if lesion_centred:
            centre = vox[int(torch.randint(0, len(vox), (), generator=gen))]
            start = [min(max(int(c) - n // 2, 0), g - n) for c, n, g in zip(centre, crop, grid)]
        else:
            start = [int(torch.randint(0, g - n + 1, (), generator=gen)) for g, n in zip(grid, crop)]
        out.append(tuple(slice(s, s + n) for s, n in zip(start, crop)))
    return out


def train_segmentation(images: np.ndarray, targets: np.ndarray, *, config: SegConfig,
                       out_dir: str | os.PathLike, subject_ids: Sequence[str] | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Train the segmentation U-Net and write its run folder (resumable).

    Parameters
    ----------
    images : ndarray, float32, shape (S, 3, X, Y, Z)
        Network inputs (:func:`network_input`), e.g. ``TrainingSet.images``.
    targets : ndarray of bool, shape (S, X, Y, Z)
        Tumour masks on the same grid.
    config : SegConfig
    out_dir : path-like
        Run folder. A run of the same configuration and data there is resumed
        from ``checkpoint-last.pt``; one of another is refused.
    subject_ids : sequence of str, optional
        Names of the S subjects (recorded in ``run.json``).
    progress : bool
        Show a tqdm progress bar over epochs.

    Returns
    -------
    dict
        The content of ``run.json`` (config hash, seed, wall time, final loss, ...).

    Raises
    ------
    ValueError
        For inconsistent inputs; :class:`dmrilib.checkpoint.CheckpointMismatchError`
        when ``out_dir`` holds a run of another configuration or data.
    dmrilib.integrity.IntegrityError
        When ``checkpoint-last.pt`` is unreadable or does not match its
        payload sha256 (corrupted): it is not resumed from.
    """
    cfg = config
    images, targets, ids, grid = _check_inputs(images, targets, subject_ids, cfg)
    chash = config_hash({"segmentation": cfg.training_settings(), "in_channels": IN_CHANNELS, "grid": list(grid),
                         "data": _data_digest(images, targets)})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_path = out / "checkpoint-last.pt"

    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    net = _build(cfg).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_gamma)
    point = resume(last_path, expected_format=_CHECKPOINT_FORMAT, expected_hash=chash, net=net, optimizer=optimizer,
                   scheduler=scheduler, device=device, trainer="dmrilib.groundtruth.train_segmentation")

    data = torch.from_numpy(images).to(device)
    truth = torch.from_numpy(targets).to(device)
    lesion_voxels = [np.argwhere(t) for t in targets] if cfg.crop is not None else []
    meta = {"format": _CHECKPOINT_FORMAT, "config_hash": chash, "seed": cfg.seed, "widths": list(cfg.widths),
            "negative_slope": cfg.negative_slope, "norm": cfg.norm, "stride": cfg.stride,
            "in_channels": IN_CHANNELS, "grid": list(grid),
            "segmentation_config": _json(dataclasses.asdict(cfg))}

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs, initial=point.start_epoch, desc="segmentation U-Net", unit="epoch")
    rows, wall = point.log, point.train_time_s
    for epoch in range(point.start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        total, lr = _train_epoch(epoch, net, optimizer, scheduler, data, truth, lesion_voxels, grid, cfg, device)
        if epoch + 1 == cfg.epochs and cfg.crop is not None and cfg.norm == "batch":
            _recalibrate_batchnorm(net, data)
        train_loss = float(total.item()) / images.shape[0]  # one host sync per epoch
        seconds = time.perf_counter() - t0
        wall += seconds
        rows.append({"epoch": epoch, "train_loss": train_loss, "lr": lr, "epoch_time_s": seconds})
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
            save_resume_point(last_path, {**meta, "epoch": epoch}, state=cpu_state(net), optimizer=optimizer,
                              scheduler=scheduler, log=rows, train_time_s=wall, seed=cfg.seed)
        write_csv_atomic(out / "log.csv", rows, _LOG_FIELDS)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4g}")
    if bar is not None:
        bar.close()

    record = SegmentationRecord(
        config_hash=chash, seed=cfg.seed, epochs=cfg.epochs,
        final_train_loss=rows[-1]["train_loss"] if rows else math.nan,
        train_time_s=wall, **device_record(device, net),
        subject_ids=ids, grid=list(grid), segmentation_config=meta["segmentation_config"],
        checkpoint=last_path.name, provenance=checkpoint_provenance(chash, cfg.seed),
    )
    return write_record(out / "run.json", record)


def _check_inputs(images: np.ndarray, targets: np.ndarray, subject_ids: Sequence[str] | None,
                  cfg: SegConfig) -> tuple[np.ndarray, np.ndarray, list[str], tuple[int, ...]]:
    """Inputs check of :func:`train_segmentation`; images and targets cut to the foreground box and padded."""
    images = np.asarray(images)
    targets = np.asarray(targets)
    if images.ndim != 5 or images.shape[1] != IN_CHANNELS:
        raise ValueError(f"train_segmentation: images must be (S, {IN_CHANNELS}, X, Y, Z) (T1w, FLAIR, foreground), "
                         f"got shape {images.shape}.")
    if targets.shape != (images.shape[0],) + images.shape[2:]:
        raise ValueError(f"train_segmentation: targets must have shape (S, X, Y, Z) = "
                         f"{(images.shape[0],) + images.shape[2:]}, got {targets.shape}.")
    if not np.all(np.isfinite(images)):
        raise ValueError("train_segmentation: images contain NaN or infinite values.")
    if not targets.any():
        raise ValueError("train_segmentation: no target contains a tumour voxel; the network would learn nothing.")
    ids = [str(s) for s in subject_ids] if subject_ids is not None else [str(i) for i in range(images.shape[0])]
    if len(ids) != images.shape[0]:
        raise ValueError(f"train_segmentation: {len(ids)} subject_ids for {images.shape[0]} images.")
    # One box around every subject's foreground (channel 2) keeps the stack rectangular.
    box = (slice(None), slice(None)) + _foreground_box(images[:, 2] > 0)
    images = _pad(np.ascontiguousarray(images[box], dtype=np.float32), cfg.divisor)
    targets = _pad(np.ascontiguousarray(targets[box[:1] + box[2:]], dtype=bool), cfg.divisor)
    grid = tuple(int(g) for g in images.shape[2:])
    if cfg.crop is not None and any(c > g for c, g in zip(cfg.crop, grid)):
        raise ValueError(f"train_segmentation: groundtruth.crop {list(cfg.crop)} is larger than the (padded) "
                         f"image grid {list(grid)}; choose a smaller crop or null.")
    return images, targets, ids, grid


def _train_epoch(epoch: int, net: SegUNet, optimizer: torch.optim.Optimizer, scheduler: Any, data: torch.Tensor,
                 truth: torch.Tensor, lesion_voxels: list[np.ndarray], grid: tuple[int, ...], cfg: SegConfig,
                 device: torch.device) -> tuple[torch.Tensor, float]:
    """One epoch of :func:`train_segmentation`: the summed loss (on the device) and the epoch's lr."""
    n = data.shape[0]
    gen = seeded_generator(torch.device("cpu"), cfg.seed, "segmentation-order", epoch)
    order = torch.randperm(n, generator=gen).tolist()
    net.train()
    total = torch.zeros((), device=device)
    for start in range(0, n, cfg.batch_size):
        sel = order[start:start + cfg.batch_size]
        if cfg.crop is None:
            x, y = data[sel], truth[sel]
        else:
            windows = _windows(cfg, grid, sel, lesion_voxels, gen)  # type: ignore[arg-type]
            x = torch.stack([data[i][(slice(None), *w)] for i, w in zip(sel, windows)])
            y = torch.stack([truth[i][w] for i, w in zip(sel, windows)])
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            logits = net(x)
        loss = seg_loss(logits, y, dice_weight=cfg.dice_weight, bce_weight=cfg.bce_weight)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(sel)
    lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    return total, lr


def _recalibrate_batchnorm(net: SegUNet, volumes: torch.Tensor) -> None:
    """Recompute BatchNorm statistics on whole training volumes ("precise BN").

    Trained on windows, the running statistics describe windows (many centred
    on tumours), not the whole volumes the network predicts on; measured on
    the quick profile this shifted the calibration enough to cost 0.2 Dice.
    One pass over the whole (boxed) training volumes, averaging the batch
    statistics with equal weights, matches them to what inference sees.
    """
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        for i in range(volumes.shape[0]):
            net(volumes[i:i + 1])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    net.eval()


def _json(obj: Any) -> Any:
    """Tuples -> lists, so the record loads with ``weights_only=True``."""
    if isinstance(obj, dict):
        return {k: _json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json(v) for v in obj]
    return obj


def load_segmentation(path: str | os.PathLike, *, expected_hash: str | None = None,
                      map_location: str | torch.device = "cpu") -> tuple[SegUNet, dict[str, Any]]:
    """Rebuild the U-Net of a segmentation checkpoint (loaded with ``weights_only=True``).

    Parameters
    ----------
    path : path-like
        ``checkpoint-last.pt`` of a run folder (or the folder itself).
    expected_hash : str, optional
        Refuse the checkpoint unless its config hash equals this.
    map_location : str or torch.device

    Returns
    -------
    net : SegUNet
        In eval mode, on ``map_location``.
    meta : dict
        ``config_hash``, ``seed``, ``epoch``, ``widths``, ``grid``,
        ``segmentation_config``, ``provenance``, ``log``, ... (no tensors).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint-last.pt"
    payload = read_checkpoint(path, expected_format=_CHECKPOINT_FORMAT, expected_hash=expected_hash,
                              map_location=map_location, trainer="dmrilib.groundtruth.train_segmentation")
    net = SegUNet(payload["in_channels"], payload["widths"], payload["negative_slope"], payload["norm"],
                  payload["stride"])
    net.load_state_dict(payload["state_dict"])
    net.to(map_location).eval()
    return net, checkpoint_meta(payload)


# ----------------------------------------------------------------------------- inference


@dataclass
class Segmentation:
    """Output of :func:`segment` on the structural grid."""

    probability: np.ndarray  #: float32 (X, Y, Z), sigmoid of the logits
    mask: np.ndarray  #: bool (X, Y, Z), thresholded (and largest components kept)
    foreground: np.ndarray  #: bool (X, Y, Z), the foreground channel the network saw


def _keep_largest(mask: np.ndarray, k: int) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= k:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.argsort(-sizes, kind="stable")[:k] + 1
    return np.isin(labels, keep)


def segment(net: SegUNet, t1w: np.ndarray, flair: np.ndarray, *, foreground: np.ndarray | None = None,
            threshold: float = 0.5, keep_largest: int = 0, precision: str = "fp32") -> Segmentation:
    """Segment the visible tumour in one subject's structural images.

    Parameters
    ----------
    net : SegUNet
        Trained network (:func:`load_segmentation`); runs on its own device.
    t1w, flair : ndarray, shape (X, Y, Z)
        Structural images on one grid.
    foreground : ndarray of bool, optional
        Foreground mask; default :func:`foreground_mask` of the T1w.
    threshold : float
        Probability above which a voxel is tumour (``SegConfig.threshold``).
    keep_largest : int
        Keep this many largest 26-connected components; 0 keeps all.
    precision : {"fp32", "bf16"}
        ``bf16`` runs the network under bfloat16 autocast.

    Returns
    -------
    Segmentation

    Notes
    -----
    The network sees the foreground's bounding box (plus 4 voxels), padded
    to its divisor; the probability is 0 outside the box.
    """
    t1w = _check_volume("t1w", t1w)
    if foreground is None:
        foreground = foreground_mask(t1w)
    x = network_input(t1w, flair, foreground)
    box = _foreground_box(np.asarray(foreground, bool))
    x = _pad(np.ascontiguousarray(x[(slice(None),) + box]), net.divisor)
    device = next(net.parameters()).device
    net.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = net(torch.from_numpy(x)[None].to(device))
    prob = np.zeros(t1w.shape, np.float32)
    prob[box] = torch.sigmoid(logits.float())[0, 0].cpu().numpy()[tuple(slice(0, b.stop - b.start) for b in box)]
    mask = prob > threshold
    if keep_largest:
        mask = _keep_largest(mask, int(keep_largest))
    return Segmentation(probability=prob.astype(np.float32), mask=mask, foreground=np.asarray(foreground, bool))
