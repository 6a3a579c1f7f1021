"""Depthwise 2-D convolution, the definition: ``torch.nn.functional.conv2d`` with ``groups = C``, computed in float32.

'Same' convolution with stride 1: an odd kernel ``k``, dilation ``d`` and zero padding ``d * (k - 1) / 2`` on every
side, so the output has the input's size. This is the convolution of VAN's LKA (5x5; 7x7 dilation 3) and of its MLP
(3x3). LKA's spatial op is two of them in a row, the intermediate rounded to the input's dtype as two separate convs
round it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dwconv2d_reference", "lka_spatial_reference"]


def dwconv2d_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, dilation: int = 1
) -> torch.Tensor:
    """(B, C, H, W) x (C, 1, k, k) [+ (C,)] -> (B, C, H, W) in x's dtype; float32 (or float64) internally.

    The output keeps x's memory format (NCHW or channels_last), as ``F.conv2d`` does.
    """
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


def lka_spatial_reference(
    x: torch.Tensor,
    w0: torch.Tensor,
    b0: torch.Tensor | None,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    dilations: tuple[int, int] = (1, 3),
) -> torch.Tensor:
    """LKA's spatial part: ``dwconv(dwconv(x, w0, b0, d0), w1, b1, d1)``, each conv padded with zeros on its own.

    (B, C, H, W) x (C, 1, k0, k0) x (C, 1, k1, k1) -> (B, C, H, W); VAN uses k0 = 5, k1 = 7, dilations (1, 3).
    """
    return dwconv2d_reference(dwconv2d_reference(x, w0, b0, dilations[0]), w1, b1, dilations[1])
