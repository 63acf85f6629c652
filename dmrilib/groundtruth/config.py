"""Settings of the ground-truth pipeline: tumour segmentation and registration.

Torch- and ANTs-free, so a profile can be validated without importing either.
:class:`SegConfig` is the profile section ``groundtruth`` (U-Net, its
training set and inference); :class:`RegConfig` is the section
``registration`` (structural -> diffusion registration with ANTs).

The defaults are sized for the ``quick`` profile on two CPU cores (structural
grid 83 x 98 x 87 at 2.4 mm, diffusion grid 45 x 45 x 27 at 4.8 mm): the whole
ground-truth stage (16 training subjects simulated, training, 32 patients
segmented and registered) takes about two minutes there. The paper used a BraTS-trained
U-Net whose size it does not report; GPU profiles raise the widths, epochs
and training subjects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["SegConfig", "RegConfig", "TRAINING_FIELDS"]

#: SegConfig fields that change the trained weights (the checkpoint's config
#: hash covers these, not the inference or runtime settings, so changing the
#: threshold or the device never invalidates a trained network).
TRAINING_FIELDS = ("widths", "stride", "norm", "negative_slope", "epochs", "batch_size", "lr", "lr_gamma", "crop",
                   "lesion_crop_fraction", "dice_weight", "bce_weight", "n_train_patients",
                   "n_train_healthy", "seed")


def _positive_int(section: str, name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{section}.{name} must be a positive integer, got {value!r}.")
    return int(value)


def _int_tuple(section: str, name: str, value, *, length: int | None = None, minimum: int = 1) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{section}.{name} must be a list of integers, got {value!r}.") from None
    if not out or any(v < minimum for v in out) or (length is not None and len(out) != length):
        size = f"{length} " if length else ""
        raise ValueError(f"{section}.{name} must be a list of {size}integers >= {minimum}, got {list(value)!r}.")
    return out


@dataclass(frozen=True)
class SegConfig:
    """Tumour segmentation U-Net: architecture, training set, training, inference.

    Profile section ``groundtruth``.

    Parameters
    ----------
    widths : tuple of int
        Channels of each U-Net level; ``depth = len(widths) - 1`` poolings.
        The network sees the foreground's bounding box, zero-padded to a
        multiple of :attr:`divisor` (``stride * 2 ** depth``).
    stride : int
        The U-Net works on ``stride``-times coarser voxels (average-pooled
        input, trilinearly upsampled logits; loss and masks stay on the
        structural grid): ``stride**3`` times cheaper. 1 (default) keeps the
        structural resolution; on quick, 2 was faster but less accurate
        (over-segmented boundaries).
    norm : {"batch", "instance", "none"}
        Normalisation layers. ``none`` (default) behaves identically on
        training windows and whole volumes. With ``batch`` and ``crop`` the
        statistics are recomputed on whole training volumes after the last
        epoch; ``instance`` statistics differ between windows and volumes
        (measured on quick: both were less accurate and less stable across
        seeds than ``none`` at this training budget).
    negative_slope : float
        LeakyReLU slope.
    n_train_patients, n_train_healthy : int
        Simulated training subjects. They come from their own seed stream
        (:func:`dmrilib.groundtruth.training_seeds`) and are never subjects of
        the evaluation cohort.
    epochs : int
        Passes over the training subjects.
    batch_size : int
        Volumes (or windows) per optimiser step.
    lr : float
        Adam learning rate (3e-3; 5e-3 collapsed to all-background without
        normalisation on quick).
    lr_gamma : float
        ExponentialLR decay per epoch (1.0: constant).
    crop : (int, int, int) or None
        Train on random windows of this size (each a multiple of
        :attr:`divisor`) instead of whole volumes; prediction always sees
        whole volumes. None trains on whole volumes.
    lesion_crop_fraction : float
        With ``crop``: fraction of windows centred on a random lesion voxel
        (the rest are uniform), so small lesions are seen often enough.
    dice_weight, bce_weight : float
        Loss ``dice_weight * soft Dice + bce_weight * BCE``.
    threshold : float
        Probability above which a voxel is tumour (0.5).
    keep_largest : int
        Keep only this many largest connected components of the predicted
        mask (26-connectivity); 0 keeps all.
    checkpoint_every : int
        Write ``checkpoint-last.pt`` (the resume point) every this many epochs
        and after the last one.
    precision : {"fp32", "bf16"}
        ``bf16``: forward passes under bfloat16 autocast (loss in fp32).
    device : {"auto", "cpu", "cuda"}
        ``auto``: CUDA when available.
    num_threads : int or None
        CPU threads for torch (None: leave torch's setting alone).
    seed : int
        Initial weights, shuffling and window positions.
    """

    widths: tuple[int, ...] = (8, 16, 32)
    stride: int = 1
    norm: Literal["batch", "instance", "none"] = "none"
    negative_slope: float = 0.01
    n_train_patients: int = 12
    n_train_healthy: int = 4
    epochs: int = 12
    batch_size: int = 2
    lr: float = 3e-3
    lr_gamma: float = 1.0
    crop: tuple[int, int, int] | None = (48, 48, 32)
    lesion_crop_fraction: float = 0.5
    dice_weight: float = 1.0
    bce_weight: float = 1.0
    threshold: float = 0.5
    keep_largest: int = 0
    checkpoint_every: int = 1
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        section = "groundtruth"
        widths = _int_tuple(section, "widths", self.widths)
        if len(widths) < 2:
            raise ValueError(f"groundtruth.widths needs at least two levels (one pooling), got {list(widths)}.")
        set_("widths", widths)
        set_("stride", _positive_int(section, "stride", self.stride))
        if self.norm not in ("batch", "instance", "none"):
            raise ValueError(f"groundtruth.norm must be 'batch', 'instance' or 'none', got {self.norm!r}.")
        for name in ("epochs", "batch_size", "checkpoint_every"):
            set_(name, _positive_int(section, name, getattr(self, name)))
        for name in ("n_train_patients", "n_train_healthy", "keep_largest"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or int(value) < 0:
                raise ValueError(f"groundtruth.{name} must be a non-negative integer, got {value!r}.")
            set_(name, int(value))
        if self.n_train_patients < 1:
            raise ValueError("groundtruth.n_train_patients must be at least 1: the network must see tumours.")
        if not 0.0 <= float(self.negative_slope) < 1.0:
            raise ValueError(f"groundtruth.negative_slope must be in [0, 1), got {self.negative_slope!r}.")
        if not (math.isfinite(float(self.lr)) and float(self.lr) > 0):
            raise ValueError(f"groundtruth.lr must be positive, got {self.lr!r}.")
        if not 0 < float(self.lr_gamma) <= 1:
            raise ValueError(f"groundtruth.lr_gamma must be in (0, 1], got {self.lr_gamma!r}.")
        for name in ("dice_weight", "bce_weight"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"groundtruth.{name} must be non-negative, got {getattr(self, name)!r}.")
        if self.dice_weight == 0 and self.bce_weight == 0:
            raise ValueError("groundtruth: dice_weight and bce_weight are both 0; the loss would be zero.")
        if not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"groundtruth.threshold must be a probability in (0, 1), got {self.threshold!r}.")
        if not 0.0 <= float(self.lesion_crop_fraction) <= 1.0:
            raise ValueError(f"groundtruth.lesion_crop_fraction must be in [0, 1], got {self.lesion_crop_fraction!r}.")
        if self.crop is not None:
            crop = _int_tuple(section, "crop", self.crop, length=3)
            bad = [c for c in crop if c % self.divisor]
            if bad:
                raise ValueError(f"groundtruth.crop {list(crop)} must be multiples of stride * 2**depth = "
                                 f"{self.divisor} (depth = len(widths) - 1 = {self.depth}).")
            set_("crop", crop)
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"groundtruth.precision must be 'fp32' or 'bf16', got {self.precision!r}.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"groundtruth.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}.")
        if self.num_threads is not None:
            set_("num_threads", _positive_int(section, "num_threads", self.num_threads))
        for name in ("negative_slope", "lr", "lr_gamma", "lesion_crop_fraction", "dice_weight", "bce_weight",
                     "threshold"):
            set_(name, float(getattr(self, name)))
        set_("seed", int(self.seed))

    @property
    def depth(self) -> int:
        """Number of poolings of the U-Net."""
        return len(self.widths) - 1

    @property
    def divisor(self) -> int:
        """Spatial sizes the network sees are multiples of this (``stride * 2 ** depth``)."""
        return self.stride * 2 ** self.depth

    def training_settings(self) -> dict:
        """The fields that determine the trained weights (see :data:`TRAINING_FIELDS`)."""
        return {name: getattr(self, name) for name in TRAINING_FIELDS}


@dataclass(frozen=True)
class RegConfig:
    """Registration of the structural T1w to diffusion space (ANTs).

    Profile section ``registration``. Two stages, like ANTs' ``SyN``
    transform: a linear stage (centre-of-mass start, then rigid or affine)
    and, optionally, a symmetric diffeomorphic (SyN) stage started from it.
    Mattes mutual information by default, because b0 and T1w have different
    contrasts (CSF is bright on b0, dark on T1w). Defaults: rigid, 3 levels,
    no SyN: about 1.3 s per subject at 4.8 mm (quick) and 13 s at the
    paper's 2.4 mm on one core, mean error 0.6 and 0.4 mm on the simulated
    cohort.

    Parameters
    ----------
    linear : {"rigid", "affine"}
        Linear stage. Rigid is right for the same head in two scans; affine
        also absorbs scaling and shear (e.g. gradient nonlinearity).
    linear_iterations, linear_shrink_factors, linear_smoothing_sigmas : tuple of int
        One entry per resolution level of the linear stage (smoothing in voxels).
    syn : bool
        Add the SyN stage (the paper's choice). ``False`` (default) stops
        after the linear stage: on the simulated cohort (3 mm peak EPI
        distortion) SyN with mutual information *increased* the error at
        4.8 mm and at 2.4 mm diffusion voxels (mean 0.6 -> 1.2 mm and
        0.4 -> 0.7 mm), see benchmarks/RESULTS.md.
    syn_iterations : tuple of int
        SyN iterations per level, coarse to fine; ANTsPy derives the shrink
        factors ``2**(n-1), ..., 2, 1`` and smoothing ``n-1, ..., 0`` voxels
        from the number of levels ``n``.
    restrict_deformation : (float, float, float) or None
        Weights of the SyN displacement components in physical (x, y, z)
        space; ``(0, 1, 0)`` lets SyN move voxels only along y, the
        phase-encode axis of an axial EPI on an axis-aligned grid, where the
        susceptibility distortion lives. None: unrestricted SyN.
    syn_metric : {"mattes", "cc"}
        Similarity of the SyN stage: Mattes mutual information, or ANTs'
        local (squared) cross-correlation, which also fits contrasts that
        are locally inverted (b0 vs T1w: CSF bright vs dark).
    cc_radius : int
        Neighbourhood radius (voxels) of the ``cc`` metric.
    grad_step, flow_sigma, total_sigma : float
        SyN gradient step and the smoothing (voxels) of the update and total
        fields (ANTs defaults 0.2, 3, 0; ``total_sigma`` 1 regularises SyN
        and roughly halved its excess error in our measurements).
    metric_bins : int
        Histogram bins of the mutual information.
    sampling_rate : float
        Fraction of voxels (random, seeded) the linear stage's metric uses;
        1.0 uses all of them.
    interpolation : {"nearest", "label"}
        How structural masks are carried to the diffusion grid: nearest
        neighbour, or ``label`` (ANTs' ``genericLabel``: each label's
        indicator interpolated linearly, the largest wins).
    threads : int
        ITK threads (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``). ITK reads it
        once per process, when the first ANTs image is made. Only 1 gives
        bit-identical results for a seed (ITK's multi-threaded mutual
        information sums in a varying order); use more cores by registering
        several subjects in parallel processes (``run_groundtruth_cohort(n_jobs=...)``).
    seed : int
        ANTs' random seed (metric sampling).
    """

    linear: Literal["rigid", "affine"] = "rigid"
    linear_iterations: tuple[int, ...] = (100, 50, 25)
    linear_shrink_factors: tuple[int, ...] = (4, 2, 1)
    linear_smoothing_sigmas: tuple[int, ...] = (2, 1, 0)
    syn: bool = False
    syn_iterations: tuple[int, ...] = (40, 20)
    restrict_deformation: tuple[float, float, float] | None = (0.0, 1.0, 0.0)
    syn_metric: Literal["mattes", "cc"] = "mattes"
    cc_radius: int = 2
    grad_step: float = 0.2
    flow_sigma: float = 3.0
    total_sigma: float = 0.0
    metric_bins: int = 32
    sampling_rate: float = 0.25
    interpolation: Literal["nearest", "label"] = "nearest"
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        section = "registration"
        if self.linear not in ("rigid", "affine"):
            raise ValueError(f"registration.linear must be 'rigid' or 'affine', got {self.linear!r}.")
        its = _int_tuple(section, "linear_iterations", self.linear_iterations, minimum=0)
        shrink = _int_tuple(section, "linear_shrink_factors", self.linear_shrink_factors)
        sigmas = _int_tuple(section, "linear_smoothing_sigmas", self.linear_smoothing_sigmas, minimum=0)
        if not len(its) == len(shrink) == len(sigmas):
            raise ValueError(f"registration: linear_iterations {list(its)}, linear_shrink_factors {list(shrink)} "
                             f"and linear_smoothing_sigmas {list(sigmas)} need one entry per level each.")
        set_("linear_iterations", its)
        set_("linear_shrink_factors", shrink)
        set_("linear_smoothing_sigmas", sigmas)
        if not isinstance(self.syn, bool):
            raise ValueError(f"registration.syn must be true or false, got {self.syn!r}.")
        set_("syn_iterations", _int_tuple(section, "syn_iterations", self.syn_iterations, minimum=0))
        if self.restrict_deformation is not None:
            try:
                weights = tuple(float(w) for w in self.restrict_deformation)
            except TypeError:
                weights = ()
            if len(weights) != 3 or min(weights) < 0 or max(weights) <= 0:
                raise ValueError("registration.restrict_deformation must be null or three non-negative weights, "
                                 f"not all zero (e.g. [0, 1, 0]), got {self.restrict_deformation!r}.")
            set_("restrict_deformation", weights)
        if self.syn_metric not in ("mattes", "cc"):
            raise ValueError(f"registration.syn_metric must be 'mattes' or 'cc', got {self.syn_metric!r}.")
        set_("cc_radius", _positive_int(section, "cc_radius", self.cc_radius))
        for name in ("grad_step", "flow_sigma", "total_sigma"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0) or (name == "grad_step" and value == 0):
                raise ValueError(f"registration.{name} must be {'positive' if name == 'grad_step' else 'non-negative'}"
                                 f", got {getattr(self, name)!r}.")
            set_(name, value)
        set_("metric_bins", _positive_int(section, "metric_bins", self.metric_bins))
        if not 0 < float(self.sampling_rate) <= 1:
            raise ValueError(f"registration.sampling_rate must be in (0, 1], got {self.sampling_rate!r}.")
        set_("sampling_rate", float(self.sampling_rate))
        if self.interpolation not in ("nearest", "label"):
            raise ValueError(f"registration.interpolation must be 'nearest' or 'label', got {self.interpolation!r}.")
        set_("threads", _positive_int(section, "threads", self.threads))
        set_("seed", int(self.seed))
