"""Triton kernels of 2-D neighborhood attention (NAT / DiNAT), forward and backward, with relative position bias.

A program owns one query tile (``T_h x T_w`` queries of one dilation group, laid out by
:func:`vizattn.kernels.na2d.tiles.axis_tiles`) of one image and one head. The windows of its queries lie inside a
``halo_h x halo_w`` block of keys of the same group; the program walks that halo in chunks of ``BLOCK_N`` keys, adds
the bias ``rpb[head, b_h, b_w]`` (indices from the per-axis tables, -1 outside a query's window, which masks the key)
and runs an online softmax in float32. Nothing of size ``N * k * k`` is ever written: the per-axis tables hold
``O(L * (T + k))`` integers.

The maps are read in place through their strides (q, k, v are usually views of one packed ``qkv`` projection);
logsumexp is kept per (image, row, column, head) in float32, base 2.

Backward: one kernel, shaped like the forward, recomputes the probabilities from the logsumexp and
``delta = rowsum(dO * O)``. It writes ``dq`` of its own queries once, and adds ``dk``, ``dv`` (halos of neighbouring
tiles overlap) and ``d(rpb)`` into float32 buffers with atomics, so those three are not bitwise deterministic on a
GPU (the order of float32 additions varies).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from vizattn.kernels._alloc import new_output
from vizattn.kernels.na2d.tiles import axis_tiles

__all__ = ["na2d_fwd", "na2d_bwd", "TILE"]

_LOG2E = 1.4426950408889634
TILE = (8, 8)  # queries per program along H and W
_BLOCK_N = 64  # halo keys per inner step on a GPU
_BLOCK_N_INTERPRET = 256  # under the interpreter each step costs Python overhead whatever its size


@functools.lru_cache(maxsize=256)
def _tables(length: int, kernel_size: int, dilation: int, tile: int, device: torch.device):
    """Per-axis tables on the device as int32: query index, query index or -1 for padded slots, halo key index,
    bias index or -1; plus (tiles, T, halo)."""
    t = axis_tiles(length, kernel_size, dilation, tile)
    n, slots = t.q_idx.shape
    real = torch.zeros(n, slots, dtype=torch.bool, device="cpu")
    real[t.tile_of, t.slot_of] = True
    store = torch.where(real, t.q_idx, -1)
    tabs = tuple(x.to(device=device, dtype=torch.int32).contiguous() for x in (t.q_idx, store, t.k_idx, t.bias_idx))
    return tabs + (n, slots, t.k_idx.shape[1])


@triton.jit
def _dot(a, b, DOT_PRECISION: tl.constexpr):
    if DOT_PRECISION == "upcast":
        # Triton's interpreter multiplies bfloat16 tiles wrongly; their exact float32 products are the same math.
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def _query_slots(QH, SH, QW, SW, th, tw, T_H: tl.constexpr, T_W: tl.constexpr, BLOCK_M: tl.constexpr):
    """Slot m of the tile: its row/column slot, global row/column, and whether it is a real (first-copy) query."""
    # Index math in int64: no overflow for large maps, and the interpreter does not check int64 arithmetic.
    m = tl.arange(0, BLOCK_M).to(tl.int64)
    m_ok = m < T_H * T_W
    a_h = tl.where(m_ok, m // T_W, 0)
    a_w = tl.where(m_ok, m % T_W, 0)
    row = tl.load(QH + th * T_H + a_h).to(tl.int64)
    col = tl.load(QW + tw * T_W + a_w).to(tl.int64)
    real = m_ok & (tl.load(SH + th * T_H + a_h) >= 0) & (tl.load(SW + tw * T_W + a_w) >= 0)
    return a_h, a_w, row, col, m_ok, real


@triton.jit
def _halo_chunk(KH, KW, BH, BW, RPB, th, tw, a_h, a_w, m_ok, start, rpb_side,
                T_H: tl.constexpr, T_W: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
                BLOCK_N: tl.constexpr, HAS_RPB: tl.constexpr):
    """Keys ``start .. start + BLOCK_N`` of the flattened halo: global row/column, validity, the (query, key)
    window mask, the bias (zero without rpb) and the flat bias index."""
    n = start + tl.arange(0, BLOCK_N).to(tl.int64)
    n_ok = n < HALO_H * HALO_W
    c_h = tl.where(n_ok, n // HALO_W, 0)
    c_w = tl.where(n_ok, n % HALO_W, 0)
    k_row = tl.load(KH + th * HALO_H + c_h).to(tl.int64)
    k_col = tl.load(KW + tw * HALO_W + c_w).to(tl.int64)
    b_h = tl.load(BH + (th * T_H + a_h)[:, None] * HALO_H + c_h[None, :]).to(tl.int64)
    b_w = tl.load(BW + (tw * T_W + a_w)[:, None] * HALO_W + c_w[None, :]).to(tl.int64)
    inside = (b_h >= 0) & (b_w >= 0) & m_ok[:, None] & n_ok[None, :]
    b_flat = tl.where(inside, b_h * rpb_side + b_w, 0)
    if HAS_RPB:
        bias = tl.load(RPB + b_flat, mask=inside, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros(inside.shape, dtype=tl.float32)
    return k_row, k_col, n_ok, inside, bias, b_flat


@triton.jit
def _na2d_fwd_kernel(
    Q, K, V, OUT, LSE, RPB,
    QH, SH, KH, BH, QW, SW, KW, BW,
    s_qb, s_qh, s_qw, s_qn, s_qd,
    s_kb, s_kh, s_kw, s_kn, s_kd,
    s_vb, s_vh, s_vw, s_vn, s_vd,
    s_ob, s_oh, s_ow, s_on, s_od,
    s_lb, s_lh, s_lw, s_ln,
    heads, n_tw, d_qk, d_v, qk_scale, rpb_side,
    T_H: tl.constexpr, T_W: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_RPB: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    tile = tl.program_id(0).to(tl.int64)
    bn = tl.program_id(1).to(tl.int64)
    th = tile // n_tw
    tw = tile % n_tw
    b = bn // heads
    head = bn % heads
    a_h, a_w, row, col, m_ok, real = _query_slots(QH, SH, QW, SW, th, tw, T_H, T_W, BLOCK_M)
    cq = tl.arange(0, BLOCK_DQK)
    cv = tl.arange(0, BLOCK_DV)
    q_ptr = Q + b * s_qb + head * s_qn + row[:, None] * s_qh + col[:, None] * s_qw + cq[None, :] * s_qd
    q = tl.load(q_ptr, mask=m_ok[:, None] & (cq < d_qk)[None, :], other=0.0)
    k_base = K + b * s_kb + head * s_kn
    v_base = V + b * s_vb + head * s_vn
    rpb_base = RPB + head * rpb_side * rpb_side

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    for start in range(0, HALO_H * HALO_W, BLOCK_N):
        k_row, k_col, n_ok, inside, bias, _ = _halo_chunk(
            KH, KW, BH, BW, rpb_base, th, tw, a_h, a_w, m_ok, start, rpb_side,
            T_H, T_W, HALO_H, HALO_W, BLOCK_N, HAS_RPB,
        )
        k = tl.load(k_base + k_row[:, None] * s_kh + k_col[:, None] * s_kw + cq[None, :] * s_kd,
                    mask=n_ok[:, None] & (cq < d_qk)[None, :], other=0.0)
        v = tl.load(v_base + k_row[:, None] * s_vh + k_col[:, None] * s_vw + cv[None, :] * s_vd,
                    mask=n_ok[:, None] & (cv < d_v)[None, :], other=0.0)
        s = _dot(q, tl.trans(k), DOT_PRECISION) * qk_scale + bias * 1.4426950408889634
        s = tl.where(inside, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet in this chunk
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PRECISION)
        m_i = m_new
    l_safe = tl.where(real, l_i, 1.0)
    out = acc / l_safe[:, None]
    o_ptr = OUT + b * s_ob + head * s_on + row[:, None] * s_oh + col[:, None] * s_ow + cv[None, :] * s_od
    tl.store(o_ptr, out.to(OUT.dtype.element_ty), mask=real[:, None] & (cv < d_v)[None, :])
    tl.store(LSE + b * s_lb + head * s_ln + row * s_lh + col * s_lw, m_i + tl.log2(l_safe), mask=real)


@triton.jit
def _na2d_bwd_kernel(
    Q, K, V, DO, LSE, DELTA, RPB, DQ, DK, DV, DRPB,
    QH, SH, KH, BH, QW, SW, KW, BW,
    s_qb, s_qh, s_qw, s_qn, s_qd,
    s_kb, s_kh, s_kw, s_kn, s_kd,
    s_vb, s_vh, s_vw, s_vn, s_vd,
    s_gb, s_gh, s_gw, s_gn, s_gd,
    s_lb, s_lh, s_lw, s_ln,
    s_dqb, s_dqh, s_dqw, s_dqn, s_dqd,
    s_dkb, s_dkh, s_dkw, s_dkn, s_dkd,
    s_dvb, s_dvh, s_dvw, s_dvn, s_dvd,
    heads, n_tw, d_qk, d_v, qk_scale, scale, rpb_side,
    T_H: tl.constexpr, T_W: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_RPB: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    tile = tl.program_id(0).to(tl.int64)
    bn = tl.program_id(1).to(tl.int64)
    th = tile // n_tw
    tw = tile % n_tw
    b = bn // heads
    head = bn % heads
    a_h, a_w, row, col, m_ok, real = _query_slots(QH, SH, QW, SW, th, tw, T_H, T_W, BLOCK_M)
    cq = tl.arange(0, BLOCK_DQK)
    cv = tl.arange(0, BLOCK_DV)
    cq_ok = (cq < d_qk)[None, :]
    cv_ok = (cv < d_v)[None, :]
    q = tl.load(Q + b * s_qb + head * s_qn + row[:, None] * s_qh + col[:, None] * s_qw + cq[None, :] * s_qd,
                mask=m_ok[:, None] & cq_ok, other=0.0)
    do = tl.load(DO + b * s_gb + head * s_gn + row[:, None] * s_gh + col[:, None] * s_gw + cv[None, :] * s_gd,
                 mask=real[:, None] & cv_ok, other=0.0)
    stat = b * s_lb + head * s_ln + row * s_lh + col * s_lw
    lse = tl.load(LSE + stat, mask=real, other=0.0)
    delta = tl.load(DELTA + stat, mask=real, other=0.0)
    k_base = K + b * s_kb + head * s_kn
    v_base = V + b * s_vb + head * s_vn
    dk_base = DK + b * s_dkb + head * s_dkn
    dv_base = DV + b * s_dvb + head * s_dvn
    rpb_base = RPB + head * rpb_side * rpb_side
    drpb_base = DRPB + head * rpb_side * rpb_side

    dq = tl.zeros((BLOCK_M, BLOCK_DQK), dtype=tl.float32)
    for start in range(0, HALO_H * HALO_W, BLOCK_N):
        k_row, k_col, n_ok, inside, bias, b_flat = _halo_chunk(
            KH, KW, BH, BW, rpb_base, th, tw, a_h, a_w, m_ok, start, rpb_side,
            T_H, T_W, HALO_H, HALO_W, BLOCK_N, HAS_RPB,
        )
        inside = inside & real[:, None]  # padded slots repeat a real query: they must not count twice
        k_off = k_row[:, None] * s_kh + k_col[:, None] * s_kw
        k = tl.load(k_base + k_off + cq[None, :] * s_kd, mask=n_ok[:, None] & cq_ok, other=0.0)
        v = tl.load(v_base + k_row[:, None] * s_vh + k_col[:, None] * s_vw + cv[None, :] * s_vd,
                    mask=n_ok[:, None] & cv_ok, other=0.0)
        s = _dot(q, tl.trans(k), DOT_PRECISION) * qk_scale + bias * 1.4426950408889634
        p = tl.where(inside, tl.exp2(s - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), DOT_PRECISION)
        ds = tl.where(inside, p * (dp - delta[:, None]), 0.0)
        dq += _dot(ds.to(k.dtype), k, DOT_PRECISION)
        dk = _dot(tl.trans(ds).to(q.dtype), q, DOT_PRECISION) * scale
        dv = _dot(tl.trans(p).to(do.dtype), do, DOT_PRECISION)
        tl.atomic_add(dk_base + k_row[:, None] * s_dkh + k_col[:, None] * s_dkw + cq[None, :] * s_dkd, dk,
                      mask=n_ok[:, None] & cq_ok)
        tl.atomic_add(dv_base + k_row[:, None] * s_dvh + k_col[:, None] * s_dvw + cv[None, :] * s_dvd, dv,
                      mask=n_ok[:, None] & cv_ok)
        if HAS_RPB:
            tl.atomic_add(drpb_base + b_flat, ds, mask=inside)
    dq_ptr = DQ + b * s_dqb + head * s_dqn + row[:, None] * s_dqh + col[:, None] * s_dqw + cq[None, :] * s_dqd
    tl.store(dq_ptr, (dq * scale).to(DQ.dtype.element_ty), mask=real[:, None] & cq_ok)


def _head_block(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs get true float32 products so they match the float32 reference; 16-bit inputs ignore it.
    if dtype == torch.float32:
        return "ieee"
    if dtype == torch.bfloat16 and triton.knobs.runtime.interpret:
        return "upcast"
    return "tf32"


class _Launch:
    """Tables and launch geometry of one call."""

    def __init__(self, q: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int, tile: tuple[int, int]):
        b, hh, ww, heads, d_qk = q.shape
        qh, sh, kh, bh, n_th, t_h, halo_h = _tables(hh, kernel_size, dilation, tile[0], q.device)
        qw, sw, kw, bw, n_tw, t_w, halo_w = _tables(ww, kernel_size, dilation, tile[1], q.device)
        self.tables = (qh, sh, kh, bh, qw, sw, kw, bw)
        self.grid = (n_th * n_tw, b * heads)
        self.scalars = (heads, n_tw, d_qk, v.shape[-1])
        self.meta = dict(
            T_H=t_h,
            T_W=t_w,
            HALO_H=halo_h,
            HALO_W=halo_w,
            BLOCK_M=max(16, triton.next_power_of_2(t_h * t_w)),
            BLOCK_N=_BLOCK_N_INTERPRET if triton.knobs.runtime.interpret else _BLOCK_N,
            BLOCK_DQK=_head_block(d_qk),
            BLOCK_DV=_head_block(v.shape[-1]),
            DOT_PRECISION=_dot_precision(q.dtype),
        )


def na2d_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rpb: torch.Tensor | None,
    kernel_size: int,
    dilation: int,
    scale: float,
    tile: tuple[int, int] = TILE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher; shapes as :func:`vizattn.kernels.na2d.na2d`, arguments already validated.

    Returns:
        out (B, H, W, heads, head_dim_v) contiguous in v's dtype, and lse (B, H, W, heads) float32, the base-2
        logsumexp of each query's scores (what the backward needs).
    """
    b, hh, ww, heads, _ = q.shape
    g = _Launch(q, v, kernel_size, dilation, tile)
    out = new_output((b, hh, ww, heads, v.shape[-1]), v.dtype, v.device)
    lse = new_output((b, hh, ww, heads), torch.float32, v.device)
    has_rpb = rpb is not None
    rpb_t = rpb.contiguous() if has_rpb else q.new_zeros(1)
    _na2d_fwd_kernel[g.grid](
        q, k, v, out, lse, rpb_t, *g.tables,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(),
        *g.scalars, scale * _LOG2E, 2 * kernel_size - 1,
        HAS_RPB=has_rpb, **g.meta,
    )
    return out, lse


