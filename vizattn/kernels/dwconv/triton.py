"""Triton kernels of the depthwise 'same' convolution and of LKA's fused spatial op, NCHW and NHWC, with launchers.

Layouts. Every kernel addresses a map through its element strides (batch, channel, row, column), so one kernel serves
both memory formats, and an output or gradient is allocated in its input's format. The launchers choose the tile
(here the forward's; the weight gradient's programs own strips of columns, see Backward):

- NCHW (contiguous): a program owns a 16 x 16 pixel tile of one (image, channel) plane (``BLOCK_C = 1``). A tap
  shifts the tile by a column offset that is not a multiple of the vector width, so its loads are scalar (2 bytes in
  bf16): this is the compatible layout, not the fast one.
- NHWC (channels_last): a program owns a pixel tile times a block of ``BLOCK_C`` channels; a pixel's channels are
  contiguous whatever the tap, so loads are 16-byte vectors (when C is a multiple of 8), and each tap's weights are
  one contiguous ``BLOCK_C`` vector (weights are passed tap-major, ``(k * k, C)``).

Row-walking kernels (NHWC maps, k <= 9, the default there for the forward, the input gradient and the weight
gradient; :func:`_dw_rows_fwd_kernel`, :func:`_dw_rows_wgrad_kernel`). A program owns a strip of 8 columns (4 for
k <= 3) and a block of channels, one channel per thread, and walks down the rows of one dilation phase (at dilation d
an output row reads only the input rows of its own residue mod d). Every value is a (BLOCK_C,) vector of one pixel,
held in a tuple, so shifting between taps is a choice of register instead of a load: each input row's ``8 + (k - 1)
* d`` pixels are loaded once and serve the k output rows they reach (forward: k rotating rows of accumulators; weight
gradient: the k rows of dy they meet, with the ``k * k`` per-channel sums in registers), and the forward's weights
are loaded once per program. Per output and tap that leaves one FMA and a fraction of a load: sm_90 runs 756
instructions per input row for 392 FMAs at k = 7, d = 3 (the tile kernel below: 232 instructions per output). H200,
bf16, B64 56x56 C64, CUDA-graph time: forward 7x7 d3 0.089 ms (tiles 0.134, cuDNN NHWC 1.266), 5x5 0.061 (0.071,
0.077); backward 7x7 d3 0.219 (tiles 0.527).

Tile kernels (NCHW maps, larger kernels). Single convolution, forward: accumulate the ``k * k`` shifted, masked input
tiles times their tap weights in float32
(zero padding = masked loads; neighbouring taps overlap, so after the first taps the loads mostly hit L1). How much of
the tap loop is unrolled depends on the layout and k (see ``_unroll``): enough for the loads of several taps to be in
flight, not so much that they spill registers.

Backward: the input gradient is the same convolution of ``grad_out`` with the spatially flipped kernel (stride 1,
symmetric padding), so it runs the forward kernel. The weight and bias gradients are per-channel reductions over
(B, H, W) of ``dy * x`` shifted by each tap (and of ``dy``). A program owns a strip of columns, a block of channels
and a chunk of up to 64 taps, and reduces a run of the batch's ``B * H`` rows (runs may cross images): it keeps one
float32 accumulator per (tap, column, channel) in registers, and per row loads the dy strip once and the chunk's
``k * k`` shifted x strips as one gathered load, multiplying elementwise. Threads exchange data only once, in the
sum over columns after the last row, which gives one float32 partial sum per (tap, channel), written to a row of a
buffer (about 12 programs per SM, a few MB) that the launcher sums in a fixed order: deterministic, no atomics. The
bias gradient rides in a padded tap slot whose masked load reads one instead of zero. bfloat16 NHWC maps with an
even C are read as uint32 pairs of channels, widened by one integer instruction per value. Per row and thread (k = 7,
bfloat16 NHWC, 64 taps x 8 columns x 16 channels, 8 warps): 5 vector loads, 32 FMAs (49 of each 64 taps real) in a
loop of 122 sm_90 instructions, 80 registers: about 5 instructions per real product. The previous kernel (a
cross-thread ``tl.sum`` per tap, 49 per 16x16 tile) took 1304 per kernel row of 7 taps, 112 products per thread
(11.6 each), 42 of them barriers and 392 shuffles.

LKA spatial op (``conv1(conv0(x))``, two depthwise convs, VAN's 5x5 then 7x7 dilation 3), forward fused: a persistent
program takes work items (image, band of output rows, channel block) in turn. For each it computes conv0 over the
band plus the ``halo = d1 * (k1 - 1) / 2`` rows above and below that conv1 reaches (9 for VAN), across the full width
(outside the image the intermediate is conv1's zero padding, so no column halo is needed), stores it in the
program's own scratch slot in the input's dtype (the rounding two separate convs apply), synchronises the program's
threads and computes conv1 from the slot. The slot is reused by every work item of the program and holds one band
(about 100 KB for a 56x56 map and 16 bf16 channels), so it stays in L1/L2: unlike two calls, the intermediate never
makes a round trip through HBM. Bands overlap by the halo rows, which are recomputed; the launcher takes the whole
map as one band when its slot fits a budget (VAN's 56x56 maps and smaller). The backward recomputes the
intermediate with the single-conv forward and runs the single-conv backward twice.

What bounds the tile kernels: each tap reloads its shifted tile (from L1 after the first taps), so the L1 traffic per
output is ``k * k`` loads, 2 bytes each in bf16 NHWC: about 50 bytes for 5x5 and 100 for 7x7, where HBM needs 4.
Triton has no cheap way to shift a tile held in registers (``tl.gather`` goes through shared memory, whose bandwidth
is L1's), so a load does not serve several taps; the row-walking kernels above avoid the shift by holding pixels as
separate vectors. At roughly 33 TB/s of L1 bandwidth on an H200 that estimates 19 us (5x5) and 38 us (7x7 dilation 3)
at B64 C64 56x56, and about 57 us for the fused op (25 + 49 loads per output), all above the HBM floor of 12 us.

The tile sizes and launch budgets below come from sm_90 compile reports (registers, spills, instruction counts); of
them only the weight gradient's channel block was tuned on a GPU. On an H200 (bf16 channels_last, VAN-B2's 7x7
dilation-3 convs, B128 training) the weight gradient above takes 6.1 ms per step against 12.6 ms for the previous
kernel (a cross-thread sum per tap and tile), and ``tools/benchmark.py``'s 14x14-c320-k7d3 forward+backward 0.216 ms
of kernel time against 0.329 (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vizattn.kernels._alloc import new_output
from vizattn.kernels._triton_util import cdiv as _cdiv
from vizattn.kernels._triton_util import next_pow2 as _next_pow2
from vizattn.kernels._triton_util import sm_count as _sm_count
from vizattn.kernels.dwconv.layout import ROWS_MAX_K, ROWS_MAX_REACH, is_nhwc, rows_kernel_applies

__all__ = ["dwconv2d_fwd", "dwconv2d_bwd", "lka_spatial_fwd", "lka_spatial_bwd"]

# Fused LKA: largest scratch slot, in elements, for which a whole map is one band (a 56x56 map of 16 channels is
# 50176); above it bands are cut so that band + halo rows fit it, at the price of recomputing the halo rows.
_SLOT_BUDGET = 64 * 1024
# Fused LKA: persistent programs per SM (each holds one slot), and how many programs run under the interpreter.
_PROGRAMS_PER_SM = 4
_INTERPRETER_PROGRAMS = 4
# Weight gradient, NHWC: channels per program (16: 32 bytes of a 16-bit map per pixel, one sector). 32 or 64 touch
# fewer L1 lines per gathered load but narrow the column strips; on the H200 16 was the fastest at all four VAN-B2
# stage shapes (B128 k7 d3 backward: 1.09 / 0.54 / 0.34 / 0.17 ms against 1.11-1.11 / 0.60-0.65 / 0.39-0.41 /
# 0.19-0.21).
_WGRAD_CHANNELS = 16
# Weight gradient: float32 accumulator values per program (32 per thread with 8 warps), and programs per SM, a
# multiple of the 1 to 4 that fit an SM at once so that they run in whole waves; the programs of one (column strip,
# channel block, tap chunk) share the batch's rows in equal runs.
_WGRAD_ACC = 8192
_WGRAD_PROGRAMS_PER_SM = 12
# Forward of NHWC maps that the row-walking kernel takes (layout.rows_kernel_applies): 'rows' (walk each strip of
# columns down, an input row loaded once for k outputs) or 'tiles' (every tap reloads a shifted tile). Columns per
# strip by kernel size, warps per program, and programs per SM below which chains are cut into segments; on the H200
# (2026-11-29, bf16, VAN-B2's shapes at B128) 8 columns beat 4 for k 5 and 7 (7x7 d3 56x56 C64: 0.164 against 0.219
# ms) and 4 beat 8 for k 3 (56x56 C512: 0.398 against 0.416); 16 columns, 1 or 4 warps, 8 or 128 programs per SM,
# a prefetch of the next row, a register cap (maxnreg 168-208) and segments down to k rows were as fast or slower.
FWD_ALGO = "rows"
_ROWS_COLS = {1: 4, 3: 4}  # default 8
_ROWS_WARPS = 2
_ROWS_PROGRAMS_PER_SM = 32
# Where the weight and bias gradients come from: see _wgrad_source. Programs of the row-walking one: see
# _rows_wgrad_programs.
WGRAD = "auto"
_WGRAD_ROWS_PROGRAMS_PER_SM = 8
# Whether the row-walking weight gradient, where its programs would walk unequal numbers of whole chains (image, phase,
# strip: more chains than programs, and not a multiple of them), deals as many programs equal ranges of all strips'
# rows instead (``FLAT`` of :func:`_dw_rows_wgrad_kernel`). H200, B64 bf16 channels_last, CUDA-graph time of the
# weight gradient (2026-11-30 13:27 UTC, chains -> flat ranges, ms): 56x56 C64 7x7 d3 (1344 chains on 528 programs)
# 0.1157 -> 0.1053. 56x56 C64 5x5 keeps one chain per program: flat ranges on the 1003 programs its partial-sum share
# allows took 0.1063 against 0.0919.
WGRAD_FLAT = True
# Whether the row-walking kernels get the column stride (C of a channels_last map) as a compile-time constant (one
# compile per channel count; False passes it at run time). sm_90 compile of the forward at C 64, bf16: 7x7 d3 248 ->
# 189 registers and 879 -> 795 instructions per input row, 5x5 496 -> 445 instructions at 127 -> 128 registers (5
# programs of 2 warps per SM instead of 4 at 7x7). H200, B64 bf16 channels_last, CUDA-graph time (2026-11-30 10:01
# UTC, run-time -> constant stride, ms): 56x56 C64 5x5 0.0623 -> 0.0546, 7x7 d3 0.0890 -> 0.0828, LKA's two convs
# 0.151 -> 0.137, 7x7 d3 forward+backward 0.302 -> 0.282; 28x28 C128 5x5 0.0386 -> 0.0269, 7x7 d3 0.0448 -> 0.0407;
# 14x14 C320 5x5 0.0213 -> 0.0211, 7x7 d3 0.0317 -> 0.0292.
ROWS_CONST_STRIDE = True
# Whether the row-walking forward splits its walk down a segment into three loops: the input rows that reach output
# rows outside the segment (its first and last k - 1), each output row tested, and the rows between, whose products
# all land inside it and need no test. sm_90 (Triton 3.8, bf16, C 64) of that middle loop: 5x5 474 -> 416
# instructions per input row (the register moves of the accumulator rotation gone too), 7x7 d3 524 -> 469. H200, B64
# bf16 channels_last, CUDA-graph time (2026-11-30 10:47 UTC, one loop -> split, ms; bitwise the same outputs): 56x56
# C64 5x5 0.0554 -> 0.0537, 7x7 d3 0.0839 -> 0.0764, LKA's pair 0.138 -> 0.130, 7x7 d3 forward+backward 0.286 ->
# 0.270; 28x28 C128 1-3% faster, 14x14 C320 0-2%, 7x7 C512 7x7 d3 0.0175 -> 0.0166. Programs per SM of 16 or 64
# instead of 32 measured the same.
ROWS_SPLIT_LOOP = True
# Whether the row-walking forward, where its segment schedule (``_rows_segment``) cuts chains to have programs enough,
# deals out the batch's output rows in equal ranges instead, one per program, each walking the chains (image, phase)
# its range meets (``FLAT`` of :func:`_dw_rows_fwd_kernel`), as many programs as the SMs hold at once (read from the
# compiled kernel's registers after its first launch, cached in ``_ROWS_RESIDENT``). H200, B64 bf16 channels_last,
# CUDA-graph time (2026-11-30 13:07 UTC, segments -> flat ranges, ms; bitwise the same outputs): 56x56 C64 5x5 (chains
# cut in 5 segments) 0.0549 -> 0.0456, 28x28 C128 5x5 (2 segments) 0.0269 -> 0.0269; where the chains stay whole the
# flat ranges were slower (their halo rows are extra work, the tail of a second or third wave of whole chains is
# not): 56x56 C64 7x7 d3 0.0753 -> 0.0819, 28x28 C128 7x7 d3 0.0400 -> 0.0430, 14x14 C320 5x5 0.0207 -> 0.0235. Two
# or three waves of shorter ranges were slower still.
ROWS_FLAT = True
_ROWS_RESIDENT_GUESS = 4
# The row-walking weight gradient issues the loads of its next input and dy rows before the current row's products
# (where each phase's chain has at least 2k rows). H200, 2026-11-30 15:48, bf16 B64 channels_last, weight gradient
# alone, ms, without / with: 5x5 56x56 C64 0.0911 / 0.0787, 28x28 C128 0.0419 / 0.0397; 7x7 dilation 3 56x56 C64
# 0.1043 / 0.0945, 14x14 C320 (5-row chains) 0.0393 / 0.0415. (The forward's registers grew from 128 to 202-213 with
# the same prefetch, and it ran 3-28% slower at these shapes.)
WGRAD_PREFETCH = True
_ROWS_RESIDENT: dict[tuple, int] = {}
_WGRAD_ROWS_MIN_PER_SM = 4
_WGRAD_PARTIAL_SHARE = 8


@triton.jit
def _tap(acc, ptrs, ih, mh, ow, W, s_h, s_w, Wt, c, cm, C, i, j, K: tl.constexpr, DIL: tl.constexpr):
    """``acc (P, BLOCK_C) += Wt[i, j] * src[ih, ow + j*DIL - pad]`` (columns outside ``[0, W)`` read zero)."""
    iw = ow + (j * DIL - DIL * (K - 1) // 2)
    m = mh & (iw >= 0) & (iw < W)
    v = tl.load(ptrs + (ih * s_h + iw * s_w)[:, None], mask=m[:, None] & cm[None, :], other=0.0)
    wv = tl.load(Wt + (i * K + j) * C + c, mask=cm, other=0.0)
    return acc + v.to(tl.float32) * wv.to(tl.float32)[None, :]


@triton.jit
def _taps_row(
    acc,
    ptrs,
    oh,
    ow,
    pm,
    h_lo,
    h_hi,
    W,
    s_h,
    s_w,
    Wt,
    c,
    cm,
    C,
    i,
    K: tl.constexpr,
    DIL: tl.constexpr,
    STATIC_COLS: tl.constexpr,
):
    """``acc += sum_j Wt[i, j] * src[oh + i*DIL - pad, ow + j*DIL - pad]`` over row i of the kernel.

    ``ptrs`` (1, BLOCK_C) points at the source's channels; rows outside ``[h_lo, h_hi)`` read zero, and so do pixels
    outside the tile (``pm`` false), so a partial tile never reads past a map.
    """
    ih = oh + (i * DIL - DIL * (K - 1) // 2)
    mh = pm & (ih >= h_lo) & (ih < h_hi)
    if STATIC_COLS:
        for j in tl.static_range(K):
            acc = _tap(acc, ptrs, ih, mh, ow, W, s_h, s_w, Wt, c, cm, C, i, j, K, DIL)
    else:
        for j in range(K):
            acc = _tap(acc, ptrs, ih, mh, ow, W, s_h, s_w, Wt, c, cm, C, i, j, K, DIL)
    return acc


@triton.jit
def _conv_tile(
    ptrs,
    oh,
    ow,
    pm,
    h_lo,
    h_hi,
    W,
    s_h,
    s_w,
    Wt,
    c,
    cm,
    C,
    K: tl.constexpr,
    DIL: tl.constexpr,
    P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    UNROLL: tl.constexpr,
):
    """The (P, BLOCK_C) float32 depthwise convolution at pixels (oh, ow) of the source at ``ptrs`` (no bias).

    ``UNROLL``: 2 unrolls every tap, 1 loops over kernel rows (taps of a row unrolled), 0 loops over both. Full
    unrolling lets the compiler issue every load early, which costs one set of registers per tap in flight.
    """
    acc = tl.zeros((P, BLOCK_C), dtype=tl.float32)
    if UNROLL == 2:
        for i in tl.static_range(K):
            acc = _taps_row(acc, ptrs, oh, ow, pm, h_lo, h_hi, W, s_h, s_w, Wt, c, cm, C, i, K, DIL, True)
    else:
        for i in range(K):
            acc = _taps_row(acc, ptrs, oh, ow, pm, h_lo, h_hi, W, s_h, s_w, Wt, c, cm, C, i, K, DIL, UNROLL == 1)
    return acc


@triton.jit
def _dw_fwd_kernel(
    X,
    Wt,
    Bias,
    Y,
    C,
    H,
    W,
    s_b,
    s_c,
    s_h,
    s_w,
    K: tl.constexpr,
    DIL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    UNROLL: tl.constexpr,
):
    tile = tl.program_id(0)
    b = tl.program_id(1)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    n_tw = tl.cdiv(W, BLOCK_W)
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    oh = (tile // n_tw) * BLOCK_H + p // BLOCK_W
    ow = (tile % n_tw) * BLOCK_W + p % BLOCK_W
    pm = (oh < H) & (ow < W)
    # The image offset in int64 (B * C * H * W may pass 2**31); offsets inside one image stay int32.
    img = b.to(tl.int64) * s_b
    chan = c[None, :] * s_c
    src = X + img + chan
    acc = _conv_tile(src, oh, ow, pm, 0, H, W, s_h, s_w, Wt, c, cm, C, K, DIL, BLOCK_H * BLOCK_W, BLOCK_C, UNROLL)
    if HAS_BIAS:
        acc += tl.load(Bias + c, mask=cm, other=0.0).to(tl.float32)[None, :]
    out = Y + img + chan + (oh * s_h + ow * s_w)[:, None]
    tl.store(out, acc.to(Y.dtype.element_ty), mask=pm[:, None] & cm[None, :])


@triton.jit
def _col_stride(s_w, S_W: tl.constexpr):
    """The maps' column stride: ``S_W`` when the launcher passed it as a constant (``ROWS_CONST_STRIDE``: pixel
    addresses are then a base plus immediate offsets), else the runtime ``s_w``."""
    if S_W > 0:
        return S_W
    return s_w


@triton.jit
def _rows_fwd_step(accs, wts, zero, img, out_img, chan, bias, t, s0, s1, phase, interior, w0, W, s_h, s_w, cm,
                   K: tl.constexpr, DIL: tl.constexpr, COLS: tl.constexpr, SPAN: tl.constexpr, EVEN_C: tl.constexpr,
                   GUARD: tl.constexpr):
    """One input row ``t`` of :func:`_dw_rows_fwd_kernel`: load it, add its products into the accumulators of the
    ``K`` output rows it reaches (with ``GUARD``, only those inside the segment ``[s0, s1)``), store the completed
    row ``t - M`` and rotate the accumulators."""
    M: tl.constexpr = (K - 1) // 2
    xs = _row_span(img, chan, phase + t * DIL, interior, w0 - DIL * M, W, s_h, s_w, cm, SPAN, EVEN_C)
    new = ()
    for k in tl.static_range(K):
        s = t - M + k
        row_accs = accs[k * COLS : (k + 1) * COLS]
        if (not GUARD) or ((s >= s0) & (s < s1)):
            updated = ()
            for u in tl.static_range(COLS):
                acc = row_accs[u]
                for j in tl.static_range(K):
                    acc += xs[u + j * DIL] * wts[(K - 1 - k) * K + j]
                updated = updated + (acc,)
            row_accs = updated
        new = new + row_accs
    _store_cols(out_img, new, bias, t - M, s0, s1, phase, w0, W, s_h, s_w, cm, DIL, COLS)
    return new[COLS:] + (zero,) * COLS


@triton.jit
def _rows_fwd_segment(img, out_img, wts, bias, zero, chan, phase, s0, s1, n_chain, interior, w0, W, s_h, s_w, cm,
                      K: tl.constexpr, DIL: tl.constexpr, COLS: tl.constexpr, SPAN: tl.constexpr, EVEN_C: tl.constexpr,
                      SPLIT: tl.constexpr):
    """Output rows ``[s0, s1)`` of the chain of phase ``phase`` in one image (``img``, ``out_img``): see
    :func:`_dw_rows_fwd_kernel`."""
    M: tl.constexpr = (K - 1) // 2
    accs = (zero,) * (K * COLS)  # accs[k * COLS + u]: column w0 + u of the output of chain row t - M + k
    t_lo = tl.maximum(s0 - M, 0)
    t_hi = tl.minimum(s1 + M, n_chain)
    if SPLIT:
        # Input rows [body_lo, body_hi) reach only outputs inside the segment: no per-row guards there.
        body_lo = tl.minimum(tl.maximum(s0 + M, t_lo), t_hi)
        body_hi = tl.maximum(tl.minimum(s1 - M, t_hi), body_lo)
        for t in range(t_lo, body_lo):
            accs = _rows_fwd_step(accs, wts, zero, img, out_img, chan, bias, t, s0, s1, phase, interior, w0, W, s_h,
                                  s_w, cm, K, DIL, COLS, SPAN, EVEN_C, True)
        for t in range(body_lo, body_hi):
            accs = _rows_fwd_step(accs, wts, zero, img, out_img, chan, bias, t, s0, s1, phase, interior, w0, W, s_h,
                                  s_w, cm, K, DIL, COLS, SPAN, EVEN_C, False)
        for t in range(body_hi, t_hi):
            accs = _rows_fwd_step(accs, wts, zero, img, out_img, chan, bias, t, s0, s1, phase, interior, w0, W, s_h,
                                  s_w, cm, K, DIL, COLS, SPAN, EVEN_C, True)
    else:
        for t in range(t_lo, t_hi):
            accs = _rows_fwd_step(accs, wts, zero, img, out_img, chan, bias, t, s0, s1, phase, interior, w0, W, s_h,
                                  s_w, cm, K, DIL, COLS, SPAN, EVEN_C, True)
    # Outputs whose last input row lies below the map: complete once the chain ends.
    for k in tl.static_range(K - 1):
        _store_cols(out_img, accs[k * COLS :], bias, t_hi - M + k, s0, s1, phase, w0, W, s_h, s_w, cm, DIL, COLS)


@triton.jit
def _chain_piece(row, n_left, H, DIL: tl.constexpr):
    """The chain piece that starts at row ``row`` of an image-major, then phase-major, then chain-row order of the
    batch's ``B * H`` output rows and runs for at most ``n_left`` rows: (image, phase, first chain row, end chain row,
    chain length). The first ``H % DIL`` phases of an image hold ``H // DIL + 1`` rows, the others ``H // DIL``."""
    a = H // DIL
    r = H - a * DIL
    big = r * (a + 1)
    b = row // H
    u = row - b * H
    first = u < big
    phase = tl.where(first, u // (a + 1), r + (u - big) // tl.maximum(a, 1))
    s0 = tl.where(first, u - phase * (a + 1), u - big - (phase - r) * a)
    n_chain = a + (phase < r).to(tl.int32)
    return b, phase, s0, tl.minimum(n_chain, s0 + n_left), n_chain


@triton.jit
def _dw_rows_fwd_kernel(
    X,
    Wt,
    Bias,
    Y,
    C,
    H,
    W,
    s_b,
    s_c,
    s_h,
    s_w,
    seg_rows,
    n_segs,
    C_PAD,
    K: tl.constexpr,
    DIL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    COLS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    S_W: tl.constexpr = 0,
    SPLIT: tl.constexpr = False,
    FLAT: tl.constexpr = False,
):
    """Forward of an NHWC map down a strip of ``COLS`` columns: each input row loaded once, for ``K`` output rows.

    At dilation ``DIL`` an output row reads only input rows of its own phase (residue mod ``DIL``), ``K`` consecutive
    ones of the phase's chain. Program axis 1 picks the strip of columns ``[strip * COLS, +COLS)``, axis 2 the block of
    ``BLOCK_C`` channels (one per thread); axis 0 the output rows:

    - with ``FLAT`` (the flat schedule, see ``ROWS_FLAT``), the ``seg_rows`` rows ``[pid * seg_rows, +seg_rows)``
      of the batch's ``n_segs = B * H`` output rows, ordered by image, then phase, then chain row; a program walks
      each chain its range meets (a piece of one, whole ones, a piece of another), so programs get equal work
      wherever chains end;
    - else program (image * DIL * n_segs + phase * n_segs + seg) takes the segment ``[seg * seg_rows, +seg_rows)`` of
      the phase's chain.

    Every value is a (BLOCK_C,) vector of one pixel (tuples index the pixels, so a shift between taps is a choice of
    register, not a load): the ``K * K`` tap weights are loaded once, and each input row's ``COLS + (K - 1) * DIL``
    pixels once, then added, with each kernel row's taps, into the accumulators of the ``K`` output rows ``t - M ..
    t + M`` that input row ``t`` reaches (``M = (K - 1) // 2``); the first of them is then complete, stored, and the
    accumulators rotate. Input rows outside the map are skipped (zero padding), and so are the products of outputs
    outside the segment, whose ``K - 1`` halo input rows the neighbouring segments load again.
    """
    M: tl.constexpr = (K - 1) // 2
    s_w = _col_stride(s_w, S_W)
    PAD: tl.constexpr = DIL * M
    SPAN: tl.constexpr = COLS + (K - 1) * DIL  # input pixels of a row that the strip reads
    pid = tl.program_id(0)
    w0 = tl.program_id(1) * COLS
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    # Pointers: a scalar base (image, row, column) plus the thread's channel offset, so that a pixel's address is one
    # 32-bit offset from a uniform base.
    chan = c * s_c
    # Wt is (K * K, C_PAD) float32, zero-padded to whole channel blocks: unmasked loads.
    wts = ()
    for tap in tl.static_range(K * K):
        wts = wts + (tl.load(Wt + tap * C_PAD + c),)
    if HAS_BIAS:
        bias = tl.load(Bias + c, mask=cm, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
    zero = tl.zeros((BLOCK_C,), dtype=tl.float32)
    interior = (w0 >= PAD) & (w0 - PAD + SPAN <= W)  # the strip's loads need no column mask
    if FLAT:
        row = pid * seg_rows
        end = tl.minimum(row + seg_rows, n_segs)
        while row < end:
            b, phase, s0, s1, n_chain = _chain_piece(row, end - row, H, DIL)
            _rows_fwd_segment(X + b.to(tl.int64) * s_b, Y + b.to(tl.int64) * s_b + chan, wts, bias, zero, chan,
                              phase, s0, s1, n_chain, interior, w0, W, s_h, s_w, cm, K, DIL, COLS, SPAN, EVEN_C, SPLIT)
            row += s1 - s0
    else:
        seg = pid % n_segs
        phase = (pid // n_segs) % DIL
        b = pid // (n_segs * DIL)
        n_chain = tl.cdiv(H - phase, DIL)  # rows of this phase in the map
        s0 = seg * seg_rows
        s1 = tl.minimum(s0 + seg_rows, n_chain)
        _rows_fwd_segment(X + b.to(tl.int64) * s_b, Y + b.to(tl.int64) * s_b + chan, wts, bias, zero, chan, phase,
                          s0, s1, n_chain, interior, w0, W, s_h, s_w, cm, K, DIL, COLS, SPAN, EVEN_C, SPLIT)


@triton.jit
def _wgrad_loads(img, dimg, chan, phase, t, n_chain, interior, w0, H, W, s_h, s_w, cm, K: tl.constexpr,
                 DIL: tl.constexpr, COLS: tl.constexpr, SPAN: tl.constexpr, EVEN_C: tl.constexpr):
    """What :func:`_wgrad_piece` loads for input row ``t`` of a chain: dy row ``t + M`` (zero outside the chain) and
    the input row's ``SPAN`` pixels (map row ``H - 1`` where the row lies below the map: a prefetch for an empty
    piece, a phase with no rows when ``DIL > H``)."""
    M: tl.constexpr = (K - 1) // 2
    row = _dy_row(dimg, chan, phase, t + M, n_chain, w0, W, s_h, s_w, cm, DIL, COLS, EVEN_C)
    ih = tl.minimum(phase + t * DIL, H - 1)
    xs = _row_span(img, chan, ih, interior, w0 - DIL * M, W, s_h, s_w, cm, SPAN, EVEN_C)
    return row, xs


@triton.jit
def _wgrad_piece(dws, db, img, dimg, chan, phase, t0, t1, n_chain, w0, H, W, s_h, s_w, cm, K: tl.constexpr,
                 DIL: tl.constexpr, HAS_BIAS: tl.constexpr, COLS: tl.constexpr, EVEN_C: tl.constexpr,
                 PREFETCH: tl.constexpr):
    """Add the products of input rows ``[t0, t1)`` of a chain to the tap sums ``dws``, and dy rows ``[t0, t1)`` to
    ``db``: see :func:`_dw_rows_wgrad_kernel`."""
    M: tl.constexpr = (K - 1) // 2
    PAD: tl.constexpr = DIL * M
    SPAN: tl.constexpr = COLS + (K - 1) * DIL
    interior = (w0 >= PAD) & (w0 - PAD + SPAN <= W)
    # dy rows t0 - M .. t0 + M - 1 (zero outside the chain): the window before input row t0.
    window = ()
    for r in tl.static_range(K - 1):
        row = _dy_row(dimg, chan, phase, t0 + r - M, n_chain, w0, W, s_h, s_w, cm, DIL, COLS, EVEN_C)
        window = window + row
        if HAS_BIAS and r >= M:
            db += tl.where(t0 + r - M < t1, _row_sum(row, COLS), 0.0)
    if PREFETCH:
        next_dy, next_xs = _wgrad_loads(img, dimg, chan, phase, t0, n_chain, interior, w0, H, W, s_h, s_w, cm, K, DIL,
                                        COLS, SPAN, EVEN_C)
    for t in range(t0, t1):
        if PREFETCH:
            # This row's loads were issued an iteration ago; issue the next row's (the last row again past the
            # piece's end) before this row's products, so that their latency overlaps them.
            row, xs = next_dy, next_xs
            next_dy, next_xs = _wgrad_loads(img, dimg, chan, phase, tl.minimum(t + 1, t1 - 1), n_chain, interior, w0,
                                            H, W, s_h, s_w, cm, K, DIL, COLS, SPAN, EVEN_C)
        else:
            row, xs = _wgrad_loads(img, dimg, chan, phase, t, n_chain, interior, w0, H, W, s_h, s_w, cm, K, DIL, COLS,
                                   SPAN, EVEN_C)
        if HAS_BIAS:
            db += tl.where(t + M < t1, _row_sum(row, COLS), 0.0)
        window = window + row  # dy rows t - M .. t + M
        new = ()
        for i in tl.static_range(K):
            for j in tl.static_range(K):
                acc = dws[i * K + j]
                for u in tl.static_range(COLS):
                    # dy row s = t - M + (K - 1 - i) meets input row t through kernel row i.
                    acc += window[(K - 1 - i) * COLS + u] * xs[u + j * DIL]
                new = new + (acc,)
        dws = new
        window = window[COLS:]
    return dws, db


@triton.jit
def _dw_rows_wgrad_kernel(
    X,
    DY,
    DWP,
    DBP,
    C,
    H,
    W,
    s_b,
    s_c,
    s_h,
    s_w,
    n_strips,
    n_work,
    seg_rows,
    K: tl.constexpr,
    DIL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    COLS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    S_W: tl.constexpr = 0,
    FLAT: tl.constexpr = False,
    PREFETCH: tl.constexpr = False,
):
    """Partial weight and bias gradients of NHWC maps, walking strips of ``COLS`` columns down their phase's rows.

    ``dW[i, j] = sum dy[s, u] * x[s - M + i, u + j * DIL - PAD]`` over chain rows ``s`` and columns ``u`` (M, PAD and
    chains as in :func:`_dw_rows_fwd_kernel`). Program (p, channel block) walks its share of the chains: with
    ``FLAT`` (see ``WGRAD_FLAT``) the ``seg_rows`` rows ``[p * seg_rows, +seg_rows)`` of the ``n_work = strips * B * H``
    rows of all strips (strip-major, then as the forward's flat schedule), so that programs get equal work; else the
    whole chains of the work items (image, phase, strip) ``p, p + num_programs, ...`` (``n_work`` of them). Input row
    ``t`` of a piece ``[t0, t1)`` of a chain is loaded as its ``COLS + (K - 1) * DIL`` pixels and multiplied with the
    ``K`` rows of dy it meets (``s = t - M .. t + M``, kept in registers and rotated), each dy row loaded once per
    piece (a piece loads the ``K - 1`` dy rows around its ends again) and added to the bias sum if it lies in the
    piece. With ``PREFETCH`` (see ``WGRAD_PREFETCH``) the loads of input row ``t + 1`` and dy row ``t + 1 + M`` are
    issued before row ``t``'s products. The ``K * K`` float32 sums per channel stay in registers across the
    program's pieces and are written once, as row p of DWP (programs, K * K, C) and DBP (programs, C), which the
    launcher sums.
    """
    s_w = _col_stride(s_w, S_W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    chan = c * s_c
    zero = tl.zeros((BLOCK_C,), dtype=tl.float32)
    dws = (zero,) * (K * K)  # dws[i * K + j]
    db = zero
    if FLAT:
        n_rows = n_work // n_strips
        row = tl.program_id(0) * seg_rows
        end = tl.minimum(row + seg_rows, n_work)
        while row < end:
            strip = row // n_rows
            b, phase, t0, t1, n_chain = _chain_piece(row - strip * n_rows, end - row, H, DIL)
            w0 = strip * COLS
            dws, db = _wgrad_piece(dws, db, X + b.to(tl.int64) * s_b, DY + b.to(tl.int64) * s_b + w0 * s_w, chan,
                                   phase, t0, t1, n_chain, w0, H, W, s_h, s_w, cm, K, DIL, HAS_BIAS, COLS,
                                   EVEN_C, PREFETCH)
            row += t1 - t0
    else:
        for work in range(tl.program_id(0), n_work, tl.num_programs(0)):
            strip = work % n_strips
            phase = (work // n_strips) % DIL
            b = work // (n_strips * DIL)
            n_chain = tl.cdiv(H - phase, DIL)
            w0 = strip * COLS
            dws, db = _wgrad_piece(dws, db, X + b.to(tl.int64) * s_b, DY + b.to(tl.int64) * s_b + w0 * s_w, chan,
                                   phase, 0, n_chain, n_chain, w0, H, W, s_h, s_w, cm, K, DIL, HAS_BIAS, COLS,
                                   EVEN_C, PREFETCH)
    part = tl.program_id(0).to(tl.int64)
    for tap in tl.static_range(K * K):
        tl.store(DWP + (part * K * K + tap) * C + c, dws[tap], mask=cm)
    if HAS_BIAS:
        tl.store(DBP + part * C + c, db, mask=cm)


@triton.jit
def _dy_row(dimg, chan, phase, s, n_chain, w0, W, s_h, s_w, cm, DIL: tl.constexpr, COLS: tl.constexpr,
            EVEN_C: tl.constexpr):  # fmt: skip
    """Chain row ``s`` of dy at the strip's ``COLS`` columns (float32 (BLOCK_C,) vectors; zero outside the map)."""
    ok = (s >= 0) & (s < n_chain)
    row = dimg + (phase + s * DIL) * s_h
    out = ()
    for u in tl.static_range(COLS):
        m = ok & (w0 + u < W)
        if not EVEN_C:
            m = m & cm
        out = out + (tl.load(row + (chan + u * s_w), mask=m, other=0.0).to(tl.float32),)
    return out


@triton.jit
def _row_sum(row, COLS: tl.constexpr):
    total = row[0]
    for u in tl.static_range(1, COLS):
        total += row[u]
    return total


@triton.jit
def _row_span(img, chan, ih, interior, w_first, W, s_h, s_w, cm, SPAN: tl.constexpr, EVEN_C: tl.constexpr):
    """The ``SPAN`` pixels of row ``ih`` from column ``w_first`` on, each a float32 (BLOCK_C,) vector; columns outside
    ``[0, W)`` and channels outside the map read zero. ``interior``: every column is inside the map (the loads then
    skip the column test)."""
    row = img + ih * s_h + w_first * s_w
    if interior:
        xs = _load_span(row, chan, w_first, W, s_w, cm, SPAN, EVEN_C, False)
    else:
        xs = _load_span(row, chan, w_first, W, s_w, cm, SPAN, EVEN_C, True)
    return xs


@triton.jit
def _load_span(row, chan, w_first, W, s_w, cm, SPAN: tl.constexpr, EVEN_C: tl.constexpr, COL_MASK: tl.constexpr):
    xs = ()
    for v in tl.static_range(SPAN):
        ptr = row + (chan + v * s_w)
        if COL_MASK:
            m = (w_first + v >= 0) & (w_first + v < W)
            if not EVEN_C:
                m = m & cm
            x = tl.load(ptr, mask=m, other=0.0)
        elif EVEN_C:
            x = tl.load(ptr)
        else:
            x = tl.load(ptr, mask=cm, other=0.0)
        xs = xs + (x.to(tl.float32),)
    return xs


@triton.jit
def _store_cols(dst, accs, bias, s, s0, s1, phase, w0, W, s_h, s_w, cm, DIL: tl.constexpr, COLS: tl.constexpr):
    """Store ``accs[:COLS] + bias`` as the strip's pixels of chain row ``s``, if it lies in ``[s0, s1)``."""
    row = dst + (phase + s * DIL) * s_h
    ok = (s >= s0) & (s < s1)
    for u in tl.static_range(COLS):
        out = accs[u] + bias
        tl.store(row + (w0 + u) * s_w, out.to(dst.dtype.element_ty), mask=cm & ok & (w0 + u < W))


@triton.jit
def _bf16_pairs(v):
    """uint32 words each holding two bfloat16 (little-endian: the even channel low) -> (even, odd) in float32.

    One integer instruction per value (a shift, a mask): ``.to(tl.float32)`` of a bfloat16 takes two for the value in
    the high half of a register.
    """
    return (v << 16).to(tl.float32, bitcast=True), (v & 0xFFFF0000).to(tl.float32, bitcast=True)


@triton.jit
def _dw_wgrad_kernel(
    X,
    DY,
    DWP,
    DBP,
    C,
    H,
    W,
    s_b,
    s_c,
    s_h,
    s_w,
    n_rows,
    rows_per_prog,
    K: tl.constexpr,
    DIL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PAIRS: tl.constexpr,
    KK_CHUNK: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Partial weight and bias gradients of one run of rows, strip of columns, block of channels and chunk of taps.

    Program (split, strip, block * n_chunks + chunk) owns columns ``[strip * BLOCK_W, +BLOCK_W)``, BLOCK_C channel
    units, taps ``[chunk * KK_CHUNK, +KK_CHUNK)`` (flattened, ``i * K + j``) and the rows
    ``[split * rows_per_prog, +rows_per_prog)`` of the ``n_rows = B * H`` rows of the batch (a run may cross images).
    A unit is a channel, or with ``PAIRS`` (bfloat16 NHWC, C even) a uint32 word holding two adjacent channels: then
    ``C`` and the strides count words. It keeps a float32 (KK_CHUNK, BLOCK_W, BLOCK_C) accumulator (two with
    ``PAIRS``: even and odd channels). Each row loads its dy strip once and the chunk's shifted x strips as one
    gathered load (zero padding and padded taps are masked), and adds their products elementwise: threads exchange
    data only in the one reduction over columns after the last row. The bias gradient rides in padded tap slot
    ``K * K`` (in the last chunk: ``K * K`` is odd, so never a multiple of KK_CHUNK), whose masked load yields one
    instead of zero. Writes partial-sum row ``split * n_strips + strip`` of DWP (rows, K * K, channels) and DBP
    (rows, channels).
    """
    KK: tl.constexpr = K * K
    N_CHUNKS: tl.constexpr = (KK + KK_CHUNK - 1) // KK_CHUNK
    PAD: tl.constexpr = DIL * (K - 1) // 2
    if PAIRS:
        X = X.to(tl.pointer_type(tl.uint32))
        DY = DY.to(tl.pointer_type(tl.uint32))
    split = tl.program_id(0)
    strip = tl.program_id(1)
    u = tl.program_id(2) // N_CHUNKS * BLOCK_C + tl.arange(0, BLOCK_C)
    tap = tl.program_id(2) % N_CHUNKS * KK_CHUNK + tl.arange(0, KK_CHUNK)
    um = u < C
    ow = strip * BLOCK_W + tl.arange(0, BLOCK_W)
    pm = (ow < W)[:, None] & um[None, :]  # (BLOCK_W, BLOCK_C)
    pix = ow[:, None] * s_w + u[None, :] * s_c  # offsets of the strip's pixels in a row
    dh = tap // K * DIL - PAD
    dw = tap % K * DIL - PAD
    iw = ow[None, :] + dw[:, None]  # (KK_CHUNK, BLOCK_W)
    tm = (tap < KK)[:, None] & (iw >= 0) & (iw < W)
    # Offsets from a row's origin, and masks, of the chunk's shifted strips: loop invariants.
    x_off = (dh * s_h + dw * s_w)[:, None, None] + pix[None, :, :]
    xm = tm[:, :, None] & pm[None, :, :]
    if HAS_BIAS:
        if PAIRS:
            other = tl.where(tap == KK, 0x3F803F80, 0).to(tl.uint32)[:, None, None]  # bfloat16 1.0 twice
        else:
            other = tl.where(tap == KK, 1.0, 0.0).to(X.dtype.element_ty)[:, None, None]
    else:
        other = 0.0
    acc = tl.zeros((KK_CHUNK, BLOCK_W, BLOCK_C), dtype=tl.float32)
    acc_odd = tl.zeros((KK_CHUNK, BLOCK_W, BLOCK_C), dtype=tl.float32)
    # Row r is row oh of image r // H, stepped without a division per row. The image offset is int64
    # (B * C * H * W may pass 2**31); offsets inside one image stay int32.
    r0 = split * rows_per_prog
    oh = r0 % H
    row = (r0 // H).to(tl.int64) * s_b + oh * s_h
    for _ in range(r0, tl.minimum(r0 + rows_per_prog, n_rows)):
        hm = (oh + dh).to(tl.uint32) < H  # the tap's row is inside the image (rows above it wrap to large values)
        xv = tl.load(X + row + x_off, mask=xm & hm[:, None, None], other=other)
        dy = tl.load(DY + row + pix, mask=pm, other=0)[None, :, :]
        if PAIRS:
            dy_even, dy_odd = _bf16_pairs(dy)
            x_even, x_odd = _bf16_pairs(xv)
            acc += dy_even * x_even
            acc_odd += dy_odd * x_odd
        else:
            acc += dy.to(tl.float32) * xv.to(tl.float32)
        oh += 1
        row += tl.where(oh == H, s_b - (H - 1) * s_h, s_h)  # the next row, or the next image's first
        oh = tl.where(oh == H, 0, oh)
    # Slot KK (the bias) goes to DBP, the real taps to DWP.
    n_ch = 2 * C if PAIRS else C
    ch = 2 * u if PAIRS else u  # the (even) channel of a unit
    part = (split * tl.num_programs(1) + strip).to(tl.int64)
    slot = tap[:, None]
    dst = tl.where(slot < KK, DWP + part * (KK * n_ch) + slot * n_ch, DBP + part * n_ch) + ch[None, :]
    if HAS_BIAS:
        sm = (slot <= KK) & um[None, :]
    else:
        sm = (slot < KK) & um[None, :]
    tl.store(dst, tl.sum(acc, axis=1), mask=sm)
    if PAIRS:
        tl.store(dst + 1, tl.sum(acc_odd, axis=1), mask=sm)


@triton.jit
def _lka_fwd_kernel(
    X,
    W0t,
    B0,
    W1t,
    B1,
    Y,
    T,
    C,
    H,
    W,
    s_b,
    s_c,
    s_h,
    s_w,
    t_c,
    t_h,
    t_w,
    slot_size,
    band_h,
    n_bands,
    n_cb,
    n_work,
    K0: tl.constexpr,
    D0: tl.constexpr,
    K1: tl.constexpr,
    D1: tl.constexpr,
    HAS_B0: tl.constexpr,
    HAS_B1: tl.constexpr,
    CH_H: tl.constexpr,
    CH_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    UNROLL0: tl.constexpr,
    UNROLL1: tl.constexpr,
):
    pid = tl.program_id(0)
    halo = D1 * (K1 - 1) // 2
    P: tl.constexpr = CH_H * CH_W
    p = tl.arange(0, P)
    ph = p // CH_W
    pw = p % CH_W
    cl = tl.arange(0, BLOCK_C)
    # This program's scratch slot; slot row r holds intermediate row t0 + r of the current work item.
    slot = T + pid.to(tl.int64) * slot_size + cl[None, :] * t_c
    for work in range(pid, n_work, tl.num_programs(0)):
        # Consecutive items are the channel blocks of one band, so programs running together read the same pixels.
        cb = work % n_cb
        band = (work // n_cb) % n_bands
        b = work // (n_cb * n_bands)
        c = cb * BLOCK_C + cl
        cm = c < C
        img = b.to(tl.int64) * s_b
        chan = c[None, :] * s_c
        h0 = band * band_h
        h1 = tl.minimum(h0 + band_h, H)
        t0 = tl.maximum(h0 - halo, 0)
        t1 = tl.minimum(h1 + halo, H)
        # Phase 1: the intermediate conv0(x) + b0 on rows [t0, t1), every column, into the slot.
        for r0 in range(t0, t1, CH_H):
            for w0 in range(0, W, CH_W):
                th = r0 + ph
                tw = w0 + pw
                pm = (th < t1) & (tw < W)
                acc = _conv_tile(
                    X + img + chan, th, tw, pm, 0, H, W, s_h, s_w, W0t, c, cm, C, K0, D0, P, BLOCK_C, UNROLL0
                )
                if HAS_B0:
                    acc += tl.load(B0 + c, mask=cm, other=0.0).to(tl.float32)[None, :]
                dst = slot + ((th - t0) * t_h + tw * t_w)[:, None]
                tl.store(dst, acc.to(T.dtype.element_ty), mask=pm[:, None] & cm[None, :])
        # Every thread's part of the slot is written before any thread reads its neighbours' part.
        tl.debug_barrier()
        # Phase 2: conv1 over the slot for output rows [h0, h1). In slot coordinates the image's rows are
        # [-t0, H - t0); the rows an output of this band reaches inside the image all lie in [t0, t1).
        for r0 in range(h0, h1, CH_H):
            for w0 in range(0, W, CH_W):
                oh = r0 + ph
                ow = w0 + pw
                pm = (oh < h1) & (ow < W)
                acc = _conv_tile(
                    slot, oh - t0, ow, pm, -t0, H - t0, W, t_h, t_w, W1t, c, cm, C, K1, D1, P, BLOCK_C, UNROLL1
                )
                if HAS_B1:
                    acc += tl.load(B1 + c, mask=cm, other=0.0).to(tl.float32)[None, :]
                dst = Y + img + chan + (oh * s_h + ow * s_w)[:, None]
                tl.store(dst, acc.to(Y.dtype.element_ty), mask=pm[:, None] & cm[None, :])
        # The next work item overwrites the slot: every thread must be done reading it.
        tl.debug_barrier()


def _in_layout(t: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)


def _new_map(shape: torch.Size, dtype: torch.dtype, device: torch.device, nhwc: bool) -> torch.Tensor:
    """An uninitialised (B, C, H, W) map in the given memory format (NaN-poisoned under VIZATTN_POISON_OUTPUTS)."""
    b, c, h, w = shape
    if nhwc:
        return new_output((b, h, w, c), dtype, device).permute(0, 3, 1, 2)
    return new_output((b, c, h, w), dtype, device)


def _tap_major(weight: torch.Tensor) -> torch.Tensor:
    """(C, 1, k, k) -> (k * k, C) contiguous: the weights of one tap for a channel block are one vector load."""
    return weight.reshape(weight.shape[0], -1).t().contiguous()


def _fwd_tile(nhwc: bool, c: int) -> tuple[int, int, int]:
    """(BLOCK_H, BLOCK_W, BLOCK_C) of the forward: about 2048 elements per program, 16 per thread with 4 warps."""
    if not nhwc:
        return 16, 16, 1
    block_c = min(_next_pow2(c), 32)
    pixels = min(max(2048 // block_c, 64), 256)
    block_h = 8 if pixels <= 128 else 16
    return block_h, pixels // block_h, block_c


def _wgrad_tile(nhwc: bool, pairs: bool, c: int, k: int, w: int) -> tuple[int, int, int, int]:
    """(KK_CHUNK, BLOCK_W, BLOCK_C, num_warps) of the weight gradient (BLOCK_C in units: channels, or pairs).

    Taps: chunks of at most 64, and at least ``k * k + 1`` when that fits (the bias slot). Channels: NHWC blocks of
    ``_WGRAD_CHANNELS``, NCHW one. Columns: as many as an accumulator of ``_WGRAD_ACC`` float32 values leaves room
    for, with a warp per 32 values a thread (at most 8 warps), but fewer (or more warps) when the dy strip
    (BLOCK_W x BLOCK_C units) would outnumber half the threads: in sm_90 compiles Triton then gives dy's load a layout
    of its own and converts it to the accumulator's through shared memory every row, where at or below half it loads
    dy straight in the accumulator's layout. For k = 7, bfloat16 NHWC: 64 taps x 8 columns x 16 channels, 8 warps,
    80 registers on sm_90 without spills, so 3 programs fit an SM.
    """
    kk_chunk = min(_next_pow2(k * k + 1), 64)
    if nhwc:
        lanes = min(_next_pow2(c), _WGRAD_CHANNELS)  # accumulated channels per (tap, column)
        block_c = lanes // 2 if pairs else lanes
    else:
        block_c = lanes = 1
    block_w = max(1, min(_WGRAD_ACC // (kk_chunk * lanes), _next_pow2(w)))
    while True:
        num_warps = max(1, min(8, kk_chunk * block_w * lanes // 1024))
        while block_w * block_c > 16 * num_warps and num_warps < 8:
            num_warps *= 2
        if block_w * block_c <= 16 * num_warps or block_w == 1:
            return kk_chunk, block_w, block_c, num_warps
        block_w //= 2


def _wgrad_pairs(nhwc: bool, *maps: torch.Tensor) -> bool:
    """Whether the weight gradient reads bfloat16 channels in uint32 pairs (NHWC, even C, 4-byte aligned maps)."""
    c = maps[0].shape[1]
    return nhwc and c % 2 == 0 and all(t.dtype == torch.bfloat16 and t.data_ptr() % 4 == 0 for t in maps)


def _unroll(nhwc: bool, k: int) -> int:
    """How much of the tap loop to unroll (``UNROLL`` of :func:`_conv_tile`), from sm_90 register reports.

    Unrolled taps let ptxas issue every tap's loads early, one set of registers per tap in flight. An NHWC thread
    holds a vector of channels per pixel: fully unrolled 7x7 taps take 255 registers and spill (133 with the rows
    looped, no spills), and a row of 31 unrolled taps spills too. An NCHW thread holds scalars: 5x5 unrolls in 48-56
    registers, but fully unrolled 7x7 spills in fp16 and 11x11 takes about 200 (rows looped: 32-40 up to 11x11, 80
    for 31x31 with a row unrolled).
    """
    if nhwc:
        return 1 if k <= 11 else 0
    return 2 if k <= 5 else 1


def _grid(x: torch.Tensor, block_h: int, block_w: int, block_c: int) -> tuple[int, int, int]:
    b, c, h, w = x.shape
    return _cdiv(h, block_h) * _cdiv(w, block_w), b, _cdiv(c, block_c)


def _rows_tile(c: int, w: int, k: int) -> tuple[int, int, int, int, int]:
    """(COLS, BLOCK_C, num_warps, strips, channel blocks) of the row-walking kernels: strips of ``_ROWS_COLS``
    columns, one channel per thread, up to ``_ROWS_WARPS`` warps."""
    cols = _ROWS_COLS.get(k, 8)
    block_c = min(_next_pow2(c), 32 * _ROWS_WARPS)
    return cols, block_c, max(1, block_c // 32), _cdiv(w, cols), _cdiv(c, block_c)


def _const_stride(x: torch.Tensor) -> int:
    """The row-walking kernels' ``S_W``: the column stride as a constant with ``ROWS_CONST_STRIDE``, else 0."""
    return x.stride(3) if ROWS_CONST_STRIDE and x.stride(3) > 0 else 0


def _rows_segment(n_chain: int, k: int, programs: int, device: torch.device) -> int:
    """Output rows of a phase's chain per program: whole chains, cut into segments (of at least ``2 * k`` rows, whose
    ``k - 1`` halo rows are loaded twice) while there are fewer than ``_ROWS_PROGRAMS_PER_SM`` programs per SM."""
    n_segs = _cdiv(_sm_count(device) * _ROWS_PROGRAMS_PER_SM, programs)
    n_segs = max(1, min(n_segs, n_chain // (2 * k)))
    return _cdiv(n_chain, n_segs)


def _resident_programs(compiled, num_warps: int) -> int | None:
    """Programs of ``num_warps`` warps that an SM holds at once, by the registers of ``compiled`` (what a launch
    returned; None under the interpreter): each of an SM's four schedulers has 16384 registers, given to warps in
    whole multiples of 256."""
    n_regs = getattr(compiled, "n_regs", None)
    if not n_regs:
        return None
    per_warp = _cdiv(n_regs * 32, 256) * 256
    return max(1, min(32, 64 // num_warps, 4 * (16384 // per_warp) // num_warps))


def _rows_flat_rows(n_rows: int, per_row_programs: int, resident: int | None, device: torch.device) -> int:
    """Output rows per program of the row-walking forward's flat schedule: the batch's ``n_rows`` split evenly over
    the programs that the SMs hold at once (``resident`` per SM, from the compiled kernel's registers;
    ``_ROWS_RESIDENT_GUESS`` until its first launch), ``per_row_programs`` (strips times channel blocks) programs
    sharing each range of rows."""
    resident = resident or _ROWS_RESIDENT_GUESS
    programs = max(1, _sm_count(device) * resident // per_row_programs)
    return _cdiv(n_rows, min(programs, n_rows))


def dwconv2d_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dilation: int,
    *,
    algo: str | None = None,
    seg_rows: int | None = None,
    flat_rows: int | None = None,
) -> torch.Tensor:
    """(B, C, H, W) x (dense, NCHW or channels_last), (C, 1, k, k) weight -> (B, C, H, W) in x's dtype and format.

    ``algo``: ``'rows'`` (NHWC maps, see :func:`~vizattn.kernels.dwconv.layout.rows_kernel_applies`:
    :func:`_dw_rows_fwd_kernel`) or ``'tiles'``
    (:func:`_dw_fwd_kernel`); by default rows where it applies (``FWD_ALGO``). ``seg_rows``: output rows of a phase's
    chain per program of the rows kernel's segment schedule, ``flat_rows``: output rows (of the batch's ``B * H``) per
    program of its flat schedule (tests use them to cut small maps; by default ``ROWS_FLAT`` picks the schedule).
    """
    nhwc = is_nhwc(x)
    x = _in_layout(x, nhwc)
    k = weight.shape[-1]
    y = _new_map(x.shape, x.dtype, x.device, nhwc)
    if x.numel() == 0:
        return y
    w = _tap_major(weight)
    rows_ok = rows_kernel_applies(x, k, dilation)
    algo = algo or (FWD_ALGO if rows_ok else "tiles")
    if algo not in ("rows", "tiles") or (algo == "rows" and not rows_ok):
        raise ValueError(
            f"algo={algo!r}: 'tiles', or 'rows' for channels_last maps with k <= {ROWS_MAX_K} and (k - 1) * dilation"
            f" <= {ROWS_MAX_REACH}"
        )
    if algo == "rows":
        bsz, c, h, wd = x.shape
        cols, block_c, num_warps, strips, blocks = _rows_tile(c, wd, k)
        n_chain = _cdiv(h, dilation)
        by_segments = _rows_segment(n_chain, k, bsz * dilation * strips * blocks, x.device)
        flat = flat_rows is not None or (ROWS_FLAT and seg_rows is None and by_segments < n_chain)
        const = dict(K=k, DIL=dilation, HAS_BIAS=bias is not None, COLS=cols, BLOCK_C=block_c,
                     EVEN_C=c % block_c == 0, S_W=_const_stride(x), SPLIT=ROWS_SPLIT_LOOP, FLAT=flat)
        key = (*const.items(), x.dtype, x.device)
        if flat:
            n_rows = bsz * h
            seg_rows = flat_rows or _rows_flat_rows(n_rows, strips * blocks, _ROWS_RESIDENT.get(key), x.device)
            grid0, n_segs = _cdiv(n_rows, seg_rows), n_rows
        else:
            seg_rows = seg_rows or by_segments
            n_segs = _cdiv(n_chain, seg_rows)
            grid0 = bsz * dilation * n_segs
        w_pad = w.new_zeros((k * k, blocks * block_c), dtype=torch.float32)
        w_pad[:, :c] = w
        compiled = _dw_rows_fwd_kernel[(grid0, strips, blocks)](
            x,
            w_pad,
            bias if bias is not None else w,
            y,
            c,
            h,
            wd,
            *x.stride(),
            seg_rows,
            n_segs,
            w_pad.shape[1],
            num_warps=num_warps,
            **const,
        )
        if flat and key not in _ROWS_RESIDENT:
            _ROWS_RESIDENT[key] = _resident_programs(compiled, num_warps)
        return y
    block_h, block_w, block_c = _fwd_tile(nhwc, x.shape[1])
    _dw_fwd_kernel[_grid(x, block_h, block_w, block_c)](
        x,
        w,
        bias if bias is not None else w,
        y,
        x.shape[1],
        x.shape[2],
        x.shape[3],
        *x.stride(),
        K=k,
        DIL=dilation,
        HAS_BIAS=bias is not None,
        BLOCK_H=block_h,
        BLOCK_W=block_w,
        BLOCK_C=block_c,
        UNROLL=_unroll(nhwc, k),
    )
    return y


def dwconv2d_bwd(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    dilation: int,
    needs_bias: bool,
    *,
    rows_per_program: int | None = None,
    rows_programs: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`dwconv2d_fwd`: (dx in x's dtype and format, dweight and dbias in the weight's dtype).

    The weight and bias gradients come from one of three sources (:func:`_wgrad_source`). ``grad_out`` may have any
    strides; it is brought to x's format once. ``rows_per_program``: rows of the batch (``B * H`` in all) each program
    of the tile weight-gradient kernel reduces (tests use it to cut small maps into several runs); by default enough
    runs for about ``_WGRAD_PROGRAMS_PER_SM`` programs per SM. ``rows_programs``: programs per channel block of the
    row-walking one (tests use it to give a program several work items).
    """
    nhwc = is_nhwc(x)
    x = _in_layout(x, nhwc)
    grad_out = _in_layout(grad_out, nhwc)
    dx = dwconv2d_fwd(grad_out, weight.flip(-1, -2), None, dilation)
    c = x.shape[1]
    k = weight.shape[-1]
    if x.numel() == 0:
        return dx, torch.zeros_like(weight), (weight.new_zeros(c) if needs_bias else None)
    source = _wgrad_source(x, k, dilation)
    if source == "rows":
        return (dx, *_rows_wgrad(grad_out, x, weight, dilation, needs_bias, programs=rows_programs))
    if source == "aten":
        pad = dilation * (k - 1) // 2
        _, dweight, dbias = torch.ops.aten.convolution_backward(
            grad_out, x, weight.to(x.dtype), [c] if needs_bias else None, [1, 1], [pad, pad], [dilation, dilation],
            False, [0, 0], c, [False, True, needs_bias],
        )  # fmt: skip
        return dx, dweight.to(weight.dtype), (dbias.to(weight.dtype) if needs_bias else None)
    bsz, _, h, w = x.shape
    pairs = _wgrad_pairs(nhwc, x, grad_out)
    kk_chunk, block_w, block_c, num_warps = _wgrad_tile(nhwc, pairs, c, k, w)
    units = c // 2 if pairs else c
    strips, blocks, chunks = _cdiv(w, block_w), _cdiv(units, block_c), _cdiv(k * k, kk_chunk)
    n_rows = bsz * h
    if rows_per_program is None:
        splits = _cdiv(_sm_count(x.device) * _WGRAD_PROGRAMS_PER_SM, strips * blocks * chunks)
        rows_per_program = _cdiv(n_rows, min(splits, n_rows))
    splits = _cdiv(n_rows, rows_per_program)
    dw_part = new_output((splits * strips, k * k, c), torch.float32, x.device)
    db_part = new_output((splits * strips, c), torch.float32, x.device) if needs_bias else dw_part
    s_b, s_c, s_h, s_w = x.stride()
    strides = (s_b // 2, s_c, s_h // 2, s_w // 2) if pairs else (s_b, s_c, s_h, s_w)  # in units
    _dw_wgrad_kernel[(splits, strips, blocks * chunks)](
        x,
        grad_out,
        dw_part,
        db_part,
        units,
        h,
        w,
        *strides,
        n_rows,
        rows_per_program,
        K=k,
        DIL=dilation,
        HAS_BIAS=needs_bias,
        PAIRS=pairs,
        KK_CHUNK=kk_chunk,
        BLOCK_W=block_w,
        BLOCK_C=block_c,
        num_warps=num_warps,
    )
    # contiguous, as the op's fake implementation (and torch.compile's stride checks) promise
    dweight = dw_part.sum(0).t().contiguous().view(weight.shape).to(weight.dtype)
    dbias = db_part.sum(0).to(weight.dtype) if needs_bias else None
    return dx, dweight, dbias


def _wgrad_source(x: torch.Tensor, k: int, dilation: int) -> str:
    """Where the weight and bias gradients come from (``WGRAD``, or by 'auto'): 'rows' (:func:`_dw_rows_wgrad_kernel`,
    the maps the row-walking forward takes), 'aten' (ATen's, cuDNN's, convolution backward) or 'tiles'
    (:func:`_dw_wgrad_kernel`, any map). 'auto' takes rows where they apply, else ATen for undilated convs of 16-bit
    CUDA maps, else tiles. H200, 2026-11-29 23:18, bf16 channels_last, CUDA-graph time of the backward (input
    gradient by the forward kernel, then the weight gradient) in ms, rows / tiles / ATen: 7x7 dilation 3 B64 56x56
    C64 0.219 / 0.527 / 1.300, B128 14x14 C320 0.203 / 0.276 / 0.883; 5x5 B64 56x56 C64 0.158 / 0.283 / 0.178; 3x3
    B128 56x56 C512 0.872 / 1.894 / 0.924. (Float32 maps stay off ATen: cuDNN may run them in TF32.)"""
    if WGRAD not in ("auto", "rows", "tiles", "aten"):
        raise ValueError(f"WGRAD={WGRAD!r}: 'auto', 'rows', 'tiles' or 'aten'")
    rows_ok = rows_kernel_applies(x, k, dilation)
    if WGRAD == "rows" and not rows_ok:
        raise ValueError(f"WGRAD='rows' takes channels_last maps with k <= {ROWS_MAX_K}, (k - 1) * dilation <= "
                         f"{ROWS_MAX_REACH}; got k = {k}, dilation = {dilation}")  # fmt: skip
    if WGRAD != "auto":
        return WGRAD
    return _wgrad_auto(x.is_cuda, x.dtype, dilation, rows_ok)


def _wgrad_auto(on_cuda: bool, dtype: torch.dtype, dilation: int, rows_ok: bool) -> str:
    """What ``WGRAD='auto'`` takes (see :func:`_wgrad_source`)."""
    if rows_ok:
        return "rows"
    if on_cuda and dilation == 1 and dtype in (torch.float16, torch.bfloat16):
        return "aten"
    return "tiles"


def _rows_wgrad_programs(n_work: int, blocks: int, c: int, k: int, map_bytes: int, device: torch.device) -> int:
    """Programs per channel block of the row-walking weight gradient.

    Each program writes one row of ``k * k * C`` float32 partial sums, so many programs on small maps write (and the
    launcher reads) more partial sums than maps: the count is the larger of ``_WGRAD_ROWS_MIN_PER_SM`` per SM over
    all channel blocks and as many as keep the partial sums to ``1 / _WGRAD_PARTIAL_SHARE`` of the maps' bytes, at
    most ``_WGRAD_ROWS_PROGRAMS_PER_SM`` per SM and channel block. On the H200 (23:47, bf16, backward of the weight
    alone, ms) this picks the fastest of the counts tried at each VAN-B2 shape: 7x7 d3 B128 14x14 C320 0.071 (8
    per SM and block: 0.136), 7x7 C512 0.031 (0.065), B64 56x56 C64 0.115 (0.123); 3x3 B128 56x56 C512 keeps 8 per
    SM and block (0.47; 4 per SM over the blocks: 1.05).
    """
    sms = _sm_count(device)
    by_traffic = map_bytes // (_WGRAD_PARTIAL_SHARE * k * k * c * 4)
    wanted = max(sms * _WGRAD_ROWS_MIN_PER_SM // blocks, by_traffic)
    return max(1, min(n_work, sms * _WGRAD_ROWS_PROGRAMS_PER_SM, wanted))


def _wgrad_prefetch(h: int, k: int, dilation: int) -> bool:
    """Whether the row-walking weight gradient prefetches rows (see ``WGRAD_PREFETCH``): where each phase's chain of
    an ``h``-row map has at least ``2 * k`` rows."""
    return WGRAD_PREFETCH and _cdiv(h, dilation) >= 2 * k


def _rows_wgrad(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    dilation: int,
    needs_bias: bool,
    programs: int | None,
    flat_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias gradients by :func:`_dw_rows_wgrad_kernel` (NHWC maps of the same strides). Whole chains on
    ``programs`` programs (by default :func:`_rows_wgrad_programs`), unless ``WGRAD_FLAT`` finds them unequally shared
    (or ``flat_rows`` asks for ranges of that many rows): then ranges of rows on as many programs."""
    bsz, c, h, w = x.shape
    k = weight.shape[-1]
    cols, block_c, num_warps, strips, blocks = _rows_tile(c, w, k)
    map_bytes = 2 * x.numel() * x.element_size()
    n_work = bsz * dilation * strips  # chains of all strips
    by_chains = programs or _rows_wgrad_programs(n_work, blocks, c, k, map_bytes, x.device)
    if flat_rows is not None or (WGRAD_FLAT and programs is None and n_work % by_chains):
        n_work = strips * bsz * h  # rows of all strips
        flat_rows = flat_rows or _cdiv(n_work, by_chains)
        programs = _cdiv(n_work, flat_rows)
    else:
        programs = by_chains
    dw_part = new_output((programs, k * k, c), torch.float32, x.device)
    db_part = new_output((programs, c), torch.float32, x.device) if needs_bias else dw_part
    _dw_rows_wgrad_kernel[(programs, blocks)](
        x,
        grad_out,
        dw_part,
        db_part,
        c,
        h,
        w,
        *x.stride(),
        strips,
        n_work,
        flat_rows or 0,
        K=k,
        DIL=dilation,
        HAS_BIAS=needs_bias,
        COLS=cols,
        BLOCK_C=block_c,
        EVEN_C=c % block_c == 0,
        S_W=_const_stride(x),
        FLAT=flat_rows is not None,
        PREFETCH=_wgrad_prefetch(h, k, dilation),
        num_warps=num_warps,
    )
    # contiguous, as the op's fake implementation (and torch.compile's stride checks) promise
    dweight = dw_part.sum(0).t().contiguous().view(weight.shape).to(weight.dtype)
    dbias = db_part.sum(0).to(weight.dtype) if needs_bias else None
    return dweight, dbias


def _max_programs(device: torch.device) -> int:
    if device.type != "cuda":
        return _INTERPRETER_PROGRAMS
    return _sm_count(device) * _PROGRAMS_PER_SM


def _lka_chunk(nhwc: bool, c: int) -> tuple[int, int, int]:
    """(CH_H, CH_W, BLOCK_C) of the fused LKA kernel: the pixel chunk each step computes, and the channel block.

    NHWC: 16 channels (32 bytes of bf16 per pixel: whole sectors) times 64 pixels, 8 elements per thread with 4 warps.
    NCHW: one channel, 16 rows of 32 pixels.
    """
    if not nhwc:
        return 16, 32, 1
    block_c = min(_next_pow2(c), 16)
    return min(1024 // (16 * block_c), 16), 16, block_c


def _band_rows(h: int, w: int, block_c: int, halo: int, ch_h: int) -> int:
    """Output rows per band: the whole map if its slot fits the budget, else as many as fit with the halo rows."""
    if h * w * block_c <= _SLOT_BUDGET:
        return h
    return max(ch_h, (_SLOT_BUDGET // (w * block_c) - 2 * halo) // ch_h * ch_h)


def lka_spatial_fwd(
    x: torch.Tensor,
    w0: torch.Tensor,
    b0: torch.Tensor | None,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    dilations: tuple[int, int],
    *,
    band_rows: int | None = None,
    programs: int | None = None,
) -> torch.Tensor:
    """Fused ``dwconv(dwconv(x, w0, b0, d0), w1, b1, d1)``: (B, C, H, W) in x's format -> the same, x's dtype.

    Args:
        x: (B, C, H, W), dense NCHW or channels_last.
        w0, w1: (C, 1, k0, k0) and (C, 1, k1, k1).
        b0, b1: (C,) or None.
        dilations: (d0, d1).
        band_rows: output rows per work item (tests use it to exercise bands on small maps); default from the budget.
        programs: persistent programs (default: SMs x 4 on a GPU).
    """
    nhwc = is_nhwc(x)
    x = _in_layout(x, nhwc)
    bsz, c, h, w = x.shape
    k0, k1 = w0.shape[-1], w1.shape[-1]
    halo = dilations[1] * (k1 - 1) // 2
    ch_h, ch_w, block_c = _lka_chunk(nhwc, c)
    band = band_rows or _band_rows(h, w, block_c, halo, ch_h)
    n_bands = _cdiv(h, band)
    n_cb = _cdiv(c, block_c)
    n_work = bsz * n_bands * n_cb
    n_prog = min(n_work, programs or _max_programs(x.device))
    slot_rows = min(h, band + 2 * halo)
    slot_size = slot_rows * w * block_c
    # Slot strides (channel, row, column): channels innermost for NHWC (vector loads, as from x), columns for NCHW.
    t_strides = (1, w * block_c, block_c) if nhwc else (1, w, 1)
    y = _new_map(x.shape, x.dtype, x.device, nhwc)
    if n_work == 0 or x.numel() == 0:
        return y
    scratch = new_output((n_prog * slot_size,), x.dtype, x.device)
    w0t, w1t = _tap_major(w0), _tap_major(w1)
    _lka_fwd_kernel[(n_prog,)](
        x,
        w0t,
        b0 if b0 is not None else w0t,
        w1t,
        b1 if b1 is not None else w1t,
        y,
        scratch,
        c,
        h,
        w,
        *x.stride(),
        *t_strides,
        slot_size,
        band,
        n_bands,
        n_cb,
        n_work,
        K0=k0,
        D0=dilations[0],
        K1=k1,
        D1=dilations[1],
        HAS_B0=b0 is not None,
        HAS_B1=b1 is not None,
        CH_H=ch_h,
        CH_W=ch_w,
        BLOCK_C=block_c,
        # Both convs unrolled in one body take all 255 registers even in NCHW (40 with their rows looped).
        UNROLL0=min(_unroll(nhwc, k0), 1),
        UNROLL1=min(_unroll(nhwc, k1), 1),
    )
    return y


def lka_spatial_bwd(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    w0: torch.Tensor,
    b0: torch.Tensor | None,
    w1: torch.Tensor,
    dilations: tuple[int, int],
    needs_b0: bool,
    needs_b1: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`lka_spatial_fwd`: (dx, dw0, db0, dw1, db1).

    Recomputes the intermediate (one forward call; it is rounded to x's dtype as in the forward), then runs the
    single-conv backward for conv1 (giving the intermediate's gradient) and for conv0.
    """
    mid = dwconv2d_fwd(x, w0, b0, dilations[0])
    dmid, dw1, db1 = dwconv2d_bwd(grad_out, mid, w1, dilations[1], needs_b1)
    dx, dw0, db0 = dwconv2d_bwd(dmid, x, w0, dilations[0], needs_b0)
    return dx, dw0, db0, dw1, db1
