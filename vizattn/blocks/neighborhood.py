"""Neighborhood attention blocks (NAT, CVPR 2023, https://arxiv.org/abs/2204.07143; DiNAT,
https://arxiv.org/abs/2209.15001).

The module takes and returns channels-last maps ``(B, H, W, C)``: NAT runs its attention and MLP channels-last, the
``qkv`` Linear then produces the heads-last ``(B, H, W, 3, heads, head_dim)`` layout the kernel reads without
permutes. Parameter names follow NATTEN's ``NeighborhoodAttention2D`` (``qkv``, ``rpb``, ``proj``) so the official
NAT / DiNAT checkpoints load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from vizattn.kernels.na2d import na2d_qkv

__all__ = ["NeighborhoodAttention2d"]


class NeighborhoodAttention2d(nn.Module):
    """Multi-head 2-D (dilated) neighborhood attention with relative position bias.

    Every token attends to the ``kernel_size x kernel_size`` tokens of its dilation group nearest to it (windows
    shifted inward at the borders); see :func:`vizattn.kernels.na2d.na2d` for the exact rule.

    Args:
        dim: channels C of the input and output.
        num_heads: heads; ``dim`` must be a multiple of it.
        kernel_size: window side k (7 in NAT/DiNAT, 11 in the 11x11 DiNAT-L).
        dilation: dilation d (``None`` means 1, as in NATTEN).
        qkv_bias: bias of the ``qkv`` projection.
        qk_scale: softmax temperature applied to q before the dot product (default ``head_dim ** -0.5``).
        rel_pos_bias: learn a relative position bias ``rpb`` of shape (heads, 2k - 1, 2k - 1), added to the scaled
            logits (every NAT/DiNAT checkpoint has one).
        proj_drop: dropout after the output projection.
        auto_pad: for maps smaller than ``k * d`` on a side, zero-pad the input on the bottom/right up to ``k * d``
            before ``qkv``, attend over the padded map (the padded tokens are unmasked keys whose K and V equal the
            ``qkv`` bias) and crop before ``proj``. This is what NATTEN <= 0.15, which trained every official model,
            did; without it such maps are an error (NATTEN >= 0.17).
        backend: kernel backend, ``'auto'``, ``'triton'`` or ``'torch'``.

    Shape:
        (B, H, W, dim) -> (B, H, W, dim).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int = 7,
        dilation: int | None = 1,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        rel_pos_bias: bool = True,
        proj_drop: float = 0.0,
        auto_pad: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"NeighborhoodAttention2d: dim={dim} must be a multiple of num_heads={num_heads}.")
        dilation = dilation or 1
        if not isinstance(kernel_size, int) or kernel_size < 2:
            raise ValueError(f"NeighborhoodAttention2d: kernel_size must be an int >= 2, got {kernel_size!r}.")
        if not isinstance(dilation, int) or dilation < 1:
            raise ValueError(f"NeighborhoodAttention2d: dilation must be a positive int, got {dilation!r}.")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.auto_pad = auto_pad
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
            trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(
                f"NeighborhoodAttention2d expects a channels-last map (B, H, W, {self.dim}), got shape "
                f"{tuple(x.shape)}."
            )
        b, h_in, w_in, c = x.shape
        window = self.kernel_size * self.dilation
        pad_b, pad_r = max(0, window - h_in), max(0, window - w_in)
        if (pad_b or pad_r) and self.auto_pad:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hh, ww = x.shape[1:3]
        # Output channel s * C + h * head_dim + c of qkv is component s (q, k, v) of head h.
        qkv = self.qkv(x).reshape(b, hh, ww, 3, self.num_heads, self.head_dim)
        out = na2d_qkv(qkv, self.kernel_size, self.dilation, self.rpb, self.scale, backend=self.backend)
        out = out.reshape(b, hh, ww, c)
        if hh != h_in or ww != w_in:
            out = out[:, :h_in, :w_in]
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"rel_pos_bias={self.rpb is not None}, auto_pad={self.auto_pad}"
        )