def na2d_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rpb: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    kernel_size: int,
    dilation: int,
    scale: float,
    tile: tuple[int, int] = TILE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Backward launcher: (dq, dk, dv, d_rpb) in the dtypes of q, k, v, rpb (d_rpb None without rpb)."""
    g = _Launch(q, v, kernel_size, dilation, tile)
    delta = (grad_out.float() * out.float()).sum(-1)  # (B, H, W, heads), O(N)
    dq = new_output(tuple(q.shape), q.dtype, q.device)
    dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
    dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
    has_rpb = rpb is not None
    rpb_t = rpb.contiguous() if has_rpb else q.new_zeros(1)
    drpb = torch.zeros(rpb.shape if has_rpb else (1,), dtype=torch.float32, device=q.device)
    grad_out = grad_out.contiguous()
    _na2d_bwd_kernel[g.grid](
        q, k, v, grad_out, lse, delta, rpb_t, dq, dk, dv, drpb, *g.tables,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *lse.stride(),
        *dq.stride(), *dk.stride(), *dv.stride(),
        *g.scalars, scale * _LOG2E, scale, 2 * kernel_size - 1,
        HAS_RPB=has_rpb, **g.meta,
    )
    return dq, dk.to(k.dtype), dv.to(v.dtype), drpb.to(rpb.dtype) if has_rpb else None
