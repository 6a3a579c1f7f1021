"""Triton kernels of layer normalisation over the last dim, for the narrow rows of vision backbones.

PyTorch's CUDA layer norm gives each row its own thread block, which leaves most of a block idle on the 64-320
channels of NAT's and BiFormer's early stages (H200, bf16 autocast, batch 128: its float32 forward kernel took 7.6 of
the 66 ms of a nat_tiny training step, its backward kernels 8.3). Here a program normalises a tile of rows at once.

- Forward: a tile of ``BLOCK_M`` rows of ``BLOCK_C >= C`` columns; mean and variance in float32 (the variance from
  the centred values, two passes over registers), then ``(x - mean) * rstd * weight + bias`` rounded once to the
  output dtype; ``mean`` and ``rstd`` are kept for the backward.
- Backward: a program walks a chunk of rows a tile at a time; per row ``dx = rstd * (g w - mean(g w) - xhat *
  mean(g w xhat))``, and it sums ``g * xhat`` and ``g`` over its rows in registers for the weight's and bias's
  gradients, one partial row each per program, which the launcher adds in a fixed order (deterministic) in one
  reduction: two launches per backward, as PyTorch's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vizattn.kernels._alloc import new_output
from vizattn.kernels._triton_util import cdiv, next_pow2, row_chunks, sm_count

__all__ = ["layer_norm_bwd", "layer_norm_fwd"]

_TILE = 4096  # elements per tile (rows x padded columns)
_PROGRAMS_PER_SM = 4  # backward


@triton.jit
def _layer_norm_fwd_kernel(
    X, W, B, Y, MEAN, RSTD, M, C, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    rmask = rows < M
    cmask = cols < C
    mask = rmask[:, None] & cmask[None, :]
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, 1) / C
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / C + eps)
    y = xc * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=rmask)
    tl.store(RSTD + rows, rstd, mask=rmask)


@triton.jit
def _layer_norm_bwd_kernel(
    G, X, W, MEAN, RSTD, DX, PART, M, C, ROWS_PER_PROGRAM,
    HAS_W: tl.constexpr, NEEDS_DW: tl.constexpr, NEEDS_DB: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    if HAS_W:
        w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    start = pid * ROWS_PER_PROGRAM
    end = tl.minimum(start + ROWS_PER_PROGRAM, M)
    dw_acc = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    db_acc = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    for r in range(start, end, BLOCK_M):
        rows = r + tl.arange(0, BLOCK_M)
        rmask = rows < end
        mask = rmask[:, None] & cmask[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=rmask, other=0.0)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        gw = g * w[None, :] if HAS_W else g
        c1 = tl.sum(gw * xhat, 1) / C
        c2 = tl.sum(gw, 1) / C
        dx = (gw - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        if NEEDS_DW:
            dw_acc += g * xhat
        if NEEDS_DB:
            db_acc += g
    if NEEDS_DW:
        tl.store(PART + (2 * pid) * C + cols, tl.sum(dw_acc, 0), mask=cmask)
    if NEEDS_DB:
        tl.store(PART + (2 * pid + 1) * C + cols, tl.sum(db_acc, 0), mask=cmask)


def _tile(c: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_C, num_warps) of a row length."""
    block_c = next_pow2(c)
    return max(1, _TILE // block_c), block_c, 4 if block_c <= 1024 else 8


def layer_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise the rows of a contiguous (..., C) ``x``: ``(y in out_dtype, mean, rstd)``, the last two float32 of
    x's leading shape."""
    c = x.shape[-1]
    m = x.numel() // c if c else 0
    y = new_output(x.shape, out_dtype, x.device)
    mean = new_output(x.shape[:-1], torch.float32, x.device)
    rstd = new_output(x.shape[:-1], torch.float32, x.device)
    if m == 0:
        return y, mean, rstd
    block_m, block_c, warps = _tile(c)
    _layer_norm_fwd_kernel[(cdiv(m, block_m),)](
        x, weight if weight is not None else x, bias if bias is not None else x, y, mean, rstd, m, c, eps,
        HAS_W=weight is not None, HAS_B=bias is not None, BLOCK_M=block_m, BLOCK_C=block_c, num_warps=warps,
    )  # fmt: skip
    return y, mean, rstd


def layer_norm_bwd(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    needs_weight: bool,
    needs_bias: bool,
    programs: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`layer_norm_fwd`: ``dx`` (x's dtype) and, when either is asked, the weight's and bias's
    as the rows of one (2, C) float32 tensor (cast to the parameters' dtype by the caller; a row not asked for is
    garbage). ``grad`` and ``x`` contiguous. ``programs``: backward programs
    (tests use it to give programs several tiles); by default about ``_PROGRAMS_PER_SM`` per SM."""
    c = x.shape[-1]
    m = x.numel() // c if c else 0
    dx = new_output(x.shape, x.dtype, x.device)
    if m == 0:
        return dx, (x.new_zeros((2, c), dtype=torch.float32) if needs_weight or needs_bias else None)
    block_m, block_c, warps = _tile(c)
    programs = programs or sm_count(x.device) * _PROGRAMS_PER_SM
    rows_per_program, programs = row_chunks(m, block_m, programs)
    # one (programs, 2, C) buffer of partial sums (weight, bias), so both are summed by one launch
    part = new_output((programs, 2, c), torch.float32, x.device) if needs_weight or needs_bias else dx
    _layer_norm_bwd_kernel[(programs,)](
        grad, x, weight if weight is not None else x, mean, rstd, dx, part, m, c, rows_per_program,
        HAS_W=weight is not None, NEEDS_DW=needs_weight, NEEDS_DB=needs_bias, BLOCK_M=block_m, BLOCK_C=block_c,
        num_warps=warps,
    )  # fmt: skip
    return dx, (part.sum(0) if needs_weight or needs_bias else None)
