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
#: Nonlinearity after each convolution: LeakyReLU (slope ``negative_slope``) or ReLU.
Activation = Literal["leaky_relu", "relu"]
#: Upsampling of :class:`UNet3d` decoder levels (see its notes).
Upsample = Literal["halving", "same_width"]


def _norm(kind: Norm, channels: int, affine: bool = True) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.InstanceNorm3d(channels, affine=affine)


def _activation(kind: Activation, negative_slope: float) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    return nn.LeakyReLU(negative_slope, inplace=True)


def conv_block(in_channels: int, out_channels: int, *, stride: int = 1, norm: Norm = "batch",
               negative_slope: float = 0.01, transpose: bool = False, activation: Activation = "leaky_relu",
               affine: bool = True, bias: bool = False) -> nn.Sequential:
    """Conv3d (or stride-2 ConvTranspose3d) -> norm -> LeakyReLU (or ReLU).

    With ``stride=2`` a plain convolution halves every spatial size
    (kernel 3, padding 1) and a transposed one doubles it (kernel 4,
    padding 1), so encoder and decoder mirror each other exactly.
    ``affine`` applies to InstanceNorm only; ``bias`` gives the convolution
    a bias although a normalisation follows (the authors' code does).
    """
    if transpose:
        conv: nn.Module = nn.ConvTranspose3d(in_channels, out_channels, 4, stride=2, padding=1, bias=bias)
    else:
        conv = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)
    return nn.Sequential(conv, _norm(norm, out_channels, affine), _activation(activation, negative_slope))


class DoubleConv(nn.Sequential):
    """Two 3x3x3 convolutions, each followed by normalisation and LeakyReLU (or ReLU).

    Shapes: ``(B, in_channels, X, Y, Z) -> (B, out_channels, X, Y, Z)``.
    Keyword arguments as in :func:`conv_block`.
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: Norm = "instance",
                 negative_slope: float = 0.01, activation: Activation = "leaky_relu", affine: bool = True,
                 bias: bool = False) -> None:
        kw = dict(norm=norm, negative_slope=negative_slope, activation=activation, affine=affine, bias=bias)
        super().__init__(conv_block(in_channels, out_channels, **kw), conv_block(out_channels, out_channels, **kw))


class _PlainDoubleConv(nn.Sequential):
    """Two 3x3x3 convolutions (with bias), each followed by LeakyReLU (or ReLU); no normalisation."""

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float,
                 activation: Activation = "leaky_relu") -> None:
        super().__init__(nn.Conv3d(in_channels, out_channels, 3, padding=1),
                         _activation(activation, negative_slope),
                         nn.Conv3d(out_channels, out_channels, 3, padding=1),
                         _activation(activation, negative_slope))


class UNet3d(nn.Module):
    """3D U-Net body: two convolutions per level, max-pooling down, transposed convolutions up.

    Encoder level ``i`` is two 3x3x3 convolutions (:class:`DoubleConv`, or
    its unnormalised form) with ``widths[i]`` channels, after a 2x
    max-pooling for ``i > 0``. Each decoder level upsamples by 2 (see
    ``upsample``), then applies two 3x3x3 convolutions with ``widths[i]``
    channels; a 1x1x1 convolution is the (linear) output head. With
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
        Normalisation after each 3x3x3 convolution (InstanceNorm or
        BatchNorm). ``none``: biased convolutions and no normalisation.
    negative_slope : float
        LeakyReLU slope, in [0, 1) (unused with ``activation="relu"``).
    skip_connections : bool
        Concatenate the encoder features into the decoder (default) or not.
    activation : {"leaky_relu", "relu"}
        Nonlinearity after every normalisation.
    affine : bool
        InstanceNorm with learnable scale and shift (default) or without.
    conv_bias : bool
        Give the normalised convolutions a bias too (the authors' code does;
        default no, as the normalisation removes it).
    upsample : {"halving", "same_width"}
        ``halving`` (default): a 2x2x2 stride-2 transposed convolution from
        ``widths[i + 1]`` to ``widths[i]`` channels, nothing after it.
        ``same_width`` (the authors' code): a 3x3x3 stride-2 transposed
        convolution (padding 1, output padding 1) that keeps ``widths[i + 1]``
        channels, followed by normalisation and the activation; the two
        convolutions of the level then halve the width.

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
                 negative_slope: float = 0.01, skip_connections: bool = True, activation: Activation = "leaky_relu",
                 affine: bool = True, conv_bias: bool = False, upsample: Upsample = "halving") -> None:
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
        if activation not in ("leaky_relu", "relu"):
            raise ValueError(f"{name}: activation must be 'leaky_relu' or 'relu', got {activation!r}.")
        if upsample not in ("halving", "same_width"):
            raise ValueError(f"{name}: upsample must be 'halving' or 'same_width', got {upsample!r}.")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.widths = w
        self.norm = norm
        self.skip_connections = bool(skip_connections)
        self.upsample = upsample
        self.divisor = 2 ** (len(w) - 1)

        def block(i: int, o: int) -> nn.Module:
            if norm == "none":
                return _PlainDoubleConv(i, o, negative_slope, activation)
            return DoubleConv(i, o, norm=norm, negative_slope=negative_slope, activation=activation,
                              affine=affine, bias=conv_bias)

        def up(i: int) -> nn.Module:  # level i + 1 -> level i
            if upsample == "halving":
                return nn.ConvTranspose3d(w[i + 1], w[i], 2, stride=2)
            layers: list[nn.Module] = [nn.ConvTranspose3d(w[i + 1], w[i + 1], 3, stride=2, padding=1,
                                                          output_padding=1, bias=conv_bias or norm == "none")]
            if norm != "none":
                layers.append(_norm(norm, w[i + 1], affine))
            layers.append(_activation(activation, negative_slope))
            return nn.Sequential(*layers)

        up_levels = list(reversed(range(len(w) - 1)))
        upsampled = {i: (w[i] if upsample == "halving" else w[i + 1]) for i in up_levels}
        skip = {i: (w[i] if self.skip_connections else 0) for i in up_levels}  # encoder features merged in
        self.down = nn.ModuleList([block(self.in_channels, w[0])] + [block(w[i], w[i + 1]) for i in range(len(w) - 1)])
        self.up = nn.ModuleList([up(i) for i in up_levels])
        self.up_conv = nn.ModuleList([block(upsampled[i] + skip[i], w[i]) for i in up_levels])
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
