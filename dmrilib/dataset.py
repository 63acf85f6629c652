"""A BIDS cohort turned into network-grid arrays: :func:`prepare_cohort`, :func:`load_prepared`.

``prepare_cohort`` reads every subject's (pre-operative) DWI and derivative
masks, computes attenuation and DTI maps on the subject's own grid, crops them
to the network grid centred on the brain mask, and writes one folder::

    <out_dir>/meta.json             subjects, participants, crops, affines, hashes, provenance
    <out_dir>/attenuation.npy       (S, C, X, Y, Z) float16 by default (see below)
    <out_dir>/brain_mask.npy        (S, X, Y, Z) bool; likewise eval_mask, lesion,
                                    infiltration, followup_lesion
    <out_dir>/fa.npy, md.npy        (S, X, Y, Z) float32
    <out_dir>/affines.npy           (S, 4, 4) input-grid affines
    <out_dir>/bvals.npy, bvecs.npy  (S, C), (S, C, 3) of the kept channels

``meta.json`` records the sha256 of every ``.npy`` file (``sha256``);
:func:`load_prepared` checks them (the attenuation, the one large file, on
first access, so jobs that never read it, such as evaluation, do not pay for
it) and refuses attenuation outside [0, 1]. It also records each subject's
voxel size, orientation and gradient directions, summarised for a training
set by :meth:`PreparedCohort.acquisition` (stored in checkpoints).

Attenuation is stored as float16 by default: values lie in [0, 1], where
float16 resolves about 5e-4 (far below the noise of any dMRI signal), and it
halves the paper geometry (60 x 64 x 64x80x64) from 5.0 GB to 2.5 GB.
:class:`PreparedCohort` memory-maps the files and hands out float32.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from dmrilib._atomic import atomic_dir, remove_stale_temp, write_json_atomic
from dmrilib._workers import process_pool
from dmrilib.config import config_hash, provenance
from dmrilib.directions import DIRECTION_SETS, _distinct_axes, choose_sh_order, resample_shell, target_directions
from dmrilib.fidelity import resolve as resolve_fidelity
from dmrilib.integrity import IntegrityError, check_sha256, check_unit_interval, sha256_file
from dmrilib.io import (
    BidsDwi,
    DwiInputError,
    find_bids_dwi,
    inspect_dwi,
    load_dwi,
    load_mask,
    read_participants,
)
from dmrilib.preprocess import GridCrop, NetworkGrid, attenuation, brain_mask_from_b0, dti_maps

__all__ = ["PrepareConfig", "PreparedCohort", "prepare_cohort", "load_prepared", "to_input_grid", "MASK_NAMES"]

#: Boolean label arrays of a prepared cohort -> derivative key they come from.
MASK_NAMES = {
    "brain_mask": "brain",
    "eval_mask": "wmgm",
    "lesion": "lesion",
    "infiltration": "infiltration",
    "followup_lesion": "followup_lesion",
}
_FORMAT_VERSION = 1
_HEALTHY = {"healthy", "control"}
_PATIENT = {"patient"}


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of :func:`prepare_cohort` (the ``prepare`` section of a profile).

    Parameters
    ----------
    grid : tuple of int
        Network grid ``(X, Y, Z)``; the paper uses 64x80x64.
    b0_threshold : float
        b-values at or below this are b0 volumes (s/mm^2).
    target_bvalue : float
        Diffusion-weighted shell fed to the networks (the paper: 1000). For
        OpenNeuro ds001226 (shells 700/1200/2800) use 1200.
    bvalue_tolerance : float
        Half-width of the shell window in s/mm^2.
    session : str or None
        BIDS session to read; None picks each subject's first session whose
        name contains "pre" (else its first session).
    acquisition : str or None
        BIDS ``acq-`` label when a session holds several DWI series.
    pipeline : str or None
        ``derivatives/<pipeline>`` folder with masks; None ignores derivatives.
    dtype : {"float16", "float32"}
        On-disk type of the attenuation array.
    clip_negative : bool
        Clip negative signal to 0 instead of rejecting the input.
    dti_fit : {"OLS", "WLS"}
        dipy tensor fit for the FA/MD maps (OLS ~1 s/subject, WLS ~11 s).
    fidelity : {"code", "paper"}
        Whose protocol fills ``input_mask_erosion`` when it is not given
        (:mod:`dmrilib.fidelity`): the authors' code (default) or the
        article's text. Set from the profile's top-level ``fidelity``.
    input_mask_erosion : int, optional
        Erode the brain mask this many times by a 3x3x3 cube on the network
        grid (voxels outside the grid count as background) and zero the
        attenuation outside the eroded mask. Code: 1 (``processing_data.py``
        erodes once after cropping and zeroes the input outside); paper: not
        stated, so ``paper`` gives 0, this package's earlier behaviour (the
        input zeroed outside the brain mask only). Only the attenuation
        changes: the stored ``brain_mask`` stays the uneroded mask, because
        the regions that need the eroded one erode it themselves
        (:func:`dmrilib.metrics.evaluation_regions`, the JOOD centre region),
        as the authors' code uses its eroded mask only through the
        brain-without-CSF mask.
    directions : {None, "small_64D"}
        None (default): keep the acquired directions; every subject must then
        have the same number of volumes in the shell, which become the
        channels in file order. ``"small_64D"``: resample each subject's
        shell attenuation to dipy's 64 ``small_64D`` directions, the
        simulator's scheme (:func:`dmrilib.directions.resample_shell`, a
        regularised spherical-harmonic fit; the result is clipped to
        [0, 1]), so subjects may differ in their number and order of
        directions and a real cohort gets the simulated cohort's 64
        channels. The stored ``bvecs`` are then the target directions and
        ``bvals`` the shell's mean b-value; FA/MD still come from the
        acquired volumes.
    sh_order : int, optional
        Even spherical-harmonic order of that fit (only with ``directions``).
        None: one order for the whole cohort,
        :func:`dmrilib.directions.choose_sh_order` of the smallest number of
        distinct directions among the subjects (30 directions give 4), so
        every subject is smoothed alike.
    """

    grid: tuple[int, int, int] = (64, 80, 64)
    b0_threshold: float = 50.0
    target_bvalue: float = 1000.0
    bvalue_tolerance: float = 100.0
    session: str | None = None
    acquisition: str | None = None
    pipeline: str | None = "simulation"
    dtype: str = "float16"
    clip_negative: bool = False
    dti_fit: str = "OLS"
    fidelity: Literal["code", "paper"] = "code"
    input_mask_erosion: int | None = None
    directions: str | None = None
    sh_order: int | None = None

    def __post_init__(self) -> None:
        # The switched keys hold the values actually used (and hashed); a key given explicitly wins.
        resolve_fidelity(self, "prepare")
        erosion = self.input_mask_erosion
        if isinstance(erosion, bool) or not isinstance(erosion, (int, np.integer)) or erosion < 0:
            raise ValueError(f"input_mask_erosion must be an integer >= 0, got {erosion!r}.")
        object.__setattr__(self, "input_mask_erosion", int(erosion))
        grid = tuple(self.grid)
        if len(grid) != 3 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in grid):
            raise ValueError(f"grid must be three positive integers (X, Y, Z), got {self.grid!r}.")
        object.__setattr__(self, "grid", tuple(int(v) for v in grid))
        if self.b0_threshold < 0:
            raise ValueError(f"b0_threshold must be >= 0, got {self.b0_threshold}.")
        if self.bvalue_tolerance <= 0:
            raise ValueError(f"bvalue_tolerance must be > 0, got {self.bvalue_tolerance}.")
        if self.target_bvalue - self.bvalue_tolerance <= self.b0_threshold:
            raise ValueError(
                f"the shell window {self.target_bvalue}+-{self.bvalue_tolerance} reaches b0_threshold="
                f"{self.b0_threshold}; raise target_bvalue or narrow bvalue_tolerance."
            )
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', got {self.dtype!r}.")
        if self.dti_fit not in ("OLS", "WLS"):
            raise ValueError(f"dti_fit must be 'OLS' or 'WLS', got {self.dti_fit!r}.")
        for name in ("session", "acquisition", "pipeline"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string or null, got {value!r}.")
        if self.directions is not None and self.directions not in DIRECTION_SETS:
            raise ValueError(f"directions must be null or one of {list(DIRECTION_SETS)}, got {self.directions!r}.")
        order = self.sh_order
        if order is not None:
            if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 0 or order % 2:
                raise ValueError(f"sh_order must be an even integer >= 0 or null, got {order!r}.")
            if self.directions is None:
                # A setting that changes nothing must not change the config hash either.
                raise ValueError("sh_order applies only when directions is set (e.g. directions: small_64D); "
                                 "remove it or set directions.")
            object.__setattr__(self, "sh_order", int(order))

    def hash(self) -> str:
        """Short sha256 of the settings (see :func:`dmrilib.config.config_hash`)."""
        return config_hash(self)


class _AsFloat32:
    """Read-only array view that returns float32 from a (memory-mapped) float16 array.

    Indexing (``a[i]``, ``a[[0, 2]]``) and ``np.asarray(a)`` give float32
    ndarrays; only what is indexed is read from disk. ``check`` (the file's
    sha256 and value range) runs once, on the first access to the values:
    reading the whole file costs ~0.3 s for the quick cohort, which jobs
    that never touch the attenuation (evaluation) should not pay.
    """

    def __init__(self, raw: np.ndarray, check=None):
        self._raw = raw
        self._check = check

    def _values(self) -> np.ndarray:
        if self._check is not None:
            self._check()
            self._check = None  # only once it passed: a failed check fails again on the next access
        return self._raw

    shape = property(lambda self: self._raw.shape)
    ndim = property(lambda self: self._raw.ndim)
    dtype = np.dtype(np.float32)

    @property
    def stored(self) -> np.ndarray:
        """The array as stored on disk (``prepare.dtype``, e.g. a float16 memmap), not converted.

        Training and prediction read it this way and convert one batch at a
        time: the same float32 values (float16 to float32 is exact), a quarter
        of the reading and half the memory.
        """
        return self._values()

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, key) -> np.ndarray:
        return np.asarray(self._values()[key], dtype=np.float32)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self._values(), dtype=dtype or np.float32)

    def __repr__(self) -> str:
        return f"<float32 view of {self._raw.dtype} array, shape {self.shape}>"


