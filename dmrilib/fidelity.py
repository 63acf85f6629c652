"""Paper or authors' code: every known difference as one profile key.

The article (Weninger, Ecke et al., Sci Rep 2023) and the authors' public
repository (``JarekE/Anomaly-detection-in-diffusion-MRI-for-brain-tumor-patients``)
disagree, or the article is silent, in many details that change results.
This module owns the list (:data:`DIFFERENCES`): one row per difference,
with the profile key that switches it and the value each side uses.

A profile chooses a side with the top-level key ``fidelity`` (``code``, the
default of every shipped profile, or ``paper``); each section dataclass that
holds switched keys has its own ``fidelity`` field, set from the top-level
key, and calls :func:`resolve` so that every key left unset (``None``) takes
the value of that side. A key written in the profile always wins, which is how
the small profiles keep their reductions (e.g. ``quick`` trains 4 epochs
whatever the side says) and how ``make ablation`` flips one row at a time.

``paper`` means the article's text; where the article is silent it means what
this package did before it followed the code (the row says so).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dmrilib.variants import DAE, MODELS, RECDISC

__all__ = ["FIDELITIES", "Difference", "DIFFERENCES", "defaults", "resolve", "difference", "ablation_rows"]

#: The two sides. ``code`` is the default of every profile.
FIDELITIES = ("code", "paper")

_REPO = "JarekE/Anomaly-detection-in-diffusion-MRI-for-brain-tumor-patients"


@dataclass(frozen=True)
class Difference:
    """One difference between the article and the authors' code.

    Attributes
    ----------
    number : int
        Row number (stable; the issue's numbering).
    item : str
        What differs, in a few words.
    section, key : str
        The profile key that switches it (``<section>.<key>``).
    code, paper : Any
        The value of the key under ``fidelity: code`` and ``fidelity: paper``.
    code_says, paper_says : str
        What the authors' code does (with its file) and what the article says.
    ablate : bool
        Measured by ``make ablation`` (the rows that change results most).
    scale : bool
        In the ablation, flip by the ratio ``paper / code`` instead of to the
        paper's value, because small profiles set their own value (the
        learning rate of a 4-epoch run).
    models : tuple of str
        The models whose results the key can change.
    """

    number: int
    item: str
    section: str
    key: str
    code: Any
    paper: Any
    code_says: str
    paper_says: str
    ablate: bool = False
    scale: bool = False
    models: tuple[str, ...] = MODELS

    @property
    def setting(self) -> str:
        return f"{self.section}.{self.key}"

    def value(self, fidelity: str) -> Any:
        _check_fidelity(fidelity)
        return self.code if fidelity == "code" else self.paper


DIFFERENCES: tuple[Difference, ...] = (
    Difference(1, "learning rate", "train", "lr", 1e-3, 1e-4,
               "Adam lr 1e-3 (config.py); their hyper-parameter sheet shows lower validation loss at 1e-3 "
               "than at 1e-4",
               "not stated (this package used 1e-4)", ablate=True, scale=True),
    Difference(2, "training epochs", "train", "epochs", 250, 500,
               "250 (config.py)", "500"),
    Difference(3, "isotropic disturbance", "train", "jood_isotropic", "per_patch", "per_voxel",
               "one uniform value per patch, the same in every voxel and direction "
               "(DataProcessing/anomaly_generation.py)",
               "one value per voxel, the same in every direction", ablate=True, models=(RECDISC,)),
    Difference(4, "disturbed copies", "train", "jood_copies", "fixed", "fresh",
               "copies_per_subject disturbed copies of each training subject made once per run and reused "
               "every epoch (Dataset.py)",
               "the data \"expanded to four input images\"; silent on when they are drawn (this package drew "
               "fresh ones every epoch)", ablate=True, models=(RECDISC,)),
    Difference(4, "validation copies", "train", "val_copies", 4, 1,
               "4 fixed disturbed copies per validation subject (Dataset.py)",
               "not stated (this package used 1)", models=(RECDISC,)),
    Difference(5, "patch geometry", "train", "jood_geometry", "centred", "anywhere",
               "integer half-size r in the radius range, semi-axes r x U(0.5, 1), axis-aligned; centre at the "
               "grid centre + an offset of jood_centre_offset voxels per axis whose signs are drawn once per "
               "patch (one octant), accepted inside the eroded brain without CSF "
               "(DataProcessing/anomaly_generation.py)",
               "ellipsoids \"varied in size\" inside the brain (this package: semi-axes U(radius), rotated, "
               "centre anywhere in the brain incl. CSF)", ablate=True, models=(RECDISC,)),
    Difference(6, "uniform disturbance range", "train", "jood_uniform_width", 0.24, 0.12,
               "U(mean - sd, mean + sd): width 2 x 0.12 (DataProcessing/anomaly_generation.py)",
               "range chosen as the standard deviation: width 0.12", models=(RECDISC,)),
    Difference(7, "Mix configuration", "train", "jood_mix", "weighted", "thirds",
               "isotropic (uniform) 34 %, random 33 %, directional 33 % (DataProcessing/anomaly_generation.py)",
               "not detailed (this package: appearance in thirds, normal or uniform in halves)", models=(RECDISC,)),
    Difference(8, "DAE anomaly map", "model", "dae_map", "mean_normalised", "abs_sum",
               "|mean over channels of (x - x_hat / max x_hat)| (postprocessing.py); the fixed 0.3 threshold "
               "is on this scale",
               "the absolute reconstruction error summed over channels", ablate=True, models=(DAE,)),
    Difference(9, "region of the threshold rules", "evaluate", "threshold_region", "eroded_brain_no_csf", "brain",
               "map zeroed outside the 3^3-eroded brain without CSF before Otsu, pooling and opening "
               "(quantitative_analysis.py)",
               "white and grey matter (this package applied the rules on the whole brain incl. CSF)",
               ablate=True),
    Difference(10, "pooled maximum", "evaluate", "pool_stride", "block", 1,
               "maximum of the map mean-pooled in non-overlapping 16^3 blocks (block_reduce)",
               "T = max(I * f_local): a sliding window", ablate=True),
    Difference(11, "KL term", "train", "kl_reduction", "sum", "mean",
               "summed over latent dimensions, averaged over the batch (VanillaVAE loss)",
               "1/2 1/n sum_j (...): read by this package as a mean over dimensions", ablate=True, models=(DAE,)),
    Difference(12, "DAE latent at test time", "model", "dae_test_latent", "sample", "mean",
               "z sampled from the posterior also when predicting", "not stated (this package used the mean)", models=(DAE,)),
    Difference(13, "DAE architecture", "model", "dae_architecture", "code", "paper",
               "fc 40960->512 then mu/logvar 512->LSD; decoder ConvT k3 s2 p1 op1; head ConvT + BN + "
               "LeakyReLU + 1x1 conv (+ sigmoid): 52,029,312 parameters at LSD 512",
               "encoder/decoder of the stated widths (this package: two 40960->LSD maps, ConvT k4, no head: "
               "78,987,072 parameters)", ablate=True, models=(DAE,)),
    Difference(14, "RecDiscNet architecture", "model", "recdisc_architecture", "code", "paper",
               "upsampling ConvT k3 s2 p1 op1 at the same width + InstanceNorm + ReLU, then a double conv "
               "halving the width; InstanceNorm without affine; ReLU: 123,540,977 parameters",
               "widths as stated, LeakyReLU stated for the DAE only (this package: ConvT k2 halving the width, "
               "affine InstanceNorm, LeakyReLU: 86,208,065 parameters)", ablate=True, models=(RECDISC,)),
    Difference(14, "RecDiscNet discriminator depth", "model", "disc_depth", 3, 4,
               "discriminative U-Net 16-32-64-128: 3 poolings",
               "not stated (this package used 4 poolings)", models=(RECDISC,)),
    Difference(15, "input brain mask", "prepare", "input_mask_erosion", 1, 0,
               "brain mask eroded by a 3^3 cube, input zeroed outside it (processing_data.py)",
               "not stated (this package zeroed the input outside the brain mask, no erosion)"),
    Difference(16, "folds", "train", "fold_split", "contiguous", "random",
               "contiguous slices of the sorted subject list", "\"7 random subsets\""),
    Difference(17, "aggregation over folds", "evaluate", "aggregate", "per_fold", "pooled",
               "each fold's patient mean and population SD, averaged over folds (quantitative_analysis.py)",
               "not stated (this package: mean and SD over all patient x fold rows)"),
    Difference(18, "how a disturbance enters the volume", "train", "jood_insertion", "authors", "replace",
               "the signal is zeroed where the patch is positive, then the patch is added: positive noise "
               "replaces, negative noise is added, nothing is clipped; the target is the whole ellipsoid "
               "(DataProcessing/anomaly_generation.py)",
               "not stated (this package replaced the patch, clipped to [0, 1], and marked the voxels that "
               "changed)", models=(RECDISC,)),
    Difference(19, "training visiting order", "train", "shuffle", "fixed", "every_epoch",
               "the same order every epoch (Dataloader.py: shuffle=False): the DAE visits the sorted subject "
               "list (config.py); RecDiscNet's copies follow one shuffle (Dataset.py, row 4), which this "
               "package also draws once for fresh copies",
               "not stated (this package reshuffled every epoch)"),
)


def _check_fidelity(fidelity: Any) -> None:
    if fidelity not in FIDELITIES:
        raise ValueError(f"fidelity must be one of {list(FIDELITIES)}, got {fidelity!r}.")


def difference(setting: str) -> Difference:
    """The row of a ``<section>.<key>`` setting."""
    for row in DIFFERENCES:
        if row.setting == setting:
            return row
    raise KeyError(f"{setting!r} is not a fidelity setting; known: {[r.setting for r in DIFFERENCES]}")


def defaults(section: str, fidelity: str) -> dict[str, Any]:
    """Key -> value of every switched key of ``section`` under ``fidelity``."""
    _check_fidelity(fidelity)
    return {row.key: row.value(fidelity) for row in DIFFERENCES if row.section == section}


def resolve(config: Any, section: str) -> None:
    """Fill the unset (``None``) switched keys of a frozen section dataclass.

    Called from the dataclasses' ``__post_init__`` so that their fields, and
    every config hash of them, hold the values actually used.

    Raises
    ------
    ValueError
        An unknown ``config.fidelity``.
    """
    fidelity = getattr(config, "fidelity")
    if fidelity not in FIDELITIES:
        raise ValueError(f"{section}.fidelity must be one of {list(FIDELITIES)}, got {fidelity!r}.")
    names = {f.name for f in dataclasses.fields(config)}
    for key, value in defaults(section, fidelity).items():
        if key in names and getattr(config, key) is None:
            object.__setattr__(config, key, value)


def ablation_rows() -> tuple[Difference, ...]:
    """The rows ``make ablation`` measures, one per row number (first key of each)."""
    seen, rows = set(), []
    for row in DIFFERENCES:
        if row.ablate and row.number not in seen:
            seen.add(row.number)
            rows.append(row)
    return tuple(rows)
