"""Triton kernels of the depthwise 'same' convolution (NCHW), forward and backward.

Forward: a program owns one ``BLOCK_H x BLOCK_W`` output tile of one (image, channel) plane and accumulates the
``k * k`` shifted, masked input tiles times their scalar weights in float32 (zero padding = masked loads).

Backward: the input gradient is the same convolution of ``grad_out`` with the spatially flipped kernel (stride 1,
symmetric padding), so it runs the forward kernel. The weight and bias gradients are per-channel reductions over
(B, H, W): a program takes one tile of one (image, channel) plane, writes one float32 partial sum per tap (and one for
the bias) to a buffer of ``B * tiles`` rows per channel, and the launcher sums the rows; nothing of size
``N * k * k`` is written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vizattn.kernels._alloc import new_output

__all__ = ["dwconv2d_fwd", "dwconv2d_bwd", "BLOCK"]

BLOCK = (16, 16)  # output tile (BLOCK_H, BLOCK_W) per program


@triton.jit
def _dw_fwd_kernel(
    X,
    Wt,
    Bias,
    Y,
    C,
    H,
    W,
    K: tl.constexpr,
    DIL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    plane = tl.program_id(0)  # b * C + c
    tile = tl.program_id(1)
    n_tw = tl.cdiv(W, BLOCK_W)
    c = plane % C
    oh = (tile // n_tw) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    ow = (tile % n_tw) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    base = plane.to(tl.int64) * H * W
    pad = DIL * (K - 1) // 2
    acc = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    for i in tl.static_range(K):
        ih = oh + i * DIL - pad
        for j in tl.static_range(K):
            iw = ow + j * DIL - pad
            m = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            xv = tl.load(X + base + ih * W + iw, mask=m, other=0.0).to(tl.float32)
            wv = tl.load(Wt + c * K * K + i * K + j).to(tl.float32)
            acc += xv * wv
    if HAS_BIAS:
        acc += tl.load(Bias + c).to(tl.float32)
    m_out = (oh < H) & (ow < W)
    tl.store(Y + base + oh * W + ow, acc.to(Y.dtype.element_ty), mask=m_out)


@triton.jit
def _dw_wgrad_kernel(
    X,
    DY,
    DW,
    DB,
    C,
    H,
    W,
    n_rows,
    K: tl.constexpr,
    DIL: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    plane = tl.program_id(0)  # b * C + c
    tile = tl.program_id(1)
    n_tw = tl.cdiv(W, BLOCK_W)
    n_tiles = tl.cdiv(H, BLOCK_H) * n_tw
    b = plane // C
    c = plane % C
    oh = (tile // n_tw) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    ow = (tile % n_tw) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    base = plane.to(tl.int64) * H * W
    pad = DIL * (K - 1) // 2
    m_out = (oh < H) & (ow < W)
    dy = tl.load(DY + base + oh * W + ow, mask=m_out, other=0.0).to(tl.float32)
    row = c.to(tl.int64) * n_rows + b * n_tiles + tile  # partial-sum row of this program
    tl.store(DB + row, tl.sum(tl.sum(dy, axis=1), axis=0))
    for i in tl.static_range(K):
        ih = oh + i * DIL - pad
        for j in tl.static_range(K):
            iw = ow + j * DIL - pad
            m = m_out & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            xv = tl.load(X + base + ih * W + iw, mask=m, other=0.0).to(tl.float32)
            tl.store(DW + row * K * K + i * K + j, tl.sum(tl.sum(dy * xv, axis=1), axis=0))


def _grid(x: torch.Tensor) -> tuple[int, int]:
    b, c, h, w = x.shape
    return b * c, triton.cdiv(h, BLOCK[0]) * triton.cdiv(w, BLOCK[1])


def dwconv2d_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int) -> torch.Tensor:
    """(B, C, H, W) contiguous x, (C, 1, k, k) weight -> (B, C, H, W) in x's dtype."""
    k = weight.shape[-1]
    y = new_output(tuple(x.shape), x.dtype, x.device)
    w = weight.contiguous()
    _dw_fwd_kernel[_grid(x)](
        x,
        w,
        bias if bias is not None else w,
        y,
        x.shape[1],
        x.shape[2],
        x.shape[3],
        K=k,
        DIL=dilation,
        HAS_BIAS=bias is not None,
        BLOCK_H=BLOCK[0],
        BLOCK_W=BLOCK[1],
    )
    return y


def dwconv2d_bwd(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, dilation: int, needs_bias: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`dwconv2d_fwd`: (dx in x's dtype, dweight and dbias in the weight's dtype)."""
    grad_out = grad_out.contiguous()
    dx = dwconv2d_fwd(grad_out, weight.flip(-1, -2), None, dilation)
    b, c, h, w = x.shape
    k = weight.shape[-1]
    planes, n_tiles = _grid(x)
    n_rows = b * n_tiles
    dw_part = new_output((c, n_rows, k * k), torch.float32, x.device)
    db_part = new_output((c, n_rows), torch.float32, x.device)
    _dw_wgrad_kernel[(planes, n_tiles)](
        x, grad_out, dw_part, db_part, c, h, w, n_rows, K=k, DIL=dilation, BLOCK_H=BLOCK[0], BLOCK_W=BLOCK[1]
    )
    dweight = dw_part.sum(1).view(c, 1, k, k).to(weight.dtype)
    dbias = db_part.sum(1).to(weight.dtype) if needs_bias else None
    return dx, dweight, dbias
