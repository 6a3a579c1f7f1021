"""Gradient of neighborhood attention's relative position bias, ``d(rpb)``, in its own Triton kernel.

``d(rpb)[head, b_h, b_w]`` is the sum of the score gradients ``ds = p * (dp - delta)`` over every (image, query, key)
pair whose per-axis bias indices are ``(b_h, b_w)``. The halo backward's dq kernel used to add each pair's ``ds``
into the table with an atomic (one per pair, ~20 M at batch 64 on a 56x56 map: about 1 ms on an H200, twice the rest
of the backward); this kernel instead sums them in registers and writes one small partial table per program.

A program owns a chunk of consecutive rows of one image and head and a block of ``COLS`` consecutive columns (any
dilation groups), and walks the chunk one row at a time on a GPU (``ROWS`` rows at a time under the interpreter).
Along one axis, NA's window is plain arithmetic: position ``pos`` is in group ``g = pos % d`` at in-group position
``i = pos // d``; its window starts at ``ws = clamp(i - k // 2, 0, L_g - k)``, slot ``j``'s key is the global position
``(ws + j) * d + g`` and its bias index is ``off + j`` with ``off = ws - i + k - 1`` in ``[0, k - 1]``
(``k - 1 - k // 2`` away from the borders; even k included). For one row ``off_h`` is one number, ``off_w`` one per
column. So for each window row ``jy`` the program walks the ``k`` window columns ``jx``: it gathers each query's key
and value rows, recomputes ``p`` from the forward's base-2 logsumexp, takes ``dp = dO . v`` and ``delta`` (written
by the dq kernel) and adds ``ds`` into a ``(queries, BINS)`` register accumulator at column ``off_w + jx`` (a select
in the query's own registers: border queries cost what interior ones do, and no thread talks to another). After the
``k`` columns it sums the accumulator over the queries of a row and adds the result to table row ``off_h + jy``: one
reduction per ``k`` slots. Dot products run on CUDA cores in float32 (one key per query: nothing for a tensor core).

At the end each program stores its float32 ``(2k - 1, 2k - 1)`` partial table; the partials are summed by one
PyTorch reduction in a fixed order.

:func:`na2d_rpb_grad_rows` computes the same on tensor cores: a program owns a tile of 16 queries of one map row and
walks, per window row, the tile's halo row of keys (the forward's W tables), takes the scores and ``dO . v`` of the
whole (queries, halo) block from two products and gathers each query's ``k`` window columns out of them before the
softmax gradient; interior rows share their bias row, so their gradients are summed in registers and binned once per
window row. The backward runs it where the dq kernel sums no d(rpb) itself (``vizattn.kernels.na2d.triton.RPB_GRAD``:
where the bias table or the dq kernel's blocks would be too large, or by choice): on an H200 it takes 0.41 ms where the
slot-by-slot kernel takes 0.56 (B64, 56x56, 2 heads of 32, k 7), where summing it in the dq kernel adds 0.065-0.09 ms to
that kernel (0.172-0.199 against 0.107 ms, 2026-11-30 22:05-22:29).

Neither uses atomics: ``d(rpb)`` is deterministic like every other gradient, and there is no contention on the
table's few addresses to spread over private copies.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vizattn.kernels._alloc import new_output
from vizattn.kernels._halo2d.triton import DeviceTables, _dot_nt, _load_cols, _rowdot
from vizattn.kernels._triton_util import cdiv as _cdiv
from vizattn.kernels._triton_util import dot_precision as _dot_precision
from vizattn.kernels._triton_util import head_split
from vizattn.kernels._triton_util import next_pow2 as _next_pow2

__all__ = ["na2d_rpb_grad", "na2d_rpb_grad_rows", "ROW_TILE"]

_LOG2E = 1.4426950408889634
_BLOCK = 64  # queries (of one row) per block on a GPU
_BLOCK_INTERPRET = 1024
# Rows per program on a GPU: as many as keep about this many programs (a dozen or more per SM of an H200, for the
# load balance), each writing one (2k - 1)^2 float32 partial table (about 2048 * 625 * 4 B = 5 MB at k = 13).
_TARGET_PROGRAMS = 2048


@triton.jit
def _window(pos, length, dilation, KS: tl.constexpr):
    """Along one axis: the dilation group, the in-group window start and the bias offset of window slot 0."""
    g = pos % dilation
    i = pos // dilation
    group_len = (length - g + dilation - 1) // dilation
    ws = tl.minimum(tl.maximum(i - KS // 2, 0), group_len - KS)
    return g, ws, ws - i + KS - 1


@triton.jit
def _na2d_rpb_grad_kernel(
    Q, K, V, DO, LSE, DELTA, RPB, PART,
    s_qb, s_qh, s_qw, s_qn, s_qd,
    s_kb, s_kh, s_kw, s_kn, s_kd,
    s_vb, s_vh, s_vw, s_vn, s_vd,
    s_gb, s_gh, s_gw, s_gn, s_gd,
    s_lb, s_lh, s_lw, s_ln,
    heads, height, width, n_cb, rows_per_program, dilation, d_qk, d_v, qk_scale,
    KS: tl.constexpr, BINS: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_TQK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_TV: tl.constexpr,
):
    """One (row chunk, column block) of one image and head: its partial ``(2k - 1, 2k - 1)`` d(rpb) table. The chunk
    is walked in blocks of ``ROWS x COLS`` queries."""
    blk = tl.program_id(0).to(tl.int64)
    bn = tl.program_id(1).to(tl.int64)
    chunk = blk // n_cb
    b = bn // heads
    head = bn % heads
    side = 2 * KS - 1
    # Window arithmetic in int32 (fewer registers; positions are < 2^31), offsets into the maps in int64.
    m = tl.arange(0, ROWS * COLS)
    col = (blk % n_cb).to(tl.int32) * COLS + m % COLS
    col_ok = col < width
    col = tl.where(col_ok, col, 0)
    g_w, ws_w, off_w = _window(col, width, dilation, KS)
    bins = tl.arange(0, BINS)
    rpb_base = RPB + head * side * side
    q_base = Q + b * s_qb + head * s_qn + col.to(tl.int64) * s_qw
    do_base = DO + b * s_gb + head * s_gn + col.to(tl.int64) * s_gw
    k_base = K + b * s_kb + head * s_kn
    v_base = V + b * s_vb + head * s_vn
    stat_base = b * s_lb + head * s_ln + col.to(tl.int64) * s_lw

    table = tl.zeros((BINS, BINS), dtype=tl.float32)
    first = chunk.to(tl.int32) * rows_per_program
    for r0 in range(first, tl.minimum(first + rows_per_program, height), ROWS):
        row = r0 + m // COLS
        ok = col_ok & (row < height)
        row = tl.where(ok, row, 0)
        g_h, ws_h, off_h = _window(row, height, dilation, KS)
        block_rows = tl.minimum(r0 + tl.arange(0, ROWS), height - 1)  # the block's rows, each once
        _, _, block_off_h = _window(block_rows, height, dilation, KS)
        q, q_t = _load_cols(q_base + row.to(tl.int64) * s_qh, ok, s_qd, d_qk, BLOCK_DQK, BLOCK_TQK)
        do, do_t = _load_cols(do_base + row.to(tl.int64) * s_gh, ok, s_gd, d_v, BLOCK_DV, BLOCK_TV)
        q = q.to(tl.float32) * qk_scale  # scores in base 2, as the forward's logsumexp
        do = do.to(tl.float32)
        if BLOCK_TQK > 0:
            q_t = q_t.to(tl.float32) * qk_scale
        if BLOCK_TV > 0:
            do_t = do_t.to(tl.float32)
        lse = tl.load(LSE + stat_base + row.to(tl.int64) * s_lh, mask=ok, other=0.0)
        delta = tl.load(DELTA + stat_base + row.to(tl.int64) * s_lh, mask=ok, other=0.0)
        for jy in range(KS):
            key_row = ((ws_h + jy) * dilation + g_h).to(tl.int64)
            k_row = k_base + key_row * s_kh
            v_row = v_base + key_row * s_vh
            bias_row = rpb_base + (off_h + jy) * side
            acc = tl.zeros((ROWS * COLS, BINS), dtype=tl.float32)
            for jx in range(KS):
                key_col = ((ws_w + jx) * dilation + g_w).to(tl.int64)
                k, k_t = _load_cols(k_row + key_col * s_kw, ok, s_kd, d_qk, BLOCK_DQK, BLOCK_TQK)
                v, v_t = _load_cols(v_row + key_col * s_vw, ok, s_vd, d_v, BLOCK_DV, BLOCK_TV)
                bias = tl.load(bias_row + off_w + jx, mask=ok, other=0.0).to(tl.float32)
                s = _rowdot(q, q_t, k, k_t, BLOCK_TQK) + bias * 1.4426950408889634
                p = tl.exp2(s - lse)
                dp = _rowdot(do, do_t, v, v_t, BLOCK_TV)
                ds = tl.where(ok, p * (dp - delta), 0.0)
                # column off_w + jx of the table, in the query's own row of the accumulator: no thread talks to another
                acc += tl.where(bins[None, :] == (off_w + jx)[:, None], ds[:, None], 0.0)
            # sum each map row's queries, then add map row r's sums into table row off_h(r) + jy
            if ROWS == 1:
                table += tl.where(bins[:, None] == block_off_h + jy, tl.sum(acc, 0)[None, :], 0.0)
            else:
                # (a 3-D layout that Triton propagates into the whole loop on a GPU: only the interpreter's blocks)
                by_row = tl.sum(tl.reshape(acc, (ROWS, COLS, BINS)), 1)
                hit = bins[None, :] == (block_off_h + jy)[:, None]
                table += tl.sum(tl.where(hit[:, :, None], by_row[:, None, :], 0.0), 0)
    part = PART + (bn * tl.num_programs(0) + blk) * side * side
    tl.store(part + bins[:, None] * side + bins[None, :], table, mask=(bins[:, None] < side) & (bins[None, :] < side))


@triton.jit
def _flush(table, ds, base, bin_h, bins, KS: tl.constexpr):
    """``table[bin_h, base[m] + j] += ds[m, j]`` for a (queries, window slots) block of score gradients: each query's
    row moved to its bias columns by one gather, then summed over the queries."""
    j = bins[None, :] - base[:, None]  # window slot of bias column b for query m
    hit = (j >= 0) & (j < KS)
    moved = tl.where(hit, tl.gather(ds, tl.where(hit, j, 0), 1), 0.0)
    return table + tl.where(bins[:, None] == bin_h, tl.sum(moved, 0)[None, :], 0.0)


@triton.jit
def _na2d_rpb_grad_rows_kernel(
    Q, K, V, DO, LSE, DELTA, RPB, PART, QW, SW, KW, WW,
    s_qb, s_qh, s_qw, s_qn, s_qd,
    s_kb, s_kh, s_kw, s_kn, s_kd,
    s_vb, s_vh, s_vw, s_vn, s_vd,
    s_gb, s_gh, s_gw, s_gn, s_gd,
    s_lb, s_lh, s_lw, s_ln,
    heads, height, n_wt, rows_per_program, dilation, d_qk, d_v, qk_scale,
    KS: tl.constexpr, KS_PAD: tl.constexpr, BINS: tl.constexpr, T_W: tl.constexpr, HALO_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_TQK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_TV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One column tile (``T_W`` queries of one row, one dilation group; the forward's W tables) times a chunk of map
    rows, of one image and head: its partial ``(2k - 1, 2k - 1)`` d(rpb) table.

    For window row ``jy`` and map row ``r`` the tile's queries meet one row of keys, whose ``HALO_W`` halo columns
    hold every query's ``k`` window columns: the scores and ``dO . v`` of the (queries, halo columns) block come from
    two tensor-core products, and ``tl.gather`` moves each query's ``k`` window columns to the front (the "skew"),
    after which the softmax gradient is computed on (queries, ``k``) only. The bias column of window slot ``jx`` is
    ``off_w + lo_w + jx`` (from the W tables: fixed per tile), its row ``off_h(r) + jy``, which is the same for every
    interior row: their gradients are summed in registers per ``jy`` and binned once; a border row's are binned at once.
    """
    blk = tl.program_id(0).to(tl.int64)
    bn = tl.program_id(1).to(tl.int64)
    wt = blk % n_wt
    chunk = blk // n_wt
    b = bn // heads
    head = bn % heads
    side = 2 * KS - 1
    center = KS - 1 - KS // 2  # off_h of every row whose window is not shifted by a border

    m = tl.arange(0, BLOCK_M)
    m_ok = m < T_W
    ms = tl.where(m_ok, m, 0)
    col = tl.load(QW + wt * T_W + ms).to(tl.int64)
    real = m_ok & (tl.load(SW + wt * T_W + ms) >= 0)
    ww = WW + wt * 3 * T_W + ms
    lo_w = tl.load(ww)
    off_w = tl.load(ww + 2 * T_W)
    c = tl.arange(0, BLOCK_N)
    c_ok = c < HALO_W
    k_col = tl.load(KW + wt * HALO_W + tl.where(c_ok, c, 0)).to(tl.int64)
    jx = tl.arange(0, KS_PAD)
    slot_ok = real[:, None] & (jx < KS)[None, :]
    skew = tl.minimum(lo_w[:, None] + jx[None, :], BLOCK_N - 1)  # halo column of window slot jx
    base = off_w + lo_w  # bias column of window slot 0
    bins = tl.arange(0, BINS)

    q_base = Q + b * s_qb + head * s_qn + col * s_qw
    do_base = DO + b * s_gb + head * s_gn + col * s_gw
    stat_base = b * s_lb + head * s_ln + col * s_lw  # offsets of lse and delta (same strides)
    k_base = K + b * s_kb + head * s_kn + k_col * s_kw
    v_base = V + b * s_vb + head * s_vn + k_col * s_vw
    rpb_base = RPB + head * side * side

    table = tl.zeros((BINS, BINS), dtype=tl.float32)
    first = chunk.to(tl.int32) * rows_per_program
    last = tl.minimum(first + rows_per_program, height)
    for jy in range(KS):
        acc = tl.zeros((BLOCK_M, KS_PAD), dtype=tl.float32)
        for r in range(first, last):
            g_h, ws_h, off_h = _window(r, height, dilation, KS)
            r64 = tl.cast(r, tl.int64)
            q, q_t = _load_cols(q_base + r64 * s_qh, m_ok, s_qd, d_qk, BLOCK_DQK, BLOCK_TQK)
            do, do_t = _load_cols(do_base + r64 * s_gh, m_ok, s_gd, d_v, BLOCK_DV, BLOCK_TV)
            lse = tl.load(LSE + stat_base + r64 * s_lh, mask=real, other=0.0)
            delta = tl.load(DELTA + stat_base + r64 * s_lh, mask=real, other=0.0)
            key_row = ((ws_h + jy) * dilation + g_h).to(tl.int64)
            k, k_t = _load_cols(k_base + key_row * s_kh, c_ok, s_kd, d_qk, BLOCK_DQK, BLOCK_TQK)
            v, v_t = _load_cols(v_base + key_row * s_vh, c_ok, s_vd, d_v, BLOCK_DV, BLOCK_TV)
            s = tl.gather(_dot_nt(q, q_t, k, k_t, BLOCK_TQK, DOT_PRECISION), skew, 1)
            dp = tl.gather(_dot_nt(do, do_t, v, v_t, BLOCK_TV, DOT_PRECISION), skew, 1)
            bias = tl.load(rpb_base + (off_h + jy) * side + base[:, None] + jx[None, :], mask=slot_ok,
                           other=0.0).to(tl.float32)
            p = tl.exp2(s * qk_scale + bias * 1.4426950408889634 - lse[:, None])
            ds = tl.where(slot_ok, p * (dp - delta[:, None]), 0.0)
            if off_h == center:
                acc += ds
            else:
                table = _flush(table, ds, base, off_h + jy, bins, KS)
        table = _flush(table, acc, base, center + jy, bins, KS)
    part = PART + (bn * tl.num_programs(0) + blk) * side * side
    tl.store(part + bins[:, None] * side + bins[None, :], table, mask=(bins[:, None] < side) & (bins[None, :] < side))


