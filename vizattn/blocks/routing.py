"""Bi-level routing attention blocks (BiFormer, CVPR 2023, https://arxiv.org/abs/2303.08810).

Both modules take and return NHWC maps ``(N, H, W, C)``: BiFormer runs its attention and MLP channels-last, and the
linear projections then need no transposes. Parameter names follow the official code (rayleizhu/BiFormer,
``ops/bra_legacy.py`` and ``models/_common.py``) so the released checkpoints load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vizattn.kernels.routed import bi_level_routing_attention

__all__ = ["QKVLinear", "RoutingAttention", "AttentionLePE"]


def _dwconv_nhwc(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A depthwise conv on an NHWC map: the NCHW view of an NHWC tensor has channels_last strides, so the conv runs
    its channels-last kernels and the result permutes back to a contiguous NHWC tensor, with no layout copies.

    ``x`` may be a channel slice of a larger tensor (LePE's ``v``, a view of the qkv projection): it goes to the conv
    as that view, so the conv's autograd saves the view (whose storage the attention saves anyway), not a dense copy;
    the conv densifies it internally, in the forward and again in the backward.
    """
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _check_channels(module: nn.Module, x: torch.Tensor, dim: int) -> None:
    if x.dim() != 4 or x.shape[-1] != dim:
        raise ValueError(f"{type(module).__name__} expects an NHWC map (N, H, W, {dim}), got shape {tuple(x.shape)}.")


class QKVLinear(nn.Module):
    """One linear layer producing q, k (``qk_dim`` channels each) and v (``dim`` channels), in that channel order.

    It wraps the ``nn.Linear`` one level deep only to keep the official key names (``attn.qkv.qkv.weight``).
    """

    def __init__(self, dim: int, qk_dim: int, bias: bool = True):
        super().__init__()
        self.dim = dim
        self.qk_dim = qk_dim
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, bias=bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)


class RoutingAttention(nn.Module):
    """Bi-level routing attention with the semantics of the released BiFormer checkpoints (``bra_legacy``).

    The map is cut into ``n_win x n_win`` regions. Each region routes to the ``topk`` regions whose mean key is most
    similar to its mean query (one choice for all heads, no gradient), then its tokens attend to every token of
    those regions. A depthwise convolution of V over the whole map (LePE) is added before the output projection.

    Args:
        dim: channels C of the input and output.
        num_heads: attention heads; ``qk_dim`` and ``dim`` must be multiples of it.
        n_win: regions per side.
        qk_dim: width of q and k (default ``dim``).
        qk_scale: softmax temperature (default ``qk_dim ** -0.5``: the full width, as the official code, for both
            routing and attention).
        topk: routed regions per region, 1 to ``n_win ** 2``.
        side_dwconv: LePE kernel size (0 disables LePE).
        auto_pad: zero-pad the input on the right and bottom to multiples of ``n_win`` before the projection (the
            padded tokens then carry the projection bias and take part in the attention, unmasked, as in the
            official dense-prediction models), and crop the output back. Without it, H and W must be multiples of
            ``n_win``.
        backend: kernel backend, ``'auto'``, ``'triton'`` or ``'torch'``.

    Shape:
        (N, H, W, dim) -> (N, H, W, dim).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        n_win: int = 7,
        qk_dim: int | None = None,
        qk_scale: float | None = None,
        topk: int = 4,
        side_dwconv: int = 3,
        auto_pad: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        qk_dim = qk_dim or dim
        if qk_dim % num_heads or dim % num_heads:
            raise ValueError(
                f"RoutingAttention: qk_dim={qk_dim} and dim={dim} must be multiples of num_heads={num_heads}."
            )
        if not 1 <= topk <= n_win * n_win:
            raise ValueError(f"RoutingAttention: topk must be in [1, n_win^2 = {n_win * n_win}], got {topk}.")
        self.dim = dim
        self.qk_dim = qk_dim
        self.num_heads = num_heads
        self.n_win = n_win
        self.topk = topk
        self.scale = qk_scale or qk_dim**-0.5
        self.auto_pad = auto_pad
        self.backend = backend
        self.qkv = QKVLinear(dim, qk_dim)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim) if side_dwconv > 0 else None
        self.wo = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(self, x, self.dim)
        _, h_in, w_in, _ = x.shape
        pad_b, pad_r = (-h_in) % self.n_win, (-w_in) % self.n_win
        if pad_b or pad_r:
            if not self.auto_pad:
                raise ValueError(
                    f"RoutingAttention: the map size {h_in}x{w_in} is not a multiple of n_win={self.n_win}; use an "
                    f"input size whose feature maps divide by n_win, or build the model with auto_pad=True."
                )
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        q, k, v = self.qkv(x)
        out = bi_level_routing_attention(
            q, k, v, self.n_win, self.topk, self.num_heads, self.scale, backend=self.backend
        )
        if self.lepe is not None:
            out = out + _dwconv_nhwc(self.lepe, v)
        out = self.wo(out)
        if pad_b or pad_r:
            out = out[:, :h_in, :w_in].contiguous()
        return out

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, n_win={self.n_win}, topk={self.topk}, "
            f"auto_pad={self.auto_pad}"
        )


class AttentionLePE(nn.Module):
    """Global multi-head self-attention plus a depthwise-conv positional term (BiFormer's last stage).

    As in the official ``AttentionLePE``: qkv has no bias, the scale is the per-head ``(dim / num_heads) ** -0.5``,
    and LePE is applied to the block's input x (not to v).

    Shape:
        (N, H, W, dim) -> (N, H, W, dim).
    """

    def __init__(
        self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: float | None = None, side_dwconv: int = 5
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"AttentionLePE: dim={dim} must be a multiple of num_heads={num_heads}.")
        self.dim = dim
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim) if side_dwconv > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(self, x, self.dim)
        n, h, w, c = x.shape
        qkv = self.qkv(x).reshape(n, h * w, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
        out = out.transpose(1, 2).reshape(n, h, w, c)
        if self.lepe is not None:
            out = out + _dwconv_nhwc(self.lepe, x)
        return self.proj(out)
