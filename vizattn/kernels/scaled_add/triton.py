"""Triton kernels of the channel-scaled residual add ``x + scale[c] * y`` on channels_last maps.

A channels_last (B, C, H, W) map is a (B * H * W, C) matrix in memory, so both kernels walk tiles of rows and a block
of channels. The forward reads x and y once and writes the sum (PyTorch's ``addcmul`` of a float32 x and a 16-bit y
runs its unvectorised mixed-dtype loop). The backward reads the output gradient and y once, writes y's gradient
``grad * scale`` and per-program partial sums of ``grad * y`` for the scale's gradient, which the launcher adds in a
fixed order (deterministic); x's gradient is the output gradient itself. PyTorch's autograd runs that as a multiply,
a cast, a second multiply and a column reduction, four passes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vizattn.kernels._alloc import new_output
from vizattn.kernels._triton_util import cdiv, next_pow2, row_chunks, sm_count
from vizattn.kernels.scaled_add.reference import result_dtype

__all__ = ["scaled_add_bwd", "scaled_add_fwd"]

_TILE = 4096  # elements per program and loop step
_PROGRAMS_PER_SM = 4  # backward: programs per SM over the channel blocks


@triton.jit
def _scaled_add_fwd_kernel(X, S, Y, OUT, M, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (rows < M)[:, None] & cmask[None, :]
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    s = tl.load(S + cols, mask=cmask, other=0.0).to(tl.float32)
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + offs, (x + s[None, :] * y).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _scaled_add_bwd_kernel(
    G, S, Y, DY, DS_PART, M, C, ROWS_PER_PROGRAM, HAS_DS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr
):
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    s = tl.load(S + cols, mask=cmask, other=0.0).to(tl.float32)
    start = pid * ROWS_PER_PROGRAM
    end = tl.minimum(start + ROWS_PER_PROGRAM, M)
    acc = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    for r in range(start, end, BLOCK_M):
        rows = r + tl.arange(0, BLOCK_M)
        mask = (rows < end)[:, None] & cmask[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(DY + offs, (g * s[None, :]).to(DY.dtype.element_ty), mask=mask)
        if HAS_DS:
            acc += g * tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_DS:
        tl.store(DS_PART + pid * C + cols, tl.sum(acc, 0), mask=cmask)


def _blocks(c: int) -> tuple[int, int]:
    block_c = min(next_pow2(c), 128)
    return max(_TILE // block_c, 1), block_c


def scaled_add_fwd(x: torch.Tensor, scale: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + scale[:, None, None] * y`` for channels_last (B, C, H, W) maps x and y; channels_last output in the
    promoted dtype."""
    out_dtype = result_dtype(x, scale, y)
    b, c, h, w = x.shape
    out = new_output((b, h, w, c), out_dtype, x.device).permute(0, 3, 1, 2)
    m = b * h * w
    if m == 0:
        return out
    block_m, block_c = _blocks(c)
    grid = (cdiv(m, block_m), cdiv(c, block_c))
    _scaled_add_fwd_kernel[grid](x, scale, y, out, m, c, BLOCK_M=block_m, BLOCK_C=block_c, num_warps=4)
    return out


def scaled_add_bwd(
    grad: torch.Tensor, scale: torch.Tensor, y: torch.Tensor, needs_scale: bool, programs: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`scaled_add_fwd` for y (``grad * scale``, y's dtype, channels_last) and scale (scale's
    dtype; None unless ``needs_scale``). ``grad``: channels_last, as y. ``programs``: programs per channel block
    (tests use it to give programs several row tiles); by default about ``_PROGRAMS_PER_SM`` per SM over the blocks.
    """
    b, c, h, w = y.shape
    m = b * h * w
    dy = new_output((b, h, w, c), y.dtype, y.device).permute(0, 3, 1, 2)
    if m == 0:
        return dy, (torch.zeros_like(scale) if needs_scale else None)
    block_m, block_c = _blocks(c)
    blocks = cdiv(c, block_c)
    if programs is None:
        programs = max(1, sm_count(y.device) * _PROGRAMS_PER_SM // blocks)
    rows_per_program, programs = row_chunks(m, block_m, programs)
    ds_part = new_output((programs, c), torch.float32, y.device) if needs_scale else dy
    _scaled_add_bwd_kernel[(programs, blocks)](
        grad, scale, y, dy, ds_part, m, c, rows_per_program,
        HAS_DS=needs_scale, BLOCK_M=block_m, BLOCK_C=block_c, num_warps=4,
    )  # fmt: skip
    return dy, (ds_part.sum(0).to(scale.dtype) if needs_scale else None)