@dataclass(frozen=True, eq=False)
class PreparedCohort:
    """A prepared cohort on the network grid (see :func:`load_prepared`).

    Attributes
    ----------
    root : Path
        The prepared folder.
    subjects : list of str
        ``"sub-<label>"`` in array order.
    participants : pandas.DataFrame
        Rows of ``participants.tsv`` indexed like ``subjects`` (``group`` is
        ``healthy``/``patient`` for the simulated cohort).
    attenuation : array-like, shape (S, C, X, Y, Z)
        float32 in [0, 1] on access, zero outside the brain mask (eroded
        ``prepare.input_mask_erosion`` times) (memory-mapped;
        index it to read). The file's sha256 and value range are checked on
        the first access to its values (:class:`~dmrilib.integrity.IntegrityError`).
    brain_mask, eval_mask, lesion, infiltration, followup_lesion : ndarray of bool, shape (S, X, Y, Z)
        All False where a subject has no such label.
    fa, md : ndarray of float32, shape (S, X, Y, Z)
        DTI maps computed on the input grid, then cropped (MD in mm^2/s).
    crops : list of GridCrop
        Window of each subject on its input grid.
    affines : ndarray, shape (S, 4, 4)
        Input-grid affines.
    input_shapes : list of tuple
        Input grids ``(X, Y, Z)``.
    bvals, bvecs : ndarray
        ``(S, C)`` and ``(S, C, 3)``: b-value and direction of each channel.
    meta : dict
        The content of ``meta.json``.
    """

    root: Path
    subjects: list[str]
    participants: Any
    attenuation: Any
    brain_mask: np.ndarray
    eval_mask: np.ndarray
    lesion: np.ndarray
    infiltration: np.ndarray
    followup_lesion: np.ndarray
    fa: np.ndarray
    md: np.ndarray
    crops: list[GridCrop]
    affines: np.ndarray
    input_shapes: list[tuple[int, int, int]]
    bvals: np.ndarray
    bvecs: np.ndarray
    meta: dict

    def __len__(self) -> int:
        return len(self.subjects)

    @property
    def grid(self) -> tuple[int, int, int]:
        """The network grid ``(X, Y, Z)``."""
        return tuple(self.brain_mask.shape[1:])

    def _group_ids(self, names: set[str]) -> list[str]:
        if "group" not in self.participants.columns:
            return []
        groups = self.participants["group"].astype(str).str.lower()
        return [s for s in self.subjects if groups.get(s, "") in names]

    def healthy_ids(self) -> list[str]:
        """Subjects whose ``group`` is ``healthy`` (or ``control``), in array order."""
        return self._group_ids(_HEALTHY)

    def patient_ids(self) -> list[str]:
        """Subjects whose ``group`` is ``patient``, in array order."""
        return self._group_ids(_PATIENT)

    def acquisition(self, ids: Iterable[str] | None = None) -> dict[str, Any]:
        """What the data of some subjects look like on the scanner, for a checkpoint's record.

        :func:`dmrilib.train.train_run` stores this in every checkpoint so
        that :func:`dmrilib.scoring.predict_dwi` can refuse data the network
        never saw the like of.

        Parameters
        ----------
        ids : iterable of str, optional
            Subjects (e.g. a fold's training and validation subjects); default all.

        Returns
        -------
        dict
            Plain JSON types: ``voxel_size_min``, ``voxel_size_max`` (mm per
            axis over the subjects), ``orientations`` (distinct axis codes of
            the affines, e.g. ``["RAS"]``), ``input_shapes`` (distinct input
            grids), ``grid`` (network grid), ``bvalue`` (mean b-value of the
            channels) and ``bvalue_range``, ``gradient_schemes`` (the distinct
            b-vector tables, each C x 3 in channel order; two tables count as
            the same when every direction agrees within 0.5 degrees up to
            sign), ``brain_fraction_min`` (smallest fraction of a subject's
            brain inside the network grid), ``n_subjects``.
        """
        idx = np.arange(len(self.subjects)) if ids is None else self.index(list(ids))
        voxel = np.asarray(self.meta["voxel_sizes"], dtype=float)[idx]
        schemes: list[np.ndarray] = []
        for table in np.asarray(self.bvecs, dtype=float)[idx]:
            if not any(np.all(np.abs((table * other).sum(axis=1)) >= np.cos(np.radians(0.5))) for other in schemes):
                schemes.append(table)
        bvals = np.asarray(self.bvals, dtype=float)[idx]
        fractions = self.meta.get("brain_fraction_in_grid", {})
        kept = [fractions[self.subjects[i]] for i in idx if self.subjects[i] in fractions]
        return {
            "voxel_size_min": voxel.min(axis=0).round(4).tolist(),
            "voxel_size_max": voxel.max(axis=0).round(4).tolist(),
            "orientations": sorted({"".join(nib.aff2axcodes(self.affines[i])) for i in idx}),
            "input_shapes": [list(t) for t in sorted({tuple(int(v) for v in self.input_shapes[i]) for i in idx})],
            "grid": [int(g) for g in self.grid],
            "bvalue": round(float(bvals.mean()), 2),
            "bvalue_range": [float(bvals.min()), float(bvals.max())],
            "gradient_schemes": [t.round(6).tolist() for t in schemes],
            "brain_fraction_min": float(min(kept)) if kept else None,
            "n_subjects": int(len(idx)),
            # the shell was resampled to this direction set (prepare.directions): predict_dwi does the same
            **({"directions": self.meta["directions"]["set"], "sh_order": self.meta["directions"]["sh_order"]}
               if self.meta.get("directions") else {}),
        }

    def index(self, ids: Iterable[str]) -> np.ndarray:
        """Array positions of subject ids (``"sub-H01"`` or ``"H01"``).

        Raises
        ------
        KeyError
            If an id is not in the cohort.
        """
        position = {s: i for i, s in enumerate(self.subjects)}
        out = []
        for s in ids:
            key = s if s.startswith("sub-") else f"sub-{s}"
            if key not in position:
                raise KeyError(f"subject {s!r} is not in the prepared cohort {self.root} (has {self.subjects[:5]}...).")
            out.append(position[key])
        return np.asarray(out, dtype=int)


