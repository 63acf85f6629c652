"""Building blocks shared by the networks (3D convolutions, the U-Net body).

Used by the DAE and RecDiscNet here and by the tumour segmentation U-Net of
:mod:`dmrilib.groundtruth`.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["conv_block", "DoubleConv", "UNet3d", "check_volume_shape", "check_widths"]

Norm = Literal["batch", "instance"]
#: Normalisations of :class:`UNet3d`; ``none`` means biased convolutions without normalisation.
UNetNorm = Literal["batch", "instance", "none"]


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


class _PlainDoubleConv(nn.Sequential):
    """Two 3x3x3 convolutions (with bias), each followed by LeakyReLU; no normalisation."""

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float) -> None:
        super().__init__(nn.Conv3d(in_channels, out_channels, 3, padding=1),
                         nn.LeakyReLU(negative_slope, inplace=True),
                         nn.Conv3d(out_channels, out_channels, 3, padding=1),
                         nn.LeakyReLU(negative_slope, inplace=True))


class UNet3d(nn.Module):
    """3D U-Net body: two convolutions per level, max-pooling down, transposed convolutions up.

    Encoder level ``i`` is two 3x3x3 convolutions (:class:`DoubleConv`, or
    its unnormalised form) with ``widths[i]`` channels, after a 2x
    max-pooling for ``i > 0``. Each decoder level upsamples with a stride-2
    2x2x2 transposed convolution, then applies two 3x3x3 convolutions; a
    1x1x1 convolution is the (linear) output head. With
    ``skip_connections`` each decoder level sees the channel concatenation
    of its upsampled input and the encoder features of the same level (a
    U-Net); without, it is a plain encoder-decoder.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and of the output head.
    widths : sequence of int
        Channels per level, at least two levels; ``len(widths) - 1`` poolings.
    norm : {"instance", "batch", "none"}
        Normalisation after each 3x3x3 convolution (InstanceNorm with affine
        parameters or BatchNorm; those convolutions have no bias).
        ``none``: biased convolutions and no normalisation.
    negative_slope : float
        LeakyReLU slope, in [0, 1).
    skip_connections : bool
        Concatenate the encoder features into the decoder (default) or not.

    Attributes
    ----------
    divisor : int
        ``2 ** (len(widths) - 1)``: every spatial size of the input must be a
        multiple of it.

    Notes
    -----
    Shapes: ``(B, in_channels, X, Y, Z) -> (B, out_channels, X, Y, Z)``.
    ``forward`` trusts its input; the networks built on it check shapes with
    :func:`check_volume_shape`. Submodules are created in the order ``down``,
    ``up``, ``up_conv``, ``head``, so a given global seed gives the same
    weights. Error messages name the class, so subclasses report their own
    name.
    """

    def __init__(self, in_channels: int, out_channels: int, widths: Sequence[int], *, norm: UNetNorm = "instance",
                 negative_slope: float = 0.01, skip_connections: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name}: {arg} must be a positive integer, got {value!r}.")
        w = check_widths(f"{name}: widths", widths)
        if len(w) < 2:
            raise ValueError(f"{name}: widths needs at least two levels (one pooling), got {list(w)}.")
        if not 0.0 <= negative_slope < 1.0:
            raise ValueError(f"{name}: negative_slope must be in [0, 1), got {negative_slope!r}.")
        if norm not in ("batch", "instance", "none"):
            raise ValueError(f"{name}: norm must be 'batch', 'instance' or 'none', got {norm!r}.")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.widths = w
        self.norm = norm
        self.skip_connections = bool(skip_connections)
        self.divisor = 2 ** (len(w) - 1)

        def block(i: int, o: int) -> nn.Module:
            if norm == "none":
                return _PlainDoubleConv(i, o, negative_slope)
            return DoubleConv(i, o, norm=norm, negative_slope=negative_slope)

        up_levels = list(reversed(range(len(w) - 1)))
        merged = 2 if self.skip_connections else 1  # decoder input: upsampled (+ encoder) features
        self.down = nn.ModuleList([block(self.in_channels, w[0])] + [block(w[i], w[i + 1]) for i in range(len(w) - 1)])
        self.up = nn.ModuleList([nn.ConvTranspose3d(w[i + 1], w[i], 2, stride=2) for i in up_levels])
        self.up_conv = nn.ModuleList([block(merged * w[i], w[i]) for i in up_levels])
        self.head = nn.Conv3d(w[0], self.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """See the class notes for shapes."""
        h = self.down[0](x)
        skips: list[torch.Tensor] = []
        for block in self.down[1:]:
            if self.skip_connections:
                skips.append(h)
            h = block(F.max_pool3d(h, 2))
        for up, conv in zip(self.up, self.up_conv):
            h = up(h)
            if self.skip_connections:
                h = torch.cat([h, skips.pop()], dim=1)
            h = conv(h)
        return self.head(h)


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
