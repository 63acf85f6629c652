"""The paper's two anomaly-detection networks: DAE and RecDiscNet.

:class:`ModelConfig` (profile section ``model``) holds the sizes that small
profiles shrink and the choices where the article and the authors' code
differ (architecture, DAE map, test-time latent; :mod:`dmrilib.fidelity`);
:func:`build_model` turns a model name and a variant id
(``lsd512-sigmoid`` for the DAE; RecDiscNet variants only change the JOOD
noise, see :class:`dmrilib.noise.JoodConfig`) into a network.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from dmrilib import variants as _names  # the model names (DAE here is the network class)
from dmrilib.fidelity import resolve as resolve_fidelity
from dmrilib.variants import MODELS, check_model, parse_dae_variant, parse_recdisc_variant

if TYPE_CHECKING:
    from torch import nn

    from dmrilib.models.dae import DAE, KL_WEIGHT, DAEOutput, dae_loss, kl_divergence
    from dmrilib.models.recdisc import RecDiscNet, RecDiscOutput, recdisc_loss

__all__ = [
    "ModelConfig",
    "DAE_MAPS",
    "DAE_TEST_LATENTS",
    "DAE",
    "DAEOutput",
    "RecDiscNet",
    "RecDiscOutput",
    "build_model",
    "parse_dae_variant",
    "dae_loss",
    "recdisc_loss",
    "kl_divergence",
    "KL_WEIGHT",
    "MODELS",
]

#: DAE anomaly maps (:func:`dmrilib.scoring.anomaly_map`): the authors' code, the paper's text.
DAE_MAPS = ("mean_normalised", "abs_sum")
#: Latent the DAE decodes at prediction time: a posterior draw (code) or the mean (paper).
DAE_TEST_LATENTS = ("sample", "mean")

# The networks need torch; ModelConfig and the variant grammar do not, and
# every job validates its profile with them (evaluation jobs never import
# torch: ~2.5 s each). The networks load on first use.
_LAZY = {name: "dmrilib.models.dae" for name in ("DAE", "KL_WEIGHT", "DAEOutput", "dae_loss", "kl_divergence")}
_LAZY.update({name: "dmrilib.models.recdisc" for name in ("RecDiscNet", "RecDiscOutput", "recdisc_loss")})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Network sizes and architecture choices (profile section ``model``).

    Parameters
    ----------
    dae_widths : tuple of int
        DAE encoder widths, one stride-2 block each (paper: 64, 128, 256, 512).
        The grid must be divisible by ``2 ** len(dae_widths)``.
    recon_base, recon_depth : int
        RecDiscNet reconstruction network: first-level width (paper: 128) and
        number of poolings (widths double per level).
    disc_base : int
        RecDiscNet discriminative U-Net: first-level width (paper: 16).
    disc_depth : int, optional
        Its number of poolings: 3 (``code``, 16-32-64-128) or 4 (``paper``;
        not stated in the article). Unset: from ``fidelity``.
    negative_slope : float
        LeakyReLU slope (paper: 0.01) of the DAE and of the ``paper``
        RecDiscNet (the ``code`` RecDiscNet uses ReLU).
    fidelity : {"code", "paper"}
        Whose choices fill the keys below that are left unset
        (:mod:`dmrilib.fidelity`): the authors' code (default) or the
        article. Set from the profile's top-level ``fidelity``.
    dae_architecture : {"code", "paper"}, optional
        DAE layers (:class:`~dmrilib.models.dae.DAE`): ``code`` has a hidden
        linear layer of ``dae_widths[-1]`` units before the latent maps and
        a ConvTranspose + BatchNorm + LeakyReLU + 1x1x1 head (52,029,312
        parameters at LSD 512); ``paper`` maps the flattened features straight
        to the latent (78,987,072).
    recdisc_architecture : {"code", "paper"}, optional
        RecDiscNet layers (:class:`~dmrilib.models.recdisc.RecDiscNet`):
        ``code`` upsamples at the same width with InstanceNorm (no affine) +
        ReLU (123,540,977 parameters); ``paper`` halves the width in the
        transposed convolution, affine InstanceNorm, LeakyReLU (86,208,065
        with ``disc_depth`` 4).
    dae_map : {"mean_normalised", "abs_sum"}, optional
        DAE anomaly map (:func:`dmrilib.scoring.anomaly_map`):
        ``mean_normalised`` (code) ``|mean_c(x - x_hat / max x_hat)|``, the
        scale of the fixed 0.3 threshold; ``abs_sum`` (paper)
        ``|sum_c(x - x_hat)|``.
    dae_test_latent : {"sample", "mean"}, optional
        Latent the DAE decodes when predicting: a seeded draw from the
        posterior (code) or its mean (paper).

    Notes
    -----
    The switched keys hold the values actually used after construction (so
    the config hash covers them); a key given explicitly wins over
    ``fidelity``. Checkpoints store this config; use :meth:`from_meta` to
    rebuild it from one, also from checkpoints written before the switches
    existed.
    """

    dae_widths: tuple[int, ...] = (64, 128, 256, 512)
    recon_base: int = 128
    recon_depth: int = 3
    disc_base: int = 16
    disc_depth: int | None = None
    negative_slope: float = 0.01
    fidelity: Literal["code", "paper"] = "code"
    dae_architecture: Literal["code", "paper"] | None = None
    recdisc_architecture: Literal["code", "paper"] | None = None
    dae_map: Literal["mean_normalised", "abs_sum"] | None = None
    dae_test_latent: Literal["sample", "mean"] | None = None

    def __post_init__(self) -> None:
        resolve_fidelity(self, "model")
        widths = tuple(int(w) for w in self.dae_widths)
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"model.dae_widths must be positive integers, got {list(self.dae_widths)}.")
        object.__setattr__(self, "dae_widths", widths)
        for name in ("recon_base", "recon_depth", "disc_base", "disc_depth"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {getattr(self, name)}.")
        if not 0.0 <= self.negative_slope < 1.0:
            raise ValueError(f"model.negative_slope must be in [0, 1), got {self.negative_slope}.")
        for name, allowed in (("dae_architecture", ("code", "paper")), ("recdisc_architecture", ("code", "paper")),
                              ("dae_map", DAE_MAPS), ("dae_test_latent", DAE_TEST_LATENTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}.")

    @classmethod
    def from_meta(cls, model_config: Mapping[str, Any]) -> "ModelConfig":
        """The config a checkpoint recorded (``meta["model_config"]``).

        A record without ``fidelity`` was written before the paper/code
        switches existed, by a package that built the ``paper`` networks,
        mapped ``abs_sum`` and decoded the posterior mean: it is read with
        ``fidelity="paper"``, so old checkpoints load and score as before.
        """
        values = dict(model_config)
        values.setdefault("fidelity", "paper")
        return cls(**values)

    def divisor(self, model: str) -> int:
        """Every grid size must be a multiple of this for ``model``."""
        if model == _names.DAE:
            return 2 ** len(self.dae_widths)
        return 2 ** max(self.recon_depth, self.disc_depth)


def build_model(model: str, variant: str, config: ModelConfig, in_channels: int, *,
                grid: Sequence[int]) -> "nn.Module":
    """Build the network of one (model, variant) configuration.

    Parameters
    ----------
    model : {"dae", "recdisc"}
    variant : str
        DAE: ``lsd<N>-<linear|sigmoid>``. RecDiscNet: a JOOD variant id such as
        ``normal-directional-half`` (validated here, used by the noise only).
    config : ModelConfig
        Sizes, and ``dae_architecture`` / ``recdisc_architecture``.
    in_channels : int
        Diffusion-weighted channels C of the input volumes.
    grid : sequence of 3 int
        Network grid (X, Y, Z) of the input volumes.

    Returns
    -------
    DAE or RecDiscNet
    """
    from dmrilib.models.dae import DAE
    from dmrilib.models.recdisc import RecDiscNet

    grid = tuple(int(g) for g in grid)
    if check_model(model) == _names.DAE:
        lsd, activation = parse_dae_variant(variant)
        return DAE(in_channels, grid, lsd, activation, widths=config.dae_widths,
                   negative_slope=config.negative_slope, architecture=config.dae_architecture)
    parse_recdisc_variant(variant)
    divisor = config.divisor(_names.RECDISC)
    if len(grid) != 3 or any(g < 1 or g % divisor for g in grid):
        raise ValueError(f"RecDiscNet: grid must be 3 positive multiples of 2**max(recon_depth, disc_depth) "
                         f"= {divisor}, got {grid}.")
    # Fully convolutional: not pinned to ``grid`` so it can train on crops (TrainConfig.recdisc_crop).
    return RecDiscNet(in_channels, config.recon_base, config.recon_depth, config.disc_base,
                      config.disc_depth, negative_slope=config.negative_slope,
                      architecture=config.recdisc_architecture)