def _fingerprint(root: Path, entries: Sequence[BidsDwi]) -> list:
    # Size + mtime of every input file: cheap, and changes whenever a file is rewritten.
    files = [root / "participants.tsv"]
    for e in entries:
        files += [e.dwi, e.bval, e.bvec, *e.derivatives.values()]
    out = []
    for f in files:
        if f.is_file():
            st = f.stat()
            out.append([str(f.relative_to(root)), st.st_size, st.st_mtime_ns])
    return out


def _is_up_to_date(out_dir: Path, cfg_hash: str, input_hash: str) -> bool:
    meta_path = out_dir / "meta.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        meta.get("format_version") == _FORMAT_VERSION
        and meta.get("config_hash") == cfg_hash
        and meta.get("input_hash") == input_hash
        and "sha256" in meta
        and all((out_dir / f"{name}.npy").is_file() for name in meta.get("arrays", []))
    )


def _validate_inputs(entries: Sequence[BidsDwi], config: PrepareConfig) -> tuple[int, int | None]:
    """Check every header, gradient file and mask before anything is written.

    Returns the channel count C and the spherical-harmonic order of the
    direction resampling (None without ``config.directions``).
    """
    channels: dict[int, list[str]] = {}
    distinct: dict[str, tuple[int, int, Path]] = {}  # subject -> (distinct axes, volumes, DWI file)
    for e in entries:
        header = inspect_dwi(e.dwi, bval=e.bval, bvec=e.bvec, **_shell_kwargs(config))
        shell = header.selected[header.bvals[header.selected] > config.b0_threshold]
        channels.setdefault(len(shell), []).append(e.subject)
        if config.directions is not None:
            distinct[e.subject] = (_distinct_axes(header.bvecs[shell]), len(shell), e.dwi)
        for key in MASK_NAMES.values():
            if key in e.derivatives:
                load_mask(e.derivatives[key], header)
    if config.directions is not None:
        return len(target_directions(config.directions)), _cohort_sh_order(distinct, config)
    if len(channels) > 1:
        detail = "; ".join(f"{n} volumes: {subs[:4]}" for n, subs in sorted(channels.items()))
        raise DwiInputError(
            f"subjects differ in the number of volumes in the shell b={config.target_bvalue:g} ({detail}). "
            "The networks need the same channels for every subject: set prepare.directions "
            f"(e.g. {DIRECTION_SETS[0]}) to resample every shell to one direction set, or exclude the "
            "odd subjects."
        )
    return next(iter(channels)), None


