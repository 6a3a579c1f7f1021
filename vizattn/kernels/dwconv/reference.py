"""Depthwise 2-D convolution, the definition: ``torch.nn.functional.conv2d`` with ``groups = C``, computed in float32.

'Same' convolution with stride 1: an odd kernel ``k``, dilation ``d`` and zero padding ``d * (k - 1) / 2`` on every
side, so the output has the input's size. This is the convolution of VAN's LKA (5x5; 7x7 dilation 3) and of its MLP
(3x3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dwconv2d_reference"]


def dwconv2d_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, dilation: int = 1
) -> torch.Tensor:
    """(B, C, H, W) x (C, 1, k, k) [+ (C,)] -> (B, C, H, W) in x's dtype; float32 (or float64) internally."""
    acc = torch.promote_types(x.dtype, torch.float32)
    k = weight.shape[-1]
    out = F.conv2d(
        x.to(acc),
        weight.to(acc),
        None if bias is None else bias.to(acc),
        padding=dilation * (k - 1) // 2,
        dilation=dilation,
        groups=x.shape[1],
    )
    return out.to(x.dtype)
