"""Denoising (variational) autoencoder with a linear latent space (paper, Table 1)."""
from __future__ import annotations

import math
from typing import Literal, NamedTuple, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from dmrilib.models.blocks import check_volume_shape, check_widths, conv_block

__all__ = ["DAE", "DAEOutput", "dae_loss", "kl_divergence"]

#: KL weight omega of the paper's eq. (1).
KL_WEIGHT = 1.22e-5


class DAEOutput(NamedTuple):
    """What :class:`DAE` returns: reconstruction and posterior parameters."""

    reconstruction: torch.Tensor  #: (B, C, X, Y, Z)
    mu: torch.Tensor  #: (B, lsd)
    logvar: torch.Tensor  #: (B, lsd)


def _code_block(in_channels: int, out_channels: int, *, transpose: bool, negative_slope: float) -> nn.Sequential:
    """The authors' DAE block: biased (transposed) 3x3x3 stride-2 convolution -> BatchNorm -> LeakyReLU."""
    if transpose:
        conv: nn.Module = nn.ConvTranspose3d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)
    else:
        conv = nn.Conv3d(in_channels, out_channels, 3, stride=2, padding=1)
    return nn.Sequential(conv, nn.BatchNorm3d(out_channels), nn.LeakyReLU(negative_slope, inplace=True))