def _cohort_sh_order(distinct: dict[str, tuple[int, int, Path]], config: PrepareConfig) -> int:
    """The order of the direction resampling; refuses a shell with too few directions for it."""
    fewest = min(distinct, key=lambda s: distinct[s][0])
    n_fewest, n_volumes, dwi = distinct[fewest]
    shell = f"the shell b={config.target_bvalue:g}"
    if config.sh_order is None:
        try:
            return choose_sh_order(n_fewest)
        except ValueError:
            raise DwiInputError(
                f"{dwi.name}: {shell} has {n_fewest} distinct direction(s) ({n_volumes} volumes; opposite "
                f"directions count once), too few to resample it to {config.directions}: an order-2 "
                "spherical-harmonic fit needs at least 9. Choose another shell (prepare.target_bvalue) or "
                "exclude this subject."
            ) from None
    needed = (config.sh_order + 1) * (config.sh_order + 2) // 2
    if n_fewest < needed:
        raise DwiInputError(
            f"{dwi.name}: {shell} has {n_fewest} distinct direction(s) ({n_volumes} volumes; opposite "
            f"directions count once), fewer than the {needed} coefficients of the order-{config.sh_order} "
            f"spherical-harmonic fit that resamples it to {config.directions}. Lower prepare.sh_order "
            "(or leave it null to choose it from the data) or exclude this subject."
        )
    return config.sh_order


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    trash = None
    if out_dir.exists():
        trash = atomic_dir(out_dir, "old")
        os.replace(out_dir, trash / out_dir.name)
    os.replace(tmp, out_dir)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _shell_kwargs(config: PrepareConfig) -> dict[str, Any]:
    """Shell selection settings, the same for the up-front check and the load."""
    return {"b0_threshold": config.b0_threshold, "target_bvalue": config.target_bvalue,
            "bvalue_tolerance": config.bvalue_tolerance}


