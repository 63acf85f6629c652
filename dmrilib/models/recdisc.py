"""RecDiscNet: reconstruction network + discriminative U-Net (DRAEM-style)."""
from __future__ import annotations

from typing import NamedTuple

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
    input was disturbed (one logit channel). InstanceNorm and LeakyReLU
    throughout.

    Parameters
    ----------
    in_channels : int
        Diffusion-weighted channels C.
    recon_base, recon_depth : int
        Width of the reconstruction network's first level (paper: 128) and its
        number of poolings.
    disc_base, disc_depth : int
        Same for the discriminative U-Net (paper: base 16).
    grid : sequence of 3 int, optional
        When given, ``forward`` insists on exactly this grid.
    negative_slope : float

    Notes
    -----
    Shapes: ``(B, C, X, Y, Z) -> RecDiscOutput(reconstruction (B, C, X, Y, Z),
    logits (B, 1, X, Y, Z))``; X, Y, Z must be divisible by
    ``2 ** max(recon_depth, disc_depth)``.
    """

    def __init__(self, in_channels: int, recon_base: int = 128, recon_depth: int = 3,
                 disc_base: int = 16, disc_depth: int = 4, grid: tuple[int, int, int] | None = None,
                 negative_slope: float = 0.01) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("recon_base", recon_base),
                            ("recon_depth", recon_depth), ("disc_base", disc_base), ("disc_depth", disc_depth)):
            if int(value) < 1:
                raise ValueError(f"RecDiscNet: {name} must be a positive integer, got {value}.")
        self.in_channels = in_channels
        self.divisor = 2 ** max(recon_depth, disc_depth)
        self.grid = None if grid is None else tuple(int(g) for g in grid)
        if self.grid is not None and (len(self.grid) != 3 or any(g < 1 or g % self.divisor for g in self.grid)):
            raise ValueError(f"RecDiscNet: grid must be 3 positive multiples of 2**max(recon_depth, disc_depth) "
                             f"= {self.divisor}, got {self.grid}.")
        self.reconstructive = UNet3d(in_channels, in_channels, _widths(recon_base, recon_depth),
                                     negative_slope=negative_slope, skip_connections=False)
        self.discriminative = UNet3d(2 * in_channels, 1, _widths(disc_base, disc_depth),
                                     negative_slope=negative_slope)

    def forward(self, x: torch.Tensor) -> RecDiscOutput:
        """See the class notes for shapes."""
        check_volume_shape("RecDiscNet", x, self.in_channels, self.grid, self.divisor)
        rec = self.reconstructive(x)
        logits = self.discriminative(torch.cat([x, rec.to(x.dtype)], dim=1))
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
