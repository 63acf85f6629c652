"""The tumour segmentation U-Net and its loss (soft Dice + BCE)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

from dmrilib.models.blocks import UNet3d, UNetNorm, check_volume_shape

__all__ = ["SegUNet", "seg_loss", "IN_CHANNELS"]

#: Input channels: T1w, FLAIR and the foreground (brain) mask, as in the paper's segmentation network.
IN_CHANNELS = 3


class SegUNet(UNet3d):
    """3D U-Net mapping (T1w, FLAIR, foreground mask) to tumour logits.

    A :class:`~dmrilib.models.blocks.UNet3d` with skip connections and one
    output channel: each level is two 3x3x3 convolutions with normalisation
    and LeakyReLU; max-pooling down, stride-2 transposed convolutions up,
    skip connections by concatenation, and a 1x1x1 head. It adds the
    ``stride`` below and checks the input's shape.

    Parameters
    ----------
    in_channels : int
        Input channels (3: T1w, FLAIR, foreground mask).
    widths : sequence of int
        Channels per level; ``len(widths) - 1`` poolings.
    negative_slope : float
        LeakyReLU slope.
    norm : {"batch", "instance", "none"}
        Normalisation after each convolution; ``none`` uses biased
        convolutions instead and behaves the same on windows and whole volumes.
    stride : int
        Resolution factor of the U-Net: the input is average-pooled by
        ``stride`` and the logits are upsampled back (trilinear), so the
        network works on ``stride``-times coarser voxels at ``stride**3``
        times less cost while loss and output stay on the input grid.
        1 keeps the input resolution.

    Notes
    -----
    Shapes: ``(B, in_channels, X, Y, Z) -> (B, 1, X, Y, Z)`` logits; X, Y and
    Z must be multiples of ``divisor = stride * 2 ** (len(widths) - 1)`` (pad
    the images, see :func:`dmrilib.groundtruth.segment`). Fully convolutional.
    """

    def __init__(self, in_channels: int = IN_CHANNELS, widths: Sequence[int] = (8, 16, 32),
                 negative_slope: float = 0.01, norm: UNetNorm = "batch", stride: int = 1) -> None:
        super().__init__(in_channels, 1, widths, norm=norm, negative_slope=negative_slope)
        if isinstance(stride, bool) or int(stride) != stride or stride < 1:
            raise ValueError(f"SegUNet: stride must be a positive integer, got {stride!r}.")
        self.stride = int(stride)
        self.divisor = self.stride * 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """See the class notes for shapes."""
        check_volume_shape("SegUNet", x, self.in_channels, None, self.divisor)
        size = x.shape[2:]
        if self.stride > 1:
            x = F.avg_pool3d(x, self.stride)
        logits = super().forward(x)
        if self.stride > 1:
            logits = F.interpolate(logits, size=size, mode="trilinear", align_corners=False)
        return logits


def seg_loss(logits: torch.Tensor, target: torch.Tensor, *, dice_weight: float = 1.0, bce_weight: float = 1.0,
             smooth: float = 1.0) -> torch.Tensor:
    """``dice_weight * (1 - soft Dice) + bce_weight * BCE-with-logits``, in float32.

    The soft Dice pools all voxels of the batch (not per volume), so batches
    with tumour-free (healthy) volumes have a well-defined loss; ``smooth`` is
    added to numerator and denominator.

    Parameters
    ----------
    logits : Tensor, shape (B, 1, X, Y, Z)
    target : Tensor of bool or float, shape (B, X, Y, Z) or (B, 1, X, Y, Z)
    """
    logits = logits.float()
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    if target.shape != logits.shape:
        raise ValueError(f"seg_loss: target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}.")
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = (2 * (prob * target).sum() + smooth) / (prob.sum() + target.sum() + smooth)
    return dice_weight * (1 - dice) + bce_weight * bce