class DAE(nn.Module):
    """Convolutional VAE on attenuation volumes with a linear latent of size ``lsd``.

    Encoder: ``len(widths)`` stride-2 Conv3d blocks (BatchNorm, LeakyReLU),
    flattened and mapped linearly to the posterior mean and log-variance.
    Decoder: a linear map back to the bottleneck grid and mirrored stride-2
    ConvTranspose3d blocks ending in ``in_channels`` with a linear or
    sigmoid output. The two architectures differ in the details:

    ``code`` (the authors' ``Models/VAE.py``; 52,029,312 parameters at C = 64,
    grid 64 x 80 x 64, LSD 512)
        Biased convolutions. The flattened features (40,960 at that grid) go
        through a hidden linear layer of ``widths[-1]`` units (512 in the
        paper's widths; the authors' ``hidden_dims[-1]``, so reduced profiles
        shrink it with the widths), then two linear maps to ``lsd``. Decoder
        blocks are ConvTranspose3d kernel 3, padding 1, output padding 1; the
        head is one more such upsampling at ``widths[0]`` channels with
        BatchNorm and LeakyReLU, then a 1x1x1 convolution to ``in_channels``.
    ``paper`` (this package's reading of the article; 78,987,072 parameters)
        Unbiased convolutions; two linear maps straight from the flattened
        features to ``lsd``; decoder ConvTranspose3d kernel 4, padding 1; the
        last upsampling maps straight to ``in_channels``.

    Parameters
    ----------
    in_channels : int
        Diffusion-weighted channels C (64 in the paper).
    grid : sequence of 3 int
        Spatial size (X, Y, Z) of the volumes; each must be divisible by
        ``2 ** len(widths)`` (the linear latent needs a fixed grid).
    lsd : int
        Latent space dimension (16..512 in the paper).
    output_activation : {"linear", "sigmoid"}
    widths : sequence of int
        Encoder widths (paper: 64, 128, 256, 512); the decoder mirrors them.
    negative_slope : float
        LeakyReLU slope (paper: 0.01).
    architecture : {"code", "paper"}
        See above.

    Notes
    -----
    Shapes: ``(B, C, X, Y, Z) -> DAEOutput(reconstruction (B, C, X, Y, Z),
    mu (B, lsd), logvar (B, lsd))``. Without ``latent_noise`` the decoder
    reads the posterior mean, so evaluation is deterministic.
    """

    def __init__(self, in_channels: int, grid: Sequence[int], lsd: int,
                 output_activation: Literal["linear", "sigmoid"] = "sigmoid",
                 widths: Sequence[int] = (64, 128, 256, 512), negative_slope: float = 0.01,
                 architecture: Literal["code", "paper"] = "code") -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"DAE: in_channels must be positive, got {in_channels}.")
        if lsd < 1:
            raise ValueError(f"DAE: lsd (latent space dimension) must be positive, got {lsd}.")
        if output_activation not in ("linear", "sigmoid"):
            raise ValueError(f"DAE: output_activation must be 'linear' or 'sigmoid', got {output_activation!r}.")
        if architecture not in ("code", "paper"):
            raise ValueError(f"DAE: architecture must be 'code' or 'paper', got {architecture!r}.")
        widths = check_widths("DAE widths", widths)
        grid = tuple(int(g) for g in grid)
        divisor = 2 ** len(widths)
        if len(grid) != 3 or any(g < divisor or g % divisor for g in grid):
            raise ValueError(f"DAE: grid must be 3 sizes, each a positive multiple of 2**len(widths) = "
                             f"{divisor}, got {grid}. Use fewer widths or another network grid.")
        self.in_channels = in_channels
        self.grid = grid
        self.lsd = lsd
        self.output_activation = output_activation
        self.widths = widths
        self.architecture = architecture
        self.divisor = divisor
        self.bottleneck = tuple(g // divisor for g in grid)
        flat = widths[-1] * math.prod(self.bottleneck)
        chans = (in_channels,) + widths
        rev = widths[::-1]

        if architecture == "code":
            self.encoder = nn.Sequential(*[
                _code_block(chans[i], chans[i + 1], transpose=False, negative_slope=negative_slope)
                for i in range(len(widths))
            ])
            self.fc: nn.Module = nn.Linear(flat, widths[-1])
            self.to_mu = nn.Linear(widths[-1], lsd)
            self.to_logvar = nn.Linear(widths[-1], lsd)
            self.from_latent = nn.Linear(lsd, flat)
            self.decoder = nn.Sequential(*[
                _code_block(rev[i], rev[i + 1], transpose=True, negative_slope=negative_slope)
                for i in range(len(widths) - 1)
            ])
            self.head: nn.Module = nn.Sequential(
                *_code_block(widths[0], widths[0], transpose=True, negative_slope=negative_slope),
                nn.Conv3d(widths[0], in_channels, 1))
            return
        self.encoder = nn.Sequential(*[
            conv_block(chans[i], chans[i + 1], stride=2, norm="batch", negative_slope=negative_slope)
            for i in range(len(widths))
        ])
        self.fc = nn.Identity()
        self.to_mu = nn.Linear(flat, lsd)
        self.to_logvar = nn.Linear(flat, lsd)
        self.from_latent = nn.Linear(lsd, flat)
        self.decoder = nn.Sequential(*[
            conv_block(rev[i], rev[i + 1], norm="batch", negative_slope=negative_slope, transpose=True)
            for i in range(len(widths) - 1)
        ])
        # The last upsampling maps straight to the input channels (no norm/activation):
        # a full-resolution 3x3x3 head would triple the FLOPs of the whole network.
        self.head = nn.ConvTranspose3d(widths[0], in_channels, 4, stride=2, padding=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each ``(B, lsd)``."""
        h = self.fc(self.encoder(x).flatten(1))
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, lsd) -> (B, C, X, Y, Z)``."""
        h = self.from_latent(z).view(z.shape[0], self.widths[-1], *self.bottleneck)
        out = self.head(self.decoder(h))
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else out

    def forward(self, x: torch.Tensor, latent_noise: torch.Tensor | None = None) -> DAEOutput:
        """Reconstruct ``x``.

        Parameters
        ----------
        x : Tensor, shape (B, C, X, Y, Z)
        latent_noise : Tensor, shape (B, lsd), optional
            Standard-normal draws for the reparameterisation
            ``z = mu + exp(logvar / 2) * latent_noise`` (training, and
            prediction with ``dae_test_latent="sample"``). The caller draws
            them from its own generator, so both stay seeded. Without it
            ``z = mu``.
        """
        check_volume_shape("DAE", x, self.in_channels, self.grid, self.divisor)
        mu, logvar = self.encode(x)
        z = mu if latent_noise is None else mu + torch.exp(0.5 * logvar) * latent_noise.to(mu.dtype)
        return DAEOutput(self.decode(z), mu, logvar)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor,
                  reduction: Literal["sum", "mean"] = "sum") -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) of a diagonal Gaussian posterior, averaged over the batch.

    Parameters
    ----------
    mu, logvar : Tensor, shape (B, lsd)
    reduction : {"sum", "mean"}
        Over the latent dimensions: ``sum`` (the authors' code, the textbook
        KL of the VAE) or ``mean`` (this package's reading of the paper's
        eq. 1, ``1/2 1/n sum_j``; ``sum / lsd``).

    Returns
    -------
    Tensor, scalar float32
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"kl_divergence: reduction must be 'sum' or 'mean', got {reduction!r}.")
    mu, logvar = mu.float(), logvar.float()
    terms = 1.0 + logvar - mu.pow(2) - logvar.exp()
    if reduction == "mean":
        return -0.5 * torch.mean(terms)
    return -0.5 * terms.sum(dim=1).mean()


def dae_loss(output: DAEOutput, target: torch.Tensor, kl_weight: float = KL_WEIGHT, *,
             kl_reduction: Literal["sum", "mean"] = "sum") -> torch.Tensor:
    """MSE + ``kl_weight`` * KL (paper eq. 1), computed in float32.

    ``kl_reduction`` is passed to :func:`kl_divergence` (``TrainConfig.kl_reduction``).
    """
    mse = F.mse_loss(output.reconstruction.float(), target.float())
    return mse + kl_weight * kl_divergence(output.mu, output.logvar, kl_reduction)
