"""Pointwise (1x1) convolution that runs as a matrix product on channels_last maps.

A 1x1 convolution of a channels_last ``(B, C, H, W)`` map is a product of the ``(B * H * W, C)`` pixel matrix with the
transposed ``(O, C)`` weight. ``F.linear`` on the ``(B, H, W, C)`` view folds the leading dimensions into one ``addmm``
(cuBLAS(Lt) on CUDA, with the bias added in the GEMM epilogue), where PyTorch's cuDNN conv path adds the bias in a
separate broadcast kernel. The module keeps ``nn.Conv2d``'s parameters, so it is a drop-in replacement: same
``state_dict`` keys and shapes, same ``isinstance(m, nn.Conv2d)`` initialisation, same checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import to_2tuple
from torch import nn

__all__ = ["PointwiseConv2d"]


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` fixed to kernel 1, stride 1, padding 0, dilation 1, groups 1; a GEMM on channels_last input.

    A 4-D input that is channels_last-contiguous (``x.is_contiguous(memory_format=torch.channels_last)``) goes through
    ``F.linear`` on its ``(B, H, W, C)`` view, without a copy, and the output is channels_last. Any other input (NCHW,
    strided views) goes through ``nn.Conv2d.forward`` and keeps the layout the conv gives it. Both paths compute the
    same values (up to float rounding), and both cast to the autocast dtype.

    The other ``nn.Conv2d`` arguments are accepted so that ``nn.Conv2d(c, o, 1)`` can be replaced in place, but only at
    their pointwise values.

    Args:
        in_channels: input channels C.
        out_channels: output channels O.
        kernel_size, stride, padding, dilation, groups: must be 1, 1, 0, 1, 1 (an int or a pair).
        bias: learn a per-output-channel bias.
        device, dtype: of the parameters.

    Shape:
        (B, C, H, W) -> (B, O, H, W); channels_last in, channels_last out.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 1,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        for name, value, valid in (
            ("kernel_size", kernel_size, 1),
            ("stride", stride, 1),
            ("padding", padding, 0),
            ("dilation", dilation, 1),
        ):
            if to_2tuple(value) != (valid, valid):
                raise ValueError(f"PointwiseConv2d: {name} must be {valid} (or ({valid}, {valid})), got {value!r}.")
        if groups != 1:
            raise ValueError(f"PointwiseConv2d: groups must be 1, got {groups!r}.")
        super().__init__(in_channels, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            weight = self.weight.flatten(1)  # (O, C, 1, 1) -> (O, C), a view
            return F.linear(x.permute(0, 2, 3, 1), weight, self.bias).permute(0, 3, 1, 2)
        return super().forward(x)
