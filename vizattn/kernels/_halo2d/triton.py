"""Triton kernels of 2-D tiled halo attention, forward and backward: neighborhood attention and CLEAR's circle.

A program owns one query tile (``T_h x T_w`` queries laid out by the per-axis tables of
:mod:`vizattn.kernels._halo2d.tiles`) of one image and one head. The keys its queries may see lie inside a
``halo_h x halo_w`` block of keys; the program walks that halo in chunks of ``BLOCK_N`` keys and runs an online
softmax in float32. The constexpr ``CIRCLE`` picks the per-pair mask:

- ``CIRCLE=False`` (neighborhood attention): along each axis a tile slot pairs with one run of consecutive halo slots,
  along which the relative index (the bias index) steps by one (:func:`slot_windows`, from the tables' relative
  indices; dilation is in the tables). A program loads each slot's run and bias offset once; per (slot, halo key)
  pair the mask is then two int32 subtractions and two unsigned compares, and the bias ``rpb[head, b_h, b_w]``
  (when ``HAS_RPB``) one gather at the slot's bias pointer plus the halo slot's part of the index. Nothing is
  gathered per pair from the tables;
- NA's forward walks the halo by whole rows when ``HALO_WP`` (the halo width padded to a power of two) is set and a
  step holds at least one such row (:func:`_halo_rows_fwd`): the key columns, their part of the addresses and the
  W-axis window test are then computed once, and a step only adds its rows' (the sm_90 loop of the NA forward at
  head dim 32 falls from 403 to 252 instructions per step). NA's dq kernel walks rows too
  (``vizattn.kernels.na2d.triton.DQ_ROWS``); both share the walk (:func:`_rows_setup`, :func:`_rows_step`). The
  circle walked by rows measured slower than its flat loop (docs/benchmarks.md, 2026-11-30 05:55). The other kernels
  walk flat chunks of the halo;
- ``TABLE=True`` (NA, optional): the mask and bias of every (tile slot, halo slot) pair come from a float32 table per
  class of tiles (:func:`bias_table`; tiles with the same windows along an axis share a class, so a map has a few),
  ``-inf`` outside the window: one load and one fused multiply-add per pair instead of the window test and the bias
  gather. Fewer instructions, but loads: NA takes it where it measured faster (its backward with rpb);
- ``CIRCLE=True`` (CLEAR): key ``(i', j')`` is kept iff ``(i - i')^2 + (j - j')^2 < r^2``; the halos were shifted
  inward at the borders, so every halo key is a distinct real key and the windows are not read. With ``CIRCLE_DOT``
  (halos up to 91 a side, r up to 64: every CLEAR shape of DiT) the squared distances of a step come from one small
  float16 MMA, exact for these integers, of per-slot terms built once per program and per-key terms read from a
  table (:func:`circle_terms`), so a pair costs one compare and one select: the sm_90 loop of the forward at head dim
  72 falls from 1321 to 914 instructions per 128 keys, its 80-byte spill goes, and the H200 forward at 128x128,
  r 8 from 0.511 to 0.426 ms (2026-12-02, docs/benchmarks.md). Else the offsets are squared per pair in int32.

With ``HAS_EXTRA`` the same online softmax then runs over ``M`` extra keys that every query sees (CLEAR's pooled or
prefix tokens), a dense segment read from ``(B, M, heads, D)`` maps. Nothing of size ``N * window`` is ever written:
the per-axis tables hold ``O(L * (T + span))`` integers.

The maps are read in place through their strides (q, k, v are usually views of one packed ``qkv`` projection);
logsumexp is kept per (image, row, column, head) in float32, base 2.

A head dim that is not a power of two is covered by a main block of ``BLOCK_D`` columns and a tail block of
``BLOCK_T`` (:func:`~vizattn.kernels._triton_util.head_split`; q/k and v each have their own): 72 runs as 64 + 16
columns instead of 128, so every dot product does 80 columns of work and the accumulators hold 80 columns. Scores are
``q_main . k_main + q_tail . k_tail``; the accumulators (out, dq, dk, dv) are (main, tail) pairs. With ``BLOCK_T = 0``
(powers of two) every tail operation is compiled out and the code is that of a single block.

Backward, as in FlashAttention-2: the probabilities are recomputed from the logsumexp, and no program adds into
another's dq, dk or dv.

- ``_halo_dq_kernel`` (shaped like the forward, one query tile): computes ``delta = rowsum(dO * O)`` of its queries
  (stored for the next kernels), walks the halo and the extra keys, accumulates ``dq`` in float32 registers and writes
  it once. It adds the bias to the recomputed scores. With a bias table it can also sum ``d(rpb)`` (``TABLE_GRAD``):
  a program then runs its tile in several images and adds each pair's score gradient into its own float32 block,
  which :func:`_pair_grads_to_rpb` bins by bias index (no program adds into a table shared with others: one float32
  atomic per (query, key) pair into the bias table took about 1 ms of NA's 1.56 ms backward at its first stage on the
  H200). Without a table NA computes d(rpb)
  in :mod:`vizattn.kernels.na2d.rpb_grad` from the ``delta`` this kernel stores.
- ``_halo_dkdv_kernel`` (key-centric): a program owns a tile of keys of one image and head, loads them once, walks the
  halo of the queries that see them (the key-tile tables of :func:`~vizattn.kernels._halo2d.tiles.build_key_axis_tiles`
  for NA; the forward tables for the circle, which is symmetric) and writes ``dk``, ``dv`` once.
- ``_extra_dkdv_kernel``: dense attention backward over the ``M`` extra keys: a program owns a block of them and
  walks the image's queries (or one of a few parts of them, whose float32 partial sums are added afterwards in a
  fixed order).

So dq, dk, dv and the extra keys' gradients are deterministic.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from vizattn.kernels._alloc import new_output
from vizattn.kernels._halo2d.tiles import AxisTiles
from vizattn.kernels._triton_util import cdiv as _cdiv
from vizattn.kernels._triton_util import dot as _dot
from vizattn.kernels._triton_util import dot_precision as _dot_precision
from vizattn.kernels._triton_util import head_split as _head_split
from vizattn.kernels._triton_util import next_pow2 as _next_pow2
from vizattn.kernels._triton_util import register_cap as _register_cap

__all__ = ["DeviceTables", "Launch", "bias_table", "device_tables", "halo_fwd", "halo_bwd", "slot_windows"]

_LOG2E = 1.4426950408889634
_BLOCK_N = 32  # halo keys per inner step on a GPU
# Software pipelining of the gathered key loads (Triton's default of 3 stages on Hopper) made the kernels 5-7x slower
# on the H200 (NA, 56x56, 2 heads of 32, batch 64: forward 1.12-1.42 ms with 2-3 stages, 0.20 ms with 1), so the
# loops run unpipelined unless a caller asks otherwise.
_NUM_STAGES = 1
_BLOCK_N_INTERPRET = 256  # under the interpreter each step costs Python overhead whatever its size
_ROW_I32_LIMIT = 2**31  # the NA forward multiplies key rows by their stride in int32 below this bound
_BLOCK_E = 64  # extra keys per program of their gradient kernel on a GPU
_BLOCK_E_INTERPRET = 64  # unless a caller asks for another block


class DeviceTables(NamedTuple):
    """One axis's tables on the device as int32, and its geometry.

    Attributes:
        q_idx: (n, T) query index of each slot (padded slots repeat the last query).
        store: (n, T) the same, or -1 for padded slots (their results are not written).
        k_idx: (n, halo) key index of each halo slot.
        window: (n, 3, T) the NA window of each slot along this axis (see :func:`slot_windows`): ``[lo, hi)`` the halo
            slots it pairs with, and ``off``, from which the relative index of halo slot ``c`` is ``off + c`` (query
            tiles) or ``off - c`` (key tiles). The circle does not read it.
        n_tiles, tile, halo: n, T and the halo size.
        key_tiles: whether these are key-tile tables (``window`` then reads ``off - c``).
    """

    q_idx: torch.Tensor
    store: torch.Tensor
    k_idx: torch.Tensor
    window: torch.Tensor
    n_tiles: int
    tile: int
    halo: int
    key_tiles: bool = False


def slot_windows(rel_idx: torch.Tensor, key_tiles: bool = False) -> torch.Tensor:
    """The relative indices of one axis's tables as one interval per slot: (n, T, halo) -> (n, 3, T), on rel's device.

    Along one axis a slot pairs with a run of consecutive halo slots ``[lo, hi)`` (a query's window in a query tile's
    halo; in a key tile, the run of halo queries whose windows hold the key), and since the halo's slots are
    consecutive in-group positions, the relative index ``key - query + center`` along the run is ``off + c`` for halo
    slot ``c`` of a query tile and ``off - c`` of a key tile (``key_tiles``). The kernels rebuild the mask and the bias
    index of a (slot, halo slot) pair from these three numbers, instead of gathering ``rel_idx`` per pair. Slots that
    pair with nothing get ``lo = hi = off = 0``.

    Raises:
        ValueError: if ``rel_idx`` is not of that form (then the kernels' windows would differ from the tables).
    """
    halo = rel_idx.shape[-1]
    inside = rel_idx >= 0
    c = torch.arange(halo, device=rel_idx.device)
    sign = -1 if key_tiles else 1
    hi = torch.where(inside, c + 1, 0).amax(-1)
    lo = torch.where(inside, c, halo).amin(-1).masked_fill(hi == 0, 0)
    off = (rel_idx.gather(-1, lo.clamp(max=halo - 1)[..., None])[..., 0] - sign * lo).masked_fill(hi == 0, 0)
    run = (c >= lo[..., None]) & (c < hi[..., None])
    if not torch.equal(torch.where(run, off[..., None] + sign * c, -1), rel_idx):
        raise ValueError(
            f"slot_windows: relative indices that are not one run of {'-' if key_tiles else '+'}1 steps per slot."
        )
    return torch.stack((lo, hi, off), -2)


def device_tables(axis: AxisTiles, device: torch.device, key_tiles: bool = False) -> DeviceTables:
    """The kernels' view of one axis's :class:`AxisTiles` (callers cache it per shape and device); ``key_tiles`` for
    the tables of :func:`~vizattn.kernels._halo2d.tiles.build_key_axis_tiles` (the key-centric kernel's)."""
    n, slots = axis.q_idx.shape
    real = torch.zeros(n, slots, dtype=torch.bool, device="cpu")
    real[axis.tile_of, axis.slot_of] = True
    store = torch.where(real, axis.q_idx, -1)
    window = slot_windows(axis.rel_idx, key_tiles)
    tabs = (x.to(device=device, dtype=torch.int32).contiguous() for x in (axis.q_idx, store, axis.k_idx, window))
    return DeviceTables(*tabs, n, slots, axis.k_idx.shape[1], key_tiles)


@triton.jit
def _program_coords(n_tw, heads):
    """(tile row, tile column, image, head) of this program: axis 0 runs over the tiles, axis 1 over image x head."""
    tile = tl.program_id(0).to(tl.int64)
    bn = tl.program_id(1).to(tl.int64)
    return tile // n_tw, tile % n_tw, bn // heads, bn % heads


@triton.jit
def _aligned(x, LOG2: tl.constexpr):
    """``x``, a multiple of ``2**LOG2`` (the launcher checked, see :func:`_align_log2`), rounded down to one: the same
    value, but now the compiler knows the divisibility, so offsets built from it allow 16-byte vector loads."""
    return (x >> LOG2) << LOG2


@triton.jit
def _aligned4(a, b, c, d, LOG2: tl.constexpr):
    return _aligned(a, LOG2), _aligned(b, LOG2), _aligned(c, LOG2), _aligned(d, LOG2)


@triton.jit
def _aligned_maps(s_qb, s_qh, s_qw, s_qn, s_kb, s_kh, s_kw, s_kn, s_vb, s_vh, s_vw, s_vn, d_qk, d_v,
                  LOG2: tl.constexpr):
    """q's, k's and v's row strides and the two head dims through :func:`_aligned` (every halo kernel reads them)."""
    s_qb, s_qh, s_qw, s_qn = _aligned4(s_qb, s_qh, s_qw, s_qn, LOG2)
    s_kb, s_kh, s_kw, s_kn = _aligned4(s_kb, s_kh, s_kw, s_kn, LOG2)
    s_vb, s_vh, s_vw, s_vn = _aligned4(s_vb, s_vh, s_vw, s_vn, LOG2)
    return (s_qb, s_qh, s_qw, s_qn, s_kb, s_kh, s_kw, s_kn, s_vb, s_vh, s_vw, s_vn, _aligned(d_qk, LOG2),
            _aligned(d_v, LOG2))


@triton.jit
def _rowdot(a, a_t, b, b_t, BLOCK_T: tl.constexpr):
    """Per-row dot products of two (rows, d) blocks split like the head dim (see :func:`_load_cols`), in float32."""
    s = tl.sum(a.to(tl.float32) * b.to(tl.float32), 1)
    if BLOCK_T > 0:
        s += tl.sum(a_t.to(tl.float32) * b_t.to(tl.float32), 1)
    return s


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
def _slot_windows(WH, WW, RPB, th, tw, a_h, a_w, m_ok, rpb_side, T_H: tl.constexpr, T_W: tl.constexpr):
    """NA, once per program: each tile slot's window along the two axes, ``[lo, lo + width)`` in halo slots (width 0
    for the padded slots: they pair with nothing), and the bias pointer advanced by the slot's part of the flat bias
    index (see :func:`slot_windows`)."""
    wh = WH + th * 3 * T_H + a_h
    ww = WW + tw * 3 * T_W + a_w
    lo_h = tl.load(wh)
    lo_w = tl.load(ww)
    width_h = tl.where(m_ok, tl.load(wh + T_H) - lo_h, 0)
    width_w = tl.where(m_ok, tl.load(ww + T_W) - lo_w, 0)
    rpb_rows = RPB + (tl.load(wh + 2 * T_H) * rpb_side + tl.load(ww + 2 * T_W))
    return lo_h, width_h, lo_w, width_w, rpb_rows


@triton.jit
def _table_rows(TAB, CH, CW, th, tw, n_cw, head, heads, HAS_RPB: tl.constexpr, BLOCK_M: tl.constexpr,
                NPAD: tl.constexpr):
    """NA with a bias table: pointers to the rows of this program's (slot, halo slot) table, whose class along each
    axis comes from ``CH`` / ``CW`` (see :func:`bias_table`); one table per head with rpb, one for all without."""
    cls = tl.load(CH + th).to(tl.int64) * n_cw + tl.load(CW + tw)
    if HAS_RPB:
        cls = cls * heads + head
    return TAB + (cls * BLOCK_M + tl.arange(0, BLOCK_M)) * NPAD


@triton.jit
def _pair_setup(RPB, WH, WW, th, tw, a_h, a_w, slot_ok, rpb_side, head, heads, HAS_RPB: tl.constexpr,
                CIRCLE: tl.constexpr, TABLE: tl.constexpr, T_H: tl.constexpr, T_W: tl.constexpr,
                HALO_H: tl.constexpr, HALO_W: tl.constexpr, BLOCK_M: tl.constexpr, TABLE_ALIGN: tl.constexpr):
    """Once per program, for the flat loop's pair masks: ``(lo_h, width_h, lo_w, width_w, rpb_rows)``. With a bias
    table (``RPB`` the table, ``WH`` / ``WW`` the tiles' classes, ``rpb_side`` the number of W classes) the table
    rows of the program; in NA the slots' windows (empty where ``slot_ok`` is false) and bias pointers
    (:func:`_slot_windows`); the circle reads neither."""
    if TABLE:
        NPAD: tl.constexpr = (HALO_H * HALO_W + TABLE_ALIGN - 1) // TABLE_ALIGN * TABLE_ALIGN  # a table row
        lo_h, width_h, lo_w, width_w = 0, 0, 0, 0
        rpb_rows = _table_rows(RPB, WH, WW, th, tw, rpb_side, head, heads, HAS_RPB, BLOCK_M, NPAD)
    elif CIRCLE:
        lo_h, width_h, lo_w, width_w, rpb_rows = 0, 0, 0, 0, RPB
    else:
        lo_h, width_h, lo_w, width_w, rpb_rows = _slot_windows(
            WH, WW, RPB + head * rpb_side * rpb_side, th, tw, a_h, a_w, slot_ok, rpb_side, T_H, T_W
        )
    return lo_h, width_h, lo_w, width_w, rpb_rows


@triton.jit
def _rows_bias_setup(RPB, WH, WW, th, tw, a_h, a_w, slot_ok, rpb_side, head, heads, HAS_RPB: tl.constexpr,
                     TABLE: tl.constexpr, T_H: tl.constexpr, T_W: tl.constexpr, HALO_H: tl.constexpr,
                     HALO_WP: tl.constexpr, BLOCK_M: tl.constexpr, TABLE_ALIGN: tl.constexpr):
    """Once per program of a row walk (:func:`_halo_rows_fwd`, the dq kernel's): ``(bias_at, lo_h, width_h, lo_w,
    width_w, rpb_idx)``. With a bias table (``RPB`` the table, laid out by padded halo rows: :func:`bias_table` with
    ``halo_wp``; ``WH`` / ``WW`` the tiles' classes) ``bias_at`` points at the program's table rows and the windows
    are unused zeros (dead code on a GPU); else ``bias_at`` is the head's rpb and the windows those of
    :func:`_slot_windows` (empty where ``slot_ok`` is false), ``rpb_idx`` each slot's part of the flat bias index."""
    if TABLE:
        NPAD: tl.constexpr = (HALO_H * HALO_WP + TABLE_ALIGN - 1) // TABLE_ALIGN * TABLE_ALIGN
        bias_at = _table_rows(RPB, WH, WW, th, tw, rpb_side, head, heads, HAS_RPB, BLOCK_M, NPAD)
        none = tl.zeros((BLOCK_M,), tl.int32)
        lo_h, width_h, lo_w, width_w, rpb_idx = none, none, none, none, none
    else:
        bias_at = RPB + head * rpb_side * rpb_side
        lo_h, width_h, lo_w, width_w, rpb_idx = _slot_windows(WH, WW, 0, th, tw, a_h, a_w, slot_ok, rpb_side, T_H,
                                                              T_W)
    return bias_at, lo_h, width_h, lo_w, width_w, rpb_idx


@triton.jit
def _run_keys(r0, c0, start, HALO_H: tl.constexpr, HALO_W: tl.constexpr, BLOCK_N: tl.constexpr):
    """:func:`_halo_keys` of a circle's halo, a run of consecutive rows and columns from ``(r0, c0)``, by arithmetic
    in int32 instead of the tables (the dk/dv kernel with ``OFF_I32``: its int64 products and three layouts of table
    loads made most of its loop; sm_90, CLEAR at head dim 72: 1255 -> 1039 instructions per step)."""
    n = start + tl.arange(0, BLOCK_N)
    n_ok = n < HALO_H * HALO_W
    n = tl.where(n_ok, n, 0)
    return r0 + n // HALO_W, c0 + n % HALO_W, n_ok


@triton.jit
def _halo_keys(KH, KW, th, tw, start, HALO_H: tl.constexpr, HALO_W: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keys ``start .. start + BLOCK_N`` of the flattened halo: global row and column, and validity."""
    n = start + tl.arange(0, BLOCK_N).to(tl.int64)
    n_ok = n < HALO_H * HALO_W
    k_row = tl.load(KH + th * HALO_H + tl.where(n_ok, n // HALO_W, 0)).to(tl.int64)
    k_col = tl.load(KW + tw * HALO_W + tl.where(n_ok, n % HALO_W, 0)).to(tl.int64)
    return k_row, k_col, n_ok


@triton.jit
def _pair_mask(RPB, row, col, k_row, k_col, m_ok, n_ok, lo_h, width_h, lo_w, width_w, start, rpb_side, radius_sq,
               HALO_W: tl.constexpr, BLOCK_N: tl.constexpr, HAS_RPB: tl.constexpr, CIRCLE: tl.constexpr,
               KEY_TILE: tl.constexpr):
    """The (tile slot, halo key) mask of the keys of :func:`_halo_keys` and the bias (0 without rpb; the circle has
    none).

    Circle: squared distance below ``r^2`` (index math in int32, cheaper than int64: the squared offsets overflow only
    on maps over 46340 tokens a side), both real. NA: the window of each tile slot comes from :func:`_slot_windows`
    and ``RPB`` holds one bias pointer per tile slot; ``KEY_TILE`` says the tile holds keys and the halo queries (the
    relative index then falls as the halo slot grows)."""
    if CIRCLE:
        d_h = k_row.to(tl.int32)[None, :] - row.to(tl.int32)[:, None]
        d_w = k_col.to(tl.int32)[None, :] - col.to(tl.int32)[:, None]
        inside = (d_h * d_h + d_w * d_w < radius_sq) & m_ok[:, None] & n_ok[None, :]
        bias = 0.0
    else:
        # Per pair two int32 subtractions, each range-checked by one unsigned compare (a negative difference wraps
        # above any width), and no table gather. Past the halo's end (n_ok false) the row slot is HALO_H or more,
        # outside every window: the windows lie in the halo.
        n = start + tl.arange(0, BLOCK_N)
        s_h = n // HALO_W
        s_w = n % HALO_W
        e_h = (s_h[None, :] - lo_h[:, None]).to(tl.uint32, bitcast=True)
        e_w = (s_w[None, :] - lo_w[:, None]).to(tl.uint32, bitcast=True)
        inside = (e_h < width_h.to(tl.uint32, bitcast=True)[:, None]) & (
            e_w < width_w.to(tl.uint32, bitcast=True)[:, None]
        )
        if HAS_RPB:
            c = s_h * rpb_side + s_w  # the halo slot's part of the flat bias index
            if KEY_TILE:
                c = -c
            bias = tl.load(RPB[:, None] + c[None, :], mask=inside, other=0.0).to(tl.float32)
        else:
            bias = 0.0
    return inside, bias


# The circle's squared distances as a small dot product (CIRCLE_DOT): (BLOCK_M, 16) slot terms times (16, BLOCK_N)
# halo terms, in float16 (exact for these integers) with a float32 result; 16 is the least K of a float16 MMA, 6 are
# used. An invalid slot or halo key gets a distance of at least 2 * _CIRCLE_BIG, beyond any radius allowed with it.
_CIRCLE_TERMS = 16
_CIRCLE_BIG = 2048.0  # the largest float16 integer below which every integer is exact
_CIRCLE_DOT_MAX_HALO = 91  # centred halo coordinates then stay within 45 (45^2 = 2025 < 2048)
_CIRCLE_DOT_MAX_RADIUS = 64  # r^2 at most 2 * BIG: an invalid pair's distance is never below it


@triton.jit
def _halo_origin(HR, HC, th, tw, HALO_H: tl.constexpr, HALO_W: tl.constexpr):
    """The row and column of a circle's halo's first key (``HR`` / ``HC`` the halo tables): its halo is the run of
    consecutive rows and columns from there."""
    return tl.load(HR + th * HALO_H), tl.load(HC + tw * HALO_W)


@triton.jit
def _circle_slot_terms(row, col, r0, c0, slot_ok, HALO_H: tl.constexpr, HALO_W: tl.constexpr):
    """Once per program, CIRCLE_DOT: the (BLOCK_M, 16) float16 left factor of the squared distances between the
    tile's slots and the halo keys, ``[1, 1, y, x, y^2, x^2, 0 ...]`` with ``(y, x)`` a slot's position in the halo
    (whose first key is ``(r0, c0)``, :func:`_halo_origin`), centred on the halo; ``[0, 0, 0, 0, BIG, BIG, 0 ...]``
    where ``slot_ok`` is false (no halo key is then inside)."""
    y = (row - r0 - HALO_H // 2).to(tl.float32)[:, None]
    x = (col - c0 - HALO_W // 2).to(tl.float32)[:, None]
    t = tl.arange(0, 16)[None, :]
    a = tl.where(t < 2, 1.0, 0.0) + tl.where(t == 2, y, 0.0) + tl.where(t == 3, x, 0.0)
    a += tl.where(t == 4, y * y, 0.0) + tl.where(t == 5, x * x, 0.0)
    a = tl.where(slot_ok[:, None], a, tl.where((t == 4) | (t == 5), 2048.0, 0.0))  # _CIRCLE_BIG
    return a.to(tl.float16)


@triton.jit
def _circle_inside(slot_terms, TERMS, start, radius_sq, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
                   BLOCK_N: tl.constexpr, DIST16: tl.constexpr = False):
    """CIRCLE_DOT: whether each (slot, halo key ``start ..``) pair is inside the circle, from the slot terms of
    :func:`_circle_slot_terms` times the halo keys' columns of the table ``TERMS`` (:func:`circle_terms`): one small
    MMA and one compare per pair instead of the integer offsets, their squares and the validity masks."""
    NPAD: tl.constexpr = (HALO_H * HALO_W + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    n = start + tl.arange(0, BLOCK_N)
    halo_terms = tl.load(TERMS + tl.arange(0, 16)[:, None] * NPAD + n[None, :])
    if DIST16:
        # (radius_sq may arrive as a Python int: Triton specialises an argument equal to 1)
        return tl.dot(slot_terms, halo_terms, out_dtype=tl.float16) < tl.full((1, 1), radius_sq, tl.float16)
    return tl.dot(slot_terms, halo_terms, out_dtype=tl.float32) < radius_sq


@triton.jit
def _table_bias(rows, start, BLOCK_N: tl.constexpr):
    """Columns ``start .. start + BLOCK_N`` of a program's bias table: the bias of each (slot, halo slot) pair,
    ``-inf`` outside the window (so no mask is built per pair)."""
    return tl.load(rows[:, None] + (start + tl.arange(0, BLOCK_N))[None, :]).to(tl.float32)


@triton.jit
def _load_cols(rows, rows_ok, s_d, d, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """Rows of a (rows, d) block, zero outside ``rows_ok`` and ``d``, as its main columns ``[0, BLOCK_D)`` and tail
    columns ``[BLOCK_D, BLOCK_D + BLOCK_T)``; ``rows`` points at each row's column 0. Without a tail
    (``BLOCK_T = 0``) the second value is the first again, never read."""
    c = tl.arange(0, BLOCK_D)
    x = tl.load(rows[:, None] + c[None, :] * s_d, mask=rows_ok[:, None] & (c < d)[None, :], other=0.0)
    x_t = x
    if BLOCK_T > 0:
        c = BLOCK_D + tl.arange(0, BLOCK_T)
        x_t = tl.load(rows[:, None] + c[None, :] * s_d, mask=rows_ok[:, None] & (c < d)[None, :], other=0.0)
    return x, x_t


@triton.jit
def _store_cols(rows, rows_ok, s_d, d, x, x_t, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """Writes the (main, tail) pair of a block that :func:`_load_cols` reads, in the element type of ``rows``."""
    c = tl.arange(0, BLOCK_D)
    tl.store(rows[:, None] + c[None, :] * s_d, x.to(rows.dtype.element_ty), mask=rows_ok[:, None] & (c < d)[None, :])
    if BLOCK_T > 0:
        c = BLOCK_D + tl.arange(0, BLOCK_T)
        tl.store(rows[:, None] + c[None, :] * s_d, x_t.to(rows.dtype.element_ty),
                 mask=rows_ok[:, None] & (c < d)[None, :])


@triton.jit
def _zeros_cols(ROWS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """A float32 (main, tail) accumulator pair; without a tail the second is the first again, never updated."""
    acc = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    acc_t = acc
    if BLOCK_T > 0:
        acc_t = tl.zeros((ROWS, BLOCK_T), dtype=tl.float32)
    return acc, acc_t


@triton.jit
def _dot_nt(a, a_t, b, b_t, BLOCK_T: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``a @ b^T`` over a split head dim: the main columns' products plus the tail's."""
    s = _dot(a, tl.trans(b), DOT_PRECISION)
    if BLOCK_T > 0:
        s += _dot(a_t, tl.trans(b_t), DOT_PRECISION)
    return s


@triton.jit
def _dot_acc(p, b, b_t, acc, acc_t, BLOCK_T: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``(acc, acc_t) += p @ (b, b_t)``: an accumulator split like the head dim of ``b``."""
    acc += _dot(p.to(b.dtype), b, DOT_PRECISION)
    if BLOCK_T > 0:
        acc_t += _dot(p.to(b.dtype), b_t, DOT_PRECISION)
    return acc, acc_t


@triton.jit
def _log2_bias(bias, BIAS_LOG2: tl.constexpr):
    """The bias in base 2, as the scores (``bias`` as is when already so)."""
    if BIAS_LOG2:
        return bias
    return bias * 1.4426950408889634


@triton.jit
def _softmax_step(q, q_t, k, k_t, v, v_t, bias, inside, m_i, l_i, acc, acc_t, qk_scale,
                  BLOCK_TQK: tl.constexpr, BLOCK_TV: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  BIAS_LOG2: tl.constexpr = False, SCALE_LATE: tl.constexpr = False):
    """One online-softmax step over a chunk of keys (scores in base 2); returns the new max, sum and accumulator.
    ``BIAS_LOG2``: the bias is already in base 2 (a bias table's). ``SCALE_LATE`` (no bias, ``qk_scale > 0``): the
    scale is applied in the exponent's fused multiply-add and to the row maxima, not to every score (the maxima are
    the same: rounding a product by a positive number keeps the order). The multiply-add is explicit (``tl.fma``, as
    in the backward's steps without bias): left to the compiler, whether it was fused varied between compiles of one
    kernel (with and without ``ALIGN_LOG2``, float32 on the H200), and with it the last bit of the results."""
    if SCALE_LATE:
        s = tl.where(inside, _dot_nt(q, q_t, k, k_t, BLOCK_TQK, DOT_PRECISION), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    else:
        s = _dot_nt(q, q_t, k, k_t, BLOCK_TQK, DOT_PRECISION) * qk_scale + _log2_bias(bias, BIAS_LOG2)
        s = tl.where(inside, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet in this chunk
    alpha = tl.exp2(m_i - m_safe)
    if SCALE_LATE:
        p = tl.exp2(tl.fma(s, qk_scale, -m_safe[:, None]))
    else:
        p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if BLOCK_TV > 0:
        acc_t = acc_t * alpha[:, None]
    acc, acc_t = _dot_acc(p, v, v_t, acc, acc_t, BLOCK_TV, DOT_PRECISION)
    return m_new, l_i, acc, acc_t


@triton.jit
def _grad_step(q, q_t, k, k_t, v, v_t, do, do_t, lse, delta, bias, inside, qk_scale,
               BLOCK_TQK: tl.constexpr, BLOCK_TV: tl.constexpr, DOT_PRECISION: tl.constexpr,
               BIAS_LOG2: tl.constexpr = False, NO_BIAS: tl.constexpr = False):
    """Score gradients of a chunk of keys, from the probabilities recomputed from the logsumexp. ``NO_BIAS`` (the
    circle, NA without rpb): the mask sets the scores outside to -inf before one fused multiply-add and the exponent,
    and no ``+ 0`` is left in the way of the fusion (nor a second select: their probabilities are 0)."""
    if NO_BIAS:
        s = tl.where(inside, _dot_nt(q, q_t, k, k_t, BLOCK_TQK, DOT_PRECISION), float("-inf"))
        p = tl.exp2(tl.fma(s, qk_scale, -lse[:, None]))
        return p * (_dot_nt(do, do_t, v, v_t, BLOCK_TV, DOT_PRECISION) - delta[:, None])
    s = _dot_nt(q, q_t, k, k_t, BLOCK_TQK, DOT_PRECISION) * qk_scale + _log2_bias(bias, BIAS_LOG2)
    p = tl.where(inside, tl.exp2(s - lse[:, None]), 0.0)
    dp = _dot_nt(do, do_t, v, v_t, BLOCK_TV, DOT_PRECISION)
    return tl.where(inside, p * (dp - delta[:, None]), 0.0)


@triton.jit
def _key_grad_step(k, k_t, v, v_t, q, q_t, do, do_t, lse, delta, bias, inside, dk, dk_t, dv, dv_t, qk_scale,
                   HAS_BIAS: tl.constexpr, BLOCK_TQK: tl.constexpr, BLOCK_TV: tl.constexpr,
                   DOT_PRECISION: tl.constexpr, BIAS_LOG2: tl.constexpr = False, NO_BIAS: tl.constexpr = False):
    """Key-centric step: a chunk of queries' contribution to the dk, dv of a block of keys, from the transposed
    probabilities and score gradients, (keys, queries). ``bias`` is read only with ``HAS_BIAS``. ``NO_BIAS``
    (no bias): as :func:`_grad_step`'s, the scores outside set to -inf before the exponent."""
    if NO_BIAS:
        s = tl.where(inside, _dot_nt(k, k_t, q, q_t, BLOCK_TQK, DOT_PRECISION), float("-inf"))
        p = tl.exp2(tl.fma(s, qk_scale, -lse[None, :]))
        ds = p * (_dot_nt(v, v_t, do, do_t, BLOCK_TV, DOT_PRECISION) - delta[None, :])
        dv, dv_t = _dot_acc(p, do, do_t, dv, dv_t, BLOCK_TV, DOT_PRECISION)
        dk, dk_t = _dot_acc(ds, q, q_t, dk, dk_t, BLOCK_TQK, DOT_PRECISION)
        return dk, dk_t, dv, dv_t
    s = _dot_nt(k, k_t, q, q_t, BLOCK_TQK, DOT_PRECISION) * qk_scale
    if HAS_BIAS:
        s += _log2_bias(bias, BIAS_LOG2)
    p = tl.where(inside, tl.exp2(s - lse[None, :]), 0.0)
    dp = _dot_nt(v, v_t, do, do_t, BLOCK_TV, DOT_PRECISION)
    ds = tl.where(inside, p * (dp - delta[None, :]), 0.0)
    dv, dv_t = _dot_acc(p, do, do_t, dv, dv_t, BLOCK_TV, DOT_PRECISION)
    dk, dk_t = _dot_acc(ds, q, q_t, dk, dk_t, BLOCK_TQK, DOT_PRECISION)
    return dk, dk_t, dv, dv_t


@triton.jit
def _cols_ptrs(rows, s_d, d, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """The (rows, BLOCK_D) and (rows, BLOCK_T) element pointers and column masks of the blocks :func:`_load_cols`
    reads, from a (rows, 1) tensor of row pointers: computed once, then offset per step by :func:`_load_cols_off`.
    Without a tail the second pair is the first again, never read."""
    c = tl.arange(0, BLOCK_D)
    p = rows + (c * s_d)[None, :]
    ok = (c < d)[None, :]
    p_t, ok_t = p, ok
    if BLOCK_T > 0:
        c = BLOCK_D + tl.arange(0, BLOCK_T)
        p_t = rows + (c * s_d)[None, :]
        ok_t = (c < d)[None, :]
    return p, ok, p_t, ok_t


@triton.jit
def _load_cols_off(p, ok, p_t, ok_t, off, BLOCK_T: tl.constexpr, EVEN: tl.constexpr):
    """The blocks of :func:`_cols_ptrs` moved by ``off`` ((rows, 1) element offsets), zero outside the head dim
    (``EVEN``: the blocks cover exactly the head dim, so the loads are not masked)."""
    if EVEN:
        x = tl.load(p + off)
    else:
        x = tl.load(p + off, mask=ok, other=0.0)
    x_t = x
    if BLOCK_T > 0:
        if EVEN:
            x_t = tl.load(p_t + off)
        else:
            x_t = tl.load(p_t + off, mask=ok_t, other=0.0)
    return x, x_t


@triton.jit
def _row_offset(k_row, stride, ROW_I32: tl.constexpr):
    """``k_row * stride`` as int64: multiplied in int32 when the launcher found that no row's offset overflows it
    (``ROW_I32``: one IMAD in the loop instead of a 64-bit product), else in int64."""
    if ROW_I32:
        return (k_row * stride).to(tl.int64)
    return k_row.to(tl.int64) * stride


@triton.jit
def _rows_setup(k_base, v_base, KW, tw, s_kw, s_kd, s_vw, s_vd, d_qk, d_v, lo_w, width_w, rpb_idx, rpb_side,
                HALO_W: tl.constexpr, HALO_WP: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_DQK: tl.constexpr, BLOCK_TQK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_TV: tl.constexpr,
                HAS_RPB: tl.constexpr, KEY_TILE: tl.constexpr = False):
    """Once per program of a row-by-row walk (see :func:`_halo_rows_fwd`): the key and value column pointers of a
    step's slots (:func:`_cols_ptrs`), the W-axis part of the mask (each slot pair's window test) and the bias index
    less the step's first row. ``KEY_TILE``: the program owns keys and walks the halo of queries that see them (the
    dk/dv kernel: ``k_base`` / ``v_base`` are q's and dO's); the relative index then falls as the halo slot grows."""
    j = tl.arange(0, BLOCK_N)
    r_of = j // HALO_WP
    c_of = j % HALO_WP
    k_col = tl.load(KW + tw * HALO_W + tl.minimum(c_of, HALO_W - 1)).to(tl.int64)
    kp, kp_ok, kp_t, kp_t_ok = _cols_ptrs(k_base + (k_col * s_kw)[:, None], s_kd, d_qk, BLOCK_DQK, BLOCK_TQK)
    vp, vp_ok, vp_t, vp_t_ok = _cols_ptrs(v_base + (k_col * s_vw)[:, None], s_vd, d_v, BLOCK_DV, BLOCK_TV)
    w_mask = (c_of[None, :] - lo_w[:, None]).to(tl.uint32, bitcast=True) < width_w.to(tl.uint32, bitcast=True)[:, None]
    b_idx = 0
    if HAS_RPB:
        c = r_of * rpb_side + c_of
        if KEY_TILE:
            c = -c
        b_idx = rpb_idx[:, None] + c[None, :]  # the bias index less the step's first row
    return kp, kp_ok, kp_t, kp_t_ok, vp, vp_ok, vp_t, vp_t_ok, w_mask, b_idx


@triton.jit
def _step_offsets(kh, start_row, s_a, s_b, HALO_H: tl.constexpr, HALO_WP: tl.constexpr, BLOCK_N: tl.constexpr,
                  ROW_I32: tl.constexpr):
    """A row walk's step (halo rows ``start_row ..``, ``kh`` the tile's row table): each slot's row offset in two
    tensors of row strides ``s_a`` and ``s_b``, (BLOCK_N,) int64 each."""
    ROWS: tl.constexpr = BLOCK_N // HALO_WP
    r_of = tl.arange(0, BLOCK_N) // HALO_WP
    # one scalar table load per halo row, spread over the slots by their row in the step (known per register at
    # compile time, so the products by 0/1 fold away; a select instead of them loses the alignment of the addresses,
    # and with it the vector loads)
    row = tl.load(kh + start_row)
    a_prev = _row_offset(row, s_a, ROW_I32)
    b_prev = _row_offset(row, s_b, ROW_I32)
    a_off = tl.zeros((BLOCK_N,), tl.int64) + a_prev
    b_off = tl.zeros((BLOCK_N,), tl.int64) + b_prev
    for i in tl.static_range(1, ROWS):
        if HALO_H % ROWS != 0:
            row = tl.load(kh + tl.minimum(start_row + i, HALO_H - 1))
        else:
            row = tl.load(kh + start_row + i)
        a_next = _row_offset(row, s_a, ROW_I32)
        b_next = _row_offset(row, s_b, ROW_I32)
        step = (r_of >= i).to(tl.int64)
        a_off += step * (a_next - a_prev)
        b_off += step * (b_next - b_prev)
        a_prev, b_prev = a_next, b_next
    return a_off, b_off


@triton.jit
def _rows_step(start_row, kh, kp, kp_ok, kp_t, kp_t_ok, vp, vp_ok, vp_t, vp_t_ok, w_mask, b_idx, RPB, s_kh, s_vh,
               lo_h, width_h, rpb_side, HALO_H: tl.constexpr, HALO_WP: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_TQK: tl.constexpr, BLOCK_TV: tl.constexpr, HAS_RPB: tl.constexpr, EVEN_QK: tl.constexpr,
               EVEN_V: tl.constexpr, ROW_I32: tl.constexpr, TABLE: tl.constexpr = False,
               KEY_TILE: tl.constexpr = False):
    """One step of a row-by-row walk: the keys and values of halo rows ``start_row ..`` (``kh`` points at the tile's
    row table), their mask and bias (in the dk/dv kernel, ``KEY_TILE``: the queries and dO of the query halo; see
    :func:`_rows_setup`). With ``TABLE``, ``RPB`` holds the rows of the program's bias table laid out by padded halo
    rows (:func:`bias_table` with ``halo_wp``): the step's mask and bias are one aligned block of it."""
    hr = start_row + tl.arange(0, BLOCK_N) // HALO_WP
    k_off, v_off = _step_offsets(kh, start_row, s_kh, s_vh, HALO_H, HALO_WP, BLOCK_N, ROW_I32)
    k, k_t = _load_cols_off(kp, kp_ok, kp_t, kp_t_ok, k_off[:, None], BLOCK_TQK, EVEN_QK)
    v, v_t = _load_cols_off(vp, vp_ok, vp_t, vp_t_ok, v_off[:, None], BLOCK_TV, EVEN_V)
    if TABLE:
        inside = True
        bias = tl.load(RPB[:, None] + (start_row * HALO_WP + tl.arange(0, BLOCK_N))[None, :]).to(tl.float32)
    else:
        h_in = (hr[None, :] - lo_h[:, None]).to(tl.uint32, bitcast=True) < width_h.to(tl.uint32, bitcast=True)[:, None]
        inside = h_in & w_mask
        if HAS_RPB:
            first = start_row * rpb_side
            if KEY_TILE:
                first = -first
            bias = tl.load(RPB + first + b_idx, mask=inside, other=0.0).to(tl.float32)
        else:
            bias = 0.0
    return k, k_t, v, v_t, inside, bias


@triton.jit
def _halo_rows_fwd(q, q_t, k_base, v_base, KH, KW, RPB, th, tw, s_kh, s_kw, s_kd, s_vh, s_vw, s_vd, d_qk, d_v,
                   lo_h, width_h, lo_w, width_w, rpb_idx, rpb_side, m_i, l_i, acc, acc_t, qk_scale,
                   HALO_H: tl.constexpr, HALO_W: tl.constexpr, HALO_WP: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_DQK: tl.constexpr, BLOCK_TQK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_TV: tl.constexpr,
                   HAS_RPB: tl.constexpr, DOT_PRECISION: tl.constexpr, EVEN_QK: tl.constexpr, EVEN_V: tl.constexpr,
                   ROW_I32: tl.constexpr, TABLE: tl.constexpr = False, SCALE_LATE: tl.constexpr = False):
    """Forward over the halo by whole rows: the halo's width padded to ``HALO_WP`` (a power of two), each step
    covers ``BLOCK_N // HALO_WP`` halo rows. Key slot n of a step is halo row ``start_row + n // HALO_WP``, column
    ``n % HALO_WP``; everything that depends on the column alone (the key column, its part of the addresses, the
    W-axis part of the mask and of the bias index) is computed once (:func:`_rows_setup`), a step adds its rows'
    (:func:`_rows_step`). Columns ``>= HALO_W`` and rows ``>= HALO_H`` read a real halo key (clamped), outside every
    window (the windows lie in the halo). With ``TABLE`` the mask and bias come from the bias table whose rows
    ``RPB`` points at (the windows are then unused)."""
    ROWS: tl.constexpr = BLOCK_N // HALO_WP
    kp, kp_ok, kp_t, kp_t_ok, vp, vp_ok, vp_t, vp_t_ok, w_mask, b_idx = _rows_setup(
        k_base, v_base, KW, tw, s_kw, s_kd, s_vw, s_vd, d_qk, d_v, lo_w, width_w, rpb_idx, rpb_side,
        HALO_W, HALO_WP, BLOCK_N, BLOCK_DQK, BLOCK_TQK, BLOCK_DV, BLOCK_TV, HAS_RPB,
    )
    kh = KH + th * HALO_H
    for start_row in range(0, HALO_H, ROWS):
        k, k_t, v, v_t, inside, bias = _rows_step(
            start_row, kh, kp, kp_ok, kp_t, kp_t_ok, vp, vp_ok, vp_t, vp_t_ok, w_mask, b_idx, RPB, s_kh, s_vh, lo_h,
            width_h, rpb_side, HALO_H, HALO_WP, BLOCK_N, BLOCK_TQK, BLOCK_TV, HAS_RPB, EVEN_QK, EVEN_V, ROW_I32, TABLE,
        )
        m_i, l_i, acc, acc_t = _softmax_step(q, q_t, k, k_t, v, v_t, bias, inside, m_i, l_i, acc, acc_t, qk_scale,
                                             BLOCK_TQK, BLOCK_TV, DOT_PRECISION, TABLE, SCALE_LATE)
    return m_i, l_i, acc, acc_t


@triton.jit
def _halo_fwd_kernel(
    Q, K, V, EK, EV, OUT, LSE, RPB,
    QH, SH, KH, WH, QW, SW, KW, WW,
    s_qb, s_qh, s_qw, s_qn, s_qd,
    s_kb, s_kh, s_kw, s_kn, s_kd,
    s_vb, s_vh, s_vw, s_vn, s_vd,
    s_eb, s_em, s_en, s_ed,
    s_fb, s_fm, s_fn, s_fd,
    s_ob, s_oh, s_ow, s_on, s_od,
    s_lb, s_lh, s_lw, s_ln,
    heads, n_tw, d_qk, d_v, n_extra, qk_scale, rpb_side, radius_sq,
    T_H: tl.constexpr, T_W: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_TQK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_TV: tl.constexpr,
    HAS_RPB: tl.constexpr, CIRCLE: tl.constexpr, HAS_EXTRA: tl.constexpr, DOT_PRECISION: tl.constexpr,
    TABLE: tl.constexpr = False, TABLE_ALIGN: tl.constexpr = 64,
    HALO_WP: tl.constexpr = 0, EVEN_QK: tl.constexpr = False, EVEN_V: tl.constexpr = False,
    ROW_I32: tl.constexpr = False, ALIGN_LOG2: tl.constexpr = 0, CIRCLE_DOT: tl.constexpr = False,
    SCALE_LATE: tl.constexpr = False, DIST16: tl.constexpr = False,
):
    if ALIGN_LOG2 > 0:  # see _align_log2
        s_qb, s_qh, s_qw, s_qn, s_kb, s_kh, s_kw, s_kn, s_vb, s_vh, s_vw, s_vn, d_qk, d_v = _aligned_maps(
            s_qb, s_qh, s_qw, s_qn, s_kb, s_kh, s_kw, s_kn, s_vb, s_vh, s_vw, s_vn, d_qk, d_v, ALIGN_LOG2)
        s_eb, s_em, s_en, s_fb = _aligned4(s_eb, s_em, s_en, s_fb, ALIGN_LOG2)
        s_fm, s_fn, s_ob, s_oh = _aligned4(s_fm, s_fn, s_ob, s_oh, ALIGN_LOG2)
        s_ow = _aligned(s_ow, ALIGN_LOG2)
        s_on = _aligned(s_on, ALIGN_LOG2)
    th, tw, b, head = _program_coords(n_tw, heads)
    a_h, a_w, row, col, m_ok, real = _query_slots(QH, SH, QW, SW, th, tw, T_H, T_W, BLOCK_M)
    q, q_t = _load_cols(Q + b * s_qb + head * s_qn + row * s_qh + col * s_qw, m_ok, s_qd, d_qk, BLOCK_DQK, BLOCK_TQK)
    k_base = K + b * s_kb + head * s_kn
    v_base = V + b * s_vb + head * s_vn
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc, acc_t = _zeros_cols(BLOCK_M, BLOCK_DV, BLOCK_TV)
    if not CIRCLE and HALO_WP > 0 and BLOCK_N >= HALO_WP:
        # row by row (see _halo_rows_fwd)
        bias_at, lo_h, width_h, lo_w, width_w, rpb_idx = _rows_bias_setup(
            RPB, WH, WW, th, tw, a_h, a_w, m_ok, rpb_side, head, heads, HAS_RPB, TABLE, T_H, T_W, HALO_H, HALO_WP,
            BLOCK_M, TABLE_ALIGN,
        )
        m_i, l_i, acc, acc_t = _halo_rows_fwd(
            q, q_t, k_base, v_base, KH, KW, bias_at, th, tw, s_kh, s_kw, s_kd, s_vh, s_vw,
            s_vd, d_qk, d_v, lo_h, width_h, lo_w, width_w, rpb_idx, rpb_side, m_i, l_i, acc, acc_t, qk_scale,
            HALO_H, HALO_W, HALO_WP, BLOCK_N, BLOCK_DQK, BLOCK_TQK, BLOCK_DV, BLOCK_TV, HAS_RPB, DOT_PRECISION,
            EVEN_QK, EVEN_V, ROW_I32, TABLE, SCALE_LATE,
        )
    else:
        lo_h, width_h, lo_w, width_w, rpb_rows = _pair_setup(
            RPB, WH, WW, th, tw, a_h, a_w, m_ok, rpb_side, head, heads, HAS_RPB, CIRCLE, TABLE, T_H, T_W, HALO_H,
            HALO_W, BLOCK_M, TABLE_ALIGN,
        )
        if CIRCLE_DOT:
            r0, c0 = _halo_origin(KH, KW, th, tw, HALO_H, HALO_W)
            slot_terms = _circle_slot_terms(row, col, r0, c0, m_ok, HALO_H, HALO_W)
        for start in range(0, HALO_H * HALO_W, BLOCK_N):
            k_row, k_col, n_ok = _halo_keys(KH, KW, th, tw, start, HALO_H, HALO_W, BLOCK_N)
            k, k_t = _load_cols(k_base + k_row * s_kh + k_col * s_kw, n_ok, s_kd, d_qk, BLOCK_DQK, BLOCK_TQK)
            v, v_t = _load_cols(v_base + k_row * s_vh + k_col * s_vw, n_ok, s_vd, d_v, BLOCK_DV, BLOCK_TV)
            if TABLE:
                inside, bias = True, _table_bias(rpb_rows, start, BLOCK_N)
            elif CIRCLE_DOT:
                inside = _circle_inside(slot_terms, rpb_rows, start, radius_sq, HALO_H, HALO_W, BLOCK_N, DIST16)
                bias = 0.0
            else:
                inside, bias = _pair_mask(rpb_rows, row, col, k_row, k_col, m_ok, n_ok, lo_h, width_h, lo_w,
                                          width_w, start, rpb_side, radius_sq, HALO_W, BLOCK_N, HAS_RPB, CIRCLE,
                                          False)
            m_i, l_i, acc, acc_t = _softmax_step(q, q_t, k, k_t, v, v_t, bias, inside, m_i, l_i, acc, acc_t,
                                                 qk_scale, BLOCK_TQK, BLOCK_TV, DOT_PRECISION, TABLE, SCALE_LATE)
    if HAS_EXTRA:
        ek_base = EK + b * s_eb + head * s_en
        ev_base = EV + b * s_fb + head * s_fn
        for start in range(0, n_extra, BLOCK_N):
            e = start + tl.arange(0, BLOCK_N).to(tl.int64)
            e_ok = e < n_extra
            xk, xk_t = _load_cols(ek_base + e * s_em, e_ok, s_ed, d_qk, BLOCK_DQK, BLOCK_TQK)
            xv, xv_t = _load_cols(ev_base + e * s_fm, e_ok, s_fd, d_v, BLOCK_DV, BLOCK_TV)
            m_i, l_i, acc, acc_t = _softmax_step(q, q_t, xk, xk_t, xv, xv_t, 0.0, m_ok[:, None] & e_ok[None, :],
                                                 m_i, l_i, acc, acc_t, qk_scale, BLOCK_TQK, BLOCK_TV, DOT_PRECISION,
                                                 False, SCALE_LATE)
    l_safe = tl.where(real, l_i, 1.0)
    inv_l = 1.0 / l_safe  # one division per query, then products (a division per output costs ~6 instructions)
    _store_cols(OUT + b * s_ob + head * s_on + row * s_oh + col * s_ow, real, s_od, d_v,
                acc * inv_l[:, None], acc_t * inv_l[:, None], BLOCK_DV, BLOCK_TV)
    tl.store(LSE + b * s_lb + head * s_ln + row * s_lh + col * s_lw, m_i + tl.log2(l_safe), mask=real)


@triton.jit
def _halo_dq_kernel(
    Q, K, V, EK, EV, DO, OUT, LSE, DELTA, RPB, DQ, DTAB,
    QH, SH, KH, WH, QW, SW, KW, WW,
    s_qb, s_qh, s_qw, s_qn, s_qd,
    s_kb, s_kh, s_kw, s_kn, s_kd,
    s_vb, s_vh, s_vw, s_vn, s_vd,
    s_eb, s_em, s_en, s_ed,
    s_fb, s_fm, s_fn, s_fd,
    s_gb, s_gh, s_gw, s_gn, s_gd,
    s_ob, s_oh, s_ow, s_on, s_od,
    s_lb, s_lh, s_lw, s_ln,
    s_dqb, s_dqh, s_dqw, s_dqn, s_dqd,
    heads, n_tw, d_qk, d_v, n_extra, qk_scale, scale, rpb_side, radius_sq, n_images, images,
    T_H: tl.constexpr, T_W: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_TQK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_TV: tl.constexpr,
    HAS_RPB: tl.constexpr, CIRCLE: tl.constexpr, HAS_EXTRA: tl.constexpr, DOT_PRECISION: tl.constexpr,
    TABLE: tl.constexpr = False, TABLE_ALIGN: tl.constexpr = 64,
    HALO_WP: tl.constexpr = 0, EVEN_QK: tl.constexpr = False, EVEN_V: tl.constexpr = False,
    ROW_I32: tl.constexpr = False, TABLE_GRAD: tl.constexpr = False, ADD_ATOMIC: tl.constexpr = False,
    FIRST_STORE: tl.constexpr = False, ALIGN_LOG2: tl.constexpr = 0, CIRCLE_DOT: tl.constexpr = False,
    DIST16: tl.constexpr = False,
):
    """Query-centric: dq of one query tile over its halo and the extra keys (the bias added to the recomputed
    scores). It also writes ``delta = rowsum(dO * O)`` of its queries, which the kernels launched after it read.
    NA without a bias table may walk the halo by whole rows, as the forward does (``HALO_WP``, see
    :func:`_halo_rows_fwd`).

    ``TABLE_GRAD`` (NA with rpb and a bias table): a program runs its tile in ``images`` consecutive images (axis 1
    runs over image chunk x head) and sums the score gradients of each (slot, halo slot) pair over them into its own
    float32 block of ``DTAB``, the gradient of the pair's bias (by load, add and store, or with ``ADD_ATOMIC`` by
    atomic adds, into a zeroed block or, with ``FIRST_STORE``, after a store in the first image: no other program
    touches the block and one thread adds to an address in program order, so the sums' order is fixed either way):
    d(rpb) is that summed by bias index (:func:`_pair_grads_to_rpb`), with no second pass over q, k, v and dO.
    ``DTAB`` is ``(tile columns, image chunks x heads, tile rows, T_H, HALO_H, T_W, HALO_W)``."""
    if ALIGN_LOG2 > 0:  # see _align_log2
        s_qb, s_qh, s_qw, s_qn, s_kb, s_kh, s_kw, s_kn, s_vb, s_vh, s_vw, s_vn, d_qk, d_v = _aligned_maps(
            s_qb, s_qh, s_qw, s_qn, s_kb, s_kh, s_kw, s_kn, s_vb, s_vh, s_vw, s_vn, d_qk, d_v, ALIGN_LOG2)
        s_eb, s_em, s_en, s_fb = _aligned4(s_eb, s_em, s_en, s_fb, ALIGN_LOG2)
        s_fm, s_fn, s_gb, s_gh = _aligned4(s_fm, s_fn, s_gb, s_gh, ALIGN_LOG2)
        s_gw, s_gn, s_ob, s_oh = _aligned4(s_gw, s_gn, s_ob, s_oh, ALIGN_LOG2)
        s_ow, s_on, s_dqb, s_dqh = _aligned4(s_ow, s_on, s_dqb, s_dqh, ALIGN_LOG2)
        s_dqw = _aligned(s_dqw, ALIGN_LOG2)
        s_dqn = _aligned(s_dqn, ALIGN_LOG2)
    if TABLE_GRAD:
        tile = tl.program_id(0).to(tl.int64)
        bn = tl.program_id(1).to(tl.int64)
        th = tile // n_tw
        tw = tile % n_tw
        head = bn % heads
        first = (bn // heads) * images
        block: tl.constexpr = T_H * T_W * HALO_H * HALO_W
        dtab = DTAB + ((tw * tl.num_programs(1) + bn) * (tl.num_programs(0) // n_tw) + th) * block
        for b in range(first, tl.minimum(first + images, n_images)):
            _dq_tile(
                Q, K, V, EK, EV, DO, OUT, LSE, DELTA, RPB, DQ, dtab, b > first, QH, SH, KH, WH, QW, SW, KW, WW,
                s_qb, s_qh, s_qw, s_qn, s_qd, s_kb, s_kh, s_kw, s_kn, s_kd, s_vb, s_vh, s_vw, s_vn, s_vd,
                s_eb, s_em, s_en, s_ed, s_fb, s_fm, s_fn, s_fd, s_gb, s_gh, s_gw, s_gn, s_gd,
                s_ob, s_oh, s_ow, s_on, s_od, s_lb, s_lh, s_lw, s_ln, s_dqb, s_dqh, s_dqw, s_dqn, s_dqd,
                th, tw, b, head, heads, d_qk, d_v, n_extra, qk_scale, scale, rpb_side, radius_sq,
                T_H, T_W, HALO_H, HALO_W, BLOCK_M, BLOCK_N, BLOCK_DQK, BLOCK_TQK, BLOCK_DV, BLOCK_TV,
                HAS_RPB, CIRCLE, HAS_EXTRA, DOT_PRECISION, TABLE, TABLE_ALIGN, HALO_WP, EVEN_QK, EVEN_V, ROW_I32,
                TABLE_GRAD, ADD_ATOMIC, FIRST_STORE, CIRCLE_DOT, DIST16,
            )
            tl.debug_barrier()  # the next image reads the block's sums, perhaps in other threads
    else:
        th, tw, b, head = _program_coords(n_tw, heads)
        _dq_tile(
            Q, K, V, EK, EV, DO, OUT, LSE, DELTA, RPB, DQ, DTAB, False, QH, SH, KH, WH, QW, SW, KW, WW,
            s_qb, s_qh, s_qw, s_qn, s_qd, s_kb, s_kh, s_kw, s_kn, s_kd, s_vb, s_vh, s_vw, s_vn, s_vd,
            s_eb, s_em, s_en, s_ed, s_fb, s_fm, s_fn, s_fd, s_gb, s_gh, s_gw, s_gn, s_gd,
            s_ob, s_oh, s_ow, s_on, s_od, s_lb, s_lh, s_lw, s_ln, s_dqb, s_dqh, s_dqw, s_dqn, s_dqd,
            th, tw, b, head, heads, d_qk, d_v, n_extra, qk_scale, scale, rpb_side, radius_sq,
            T_H, T_W, HALO_H, HALO_W, BLOCK_M, BLOCK_N, BLOCK_DQK, BLOCK_TQK, BLOCK_DV, BLOCK_TV,
            HAS_RPB, CIRCLE, HAS_EXTRA, DOT_PRECISION, TABLE, TABLE_ALIGN, HALO_WP, EVEN_QK, EVEN_V, ROW_I32, False,
            False, False, CIRCLE_DOT, DIST16,
        )


@triton.jit
def _table_grad_add(DTAB, ds, a_h, a_w, m_ok, h, w, accumulate, T_W: tl.constexpr, HALO_H: tl.constexpr,
                    HALO_W: tl.constexpr, ADD_ATOMIC: tl.constexpr, FIRST_STORE: tl.constexpr):
    """Add a step's score gradients ``ds`` (slots, halo slots) into the program's pair-bias gradient block, which is
    (T_H, HALO_H, T_W, HALO_W) (see :func:`_pair_grads_to_rpb`); ``h`` and ``w`` are each halo slot's row and column
    (slots outside the halo are skipped). How: see :func:`_dq_tile`."""
    at = DTAB + (a_h.to(tl.int32) * (HALO_H * T_W * HALO_W) + a_w.to(tl.int32) * HALO_W)[:, None] + (
        h * (T_W * HALO_W) + w)[None, :]
    pair_ok = m_ok[:, None] & ((h < HALO_H) & (w < HALO_W))[None, :]
    if ADD_ATOMIC and FIRST_STORE:
        if accumulate:
            tl.atomic_add(at, ds, mask=pair_ok, sem="relaxed")
        else:  # the first image stores: no zeroed block needed
            tl.store(at, ds, mask=pair_ok)
    elif ADD_ATOMIC:
        tl.atomic_add(at, ds, mask=pair_ok, sem="relaxed")
    else:
        tl.store(at, tl.load(at, mask=pair_ok & accumulate, other=0.0) + ds, mask=pair_ok)


@triton.jit
def _dq_tile(
    Q, K, V, EK, EV, DO, OUT, LSE, DELTA, RPB, DQ, DTAB, accumulate, QH, SH, KH, WH, QW, SW, KW, WW,
    s_qb, s_qh, s_qw, s_qn, s_qd, s_kb, s_kh, s_kw, s_kn, s_kd, s_vb, s_vh, s_vw, s_vn, s_vd,
    s_eb, s_em, s_en, s_ed, s_fb, s_fm, s_fn, s_fd, s_gb, s_gh, s_gw, s_gn, s_gd,
    s_ob, s_oh, s_ow, s_on, s_od, s_lb, s_lh, s_lw, s_ln, s_dqb, s_dqh, s_dqw, s_dqn, s_dqd,
    th, tw, b, head, heads, d_qk, d_v, n_extra, qk_scale, scale, rpb_side, radius_sq,
    T_H: tl.constexpr, T_W: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_TQK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_TV: tl.constexpr,
    HAS_RPB: tl.constexpr, CIRCLE: tl.constexpr, HAS_EXTRA: tl.constexpr, DOT_PRECISION: tl.constexpr,
    TABLE: tl.constexpr, TABLE_ALIGN: tl.constexpr, HALO_WP: tl.constexpr, EVEN_QK: tl.constexpr,
    EVEN_V: tl.constexpr, ROW_I32: tl.constexpr, TABLE_GRAD: tl.constexpr, ADD_ATOMIC: tl.constexpr,
    FIRST_STORE: tl.constexpr, CIRCLE_DOT: tl.constexpr, DIST16: tl.constexpr,
):
    """:func:`_halo_dq_kernel`'s work on one tile of one image and head; with ``TABLE_GRAD`` it also adds the tile's
    score gradients into its pair-bias gradient block ``DTAB``: with ``ADD_ATOMIC`` by float32 atomic adds (into a
    zeroed block, or with ``FIRST_STORE`` after a store in the first image), else loaded, added and stored back
    (stored in the first image); ``accumulate`` is false in the first image."""
    a_h, a_w, row, col, m_ok, real = _query_slots(QH, SH, QW, SW, th, tw, T_H, T_W, BLOCK_M)
    q, q_t = _load_cols(Q + b * s_qb + head * s_qn + row * s_qh + col * s_qw, m_ok, s_qd, d_qk, BLOCK_DQK, BLOCK_TQK)
    do, do_t = _load_cols(DO + b * s_gb + head * s_gn + row * s_gh + col * s_gw, real, s_gd, d_v, BLOCK_DV, BLOCK_TV)
    o, o_t = _load_cols(OUT + b * s_ob + head * s_on + row * s_oh + col * s_ow, real, s_od, d_v, BLOCK_DV, BLOCK_TV)
    delta = _rowdot(do, do_t, o, o_t, BLOCK_TV)
    stat = b * s_lb + head * s_ln + row * s_lh + col * s_lw
    tl.store(DELTA + stat, delta, mask=real)
    # Padded slots repeat a real query and their dq is never stored; with lse read as 0 their scores could
    # overflow: the pair masks take `real`, not `m_ok` (masking them once in the windows costs nothing per pair), and
    # a bias table, which has no per-pair mask, meets an infinite lse instead (probabilities 0).
    lse = tl.load(LSE + stat, mask=real, other=float("inf") if TABLE else 0.0)
    k_base = K + b * s_kb + head * s_kn
    v_base = V + b * s_vb + head * s_vn
    dq, dq_t = _zeros_cols(BLOCK_M, BLOCK_DQK, BLOCK_TQK)
    if not CIRCLE and HALO_WP > 0 and BLOCK_N >= HALO_WP:
        # windows of the real slots only (padded ones pair with nothing, see above)
        ROWS: tl.constexpr = BLOCK_N // HALO_WP
        bias_at, lo_h, width_h, lo_w, width_w, rpb_idx = _rows_bias_setup(
            RPB, WH, WW, th, tw, a_h, a_w, real, rpb_side, head, heads, HAS_RPB, TABLE, T_H, T_W, HALO_H, HALO_WP,
            BLOCK_M, TABLE_ALIGN,
        )
        kp, kp_ok, kp_t, kp_t_ok, vp, vp_ok, vp_t, vp_t_ok, w_mask, b_idx = _rows_setup(
            k_base, v_base, KW, tw, s_kw, s_kd, s_vw, s_vd, d_qk, d_v, lo_w, width_w, rpb_idx, rpb_side,
            HALO_W, HALO_WP, BLOCK_N, BLOCK_DQK, BLOCK_TQK, BLOCK_DV, BLOCK_TV, HAS_RPB,
        )
        kh = KH + th * HALO_H
        for start_row in range(0, HALO_H, ROWS):
            k, k_t, v, v_t, inside, bias = _rows_step(
                start_row, kh, kp, kp_ok, kp_t, kp_t_ok, vp, vp_ok, vp_t, vp_t_ok, w_mask, b_idx,
                bias_at, s_kh, s_vh, lo_h, width_h, rpb_side, HALO_H, HALO_WP, BLOCK_N,
                BLOCK_TQK, BLOCK_TV, HAS_RPB, EVEN_QK, EVEN_V, ROW_I32, TABLE,
            )
            ds = _grad_step(q, q_t, k, k_t, v, v_t, do, do_t, lse, delta, bias, inside, qk_scale,
                            BLOCK_TQK, BLOCK_TV, DOT_PRECISION, TABLE, not (HAS_RPB or TABLE))
            dq, dq_t = _dot_acc(ds, k, k_t, dq, dq_t, BLOCK_TQK, DOT_PRECISION)
            if TABLE_GRAD:
                n = tl.arange(0, BLOCK_N)
                _table_grad_add(DTAB, ds, a_h, a_w, m_ok, start_row + n // HALO_WP, n % HALO_WP, accumulate,
                                T_W, HALO_H, HALO_W, ADD_ATOMIC, FIRST_STORE)
    else:
        lo_h, width_h, lo_w, width_w, rpb_rows = _pair_setup(
            RPB, WH, WW, th, tw, a_h, a_w, real, rpb_side, head, heads, HAS_RPB, CIRCLE, TABLE, T_H, T_W, HALO_H,
            HALO_W, BLOCK_M, TABLE_ALIGN,
        )
        if CIRCLE_DOT:
            r0, c0 = _halo_origin(KH, KW, th, tw, HALO_H, HALO_W)
            slot_terms = _circle_slot_terms(row, col, r0, c0, real, HALO_H, HALO_W)
        for start in range(0, HALO_H * HALO_W, BLOCK_N):
            k_row, k_col, n_ok = _halo_keys(KH, KW, th, tw, start, HALO_H, HALO_W, BLOCK_N)
            if CIRCLE_DOT:
                inside = _circle_inside(slot_terms, rpb_rows, start, radius_sq, HALO_H, HALO_W, BLOCK_N, DIST16)
                bias = 0.0
            elif CIRCLE:  # before the loads: after them this kernel spills more (sm_90, CLEAR d 72: 268 against 252 B)
                inside, bias = _pair_mask(rpb_rows, row, col, k_row, k_col, real, n_ok, lo_h, width_h, lo_w, width_w,
                                          start, rpb_side, radius_sq, HALO_W, BLOCK_N, HAS_RPB, CIRCLE, False)
            k, k_t = _load_cols(k_base + k_row * s_kh + k_col * s_kw, n_ok, s_kd, d_qk, BLOCK_DQK, BLOCK_TQK)
            v, v_t = _load_cols(v_base + k_row * s_vh + k_col * s_vw, n_ok, s_vd, d_v, BLOCK_DV, BLOCK_TV)
            if TABLE:
                inside, bias = True, _table_bias(rpb_rows, start, BLOCK_N)
            elif not CIRCLE:
                inside, bias = _pair_mask(rpb_rows, row, col, k_row, k_col, real, n_ok, lo_h, width_h, lo_w, width_w,
                                          start, rpb_side, radius_sq, HALO_W, BLOCK_N, HAS_RPB, CIRCLE, False)
            ds = _grad_step(q, q_t, k, k_t, v, v_t, do, do_t, lse, delta, bias, inside, qk_scale,
                            BLOCK_TQK, BLOCK_TV, DOT_PRECISION, TABLE, not (HAS_RPB or TABLE))
            dq, dq_t = _dot_acc(ds, k, k_t, dq, dq_t, BLOCK_TQK, DOT_PRECISION)
            if TABLE_GRAD:
                n = start + tl.arange(0, BLOCK_N)
                _table_grad_add(DTAB, ds, a_h, a_w, m_ok, n // HALO_W, n % HALO_W, accumulate, T_W, HALO_H, HALO_W,
                                ADD_ATOMIC, FIRST_STORE)
    if HAS_EXTRA:
        ek_base = EK + b * s_eb + head * s_en
        ev_base = EV + b * s_fb + head * s_fn
        for start in range(0, n_extra, BLOCK_N):
            e = start + tl.arange(0, BLOCK_N).to(tl.int64)
            e_ok = e < n_extra
            xk, xk_t = _load_cols(ek_base + e * s_em, e_ok, s_ed, d_qk, BLOCK_DQK, BLOCK_TQK)
            xv, xv_t = _load_cols(ev_base + e * s_fm, e_ok, s_fd, d_v, BLOCK_DV, BLOCK_TV)
            ds = _grad_step(q, q_t, xk, xk_t, xv, xv_t, do, do_t, lse, delta, 0.0, real[:, None] & e_ok[None, :],
                            qk_scale, BLOCK_TQK, BLOCK_TV, DOT_PRECISION)
            dq, dq_t = _dot_acc(ds, xk, xk_t, dq, dq_t, BLOCK_TQK, DOT_PRECISION)
    _store_cols(DQ + b * s_dqb + head * s_dqn + row * s_dqh + col * s_dqw, real, s_dqd, d_qk,
                dq * scale, dq_t * scale, BLOCK_DQK, BLOCK_TQK)


@triton.jit
def _key_tile_span(WH, th, T_H: tl.constexpr, HALO_H: tl.constexpr, BLOCK_M: tl.constexpr):
    """NA key tiles: the halo rows ``[first, last)`` that hold any query seeing the tile's keys (the union of its
    slots' windows along H; ``WH`` the H axis's windows, :class:`DeviceTables`). A key tile's halo is as tall as the
    tallest one's, that of a tile at a border (where the shifted windows let more queries see a key); away from the
    borders the other rows pair with none of its keys."""
    a = tl.arange(0, BLOCK_M)
    wh = WH + th * 3 * T_H + a
    first = tl.min(tl.load(wh, mask=a < T_H, other=HALO_H), 0)
    last = tl.max(tl.load(wh + T_H, mask=a < T_H, other=0), 0)
    return first, last


@triton.jit
def _halo_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, RPB, DK, DV, SPAN_H,
    KQH, KSH, QKH, WH, KQW, KSW, QKW, WW,
    s_qb, s_qh, s_qw, s_qn, s_qd,
    s_kb, s_kh, s_kw, s_kn, s_kd,
    s_vb, s_vh, s_vw, s_vn, s_vd,
    s_gb, s_gh, s_gw, s_gn, s_gd,
    s_lb, s_lh, s_lw, s_ln,
    s_dkb, s_dkh, s_dkw, s_dkn, s_dkd,
    s_dvb, s_dvh, s_dvw, s_dvn, s_dvd,
    heads, n_tw, d_qk, d_v, qk_scale, scale, rpb_side, radius_sq,
    T_H: tl.constexpr, T_W: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_TQK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_TV: tl.constexpr,
    HAS_RPB: tl.constexpr, CIRCLE: tl.constexpr, DOT_PRECISION: tl.constexpr, TABLE: tl.constexpr = False,
    TABLE_ALIGN: tl.constexpr = 64, HALO_WP: tl.constexpr = 0, EVEN_QK: tl.constexpr = False,
    EVEN_V: tl.constexpr = False, ROW_I32: tl.constexpr = False, SPAN: tl.constexpr = False,
    ALIGN_LOG2: tl.constexpr = 0, CIRCLE_DOT: tl.constexpr = False, DIST16: tl.constexpr = False,
    OFF_I32: tl.constexpr = False,
):
    """Key-centric: dk, dv of one key tile, over the halo of the queries that see its keys (key-tile tables). NA with
    ``HALO_WP`` (the query halo's width padded to a power of two) at most ``BLOCK_N``: the halo is walked by whole
    rows, as the forward walks its key halo (:func:`_rows_setup`, :func:`_rows_step` with ``KEY_TILE``; a bias table
    is then laid out by padded halo rows); else by flat chunks. The circle with ``OFF_I32`` (every offset within an
    image fits in int32) computes its halo queries' rows and columns (:func:`_run_keys`) and offsets in int32."""
    if ALIGN_LOG2 > 0:  # see _align_log2
        s_qb, s_qh, s_qw, s_qn, s_kb, s_kh, s_kw, s_kn, s_vb, s_vh, s_vw, s_vn, d_qk, d_v = _aligned_maps(
            s_qb, s_qh, s_qw, s_qn, s_kb, s_kh, s_kw, s_kn, s_vb, s_vh, s_vw, s_vn, d_qk, d_v, ALIGN_LOG2)
        s_gb, s_gh, s_gw, s_gn = _aligned4(s_gb, s_gh, s_gw, s_gn, ALIGN_LOG2)
        s_dkb, s_dkh, s_dkw, s_dkn = _aligned4(s_dkb, s_dkh, s_dkw, s_dkn, ALIGN_LOG2)
        s_dvb, s_dvh, s_dvw, s_dvn = _aligned4(s_dvb, s_dvh, s_dvw, s_dvn, ALIGN_LOG2)
    th, tw, b, head = _program_coords(n_tw, heads)
    # The key tile plays the query tile's part of the forward: _halo_keys and _pair_mask give (key slot, halo query)
    # pairs. In NA a key slot's window is the run of halo queries that see the key, and the pair's relative index (the
    # forward's, so the same bias) falls by one per halo slot (KEY_TILE).
    a_h, a_w, row, col, m_ok, real = _query_slots(KQH, KSH, KQW, KSW, th, tw, T_H, T_W, BLOCK_M)
    k, k_t = _load_cols(K + b * s_kb + head * s_kn + row * s_kh + col * s_kw, m_ok, s_kd, d_qk, BLOCK_DQK, BLOCK_TQK)
    v, v_t = _load_cols(V + b * s_vb + head * s_vn + row * s_vh + col * s_vw, m_ok, s_vd, d_v, BLOCK_DV, BLOCK_TV)
    q_base = Q + b * s_qb + head * s_qn
    do_base = DO + b * s_gb + head * s_gn
    stat_base = b * s_lb + head * s_ln
    dk, dk_t = _zeros_cols(BLOCK_M, BLOCK_DQK, BLOCK_TQK)
    dv, dv_t = _zeros_cols(BLOCK_M, BLOCK_DV, BLOCK_TV)
    if not CIRCLE and HALO_WP > 0 and BLOCK_N >= HALO_WP:
        # row by row: slots past the halo's width or height hold real (clamped) queries, outside every window
        ROWS: tl.constexpr = BLOCK_N // HALO_WP
        bias_at, lo_h, width_h, lo_w, width_w, rpb_idx = _rows_bias_setup(
            RPB, WH, WW, th, tw, a_h, a_w, m_ok, rpb_side, head, heads, HAS_RPB, TABLE, T_H, T_W, HALO_H, HALO_WP,
            BLOCK_M, TABLE_ALIGN,
        )
        qp, qp_ok, qp_t, qp_t_ok, gp, gp_ok, gp_t, gp_t_ok, w_mask, b_idx = _rows_setup(
            q_base, do_base, QKW, tw, s_qw, s_qd, s_gw, s_gd, d_qk, d_v, lo_w, width_w, rpb_idx, rpb_side,
            HALO_W, HALO_WP, BLOCK_N, BLOCK_DQK, BLOCK_TQK, BLOCK_DV, BLOCK_TV, HAS_RPB, True,
        )
        q_col = tl.load(QKW + tw * HALO_W + tl.minimum(tl.arange(0, BLOCK_N) % HALO_WP, HALO_W - 1)).to(tl.int64)
        stat_cols = stat_base + q_col * s_lw
        kh = QKH + th * HALO_H
        first, last = 0, HALO_H
        if SPAN:  # skip the halo rows that pair with none of the tile's keys (whole steps of them)
            first, last = _key_tile_span(SPAN_H, th, T_H, HALO_H, BLOCK_M)
        for start_row in range(first // ROWS * ROWS, last, ROWS):
            q, q_t, do, do_t, inside, bias = _rows_step(
                start_row, kh, qp, qp_ok, qp_t, qp_t_ok, gp, gp_ok, gp_t, gp_t_ok, w_mask, b_idx, bias_at, s_qh,
                s_gh, lo_h, width_h, rpb_side, HALO_H, HALO_WP, BLOCK_N, BLOCK_TQK, BLOCK_TV, HAS_RPB, EVEN_QK,
                EVEN_V, ROW_I32, TABLE, True,
            )
            stat, _ = _step_offsets(kh, start_row, s_lh, s_lh, HALO_H, HALO_WP, BLOCK_N, ROW_I32)
            lse = tl.load(LSE + stat_cols + stat)
            delta = tl.load(DELTA + stat_cols + stat)
            dk, dk_t, dv, dv_t = _key_grad_step(k, k_t, v, v_t, q, q_t, do, do_t, lse, delta, bias, inside,
                                                dk, dk_t, dv, dv_t, qk_scale, HAS_RPB or TABLE, BLOCK_TQK, BLOCK_TV,
                                                DOT_PRECISION, TABLE, not (HAS_RPB or TABLE))
    else:
        # with a table: (key slot, halo query) pairs, -inf outside the window and past the halo's end (lse read as 0)
        lo_h, width_h, lo_w, width_w, rpb_rows = _pair_setup(
            RPB, WH, WW, th, tw, a_h, a_w, m_ok, rpb_side, head, heads, HAS_RPB, CIRCLE, TABLE, T_H, T_W, HALO_H,
            HALO_W, BLOCK_M, TABLE_ALIGN,
        )
        if CIRCLE_DOT:  # (OFF_I32 comes only with it)
            r0, c0 = _halo_origin(QKH, QKW, th, tw, HALO_H, HALO_W)
            slot_terms = _circle_slot_terms(row, col, r0, c0, m_ok, HALO_H, HALO_W)
        for start in range(0, HALO_H * HALO_W, BLOCK_N):
            if OFF_I32:
                q_row, q_col, n_ok = _run_keys(r0, c0, start, HALO_H, HALO_W, BLOCK_N)
                q_off = q_row * s_qh + q_col * s_qw
                g_off = q_row * s_gh + q_col * s_gw
                l_off = q_row * s_lh + q_col * s_lw
            else:
                q_row, q_col, n_ok = _halo_keys(QKH, QKW, th, tw, start, HALO_H, HALO_W, BLOCK_N)
            if TABLE:
                inside, bias = True, _table_bias(rpb_rows, start, BLOCK_N)
            elif CIRCLE_DOT:
                inside = _circle_inside(slot_terms, rpb_rows, start, radius_sq, HALO_H, HALO_W, BLOCK_N, DIST16)
                bias = 0.0
            elif not (CIRCLE or HAS_RPB):  # NA without bias: before the loads (sm_90, 14x14: 96 against 122 regs)
                inside, bias = _pair_mask(rpb_rows, row, col, q_row, q_col, m_ok, n_ok, lo_h, width_h, lo_w,
                                          width_w, start, rpb_side, radius_sq, HALO_W, BLOCK_N, HAS_RPB, CIRCLE, True)
            if not OFF_I32:
                q_off = q_row * s_qh + q_col * s_qw
                g_off = q_row * s_gh + q_col * s_gw
                l_off = q_row * s_lh + q_col * s_lw
            q, q_t = _load_cols(q_base + q_off, n_ok, s_qd, d_qk, BLOCK_DQK, BLOCK_TQK)
            do, do_t = _load_cols(do_base + g_off, n_ok, s_gd, d_v, BLOCK_DV, BLOCK_TV)
            stat = stat_base + l_off
            lse = tl.load(LSE + stat, mask=n_ok, other=0.0)
            delta = tl.load(DELTA + stat, mask=n_ok, other=0.0)
            if (CIRCLE or HAS_RPB) and not (TABLE or CIRCLE_DOT):
                inside, bias = _pair_mask(rpb_rows, row, col, q_row, q_col, m_ok, n_ok, lo_h, width_h, lo_w,
                                          width_w, start, rpb_side, radius_sq, HALO_W, BLOCK_N, HAS_RPB, CIRCLE, True)
            dk, dk_t, dv, dv_t = _key_grad_step(k, k_t, v, v_t, q, q_t, do, do_t, lse, delta, bias, inside,
                                                dk, dk_t, dv, dv_t, qk_scale, True, BLOCK_TQK, BLOCK_TV,
                                                DOT_PRECISION, TABLE, not (HAS_RPB or TABLE))
    _store_cols(DK + b * s_dkb + head * s_dkn + row * s_dkh + col * s_dkw, real, s_dkd, d_qk,
                dk * scale, dk_t * scale, BLOCK_DQK, BLOCK_TQK)
    _store_cols(DV + b * s_dvb + head * s_dvn + row * s_dvh + col * s_dvw, real, s_dvd, d_v,
                dv, dv_t, BLOCK_DV, BLOCK_TV)


@triton.jit
def _extra_dkdv_kernel(
    Q, EK, EV, DO, LSE, DELTA, DEK, DEV,
    s_qb, s_qh, s_qw, s_qn, s_qd,
    s_eb, s_em, s_en, s_ed,
    s_fb, s_fm, s_fn, s_fd,
    s_gb, s_gh, s_gw, s_gn, s_gd,
    s_lb, s_lh, s_lw, s_ln,
    s_des, s_deb, s_dem, s_den, s_ded,
    s_dfs, s_dfb, s_dfm, s_dfn, s_dfd,
    heads, width, n_queries, per_split, d_qk, d_v, n_extra, qk_scale, scale,
    BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_TQK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_TV: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ALIGN_LOG2: tl.constexpr = 0,
):
    """Dense attention backward over the extra keys: a block of extra keys of one (image, head) walks one split of
    the image's queries and writes that split's float32 partial dk, dv (the splits are summed afterwards)."""
    if ALIGN_LOG2 > 0:  # see _align_log2
        s_qb, s_qh, s_qw, s_qn = _aligned4(s_qb, s_qh, s_qw, s_qn, ALIGN_LOG2)
        s_eb, s_em, s_en, d_qk = _aligned4(s_eb, s_em, s_en, d_qk, ALIGN_LOG2)
        s_fb, s_fm, s_fn, d_v = _aligned4(s_fb, s_fm, s_fn, d_v, ALIGN_LOG2)
        s_gb, s_gh, s_gw, s_gn = _aligned4(s_gb, s_gh, s_gw, s_gn, ALIGN_LOG2)
        s_deb, s_dem, s_den, s_des = _aligned4(s_deb, s_dem, s_den, s_des, ALIGN_LOG2)
        s_dfb, s_dfm, s_dfn, s_dfs = _aligned4(s_dfb, s_dfm, s_dfn, s_dfs, ALIGN_LOG2)
    blk = tl.program_id(0).to(tl.int64)
    bn = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2).to(tl.int64)
    b = bn // heads
    head = bn % heads
    e = blk * BLOCK_E + tl.arange(0, BLOCK_E).to(tl.int64)
    e_ok = e < n_extra
    xk, xk_t = _load_cols(EK + b * s_eb + head * s_en + e * s_em, e_ok, s_ed, d_qk, BLOCK_DQK, BLOCK_TQK)
    xv, xv_t = _load_cols(EV + b * s_fb + head * s_fn + e * s_fm, e_ok, s_fd, d_v, BLOCK_DV, BLOCK_TV)
    q_base = Q + b * s_qb + head * s_qn
    do_base = DO + b * s_gb + head * s_gn
    stat_base = b * s_lb + head * s_ln

    dk, dk_t = _zeros_cols(BLOCK_E, BLOCK_DQK, BLOCK_TQK)
    dv, dv_t = _zeros_cols(BLOCK_E, BLOCK_DV, BLOCK_TV)
    first = split * per_split
    last = tl.minimum(first + per_split, n_queries)
    for start in range(first, last, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N).to(tl.int64)
        n_ok = n < last
        q_row = tl.where(n_ok, n // width, 0)
        q_col = tl.where(n_ok, n % width, 0)
        q, q_t = _load_cols(q_base + q_row * s_qh + q_col * s_qw, n_ok, s_qd, d_qk, BLOCK_DQK, BLOCK_TQK)
        do, do_t = _load_cols(do_base + q_row * s_gh + q_col * s_gw, n_ok, s_gd, d_v, BLOCK_DV, BLOCK_TV)
        stat = stat_base + q_row * s_lh + q_col * s_lw
        lse = tl.load(LSE + stat, mask=n_ok, other=0.0)
        delta = tl.load(DELTA + stat, mask=n_ok, other=0.0)
        dk, dk_t, dv, dv_t = _key_grad_step(xk, xk_t, xv, xv_t, q, q_t, do, do_t, lse, delta, None,
                                            e_ok[:, None] & n_ok[None, :], dk, dk_t, dv, dv_t, qk_scale,
                                            False, BLOCK_TQK, BLOCK_TV, DOT_PRECISION)
    _store_cols(DEK + split * s_des + b * s_deb + head * s_den + e * s_dem, e_ok, s_ded, d_qk,
                dk * scale, dk_t * scale, BLOCK_DQK, BLOCK_TQK)
    _store_cols(DEV + split * s_dfs + b * s_dfb + head * s_dfn + e * s_dfm, e_ok, s_dfd, d_v,
                dv, dv_t, BLOCK_DV, BLOCK_TV)


class Launch(NamedTuple):
    """Launch configuration of one kernel on a GPU; None keeps the default.

    Attributes:
        block_n: keys (query-centric kernels) or queries (key-centric kernels) per inner step.
        num_warps: warps per program.
        num_stages: software-pipelining stages of the inner loop.
        block_m: extra keys per program of the extra keys' gradient kernel (the other kernels take the tile).
        maxnreg: registers per thread the compiler may use (more programs per SM, at the price of spills).
    """

    block_n: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    block_m: int | None = None
    maxnreg: int | None = None


def _head_blocks(d_qk: int, d_v: int) -> dict:
    """The head-dim constexprs: main and tail blocks of q/k and of v (see :func:`_head_split`)."""
    (qk, qk_tail), (v, v_tail) = _head_split(d_qk), _head_split(d_v)
    return dict(BLOCK_DQK=qk, BLOCK_TQK=qk_tail, BLOCK_DV=v, BLOCK_TV=v_tail)


def _launch_meta(
    q: torch.Tensor,
    v: torch.Tensor,
    rows: DeviceTables,
    cols: DeviceTables,
    block_n: int | None,
    num_warps: int | None,
    num_stages: int | None = None,
    maxnreg: int | None = None,
) -> dict:
    """The launch's constexprs and options (cached: a launch's host time matters as much as a small map's kernel)."""
    return _cached_meta(rows.tile, cols.tile, rows.halo, cols.halo, q.shape[-1], v.shape[-1], q.dtype, block_n,
                        num_warps, num_stages, maxnreg, bool(triton.knobs.runtime.interpret))


@functools.lru_cache(maxsize=1024)
def _cached_meta(t_h, t_w, halo_h, halo_w, d_qk, d_v, dtype, block_n, num_warps, num_stages, maxnreg,
                 interpret) -> dict:
    # None keeps Triton's default number of warps and this module's number of pipeline stages; a register cap is a
    # GPU compiler option (the interpreter takes none).
    warps = dict(num_stages=_NUM_STAGES if num_stages is None else num_stages, **_register_cap(maxnreg, interpret))
    if num_warps is not None:
        warps["num_warps"] = num_warps
    return dict(
        T_H=t_h,
        T_W=t_w,
        HALO_H=halo_h,
        HALO_W=halo_w,
        BLOCK_M=max(16, _next_pow2(t_h * t_w)),
        BLOCK_N=_BLOCK_N_INTERPRET if interpret else block_n or _BLOCK_N,
        **_head_blocks(d_qk, d_v),
        DOT_PRECISION=_dot_precision(dtype),
        **warps,
    )


# Largest bias table (float32 entries) built for a launch; past it the kernels build the NA mask and bias per pair.
_TABLE_MAX = 1 << 22
# _FWD_TABLE_HALF: the forward of 16-bit inputs reads its bias table (rpb * log2(e), -inf outside the window) in
# float16 instead of float32, half the table's bytes per step (sm_90 at B64 56x56, 2 heads, rpb: shared memory 4096
# -> 3584 bytes, one async copy fewer per step, but 8 conversions more: loop 147 -> 149 instructions). Its rounding
# (relative 2^-11 of the bias) is below that of 16-bit scores; float32 inputs keep a float32 table. Written on
# 2026-12-03; H200, 12:50 (tools/benchmark.py --ab, forward with rpb): 56x56 0.1096 -> 0.1284 ms (+17%), 28x28 +1.5%,
# 14x14 +2.2%, 7x7 -0.6%, dilated 56x56 -3.8%: off.
_FWD_TABLE_HALF = False
# Halo slots per table row: a multiple of every NA key block (16, 32; 256 under the interpreter), so that the forward
# and the dq kernel, whose blocks differ, read one table.
_TABLE_ALIGN = 64
_TABLE_ALIGN_INTERPRET = 256


def _table_align() -> int:
    return _TABLE_ALIGN_INTERPRET if triton.knobs.runtime.interpret else _TABLE_ALIGN


def _rel_idx(t: DeviceTables) -> torch.Tensor:
    """(n, T, halo) relative index of each (slot, halo slot) pair of one axis, -1 outside the window (the inverse
    of :func:`slot_windows`)."""
    lo, hi, off = t.window.long().unbind(1)
    c = torch.arange(t.halo, device=t.window.device)
    run = (c >= lo[..., None]) & (c < hi[..., None])
    return torch.where(run, off[..., None] + (-1 if t.key_tiles else 1) * c, -1)


@functools.lru_cache(maxsize=256)
def _tile_classes(t: DeviceTables) -> tuple[torch.Tensor, torch.Tensor]:
    """One axis's classes of tiles (tiles whose slots pair with the same halo slots at the same relative indices,
    e.g. every interior tile): each class's (T, halo) relative indices (int32, -1 outside the window), and the class
    of each tile (int32)."""
    rel, cls = torch.unique(_rel_idx(t).flatten(1), dim=0, return_inverse=True)
    return rel.view(-1, t.tile, t.halo).to(torch.int32).contiguous(), cls.to(torch.int32)


@functools.lru_cache(maxsize=256)
def _tile_rel(t: DeviceTables) -> torch.Tensor:
    """(n, T, halo) int32 relative index of each tile's (slot, halo slot) pairs, -1 outside the window."""
    return _rel_idx(t).to(torch.int32).contiguous()


@functools.lru_cache(maxsize=128)
def _table_mask(rows: DeviceTables, cols: DeviceTables, block_m: int, npad: int, row_w: int) -> torch.Tensor:
    """(Ch, Cw, 1, block_m, npad) float32: 0 where a class's (slot, halo slot) pair is in the window, -inf elsewhere
    (tile slots past the tile and halo slots past the halo included): the bias table without rpb, halo rows
    ``row_w`` columns apart (see :func:`bias_table`)."""
    uh, uw = _tile_classes(rows)[0], _tile_classes(cols)[0]
    uh, uw = uh.view(-1, 1, rows.tile, 1, rows.halo, 1), uw.view(1, -1, 1, cols.tile, 1, cols.halo)
    inside = (uh >= 0) & (uw >= 0)
    n_h, n_w = inside.shape[:2]
    mask = torch.full((n_h, n_w, 1, block_m, npad), float("-inf"), device=inside.device)
    body = mask[..., : rows.halo * row_w].unflatten(-1, (rows.halo, row_w))  # a view of the halo's rows
    shape = (n_h, n_w, 1, rows.tile * cols.tile, rows.halo, cols.halo)
    body[..., : shape[3], :, : shape[5]] = torch.where(inside, 0.0, float("-inf")).reshape(shape)
    return mask


@triton.jit
def _bias_table_kernel(RPB, REL_H, REL_W, TAB, heads, n_cw, side, scale,
                       T_H: tl.constexpr, T_W: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
                       BLOCK_M: tl.constexpr, NPAD: tl.constexpr, BLOCK_C: tl.constexpr, ROW_W: tl.constexpr):
    """One class pair and head of a bias table (see :func:`bias_table`), halo slots ``BLOCK_C`` at a time: the bias
    of each (slot, halo slot) pair times ``scale`` where both axes' relative indices are in the window, -inf
    elsewhere. Table column n is halo row ``n // ROW_W``, column ``n % ROW_W`` (``ROW_W >= HALO_W``: columns past
    the halo's width are -inf). Grid: (classes along H x classes along W x heads, NPAD / BLOCK_C)."""
    pid = tl.program_id(0)
    head = pid % heads
    cw = (pid // heads) % n_cw
    ch = pid // heads // n_cw
    m = tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n_h = n // ROW_W
    n_w = n % ROW_W
    ok = (m < T_H * T_W)[:, None] & ((n_h < HALO_H) & (n_w < HALO_W))[None, :]
    r_h = tl.load(REL_H + ch * (T_H * HALO_H) + (m // T_W * HALO_H)[:, None] + n_h[None, :], mask=ok, other=-1)
    r_w = tl.load(REL_W + cw * (T_W * HALO_W) + (m % T_W * HALO_W)[:, None] + n_w[None, :], mask=ok, other=-1)
    inside = (r_h >= 0) & (r_w >= 0)
    bias = tl.load(RPB + head * side * side + r_h * side + r_w, mask=inside, other=0.0).to(tl.float32) * scale
    tl.store(TAB + (pid * BLOCK_M + m)[:, None] * NPAD + n[None, :],
             tl.where(inside, bias, float("-inf")).to(TAB.dtype.element_ty))


# halo slots per program of _bias_table_kernel (a divisor of every table row's padded length, _table_align())
_TABLE_BLOCK_C = 64


def _table_row_width(cols: DeviceTables, halo_wp: int) -> int:
    """Table columns per halo row (see :func:`bias_table`): the halo's width, or ``halo_wp`` for a row walk."""
    return halo_wp or cols.halo


def bias_table(rows: DeviceTables, cols: DeviceTables, rpb: torch.Tensor | None, block_m: int, block_n: int,
               halo_wp: int = 0, dtype: torch.dtype = torch.float32):
    """NA's mask and bias as one float32 table per class of tiles (and head, with rpb): ``(table, class of each H
    tile, class of each W tile, number of W classes)``, or None when it would exceed ``_TABLE_MAX`` entries (many
    border classes: large dilations) or ``block_n`` does not divide its rows. ``table[..., m, n]`` is
    ``rpb[head, b_h, b_w] * log2(e)`` (0 without rpb) for tile slot ``m`` and halo slot ``n`` when they pair,
    ``-inf`` when not. Halo slot n is the flat halo's (row ``n // halo_w``, column ``n % halo_w``) or, for the
    forward's row-by-row walk (``halo_wp``, the halo's width padded to a power of two), row ``n // halo_wp``, column
    ``n % halo_wp``: a step then reads whole aligned table rows. Without rpb the table (the mask) is built once per
    map geometry; with rpb one kernel (:func:`_bias_table_kernel`) gathers it from rpb at every launch, so it can
    never be stale. ``dtype``: the table's, float32 or (the forward of 16-bit inputs, see _FWD_TABLE_HALF) float16."""
    align = _table_align()
    if align % block_n:
        return None
    heads = rpb.shape[0] if rpb is not None else 1
    row_w = _table_row_width(cols, halo_wp)
    npad = _cdiv(rows.halo * row_w, align) * align
    (uh, cls_h), (uw, cls_w) = _tile_classes(rows), _tile_classes(cols)
    if uh.shape[0] * uw.shape[0] * heads * block_m * npad > _TABLE_MAX:
        return None
    if rpb is None:
        return _table_mask(rows, cols, block_m, npad, row_w).to(dtype), cls_h, cls_w, uw.shape[0]
    # in base 2, as the kernels' scores (one fused multiply-add per pair); (Ch, Cw, heads, block_m, npad), contiguous
    tab = new_output((uh.shape[0], uw.shape[0], heads, block_m, npad), dtype, rpb.device)
    _bias_table_kernel[(uh.shape[0] * uw.shape[0] * heads, npad // _TABLE_BLOCK_C)](
        rpb.detach().contiguous(), uh, uw, tab, heads, uw.shape[0], rpb.shape[-1], _LOG2E,
        T_H=rows.tile, T_W=cols.tile, HALO_H=rows.halo, HALO_W=cols.halo, BLOCK_M=block_m, NPAD=npad,
        BLOCK_C=_TABLE_BLOCK_C, ROW_W=row_w,
    )
    return tab, cls_h, cls_w, uw.shape[0]


@functools.lru_cache(maxsize=256)
def _rows_meta(halo_w: int, d_qk: int, d_v: int, rows_loop: bool) -> dict:
    """The constexprs of a row-by-row walk (the forward's, and NA's dq kernel's): the halo width padded to a power of
    two (0: the flat loop), and whether the head-dim blocks of q/k and of v cover their head dims exactly (their loads
    then need no mask)."""
    return dict(
        HALO_WP=_next_pow2(halo_w) if rows_loop else 0,
        EVEN_QK=sum(_head_split(d_qk)) == d_qk,
        EVEN_V=sum(_head_split(d_v)) == d_v,
    )


def _row_i32(k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether every key row's offset ``row * stride`` fits in int32 (the row loops then multiply in int32)."""
    return (k.shape[1] - 1) * max(abs(k.stride(1)), abs(v.stride(1))) < _ROW_I32_LIMIT


def _offsets_i32(*maps: torch.Tensor) -> bool:
    """Whether every offset ``row * stride_h + col * stride_w`` within an image of each heads-last map fits in int32
    (the flat loops of the circle then multiply their halo keys' rows and columns in int32)."""
    return all((t.shape[1] - 1) * abs(t.stride(1)) + (t.shape[2] - 1) * abs(t.stride(2)) < _ROW_I32_LIMIT
               for t in maps)


def _extras(q: torch.Tensor, extra_k: torch.Tensor | None, extra_v: torch.Tensor | None):
    """(extra_k, extra_v, M) with placeholders (never read) when there are none."""
    if extra_k is None or extra_k.shape[1] == 0:
        return q, q, 0
    return extra_k, extra_v, extra_k.shape[1]


def _align_log2(*maps: torch.Tensor) -> int:
    """log2 of the element count that every row offset of ``maps`` (heads-last tensors) and their last dim are
    multiples of, for the kernels to declare (``ALIGN_LOG2``, see :func:`_aligned`); 0 where Triton sees it already
    (every value a multiple of 16, which it specialises on) or no power of two above 1 divides them all. Without it,
    a head dim of 72 (DiT's) makes the head offsets and the head-dim masks look unaligned, and every load of q, k, v
    scalar: 160 two-byte loads per key block of the CLEAR forward instead of 20 vector ones (sm_90)."""
    return _layout_align_log2(tuple((t.shape, t.stride()) for t in maps))


@functools.lru_cache(maxsize=1024)
def _layout_align_log2(layouts: tuple) -> int:
    """:func:`_align_log2` of maps given as (shape, stride) pairs (cached: it runs on every launch, whose host time
    matters on small maps)."""
    g = 0
    for shape, stride in layouts:
        if stride[-1] != 1:
            return 0
        # a size-1 dim's index is always 0, so its stride never reaches an offset
        g = math.gcd(g, shape[-1], *[s for s, n in zip(stride[:-1], shape[:-1]) if n > 1])
    if g % 16 == 0:  # also where every value is a multiple of 16
        return 0
    return min((g & -g).bit_length() - 1, 3)


@functools.lru_cache(maxsize=128)
def circle_terms(halo_h: int, halo_w: int, block_n: int, device: torch.device) -> torch.Tensor:
    """The circle's halo terms (CIRCLE_DOT, :func:`_circle_inside`): ``(16, npad)`` float16, ``npad`` the halo's
    ``halo_h * halo_w`` keys rounded up to whole steps of ``block_n``. Column n (halo row ``y = n // halo_w - halo_h //
    2``, column ``x = n % halo_w - halo_w // 2``, centred as the slot terms) is ``[y^2, x^2, -2y, -2x, 1, 1, 0 ...]``,
    so that its product with a slot's ``[1, 1, y', x', y'^2, x'^2, 0 ...]`` is the squared distance; ``[BIG, BIG, 0,
    0, 1, 1, 0 ...]`` past the halo's end."""
    npad = _cdiv(halo_h * halo_w, block_n) * block_n
    n = torch.arange(npad)
    y, x, ok = n // halo_w - halo_h // 2, n % halo_w - halo_w // 2, n < halo_h * halo_w
    terms = torch.zeros(_CIRCLE_TERMS, npad)
    terms[0] = torch.where(ok, y * y, _CIRCLE_BIG)
    terms[1] = torch.where(ok, x * x, _CIRCLE_BIG)
    terms[2] = torch.where(ok, -2 * y, 0)
    terms[3] = torch.where(ok, -2 * x, 0)
    terms[4:6] = 1.0
    return terms.to(device=device, dtype=torch.float16).contiguous()


def _circle_mask_args(rows: DeviceTables, cols: DeviceTables, block_n: int, circle_radius: int | None,
                      placeholder: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The circle kernels' ``RPB`` argument and ``CIRCLE_DOT``: the halo terms (:func:`circle_terms`) and True where
    the halo's centred coordinates are exact in float16 (halos up to ``_CIRCLE_DOT_MAX_HALO`` a side) and r is at most
    ``_CIRCLE_DOT_MAX_RADIUS``, else the placeholder and False (the integer mask per pair)."""
    if (circle_radius is None or circle_radius > _CIRCLE_DOT_MAX_RADIUS
            or max(rows.halo, cols.halo) > _CIRCLE_DOT_MAX_HALO):
        return placeholder, False
    return circle_terms(rows.halo, cols.halo, block_n, placeholder.device), True


def _dist16(rows: DeviceTables, cols: DeviceTables, circle_dot: bool) -> bool:
    """Whether the circle's distance dot may also sum in float16 (``DIST16``: half the registers of its result): where
    every partial sum stays an integer below 2048, i.e. centred coordinates within 16 (halos up to 33 a side: each
    of the six terms is then at most 16^2 or 2 * 16^2 in magnitude, 8 * 16^2 = 2048 in all)."""
    return circle_dot and max(rows.halo, cols.halo) <= 33


def _strides4(t: torch.Tensor, has: bool) -> tuple[int, ...]:
    return tuple(t.stride()) if has else (0, 0, 0, 0)


def halo_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: DeviceTables,
    cols: DeviceTables,
    scale: float,
    *,
    rpb: torch.Tensor | None = None,
    circle_radius: int | None = None,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    maxnreg: int | None = None,
    table: bool = False,
    rows_loop: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher; arguments already validated by the op.

    Args:
        q, k: (B, H, W, heads, D); v: (B, H, W, heads, Dv); any strides, one dtype.
        rows, cols: the tables of the two axes.
        scale: multiplies the logits.
        rpb: NA mode only: optional (heads, S, S) relative position bias indexed by the pairs' relative indices.
        circle_radius: r selects the circle mask; None the NA window of the tables.
        extra_k, extra_v: optional (B, M, heads, D) and (B, M, heads, Dv) keys every query sees.
        block_n, num_warps, num_stages, maxnreg: launch configuration on a GPU; None keeps the defaults (32 keys per
            step, Triton's default number of warps, one pipeline stage, no register cap); NA and CLEAR pass their
            own.
        table: NA mode only: read each pair's mask and bias from a table per class of tiles (:func:`bias_table`)
            instead of building them per pair (when the table is not too large).
        rows_loop: NA: walk the halo by whole rows when a step holds at least one padded halo row
            (:func:`_halo_rows_fwd`; a bias table is then laid out by padded halo rows), else by flat chunks. The
            circle always walks flat chunks.

    Returns:
        out (B, H, W, heads, Dv) contiguous in v's dtype, and lse (B, H, W, heads) float32, the base-2 logsumexp of
        each query's scores (what the backward needs).
    """
    if circle_radius is None and (rows.key_tiles or cols.key_tiles):
        raise ValueError("halo_fwd: the NA window needs query-tile tables, got key-tile tables.")
    b, hh, ww, heads, _ = q.shape
    out = new_output((b, hh, ww, heads, v.shape[-1]), v.dtype, v.device)
    lse = new_output((b, hh, ww, heads), torch.float32, v.device)
    has_rpb = rpb is not None
    rpb_t = rpb.contiguous() if has_rpb else q  # placeholder, never read
    ek, ev, n_extra = _extras(q, extra_k, extra_v)
    meta = _launch_meta(q, v, rows, cols, block_n, num_warps, num_stages, maxnreg)
    walk = _rows_meta(cols.halo, q.shape[-1], v.shape[-1], rows_loop)
    # a row walk (the kernel's test) reads its table by padded halo rows
    halo_wp = walk["HALO_WP"] if circle_radius is None and 0 < walk["HALO_WP"] <= meta["BLOCK_N"] else 0
    tab = None
    if table and circle_radius is None:
        half = _FWD_TABLE_HALF and q.dtype in (torch.float16, torch.bfloat16)
        tab = bias_table(rows, cols, rpb, meta["BLOCK_M"], meta["BLOCK_N"], halo_wp,
                         torch.float16 if half else torch.float32)
    rpb_t, win_h, win_w, rpb_side = _table_args(rows, cols, rpb_t, rpb_t.shape[-1] if has_rpb else 1, tab)
    rpb_t, circle_dot = _circle_mask_args(rows, cols, meta["BLOCK_N"], circle_radius, rpb_t)
    _halo_fwd_kernel[(rows.n_tiles * cols.n_tiles, b * heads)](
        q, k, v, ek, ev, out, lse, rpb_t, *rows[:3], win_h, *cols[:3], win_w,
        *q.stride(), *k.stride(), *v.stride(), *_strides4(ek, n_extra > 0), *_strides4(ev, n_extra > 0),
        *out.stride(), *lse.stride(),
        heads, cols.n_tiles, q.shape[-1], v.shape[-1], n_extra, scale * _LOG2E, rpb_side, (circle_radius or 0) ** 2,
        HAS_RPB=has_rpb, CIRCLE=circle_radius is not None, HAS_EXTRA=n_extra > 0, TABLE=tab is not None,
        TABLE_ALIGN=_table_align(), ROW_I32=_row_i32(k, v), ALIGN_LOG2=_align_log2(q, k, v, ek, ev, out),
        CIRCLE_DOT=circle_dot, SCALE_LATE=scale > 0 and not has_rpb and tab is None,
        DIST16=_dist16(rows, cols, circle_dot),
        **walk, **meta,
    )
    return out, lse


def _table_args(rows: DeviceTables, cols: DeviceTables, rpb_t: torch.Tensor, rpb_side: int, tab):
    """The kernels' (RPB, WH, WW, rpb_side) arguments: the bias, the windows and the bias's side, or with a bias
    table (:func:`bias_table`) the table, the tiles' classes and the number of W classes."""
    if tab is None:
        return rpb_t, rows.window, cols.window, rpb_side
    return tab


# halo_bwd's defaults for the dq programs that also sum d(rpb) (TABLE_GRAD), per way of summing ("store": load, add,
# store; "atomic": atomic adds; "first-store": a store, then atomic adds): about this many programs (more keep the GPU
# busier), but with at least as many images each as keep their float32 pair-bias blocks, which the binning kernels then
# read, within this many bytes. NA picks its own per map, from H200 sweeps
# (vizattn.kernels.na2d.triton._rpb_grad_launch).
_TABLE_GRAD_LAUNCH = {"store": (4096, 32 << 20), "atomic": (2048, 16 << 20), "first-store": (2048, 16 << 20)}


def _images_per_program(n_images: int, programs_per_image: int, block_bytes: int, programs: int,
                        max_bytes: int) -> int:
    """Images per dq program with ``TABLE_GRAD`` on a GPU: about ``programs`` programs, with at least as many images
    each as keep their float32 pair-bias blocks (``block_bytes`` each) within ``max_bytes``; every image in one
    program under the interpreter."""
    if triton.knobs.runtime.interpret:
        return n_images
    by_programs = round(n_images * programs_per_image / programs)
    by_bytes = _cdiv(n_images * programs_per_image * block_bytes, max_bytes)
    return max(1, min(n_images, max(by_programs, by_bytes)))


@triton.jit
def _bin_pair_grads_kernel(DTAB, REL_H, REL_W, PART, n_th, n_tw, n_chunks, heads, n_split, units_per, n_units,
                           T_H: tl.constexpr, T_W: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
                           BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, SIDE_P: tl.constexpr):
    """Part of one head's d(rpb) from the dq kernel's pair-bias gradient blocks (layout in :func:`_halo_dq_kernel`).
    A unit of work is one tile's blocks over one of ``n_split`` ranges of image chunks (units tile-major); a program
    takes ``units_per`` consecutive units. Each unit's blocks are summed over its chunks, then binned by bias index as
    products with the one-hot relative indices of the two axes (W first, ``BLOCK_C`` columns of a block at a time),
    in float32 on CUDA cores. Writes one ``(SIDE_P, SIDE_P)`` partial table per program; grid: (heads, programs per
    head)."""
    head = tl.program_id(0)
    R: tl.constexpr = T_H * HALO_H  # a block row: (tile slot row i, halo row y)
    C: tl.constexpr = T_W * HALO_W  # a block column: (tile slot column j, halo column x)
    r = tl.arange(0, BLOCK_R)
    r_ok = r < R
    s = tl.arange(0, SIDE_P)
    acc = tl.zeros((SIDE_P, SIDE_P), dtype=tl.float32)
    first = tl.program_id(1) * units_per
    for u in range(first, tl.minimum(first + units_per, n_units)):
        tile = u // n_split
        th = tile // n_tw
        tw = tile % n_tw
        lo = (u % n_split) * n_chunks // n_split
        hi = (u % n_split + 1) * n_chunks // n_split
        by_w = tl.zeros((BLOCK_R, SIDE_P), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            ok = r_ok[:, None] & (c < C)[None, :]
            blk = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
            for chunk in range(lo, hi):
                base = DTAB + (((tw * n_chunks + chunk) * heads + head).to(tl.int64) * n_th + th) * (R * C)
                blk += tl.load(base + r[:, None] * C + c[None, :], mask=ok, other=0.0)
            r_w = tl.load(REL_W + tw * C + c, mask=c < C, other=-1)
            by_w += tl.dot(blk, (r_w[:, None] == s[None, :]).to(tl.float32), input_precision="ieee")
        r_h = tl.load(REL_H + th * R + r, mask=r_ok, other=-1)
        acc += tl.dot((s[:, None] == r_h[None, :]).to(tl.float32), by_w, input_precision="ieee")
    part = PART + (head * tl.num_programs(1) + tl.program_id(1)) * (SIDE_P * SIDE_P)
    tl.store(part + s[:, None] * SIDE_P + s[None, :], acc)


@triton.jit
def _sum_parts_kernel(PART, OUT, n_parts, side, SIDE_P: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr):
    """``BLOCK_E`` entries of one head's d(rpb): its ``n_parts`` partial tables summed in a fixed order, stored in
    OUT's dtype. Grid: (heads, SIDE_P * SIDE_P / BLOCK_E)."""
    head = tl.program_id(0)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    acc = tl.zeros((BLOCK_E,), dtype=tl.float32)
    for p0 in range(0, n_parts, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        acc += tl.sum(tl.load(PART + (head * n_parts + p)[:, None] * (SIDE_P * SIDE_P) + e[None, :],
                              mask=(p < n_parts)[:, None], other=0.0), axis=0)
    a = e // SIDE_P
    b = e % SIDE_P
    tl.store(OUT + head * side * side + a * side + b, acc, mask=(a < side) & (b < side))


# Programs of _bin_pair_grads_kernel on a GPU: about one per this many bytes of blocks, within these bounds; and the
# partial tables (rows) and table entries (columns) of one step of _sum_parts_kernel. H200 (2026-12-01 00:50,
# `.gpu/ab_bin.py`, profiler kernel time of NA's forward + backward with rpb, bf16, k 7, head dim 32), ms at 256 / 512
# / 1024 programs: B64 56x56 2 heads (17 MB of blocks) 0.440 / 0.434 / 0.434, 28x28 4 heads 0.268 / 0.265 / 0.264,
# 14x14 8 heads (8 MB) 0.147 / 0.147 / 0.149, 7x7 16 heads (6 MB) 0.082 / 0.085 / 0.089, 56x56 dilation 8 (32 MB)
# 0.411 / 0.407 / 0.410. Binning each block by masked loads at the slots' windows instead of one-hot products made
# the binning 1.4-2x slower.
_BIN_BYTES, _BIN_PROGRAMS = 20 << 10, (256, 1024)
_SUM_BLOCK_P, _SUM_BLOCK_E = 128, 16


def _bin_split(n_tiles: int, heads: int, n_chunks: int, n_bytes: int) -> tuple[int, int]:
    """(ranges of image chunks per tile, units per program) of :func:`_bin_pair_grads_kernel` for ``n_bytes`` of
    blocks: about one program per ``_BIN_BYTES`` (within ``_BIN_PROGRAMS``), splitting each tile's chunks where there
    are fewer tiles x heads than programs; one program per head under the interpreter."""
    if triton.knobs.runtime.interpret:
        return 1, n_tiles
    programs = min(max(n_bytes // _BIN_BYTES, _BIN_PROGRAMS[0]), _BIN_PROGRAMS[1])
    n_split = max(1, min(n_chunks, programs // (n_tiles * heads)))
    return n_split, _cdiv(n_tiles * n_split * heads, programs)


def _pair_grads_to_rpb(dtab: torch.Tensor, heads: int, rows: DeviceTables, cols: DeviceTables, side: int,
                       dtype: torch.dtype) -> torch.Tensor:
    """d(rpb) (heads, side, side) in ``dtype`` from the dq kernel's pair-bias gradient blocks: each pair's gradient
    added at its bias index, in partial tables (:func:`_bin_pair_grads_kernel`) that :func:`_sum_parts_kernel` then
    sums. No atomics: deterministic. Float32 adds throughout."""
    side_p = max(16, _next_pow2(side))  # tl.dot's smallest block
    n_tiles, n_chunks = rows.n_tiles * cols.n_tiles, dtab.shape[1] // heads
    n_split, units_per = _bin_split(n_tiles, heads, n_chunks, dtab.numel() * 4)
    n_parts = _cdiv(n_tiles * n_split, units_per)
    part = new_output((heads, n_parts, side_p, side_p), torch.float32, dtab.device)
    _bin_pair_grads_kernel[(heads, n_parts)](
        dtab, _tile_rel(rows), _tile_rel(cols), part, rows.n_tiles, cols.n_tiles, n_chunks, heads, n_split, units_per,
        n_tiles * n_split, T_H=rows.tile, T_W=cols.tile, HALO_H=rows.halo, HALO_W=cols.halo,
        BLOCK_R=max(16, _next_pow2(rows.tile * rows.halo)), BLOCK_C=min(64, max(16, _next_pow2(cols.tile * cols.halo))),
        SIDE_P=side_p,
    )
    d_rpb = new_output((heads, side, side), dtype, dtab.device)
    block_e = min(_SUM_BLOCK_E, side_p * side_p)
    _sum_parts_kernel[(heads, side_p * side_p // block_e)](part, d_rpb, n_parts, side, SIDE_P=side_p,
                                                           BLOCK_P=_SUM_BLOCK_P, BLOCK_E=block_e)
    return d_rpb


def _extra_splits(n_programs: int, n_queries: int, block_n: int, device: torch.device) -> int:
    """Splits of the queries for the extra keys' gradient kernel: enough programs to fill the GPU (two per
    multiprocessor), each split keeping at least four steps of queries."""
    if triton.knobs.runtime.interpret or device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(_cdiv(2 * sms, n_programs), n_queries // (4 * block_n)))


def _merge(config: Launch | None, block_n: int | None, num_warps: int | None, num_stages: int | None) -> Launch:
    config = config or Launch()
    return Launch(
        config.block_n if config.block_n is not None else block_n,
        config.num_warps if config.num_warps is not None else num_warps,
        config.num_stages if config.num_stages is not None else num_stages,
        config.block_m,
        config.maxnreg,
    )


def halo_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    rows: DeviceTables,
    cols: DeviceTables,
    scale: float,
    *,
    rpb: torch.Tensor | None = None,
    circle_radius: int | None = None,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    key_rows: DeviceTables | None = None,
    key_cols: DeviceTables | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    dq_launch: Launch | None = None,
    dkdv_launch: Launch | None = None,
    extra_launch: Launch | None = None,
    extra_splits: int | None = None,
    delta: torch.Tensor | None = None,
    table: bool = False,
    dq_rows: bool = False,
    dkdv_rows: bool = False,
    key_span: bool = False,
    rpb_grad: bool = False,
    rpb_grad_sum: str = "store",
    images_per_program: int | None = None,
    grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Backward launcher, arguments as :func:`halo_fwd` plus the forward's ``out`` and ``lse``.

    Three kernels, none of which adds into dq, dk or dv with atomics: the query-centric dq kernel, the key-centric
    dk/dv kernel over ``key_rows`` x ``key_cols`` and, with extra keys, their dense
    gradient kernel.

    Args:
        key_rows, key_cols: the key-tile tables of the two axes (from
            :func:`~vizattn.kernels._halo2d.tiles.build_key_axis_tiles`): for each tile of keys, the halo of the
            queries that see them, made with ``device_tables(..., key_tiles=True)``. In circle mode they default to
            ``rows`` and ``cols``: the disc is symmetric and the halos are shifted inward, so the forward's tables
            describe the queries around a key tile too. The NA window needs them.
        block_n, num_warps, num_stages: launch configuration shared by the three kernels on a GPU (None: 32 keys or
            queries per step, Triton's default of 4 warps, one stage).
        dq_launch, dkdv_launch, extra_launch: per-kernel overrides of those (and the extra keys per program).
        extra_splits: how many parts the queries are split into for the extra keys' gradients (None: enough programs
            to fill the GPU; 1 under the interpreter).
        delta: optional float32 tensor of lse's shape and strides that receives ``rowsum(grad_out * out)`` (the dq
            kernel writes it), for a caller whose own kernels read it afterwards; None allocates it here.
        table: NA mode only: the dq and dk/dv kernels read each pair's mask and bias from a table per class of tiles
            (:func:`bias_table`; one for each kernel's tiles), when not too large.
        dq_rows: NA mode: the dq kernel walks the halo by whole rows, as the forward (:func:`_halo_rows_fwd`; its
            bias table, if any, then laid out by padded halo rows), when a step holds at least one padded halo row.
        dkdv_rows: NA mode: the dk/dv kernel walks its halo of queries by whole rows likewise.
        key_span: NA mode, with ``dkdv_rows``: the dk/dv kernel walks only the halo rows that pair with its keys
            (whole steps of them; see :func:`_key_tile_span`), not the whole halo.
        rpb_grad: NA mode with rpb: also return d(rpb), as a sixth element, when the dq kernel reads a bias table (it
            then sums each pair's score gradients over ``images_per_program`` images, see ``TABLE_GRAD`` of
            :func:`_halo_dq_kernel`); None there when no table was built (too large), for the caller to compute.
        rpb_grad_sum: with ``rpb_grad``: how a dq program sums its images, ``"store"`` (load, add, store),
            ``"atomic"`` (float32 atomic adds into its own zeroed block: deterministic too, see ``ADD_ATOMIC``) or
            ``"first-store"`` (a store in its first image, atomic adds after it).
        images_per_program: with ``rpb_grad``: images per dq program (None: :func:`_images_per_program`).
        grads: optional (dq, dk, dv) to write the gradients into, of q's, k's and v's shapes and dtypes, any strides
            (e.g. the slices of one packed qkv gradient); None allocates them.

    Returns:
        (dq, dk, dv, d_extra_k, d_extra_v) in the dtypes of their inputs; the last two are None when their inputs are
        None (empty tensors when M = 0); with ``rpb_grad`` then d(rpb) or None. Without it d(rpb) is not computed here
        (NA: :mod:`vizattn.kernels.na2d.rpb_grad`, from ``delta``). Deterministic on a given GPU: every element is
        written once by one program, or summed over a fixed number of parts in a fixed order.
    """
    circle = circle_radius is not None
    if rpb_grad_sum not in _TABLE_GRAD_LAUNCH:
        raise ValueError(f"halo_bwd: rpb_grad_sum must be one of {tuple(_TABLE_GRAD_LAUNCH)}, got {rpb_grad_sum!r}.")
    if key_rows is None or key_cols is None:
        if not circle:
            raise ValueError("halo_bwd: the NA window needs the key-tile tables key_rows and key_cols.")
        key_rows, key_cols = rows, cols
    if not circle and (rows.key_tiles or cols.key_tiles or not key_rows.key_tiles or not key_cols.key_tiles):
        raise ValueError("halo_bwd: the NA window needs query-tile tables rows, cols and key-tile tables key_rows, "
                         "key_cols (device_tables(..., key_tiles=True)).")
    b, hh, ww, heads, _ = q.shape
    grad_out = grad_out.contiguous()
    if delta is None:
        delta = new_output(tuple(lse.shape), torch.float32, q.device)  # rowsum(dO * O), written by the dq kernel
    if grads is None:
        grads = tuple(new_output(tuple(t.shape), t.dtype, t.device) for t in (q, k, v))
    elif any(g.shape != t.shape or g.dtype != t.dtype or g.device != t.device for g, t in zip(grads, (q, k, v))):
        raise ValueError("halo_bwd: grads must match q, k and v in shape, dtype and device, got "
                         f"{[(tuple(g.shape), g.dtype, str(g.device)) for g in grads]}.")
    dq, dk, dv = grads
    has_rpb = rpb is not None
    rpb_t = rpb.contiguous() if has_rpb else q  # placeholder, never read
    rpb_side = rpb_t.shape[-1] if has_rpb else 1
    ek, ev, n_extra = _extras(q, extra_k, extra_v)
    qk_scale = scale * _LOG2E
    radius_sq = (circle_radius or 0) ** 2

    cfg = _merge(dq_launch, block_n, num_warps, num_stages)
    meta = _launch_meta(q, v, rows, cols, cfg.block_n, cfg.num_warps, cfg.num_stages, cfg.maxnreg)
    walk = _rows_meta(cols.halo, q.shape[-1], v.shape[-1], dq_rows)
    halo_wp = walk["HALO_WP"] if not circle and 0 < walk["HALO_WP"] <= meta["BLOCK_N"] else 0  # as the forward's
    tab = bias_table(rows, cols, rpb, meta["BLOCK_M"], meta["BLOCK_N"], halo_wp) if table and not circle else None
    tab_t, win_h, win_w, side = _table_args(rows, cols, rpb_t, rpb_side, tab)
    tab_t, circle_dot = _circle_mask_args(rows, cols, meta["BLOCK_N"], circle_radius, tab_t)
    dist16 = _dist16(rows, cols, circle_dot)
    n_tiles = rows.n_tiles * cols.n_tiles
    table_grad = rpb_grad and has_rpb and tab is not None
    images, dtab = 1, dq  # dtab: a placeholder, never read without a table gradient
    if table_grad:
        block = rows.tile * cols.tile * rows.halo * cols.halo
        images = images_per_program or _images_per_program(b, n_tiles * heads, 4 * block,
                                                           *_TABLE_GRAD_LAUNCH[rpb_grad_sum])
        shape = (cols.n_tiles, _cdiv(b, images) * heads, rows.n_tiles, rows.tile, rows.halo, cols.tile, cols.halo)
        dtab = (torch.zeros(shape, dtype=torch.float32, device=q.device) if rpb_grad_sum == "atomic"
                else new_output(shape, torch.float32, q.device))
    _halo_dq_kernel[(n_tiles, _cdiv(b, images) * heads)](
        q, k, v, ek, ev, grad_out, out, lse, delta, tab_t, dq, dtab, *rows[:3], win_h, *cols[:3], win_w,
        *q.stride(), *k.stride(), *v.stride(), *_strides4(ek, n_extra > 0), *_strides4(ev, n_extra > 0),
        *grad_out.stride(), *out.stride(), *lse.stride(), *dq.stride(),
        heads, cols.n_tiles, q.shape[-1], v.shape[-1], n_extra, qk_scale, scale, side, radius_sq, b, images,
        HAS_RPB=has_rpb, CIRCLE=circle, HAS_EXTRA=n_extra > 0, TABLE=tab is not None, TABLE_ALIGN=_table_align(),
        ROW_I32=_row_i32(k, v), TABLE_GRAD=table_grad, ADD_ATOMIC=table_grad and rpb_grad_sum != "store",
        FIRST_STORE=table_grad and rpb_grad_sum == "first-store",
        ALIGN_LOG2=_align_log2(q, k, v, ek, ev, grad_out, out, dq), CIRCLE_DOT=circle_dot, DIST16=dist16,
        **walk, **meta,
    )
    cfg = _merge(dkdv_launch, block_n, num_warps, num_stages)
    meta = _launch_meta(q, v, key_rows, key_cols, cfg.block_n, cfg.num_warps, cfg.num_stages, cfg.maxnreg)
    walk = _rows_meta(key_cols.halo, q.shape[-1], v.shape[-1], dkdv_rows and not circle)
    halo_wp = walk["HALO_WP"] if 0 < walk["HALO_WP"] <= meta["BLOCK_N"] else 0  # as the kernel's test
    tab = None
    if table and not circle:
        tab = bias_table(key_rows, key_cols, rpb, meta["BLOCK_M"], meta["BLOCK_N"], halo_wp)
    tab_t, win_h, win_w, side = _table_args(key_rows, key_cols, rpb_t, rpb_side, tab)
    tab_t, circle_dot = _circle_mask_args(key_rows, key_cols, meta["BLOCK_N"], circle_radius, tab_t)
    dist16 = _dist16(key_rows, key_cols, circle_dot)
    off_i32 = circle_dot and _offsets_i32(q, grad_out, lse, delta)
    _halo_dkdv_kernel[(key_rows.n_tiles * key_cols.n_tiles, b * heads)](
        q, k, v, grad_out, lse, delta, tab_t, dk, dv, key_rows.window, *key_rows[:3], win_h, *key_cols[:3], win_w,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *lse.stride(), *dk.stride(), *dv.stride(),
        heads, key_cols.n_tiles, q.shape[-1], v.shape[-1], qk_scale, scale, side, radius_sq,
        HAS_RPB=has_rpb, CIRCLE=circle, TABLE=tab is not None, TABLE_ALIGN=_table_align(),
        ROW_I32=_row_i32(q, grad_out) and _row_i32(lse, delta), SPAN=key_span and not circle,
        ALIGN_LOG2=_align_log2(q, k, v, grad_out, dk, dv), CIRCLE_DOT=circle_dot, DIST16=dist16,
        OFF_I32=off_i32, **walk, **meta,
    )
    if extra_k is None:
        d_extra = (None, None)
    elif n_extra == 0:
        d_extra = (torch.zeros_like(extra_k), torch.zeros_like(extra_v))
    else:
        cfg = _merge(extra_launch, block_n, num_warps, num_stages)
        meta = _launch_meta(q, v, rows, cols, cfg.block_n, cfg.num_warps, cfg.num_stages)
        block_e = cfg.block_m or (_BLOCK_E_INTERPRET if triton.knobs.runtime.interpret else _BLOCK_E)
        n_blocks = _cdiv(n_extra, block_e)
        splits = extra_splits or _extra_splits(n_blocks * b * heads, hh * ww, meta["BLOCK_N"], q.device)
        per_split = _cdiv(_cdiv(hh * ww, splits), meta["BLOCK_N"]) * meta["BLOCK_N"]
        splits = _cdiv(hh * ww, per_split)  # no empty split
        dek = new_output((splits, *ek.shape), torch.float32, q.device)
        dev = new_output((splits, *ev.shape), torch.float32, q.device)
        _extra_dkdv_kernel[(n_blocks, b * heads, splits)](
            q, ek, ev, grad_out, lse, delta, dek, dev,
            *q.stride(), *ek.stride(), *ev.stride(), *grad_out.stride(), *lse.stride(), *dek.stride(), *dev.stride(),
            heads, ww, hh * ww, per_split, q.shape[-1], v.shape[-1], n_extra, qk_scale, scale,
            BLOCK_E=block_e, BLOCK_N=meta["BLOCK_N"], **_head_blocks(q.shape[-1], v.shape[-1]),
            DOT_PRECISION=meta["DOT_PRECISION"], ALIGN_LOG2=_align_log2(q, ek, ev, grad_out, dek, dev),
            num_stages=meta["num_stages"],
            **({"num_warps": meta["num_warps"]} if "num_warps" in meta else {}),
        )
        d_extra = (dek.sum(0).to(extra_k.dtype), dev.sum(0).to(extra_v.dtype))
    if not rpb_grad:
        return dq, dk, dv, *d_extra
    d_rpb = _pair_grads_to_rpb(dtab, heads, rows, cols, rpb_side, rpb.dtype) if table_grad else None
    return dq, dk, dv, *d_extra, d_rpb
