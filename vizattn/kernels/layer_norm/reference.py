"""Layer normalisation over the last dim, the definition: ``torch.nn.functional.layer_norm`` computed in float32.

The result is rounded once to ``out_dtype`` (the input's dtype by default; float32 is what autocast makes of a 16-bit
input, since ``layer_norm`` runs in float32 under autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["layer_norm_reference"]


def layer_norm_reference(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(..., C) [* (C,) + (C,)] -> (..., C) in ``out_dtype`` (default x's); float32 (float64 for float64) inside."""
    acc = torch.promote_types(x.dtype, torch.float32)
    w = None if weight is None else weight.to(acc)
    b = None if bias is None else bias.to(acc)
    with torch.autocast(x.device.type, enabled=False):
        out = F.layer_norm(x.to(acc), x.shape[-1:], w, b, eps)
    return out.to(out_dtype or x.dtype)