def _prepare_subject(entry: BidsDwi, root: Path, config: PrepareConfig, grid: NetworkGrid,
                     sh_order: int | None = None) -> dict[str, Any]:
    """One subject on the network grid: attenuation, masks, FA/MD and what meta.json records.

    ``sh_order``: the order of the direction resampling when ``config.directions`` is set.
    """
    dwi = load_dwi(entry.dwi, bval=entry.bval, bvec=entry.bvec, clip_negative=config.clip_negative,
                   **_shell_kwargs(config))
    labels = {name: load_mask(entry.derivatives[key], dwi) for name, key in MASK_NAMES.items()
              if key in entry.derivatives}
    if "brain_mask" not in labels:
        labels["brain_mask"] = brain_mask_from_b0(dwi)
        brain_source = "median_otsu(mean b0)"
    else:
        brain_source = str(entry.derivatives["brain"].relative_to(root))
    brain = labels["brain_mask"]
    crop = grid.crop_for(brain)
    arrays = {name: crop.to_grid(labels[name]) for name in MASK_NAMES if name in labels}
    signal = crop.to_grid(attenuation(dwi, brain))  # (X, Y, Z, C), zero outside the brain mask
    dw = ~dwi.is_b0
    bvals, bvecs = dwi.bvals[dw], dwi.bvecs[dw]
    if config.directions is not None:
        # Resampled after the crop: voxelwise and linear (zero stays zero), so the same as on the input
        # grid, on fewer voxels. The fit can overshoot [0, 1] slightly near sharp profiles.
        target = target_directions(config.directions)
        signal = resample_shell(signal, bvecs, target, sh_order=sh_order)
        np.clip(signal, 0.0, 1.0, out=signal)
        bvals, bvecs = np.full(len(target), float(bvals.mean())), target
    if config.input_mask_erosion:
        # As the authors' processing_data.py: erode on the network grid, zero the input outside.
        kept = ndimage.binary_erosion(arrays["brain_mask"], structure=np.ones((3, 3, 3), bool),
                                      iterations=config.input_mask_erosion)
        signal[~kept] = 0
    # (X, Y, Z, C) -> (C, X, Y, Z) on the network grid
    arrays["attenuation"] = np.moveaxis(signal, 3, 0).astype(config.dtype)
    maps = dti_maps(dwi, brain, fit_method=config.dti_fit)
    arrays["fa"], arrays["md"] = crop.to_grid(maps.fa), crop.to_grid(maps.md)
    return {
        "arrays": arrays,
        "affine": dwi.affine, "bvals": bvals, "bvecs": bvecs, "n_acquired": int(dw.sum()),
        "crop": crop.to_dict(), "input_shape": list(dwi.spatial_shape), "voxel_size": list(dwi.voxel_size),
        "labels": sorted(labels), "brain_source": brain_source,
        "brain_kept": float(arrays["brain_mask"].sum() / max(int(brain.sum()), 1)),
    }


