"""Channel-scaled residual add, the definition: ``x + scale[c] * y`` over the channels of (B, C, H, W) maps.

This is the layer-scale residual of VAN, ConvNeXt-style and CaiT-style blocks (``x + gamma[:, None, None] * f(x)``).
The sum is computed in float32 (float64 for float64 inputs) and rounded once to the dtype PyTorch's type promotion
gives ``x + scale * y``.
"""

from __future__ import annotations

import torch

__all__ = ["result_dtype", "scaled_add_reference"]


def result_dtype(x: torch.Tensor, scale: torch.Tensor, y: torch.Tensor) -> torch.dtype:
    """The dtype of ``x + scale[:, None, None] * y`` under PyTorch's type promotion (all three are dimensioned)."""
    return torch.promote_types(x.dtype, torch.promote_types(scale.dtype, y.dtype))


def scaled_add_reference(x: torch.Tensor, scale: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) + (C,) * (B, C, H, W) -> (B, C, H, W), in the promoted dtype of the three, x's memory format."""
    out_dtype = result_dtype(x, scale, y)
    acc = torch.promote_types(out_dtype, torch.float32)
    out = x.to(acc) + scale.to(acc)[:, None, None] * y.to(acc)
    return out.to(out_dtype)
