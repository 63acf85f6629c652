"""Building blocks shared by the DAE and RecDiscNet (3D convolutions)."""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

__all__ = ["conv_block", "DoubleConv", "check_volume_shape", "check_widths"]

Norm = Literal["batch", "instance"]


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.InstanceNorm3d(channels, affine=True)


def conv_block(in_channels: int, out_channels: int, *, stride: int = 1, norm: Norm = "batch",
               negative_slope: float = 0.01, transpose: bool = False) -> nn.Sequential:
    """Conv3d (or stride-2 ConvTranspose3d) -> norm -> LeakyReLU.

    With ``stride=2`` a plain convolution halves every spatial size
    (kernel 3, padding 1) and a transposed one doubles it (kernel 4,
    padding 1), so encoder and decoder mirror each other exactly.
    """
    if transpose:
        conv: nn.Module = nn.ConvTranspose3d(in_channels, out_channels, 4, stride=2, padding=1, bias=False)
    else:
        conv = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
    return nn.Sequential(conv, _norm(norm, out_channels), nn.LeakyReLU(negative_slope, inplace=True))


class DoubleConv(nn.Sequential):
    """Two 3x3x3 convolutions, each followed by normalisation and LeakyReLU.

    Shapes: ``(B, in_channels, X, Y, Z) -> (B, out_channels, X, Y, Z)``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: Norm = "instance",
                 negative_slope: float = 0.01) -> None:
        super().__init__(
            conv_block(in_channels, out_channels, norm=norm, negative_slope=negative_slope),
            conv_block(out_channels, out_channels, norm=norm, negative_slope=negative_slope),
        )


def check_widths(name: str, widths: Sequence[int]) -> tuple[int, ...]:
    """Validate a sequence of positive channel widths; return it as a tuple."""
    widths = tuple(int(w) for w in widths)
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {widths}.")
    return widths


def check_volume_shape(module: str, x: torch.Tensor, channels: int, grid: Sequence[int] | None,
                       divisor: int) -> None:
    """Fail early (MONAI-style) when a batch does not fit the network.

    Parameters
    ----------
    module : str
        Name used in the error message.
    x : Tensor, shape (B, C, X, Y, Z)
    channels : int
        Expected C.
    grid : sequence of int or None
        Expected (X, Y, Z), or None when any grid divisible by ``divisor`` works.
    divisor : int
        Every spatial size must be a multiple of it (``2 ** depth``).
    """
    if x.ndim != 5:
        raise ValueError(f"{module}: expected a batch of shape (B, C, X, Y, Z), got {tuple(x.shape)}.")
    if x.shape[1] != channels:
        raise ValueError(f"{module}: expected {channels} input channels, got {x.shape[1]} "
                         f"(input shape {tuple(x.shape)}).")
    spatial = tuple(x.shape[2:])
    if grid is not None and spatial != tuple(grid):
        raise ValueError(f"{module}: built for grid {tuple(grid)}, got {spatial}. "
                         "Crop/pad the volumes to the network grid (dmrilib.preprocess).")
    if any(s % divisor for s in spatial):
        raise ValueError(f"{module}: every spatial size must be divisible by {divisor} "
                         f"(2**depth), got {spatial}.")