def _prepare_one(args: tuple) -> dict[str, Any]:
    # One BLAS thread, with or without workers: workers do not oversubscribe
    # the cores, and the arrays are the same whatever n_jobs.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _prepare_subject(*args)


def prepare_cohort(
    bids_root: str | os.PathLike,
    config: PrepareConfig,
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    n_jobs: int | None = None,
) -> Path:
    """Turn a BIDS cohort into network-grid arrays (see the module docstring).

    Every subject's DWI, gradients and masks are validated before anything is
    written. The folder is built under a temporary name beside ``out_dir`` and
    renamed at the end, so an interrupted or failed run leaves no output.
    Re-running with unchanged inputs and config returns at once.

    Parameters
    ----------
    bids_root : path-like
        BIDS dataset (simulated or real; sessions and derivatives optional).
    config : PrepareConfig
        Grid, shell and derivative settings.
    out_dir : path-like
        Destination folder (replaced when inputs or config changed).
    progress : bool
        Show a tqdm progress bar.
    n_jobs : int, optional
        Worker processes (default: up to 2, the CPU count permitting). The
        arrays are the same whatever ``n_jobs``.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    DwiInputError
        For any malformed input; nothing is written then.
    """
    root = Path(bids_root)
    out_dir = Path(out_dir)
    entries = find_bids_dwi(root, session=config.session, pipeline=config.pipeline, acquisition=config.acquisition)
    participants = read_participants(root)
    n_channels, sh_order = _validate_inputs(entries, config)
    cfg_hash = config.hash()
    input_hash = config_hash(_fingerprint(root, entries))
    if _is_up_to_date(out_dir, cfg_hash, input_hash):
        return out_dir

    grid = NetworkGrid(config.grid)
    # Folders a killed run was building (its pid is gone) are not results.
    remove_stale_temp(out_dir.parent, recursive=False)
    # Named after this process, and with ordinary permissions: it becomes out_dir.
    tmp = atomic_dir(out_dir, "tmp")
    try:
        records = _write_subjects(tmp, root, entries, config, grid, n_channels, sh_order,
                                  progress=progress, n_jobs=n_jobs)
        meta = _cohort_meta(tmp, root, entries, participants, config, grid, records, n_channels=n_channels,
                            sh_order=sh_order, cfg_hash=cfg_hash, input_hash=input_hash)
        write_json_atomic(tmp / "meta.json", meta)
        _swap_into_place(tmp, out_dir)
        _warn_if_brain_cut_off(records.brain_kept, grid)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


@dataclass(frozen=True)
class _SubjectRecords:
    """What ``meta.json`` and the small arrays record of every subject, filled in subject order."""

    affines: np.ndarray  # (S, 4, 4) input-grid affines
    bvals: np.ndarray  # (S, C)
    bvecs: np.ndarray  # (S, C, 3)
    crops: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    input_shapes: list[list[int]] = dataclasses.field(default_factory=list)
    voxel_sizes: list[list[float]] = dataclasses.field(default_factory=list)
    sessions: list[str | None] = dataclasses.field(default_factory=list)
    labels_present: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    brain_source: dict[str, str] = dataclasses.field(default_factory=dict)
    brain_kept: dict[str, float] = dataclasses.field(default_factory=dict)
    acquired: dict[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def empty(cls, n: int, n_channels: int) -> "_SubjectRecords":
        """Records of ``n`` subjects with ``n_channels`` channels, none filled yet."""
        return cls(affines=np.zeros((n, 4, 4)), bvals=np.zeros((n, n_channels)), bvecs=np.zeros((n, n_channels, 3)))

    def add(self, i: int, entry: BidsDwi, one: dict[str, Any]) -> None:
        """Record subject ``i`` from its :func:`_prepare_subject` result."""
        self.affines[i], self.bvals[i], self.bvecs[i] = one["affine"], one["bvals"], one["bvecs"]
        self.crops.append(one["crop"])
        self.input_shapes.append(one["input_shape"])
        self.voxel_sizes.append(one["voxel_size"])
        self.labels_present[entry.subject] = one["labels"]
        self.brain_source[entry.subject] = one["brain_source"]
        self.brain_kept[entry.subject] = one["brain_kept"]
        self.acquired[entry.subject] = one["n_acquired"]
        self.sessions.append(entry.session)


def _open_arrays(tmp: Path, config: PrepareConfig, n: int, n_channels: int,
                 grid: NetworkGrid) -> dict[str, np.ndarray]:
    """The network-grid ``.npy`` files of ``n`` subjects, memory-mapped for writing one subject at a time."""
    return {
        "attenuation": np.lib.format.open_memmap(
            tmp / "attenuation.npy", mode="w+", dtype=config.dtype, shape=(n, n_channels, *grid.shape)
        ),
        **{
            name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=bool, shape=(n, *grid.shape))
            for name in MASK_NAMES
        },
        "fa": np.lib.format.open_memmap(tmp / "fa.npy", mode="w+", dtype=np.float32, shape=(n, *grid.shape)),
        "md": np.lib.format.open_memmap(tmp / "md.npy", mode="w+", dtype=np.float32, shape=(n, *grid.shape)),
    }