def _num_warps(block: int, d_qk: int, d_v: int) -> int:
    """About 8 elements of each (queries, head dim) block per thread: 8 warps for 64 queries of head dim 32 (sm_90:
    79 registers, 3 programs of 8 warps per SM; with 4 warps 128 registers and 4 programs, 16 warps per SM), rounded
    down to a power of two (Triton's rule: 16 queries of head dim 96 get 4, not 6)."""
    return 1 << (max(1, min(8, block * max(d_qk, d_v) // 256)).bit_length() - 1)


def _block_shape(height: int, width: int, head_dim: int) -> tuple[int, int]:
    """(ROWS, COLS) of a block of queries. On a GPU one row segment of up to 64 columns (32 for head dims over 64, so
    that q and dO stay in registers): a narrow map's short rows make small programs (8 queries, one warp, at 7x7)
    rather than blocks of several rows, whose reshaped accumulator costs registers and spills. Under the interpreter,
    whose cost is per operation, blocks of up to 1024 queries, several rows each."""
    if triton.knobs.runtime.interpret:
        cols = min(_BLOCK_INTERPRET, _next_pow2(width))
        return min(_BLOCK_INTERPRET // cols, _next_pow2(height)), cols
    return 1, min(_BLOCK if head_dim <= 64 else _BLOCK // 2, _next_pow2(width))


def _row_chunks(hh: int, programs_per_row: int, rows_per_program: int | None, target: int, step: int = 1):
    """(rows per program, chunks): ``rows_per_program`` (None: enough programs, about ``target``, on a GPU; all rows
    under the interpreter) clipped to the map and rounded up to a multiple of ``step``."""
    if rows_per_program is None:
        rows_per_program = hh if triton.knobs.runtime.interpret else _cdiv(hh * programs_per_row, target)
    rows_per_program = _cdiv(max(1, min(rows_per_program, hh)), step) * step
    return rows_per_program, _cdiv(hh, rows_per_program)


def _partial_tables(q: torch.Tensor, programs: int, side: int) -> torch.Tensor:
    """One float32 (2k - 1, 2k - 1) d(rpb) table per program, (B * heads, programs, side, side)."""
    return new_output((q.shape[0] * q.shape[3], programs, side, side), torch.float32, q.device)


def _sum_partials(part: torch.Tensor, rpb: torch.Tensor) -> torch.Tensor:
    """The partial tables summed in a fixed order into rpb's (heads, side, side) and dtype."""
    return part.view(-1, rpb.shape[0], part.shape[1], *part.shape[2:]).sum((0, 2)).to(rpb.dtype)


def na2d_rpb_grad(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rpb: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    kernel_size: int,
    dilation: int,
    scale: float,
    *,
    block: tuple[int, int] | None = None,
    rows_per_program: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """d(rpb) of :func:`vizattn.kernels.na2d.na2d`; arguments already validated.

    Args:
        grad_out: (B, H, W, heads, Dv), the gradient of the output; q, k: (B, H, W, heads, D); v: (B, H, W, heads,
            Dv); any strides.
        rpb: (heads, 2k - 1, 2k - 1), the bias the forward added.
        lse: (B, H, W, heads) float32, the forward's base-2 logsumexp of each query's scores.
        delta: float32 of lse's shape and strides, ``rowsum(grad_out * out)`` (the halo dq kernel writes it).
        kernel_size, dilation, scale: as the forward's.
        block: (rows, columns) of a block of queries, powers of two (None: see :func:`_block_shape`). Rows > 1 are
            meant for the interpreter.
        rows_per_program: map rows per program, rounded up to a multiple of the block's rows (None: enough programs
            to fill a GPU; all rows under the interpreter).
        num_warps: warps per program on a GPU (None: about 8 elements of each (queries, head dim) block per thread).

    Returns:
        (heads, 2k - 1, 2k - 1) in rpb's dtype.
    """
    b, hh, ww, heads, d_qk = q.shape
    d_v = v.shape[-1]
    side = 2 * kernel_size - 1
    rows, cols = block or _block_shape(hh, ww, max(d_qk, d_v))
    n_cb = _cdiv(ww, cols)
    rows_per_program, n_chunks = _row_chunks(hh, n_cb * b * heads, rows_per_program, _TARGET_PROGRAMS, rows)
    part = _partial_tables(q, n_chunks * n_cb, side)
    (dqk, tqk), (dv, tv) = head_split(d_qk), head_split(d_v)
    _na2d_rpb_grad_kernel[(n_chunks * n_cb, b * heads)](
        q, k, v, grad_out, lse, delta, rpb.contiguous(), part,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *lse.stride(),
        heads, hh, ww, n_cb, rows_per_program, dilation, d_qk, d_v, scale * _LOG2E,
        KS=kernel_size, BINS=_next_pow2(side), ROWS=rows, COLS=cols,
        BLOCK_DQK=dqk, BLOCK_TQK=tqk, BLOCK_DV=dv, BLOCK_TV=tv,
        num_warps=num_warps or _num_warps(rows * cols, d_qk, d_v), num_stages=1,
    )
    return _sum_partials(part, rpb)


ROW_TILE = 16  # queries of one map row per program of the row-tile d(rpb) kernel
# About this many programs. H200, k 7, head dim 32, bf16, CUDA-graph time of this kernel (2026-11-30 10:10 UTC,
# `.gpu/ab1.py`; 8192 / 4096 / 2048 / 1024 programs, ms): B64 56x56 2 heads 0.390 / 0.359 / 0.356 / 0.351, 28x28 4
# heads 0.217 / 0.210 / 0.180 / 0.176, 14x14 8 heads 0.085 / 0.076 / 0.069 / 0.074 (fewer programs sum fewer
# partial tables); register caps of 96-200 were slower except at 14x14. Maps of at most 8 rows keep 8192 (one row
# per program at B64 7x7 16 heads): with 2048, tools/benchmark.py's forward+backward there went 0.119 -> 0.132 ms.
# (An earlier kernel, at B128 56x56: 14 rows per program 0.96 ms, 2 rows 0.79.)
_ROWS_TARGET_PROGRAMS = 2048
_ROWS_TARGET_PROGRAMS_SHORT = (8, 8192)  # (rows, programs): maps of at most that many rows aim at these programs
# Pipeline stages of the one-warp programs (head dim <= 32). H200, k 7, head dim 32, CUDA-graph time of this kernel
# (2026-11-30 05:55; 1 / 2 / 3 stages): B64 56x56 2 heads 0.434 / 0.390 / 0.395 ms, 28x28 4 heads 0.229 / 0.217 /
# 0.224, 14x14 8 heads 0.087 / 0.084 / 0.093. The 4-warp programs of wider heads keep one stage (not measured).
_ROWS_STAGES = 2


def _rows_target(hh: int) -> int:
    """About how many programs the row-tile kernel launches on a map of ``hh`` rows."""
    short_rows, short_target = _ROWS_TARGET_PROGRAMS_SHORT
    return short_target if hh <= short_rows else _ROWS_TARGET_PROGRAMS


def na2d_rpb_grad_rows(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rpb: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    kernel_size: int,
    dilation: int,
    scale: float,
    cols: DeviceTables,
    *,
    rows_per_program: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """d(rpb) as :func:`na2d_rpb_grad` (same arguments and result), by row tiles on tensor cores.

    Args:
        cols: the forward's W-axis query-tile tables of this map with tiles of :data:`ROW_TILE` queries
            (``vizattn.kernels.na2d.triton._tables(W, k, d, ROW_TILE, device)``).
        rows_per_program: map rows per program (None: about 8192 programs on a GPU; all rows under the interpreter).
        num_warps: warps per program on a GPU (None: 1 up to head dim 32, the fastest on an H200 (0.41 ms against
            0.50 at 2 warps and 4 at B64 56x56; sm_90: 252 registers, no spills), else 4 (108 registers at head dim
            32, 12 bytes of spills at 72); Triton 3.8 fails to compile 8 warps).
    """
    b, hh, ww, heads, d_qk = q.shape
    d_v = v.shape[-1]
    side = 2 * kernel_size - 1
    if cols.key_tiles:
        raise ValueError("na2d_rpb_grad_rows: needs the W axis's query-tile tables, got key-tile tables.")
    warps = num_warps or (1 if max(d_qk, d_v) <= 32 else 4)
    rows_per_program, n_chunks = _row_chunks(hh, cols.n_tiles * b * heads, rows_per_program, _rows_target(hh))
    part = _partial_tables(q, n_chunks * cols.n_tiles, side)
    (dqk, tqk), (dv, tv) = head_split(d_qk), head_split(d_v)
    _na2d_rpb_grad_rows_kernel[(n_chunks * cols.n_tiles, b * heads)](
        q, k, v, grad_out, lse, delta, rpb.contiguous(), part, *cols[:4],
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *lse.stride(),
        heads, hh, cols.n_tiles, rows_per_program, dilation, d_qk, d_v, scale * _LOG2E,
        # window slots padded to at least 8: at 4 (k <= 4) Triton 3.6/3.8 fail to compile 4 warps (ThreadLocality pass)
        KS=kernel_size, KS_PAD=max(8, _next_pow2(kernel_size)), BINS=_next_pow2(side), T_W=cols.tile, HALO_W=cols.halo,
        BLOCK_M=max(16, _next_pow2(cols.tile)), BLOCK_N=max(16, _next_pow2(cols.halo)),
        BLOCK_DQK=dqk, BLOCK_TQK=tqk, BLOCK_DV=dv, BLOCK_TV=tv, DOT_PRECISION=_dot_precision(q.dtype),
        num_warps=warps, num_stages=_ROWS_STAGES if warps == 1 else 1,
    )
    return _sum_partials(part, rpb)
