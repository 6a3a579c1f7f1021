"""Large kernel attention (VAN, "Visual Attention Network", Guo et al., CVMJ 2023, https://arxiv.org/abs/2202.09741).

Both modules take and return ``(B, C, H, W)`` maps: VAN is a convolutional network whose blocks run on such maps
(BatchNorm, depthwise and 1x1 convs), so no layout change is needed around them. The maps may be NCHW or
channels_last in memory; the output keeps the input's format, and the Triton depthwise kernels are fastest on
channels_last. Parameter names follow the official code (Visual-Attention-Network/VAN-Classification
``models/van.py``: ``conv0``, ``conv_spatial``, ``conv1``; ``proj_1``, ``spatial_gating_unit``, ``proj_2``) so the
released checkpoints load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from vizattn.blocks.layers import pointwise_conv
from vizattn.kernels.dwconv import lka_spatial

__all__ = ["LKA", "VANAttention"]


def _check_channels(module: nn.Module, x: torch.Tensor, dim: int) -> None:
    if x.dim() != 4 or x.shape[1] != dim:
        raise ValueError(f"{type(module).__name__} expects an NCHW map (B, {dim}, H, W), got shape {tuple(x.shape)}.")


class LKA(nn.Module):
    """Large kernel attention: ``x * conv1(conv_spatial(conv0(x)))``.

    A 21x21 convolution with dilation 3 decomposed into a 5x5 depthwise conv (``conv0``), a 7x7 depthwise conv with
    dilation 3 (``conv_spatial``, receptive field 5 + 6 * 3 = 23) and a 1x1 conv mixing channels (``conv1``), all with
    bias. The two depthwise convs are separately zero-padded, so the dilated conv sees zeros (not conv0 evaluated
    outside the image) beyond the border, as in the official code.

    The two depthwise convs run as one op, :func:`vizattn.kernels.dwconv.lka_spatial`, with the modules' parameters
    (the modules are kept for their names and initialisation; their own forward is not called).

    Args:
        dim: channels C.
        backend: kernel backend of :func:`~vizattn.kernels.dwconv.lka_spatial`, ``'auto'``, ``'triton'`` or
            ``'torch'``.

    Shape:
        (B, dim, H, W) -> (B, dim, H, W), NCHW or channels_last (kept).
    """

    def __init__(self, dim: int, backend: str = "auto"):
        super().__init__()
        self.dim = dim
        self.backend = backend
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, stride=1, padding=9, groups=dim, dilation=3)
        self.conv1 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(self, x, self.dim)
        c0, cs = self.conv0, self.conv_spatial
        attn = lka_spatial(x, c0.weight, c0.bias, cs.weight, cs.bias, dilations=(1, 3), backend=self.backend)
        return x * pointwise_conv(self.conv1, attn, self.backend)


class VANAttention(nn.Module):
    """VAN's attention unit (official class ``Attention``): ``proj_2(LKA(GELU(proj_1(x)))) + x``.

    ``proj_1`` and ``proj_2`` are 1x1 convs with bias, the GELU is the exact (erf) one, and the shortcut is the unit's
    own input (in a VAN block, the input after ``norm1``).

    Args:
        dim: channels C.
        backend: kernel backend of the LKA (see :class:`LKA`) and of the 1x1 convs (``'torch'``: the modules).

    Shape:
        (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(self, dim: int, backend: str = "auto"):
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = LKA(dim, backend=backend)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = self.spatial_gating_unit.backend
        y = self.spatial_gating_unit(self.activation(pointwise_conv(self.proj_1, x, backend)))
        return pointwise_conv(self.proj_2, y, backend) + x