def _write_subjects(tmp: Path, root: Path, entries: Sequence[BidsDwi], config: PrepareConfig, grid: NetworkGrid,
                    n_channels: int, sh_order: int | None, *, progress: bool,
                    n_jobs: int | None) -> _SubjectRecords:
    """Prepare every subject (in worker processes when ``n_jobs`` > 1) and write all ``.npy`` files to ``tmp``."""
    from tqdm.auto import tqdm

    n = len(entries)
    arrays = _open_arrays(tmp, config, n, n_channels, grid)
    records = _SubjectRecords.empty(n, n_channels)
    n_jobs = max(1, min(n_jobs or min(2, os.cpu_count() or 1), n))
    jobs = [(e, root, config, grid, sh_order) for e in entries]
    pool = None
    if n_jobs > 1:
        pool = process_pool(n_jobs, "fork")
        done = pool.map(_prepare_one, jobs)
    else:
        done = map(_prepare_one, jobs)
    try:
        for i, (e, one) in enumerate(tqdm(zip(entries, done), total=n, desc="prepare", unit="subject",
                                          disable=not progress)):
            for name, value in one["arrays"].items():
                arrays[name][i] = value
            records.add(i, e, one)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    for arr in arrays.values():
        arr.flush()
    del arrays
    np.save(tmp / "affines.npy", records.affines)
    np.save(tmp / "bvals.npy", records.bvals)
    np.save(tmp / "bvecs.npy", records.bvecs)
    return records


def _cohort_meta(tmp: Path, root: Path, entries: Sequence[BidsDwi], participants: Any, config: PrepareConfig,
                 grid: NetworkGrid, records: _SubjectRecords, *, n_channels: int, sh_order: int | None,
                 cfg_hash: str, input_hash: str) -> dict[str, Any]:
    """The content of ``meta.json``, with the sha256 of every ``.npy`` file already written to ``tmp``."""
    array_names = ["attenuation", *MASK_NAMES, "fa", "md", "affines", "bvals", "bvecs"]
    subjects = [e.subject for e in entries]
    rows = participants.reindex(subjects)
    meta = {
        "format_version": _FORMAT_VERSION,
        "subjects": subjects,
        "sessions": records.sessions,
        "participants": json.loads(rows.reset_index().to_json(orient="records")),
        "participant_columns": list(participants.columns),
        "crops": records.crops,
        "affines": records.affines.tolist(),
        "input_shapes": records.input_shapes,
        "voxel_sizes": records.voxel_sizes,
        "orientations": ["".join(nib.aff2axcodes(a)) for a in records.affines],
        "grid": list(grid.shape),
        "n_channels": n_channels,
        "attenuation_dtype": config.dtype,
        "arrays": array_names,
        # checked by load_prepared: a file changed after this point is refused
        "sha256": {f"{name}.npy": sha256_file(tmp / f"{name}.npy") for name in array_names},
        "labels_present": records.labels_present,
        "brain_mask_source": records.brain_source,
        "brain_fraction_in_grid": records.brain_kept,
        "sources": {e.subject: str(e.dwi.relative_to(root)) for e in entries},
        "bids_root": str(root.resolve()),
        "config": dataclasses.asdict(config),
        "config_hash": cfg_hash,
        "input_hash": input_hash,
        "provenance": provenance(config_hash=cfg_hash, input_hash=input_hash),
    }
    if config.directions is not None:
        meta["directions"] = {"set": config.directions, "sh_order": sh_order, "acquired": records.acquired}
    return meta


def _warn_if_brain_cut_off(brain_kept: dict[str, float], grid: NetworkGrid) -> None:
    """Warn (at the caller of :func:`prepare_cohort`) when the grid misses more than 1% of a subject's brain."""
    worst = min(brain_kept, key=brain_kept.get)
    if brain_kept[worst] < 0.99:
        warnings.warn(
            f"the network grid {grid.shape} cuts off brain: only {brain_kept[worst]:.1%} of {worst}'s "
            "brain mask lies inside it (see brain_fraction_in_grid in meta.json). Use a larger "
            "prepare.grid if the whole brain should be analysed.",
            stacklevel=3,
        )


