"""Efficient Local Attention (ELA; Wei Xu, Yi Wan, "ELA: Efficient Local Attention for Deep Convolutional Neural
Networks", 2024, https://arxiv.org/abs/2403.01123).

No official code or weights exist; the module is the paper's code listing as reproduced identically by the
third-party copies (spec ``ela.md`` §1-2). It takes and returns NCHW maps ``(B, C, H, W)``, the layout of the CNNs it is
inserted into. timm's own ``attn_layer='ela'`` (``EfficientLocalAttn``) is a different module (separate H/W convs and
norms, SiLU, no grouped variants) and is not used here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ELA", "ELA_VARIANTS"]

# variant -> (kernel size k, channels per conv group (1: depthwise), GroupNorm groups G); spec ela.md §2.
ELA_VARIANTS: dict[str, tuple[int, int, int]] = {
    "T": (5, 1, 32),
    "B": (7, 1, 16),
    "S": (5, 8, 16),
    "L": (7, 8, 16),
}


class ELA(nn.Module):
    """Efficient local attention: ``x * a_h * a_w`` with ``a = sigmoid(GN(conv(strip_mean(x))))`` per direction.

    The strip-pooled profiles along H (mean over W) and along W (mean over H) go through one shared ``Conv1d`` (zero
    padded, no bias) and one shared ``GroupNorm``, applied separately to each; their sigmoids gate ``x`` (no residual,
    no channel reduction).

    Args:
        channels: channels C.
        variant: ``'T'`` (k 5, depthwise, GN 32 groups), ``'B'`` (k 7, depthwise, GN 16), ``'S'`` (k 5, conv groups of
            8 channels, GN 16) or ``'L'`` (k 7, groups of 8, GN 16). C must be a multiple of the GN groups (and of 8
            for S/L).
        act_layer: accepted (and unused) because timm's attention hooks pass it; ELA has no activation.
        device, dtype: factory kwargs, passed by timm (>= 1.0.21) hooks.

    There is deliberately no ``rd_ratio`` argument: timm's EfficientNet builder probes ``se_layer(8, rd_ratio=1.0)``
    and only tolerates a TypeError.

    Shape:
        (B, channels, H, W) -> (B, channels, H, W).
    """

    def __init__(
        self,
        channels: int,
        variant: str = "B",
        act_layer: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if variant not in ELA_VARIANTS:
            raise ValueError(f"ELA: variant must be one of {sorted(ELA_VARIANTS)}, got {variant!r}.")
        kernel_size, group_width, gn_groups = ELA_VARIANTS[variant]
        if channels % gn_groups or channels % group_width:
            need = f"{gn_groups} (GroupNorm groups)" + (
                f" and of {group_width} (conv groups)" if group_width > 1 else ""
            )
            raise ValueError(f"ELA-{variant}: channels must be a multiple of {need}, got {channels}.")
        self.channels = channels
        self.variant = variant
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv1d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels // group_width, bias=False, **dd
        )
        self.norm = nn.GroupNorm(gn_groups, channels, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"ELA expects an NCHW map (B, {self.channels}, H, W), got shape {tuple(x.shape)}.")
        b, c, h, w = x.shape
        a_h = torch.sigmoid(self.norm(self.conv(x.mean(3)))).view(b, c, h, 1)
        a_w = torch.sigmoid(self.norm(self.conv(x.mean(2)))).view(b, c, 1, w)
        return x * a_h * a_w
