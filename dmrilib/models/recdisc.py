"""RecDiscNet: reconstruction network + discriminative U-Net (DRAEM-style)."""
from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from dmrilib.models.blocks import UNet3d, check_volume_shape

__all__ = ["RecDiscNet", "RecDiscOutput", "recdisc_loss"]


class RecDiscOutput(NamedTuple):
    """What :class:`RecDiscNet` returns."""

    reconstruction: torch.Tensor  #: (B, C, X, Y, Z)
    logits: torch.Tensor  #: (B, 1, X, Y, Z) anomaly logits


def _widths(base: int, depth: int) -> list[int]:
    return [base * 2 ** i for i in range(depth + 1)]


class RecDiscNet(nn.Module):
    """Reconstruction network followed by a discriminative U-Net.

    Both are :class:`~dmrilib.models.blocks.UNet3d` bodies with widths
    ``base * 2**i`` for ``i = 0..depth``. The reconstruction network
    (``reconstructive``) has no skip connections and a linear C-channel
    head. The U-Net (``discriminative``) sees the channel concatenation of
    the (disturbed) input and its reconstruction and predicts where the
    input was disturbed (one logit channel).

    Parameters
    ----------
    in_channels : int
        Diffusion-weighted channels C.
    recon_base, recon_depth : int
        Width of the reconstruction network's first level (paper: 128) and its
        number of poolings (3).
    disc_base, disc_depth : int
        Same for the discriminative U-Net (base 16; depth 3 in the authors'
        code, 16-32-64-128).
    grid : sequence of 3 int, optional
        When given, ``forward`` insists on exactly this grid.
    negative_slope : float
        LeakyReLU slope of the ``paper`` architecture.
    architecture : {"code", "paper"}
        ``code`` (the authors' ``Models/RecDiscNet.py``, 123,540,977
        parameters at C = 64, 128 / 3, 16 / 3): each upsampling is a 3x3x3
        stride-2 transposed convolution at the same width followed by
        InstanceNorm and ReLU, then two convolutions halve the width;
        InstanceNorm without affine parameters, biased convolutions, ReLU;
        the U-Net reads ``[reconstruction, input]``. ``paper`` (this
        package's reading of the article; 86,208,065 parameters with disc
        depth 4): 2x2x2 transposed convolutions that halve the width,
        affine InstanceNorm, unbiased convolutions, LeakyReLU; the U-Net
        reads ``[input, reconstruction]``.

    Notes
    -----
    Shapes: ``(B, C, X, Y, Z) -> RecDiscOutput(reconstruction (B, C, X, Y, Z),
    logits (B, 1, X, Y, Z))``; X, Y, Z must be divisible by
    ``2 ** max(recon_depth, disc_depth)``. Both architectures keep the
    parameter names ``reconstructive/discriminative.{down,up,up_conv,head}``.
    """

    def __init__(self, in_channels: int, recon_base: int = 128, recon_depth: int = 3,
                 disc_base: int = 16, disc_depth: int = 3, grid: tuple[int, int, int] | None = None,
                 negative_slope: float = 0.01, architecture: Literal["code", "paper"] = "code") -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("recon_base", recon_base),
                            ("recon_depth", recon_depth), ("disc_base", disc_base), ("disc_depth", disc_depth)):
            if int(value) < 1:
                raise ValueError(f"RecDiscNet: {name} must be a positive integer, got {value}.")
        if architecture not in ("code", "paper"):
            raise ValueError(f"RecDiscNet: architecture must be 'code' or 'paper', got {architecture!r}.")
        self.in_channels = in_channels
        self.architecture = architecture
        self.divisor = 2 ** max(recon_depth, disc_depth)
        self.grid = None if grid is None else tuple(int(g) for g in grid)
        if self.grid is not None and (len(self.grid) != 3 or any(g < 1 or g % self.divisor for g in self.grid)):
            raise ValueError(f"RecDiscNet: grid must be 3 positive multiples of 2**max(recon_depth, disc_depth) "
                             f"= {self.divisor}, got {self.grid}.")
        if architecture == "code":
            style: dict = dict(activation="relu", affine=False, conv_bias=True, upsample="same_width")
        else:
            style = dict(negative_slope=negative_slope)
        self.reconstructive = UNet3d(in_channels, in_channels, _widths(recon_base, recon_depth),
                                     skip_connections=False, **style)
        self.discriminative = UNet3d(2 * in_channels, 1, _widths(disc_base, disc_depth), **style)

    def forward(self, x: torch.Tensor) -> RecDiscOutput:
        """See the class notes for shapes."""
        check_volume_shape("RecDiscNet", x, self.in_channels, self.grid, self.divisor)
        rec = self.reconstructive(x)
        pair = [rec.to(x.dtype), x] if self.architecture == "code" else [x, rec.to(x.dtype)]
        logits = self.discriminative(torch.cat(pair, dim=1))
        return RecDiscOutput(rec, logits)


def recdisc_loss(output: RecDiscOutput, clean: torch.Tensor, patch_mask: torch.Tensor, *,
                 mse_weight: float = 5.0, bce_weight: float = 1.0, pos_weight: float = 20.0) -> torch.Tensor:
    """``mse_weight * MSE(reconstruction, clean) + bce_weight * weighted BCE(logits, patch_mask)``.

    Paper eq. (2) with the weights of the authors' code as defaults
    (5 x MSE + BCE-with-logits, positive class weighted 20). Float32.

    Parameters
    ----------
    output : RecDiscOutput
    clean : Tensor, shape (B, C, X, Y, Z)
        Undisturbed volumes (reconstruction target).
    patch_mask : Tensor of bool, shape (B, X, Y, Z)
        Where disturbances were added (discrimination target).
    """
    mse = F.mse_loss(output.reconstruction.float(), clean.float())
    logits = output.logits.float()[:, 0]
    pw = torch.full((), pos_weight, dtype=torch.float32, device=logits.device)  # a fill, not a host copy
    bce = F.binary_cross_entropy_with_logits(logits, patch_mask.float(), pos_weight=pw)
    return mse_weight * mse + bce_weight * bce