def load_prepared(out_dir: str | os.PathLike, *, mmap: bool = True) -> PreparedCohort:
    """Open a folder written by :func:`prepare_cohort`.

    Parameters
    ----------
    out_dir : path-like
        The prepared folder.
    mmap : bool
        Memory-map the arrays (default) instead of reading them into memory.

    Returns
    -------
    PreparedCohort

    Raises
    ------
    FileNotFoundError
        If the folder or ``meta.json`` is missing (run ``prepare_cohort`` first).
    IntegrityError
        If an array file does not match the sha256 in ``meta.json`` or
        cannot be read, or the attenuation holds values outside [0, 1]
        (NaN included). The attenuation, the one large file, is checked on
        first access to its values rather than here.

    Warns
    -----
    UserWarning
        For a folder written before ``meta.json`` recorded sha256s (its
        arrays cannot be checked; prepare the cohort again).
    """
    import pandas as pd

    root = Path(out_dir)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not found. Run dmrilib.dataset.prepare_cohort (dmri prepare) first.")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != _FORMAT_VERSION:
        raise ValueError(
            f"{meta_path}: format version {meta.get('format_version')} is not {_FORMAT_VERSION}; "
            "prepare the cohort again."
        )
    mode = "r" if mmap else None
    hashes = meta.get("sha256")
    if hashes is None:
        warnings.warn(f"{meta_path}: records no sha256 of its arrays (prepared by an older dmrilib), so they "
                      "cannot be checked for corruption. Prepare the cohort again to record them.", stacklevel=2)
    remedy = "Prepare the cohort again (dmri prepare, or rerun the cohort job)."

    def _check(name: str) -> None:
        if hashes is not None:
            if f"{name}.npy" not in hashes:
                raise IntegrityError(f"{meta_path}: records no sha256 for {name}.npy. {remedy}")
            check_sha256(root / f"{name}.npy", hashes[f"{name}.npy"], what_to_do=remedy)

    def _load(name: str, check: bool = True) -> np.ndarray:
        path = root / f"{name}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing from the prepared cohort. {remedy}")
        if check:
            _check(name)
        try:
            return np.load(path, mmap_mode=mode, allow_pickle=False)
        except ValueError as exc:
            raise IntegrityError(f"{path}: not a readable .npy array ({exc}). {remedy}") from exc

    att = _load("attenuation", check=False)

    def _check_attenuation() -> None:
        _check("attenuation")
        check_unit_interval(root / "attenuation.npy", att)
    subjects = list(meta["subjects"])
    participants = pd.DataFrame.from_records(meta["participants"])
    if "participant_id" in participants.columns:
        participants = participants.set_index("participant_id")
    else:
        participants = pd.DataFrame(index=pd.Index(subjects, name="participant_id"))
    return PreparedCohort(
        root=root,
        subjects=subjects,
        participants=participants,
        attenuation=_AsFloat32(att, check=_check_attenuation),
        **{name: _load(name) for name in MASK_NAMES},
        fa=_load("fa"),
        md=_load("md"),
        crops=[GridCrop.from_dict(c) for c in meta["crops"]],
        affines=np.array(_load("affines")),
        input_shapes=[tuple(s) for s in meta["input_shapes"]],
        bvals=np.array(_load("bvals")),
        bvecs=np.array(_load("bvecs")),
        meta=meta,
    )


def to_input_grid(prepared: PreparedCohort, subject: str, map_on_network_grid: np.ndarray) -> nib.Nifti1Image:
    """Put a network-grid map back on a subject's DWI grid as a NIfTI image.

    Parameters
    ----------
    prepared : PreparedCohort
    subject : str
        ``"sub-<label>"`` (or ``"<label>"``).
    map_on_network_grid : ndarray, shape (X, Y, Z[, ...])
        E.g. an anomaly map from :func:`dmrilib.scoring.predict_maps`.

    Returns
    -------
    nibabel.Nifti1Image
        On the subject's input grid with its affine; zero outside the crop
        window. Boolean maps become uint8.
    """
    i = int(prepared.index([subject])[0])
    grid_map = np.asarray(map_on_network_grid)
    if tuple(grid_map.shape[:3]) != prepared.grid:
        raise ValueError(
            f"map has shape {grid_map.shape}, expected the network grid {prepared.grid} of {prepared.root}."
        )
    return prepared.crops[i].to_nifti(grid_map, prepared.affines[i])
