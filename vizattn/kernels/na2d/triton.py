"""Triton launchers of 2-D neighborhood attention (NAT / DiNAT), forward and backward, with relative position bias.

The kernels are the tiled halo attention of :mod:`vizattn.kernels._halo2d.triton` in its window mode: a program owns
one query tile (``T_h x T_w`` queries of one dilation group, laid out by :func:`vizattn.kernels.na2d.tiles.axis_tiles`)
of one image and one head, walks the ``halo_h x halo_w`` keys around it in chunks, masks each pair by the query's
window along each axis (a run of halo slots, loaded once per program from the tables) and adds ``rpb[head, b_h, b_w]``,
whose per-axis index steps by one along that run. Nothing of size ``N * k * k`` is ever written.

The backward is split like FlashAttention-2's: a query-centric kernel writes ``dq`` (and ``delta = rowsum(dO * O)``),
and a key-centric one owns a tile of keys, walks the queries that see them (the transposed tables of
:func:`vizattn.kernels.na2d.tiles.key_axis_tiles`: a key near a border can be seen by more than ``k`` queries per
axis) and writes ``dk``, ``dv`` once. With a bias, ``d(rpb)`` comes from the dq kernel where it reads the bias from a
table (see ``BIAS_TABLE``): each of its programs runs one tile in several images and sums every (slot, halo slot) pair's
score gradient into a float32 block, which a binning kernel sums by bias index with one-hot products (``TABLE_GRAD`` of
:func:`vizattn.kernels._halo2d.triton.halo_bwd`). Where the table or those blocks would be too large, a third kernel,
:func:`vizattn.kernels.na2d.rpb_grad.na2d_rpb_grad_rows`, recomputes the scores of row tiles of queries on tensor cores
and sums their gradients per bias cell in registers. No program adds into another's sums: every gradient, ``d(rpb)``
included, is deterministic.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from vizattn.kernels._alloc import new_output
from vizattn.kernels._halo2d.triton import DeviceTables, Launch, _images_per_program, device_tables, halo_bwd, halo_fwd
from vizattn.kernels._triton_util import next_pow2 as _next_pow2
from vizattn.kernels.na2d.rpb_grad import ROW_TILE, na2d_rpb_grad, na2d_rpb_grad_rows
from vizattn.kernels.na2d.tiles import axis_tiles, key_axis_tiles

__all__ = ["na2d_fwd", "na2d_bwd", "KernelConfig", "launch_configs"]


class KernelConfig(NamedTuple):
    """Where one NA kernel runs on a GPU: its tile (queries, or keys for the dk/dv kernel, along H and W) and launch;
    for the forward, ``flat`` is the launch of its flat loop (dilated maps), ``launch`` that of its row-by-row loop
    (None: the same). ``caps``: the register caps (``maxnreg``) of the launch (the forward's row-by-row one) without
    and with rpb. ``rpb_tile``: the tile with rpb, ``flat_tile`` the tile on dilated maps (None: ``tile``).
    ``table_rows``: the dq kernel walks the halo by rows where it reads a bias table (else by flat chunks there; see
    ``DQ_ROW_TABLE``). ``key_rows``: the dk/dv kernel's launches (``launch`` is its flat walk's) for a walk of its
    query halo by whole rows, without and with rpb; None: flat only (see ``DKDV_ROWS``)."""

    tile: tuple[int, int]
    launch: Launch
    flat: Launch | None = None
    caps: tuple[int | None, int | None] = (None, None)
    rpb_tile: tuple[int, int] | None = None
    flat_tile: tuple[int, int] | None = None
    table_rows: bool = True
    key_rows: tuple[Launch | None, Launch | None] = (None, None)

    def tile_for(self, rpb: torch.Tensor | None, dilation: int = 1) -> tuple[int, int]:
        """The tile of a call with (or without) ``rpb`` at ``dilation``."""
        if dilation > 1 and self.flat_tile is not None:
            return self.flat_tile
        return self.rpb_tile if rpb is not None and self.rpb_tile is not None else self.tile


# From a sweep on the H200 (2026-11-29 18:07 UTC, bf16, head dim 32, k 7; kernel times of direct calls): small
# one-warp programs beat the 8x8 tiles of 4 warps everywhere. A 2x8 tile's halo holds 112 keys against 8x8's 196
# (each query needs 49), and the small programs keep more of them resident per SM (the 4-warp ones were register-
# limited to 25% occupancy). Forward at B64 56x56 2 heads: 0.125 -> 0.107 ms (with rpb 0.209 -> 0.147); B8 128x128
# 4 heads: 0.161 -> 0.137; B64 14x14 8 heads: 0.079 -> 0.033 (1x16 tiles; 2x16 below). Backward at 14x14: dk/dv
# 0.26 -> 0.14 ms of the two kernels' sum with one-row key tiles; elsewhere the backward gains 1-3%.
# Pipeline stages (2026-11-30 03:13-03:25 UTC, CUDA-graph kernel time, dq and dk/dv timed together): the row-by-row
# forward loop and the dq kernel gain from two stages, which Triton's pipeliner fills with the next step's key rows;
# dk/dv not at 16 queries per step (0.274 against 0.321 ms at B64 56x56 2 heads), but at 32 it does (03:41 sweep of
# 24 dk/dv launches per map size, dq at two stages; dq + dk/dv, ms): B64 56x56 2 heads 0.276 -> 0.249, with rpb 0.296
# -> 0.252, B8 128x128 4 heads 0.358 -> 0.323, B64 14x14 8 heads on 1x16 key tiles 0.087 -> 0.071 (2x8 key tiles were
# 3% faster without rpb and 11% slower with it, which every NAT checkpoint has). Forward, 1 -> 2 stages (16 keys per
# step on the large maps; with 32 and rpb 2 stages measured 0.159): B64 56x56 2 heads 0.092 -> 0.079, with rpb 0.129 ->
# 0.114, B64 28x28 4 heads with rpb 0.076 -> 0.068, B8 128x128 4 heads 0.119 -> 0.102, B64 14x14 8 heads 0.027 ->
# 0.021 (with rpb 0.052 -> 0.044), B128 7x7 16 heads with rpb 0.030 -> 0.029. dq + dk/dv: 56x56 0.282 -> 0.274, with
# rpb 0.318 -> 0.293, 14x14 0.095 -> 0.087, 128x128 0.368 -> 0.357. The flat forward loop (dilated maps) keeps one
# stage: pipelined, its gathered key loads ran 5-7x slower (see vizattn.kernels._halo2d.triton).
# Register caps (H200, 2026-11-30 08:20-08:32 UTC, `.gpu/na_maxreg.py` and `cap_ab.py`, CUDA-graph time, uncapped ->
# capped; caps of 64-168 registers tried): more resident one-warp programs beat the spills where the compiler takes
# more registers than a step needs. Forward: B64 56x56 2 heads 0.0795 -> 0.0735 ms (64 registers, from 76), with rpb
# 0.1165 -> 0.1058 (96, from 107); B8 128x128 4 heads 0.1015 -> 0.0936 (64); B64 28x28 4 heads with rpb 0.0694 ->
# 0.0629 (96); B64 14x14 8 heads with rpb 0.0435 -> 0.0390 (168, from 214; 96 and below 1.8-3.7x slower), without rpb
# no gain (127 registers); 7x7 16 heads with rpb uncapped (168: B128 0.0287 -> 0.0270 but B64 0.0152 -> 0.0174).
# Backward (dq + dk/dv, dq capped at 64 without rpb): B64 56x56 0.2312 -> 0.2242, B8 128x128 0.3018 -> 0.2914, B64
# 14x14 0.0699 -> 0.0686; with rpb (the dq kernel reads the bias table) no gain; dk/dv lost under every cap.
# Tiles again (H200, 2026-11-30 10:00-10:10 UTC, `.gpu/ab1.py`, CUDA-graph time, 3 interleaved rounds; 13-17 tiles x
# launches x caps per shape). dk/dv on 2x8 key tiles without rpb: B64 56x56 2 heads backward 0.2214 -> 0.2165 ms (and
# 0.2220 -> 0.2158 in a second run), B8 128x128 4 heads 0.2900 -> 0.2798; with rpb 4.5-5.6% slower (56x56, 28x28), so
# the bias keeps 4x8, and so do dilated maps (without rpb 1.5% faster than 2x8: B64 56x56 d 8 0.2141 -> 0.2108, 28x28
# d 4 0.1137 -> 0.1121). The forward on 14x14 maps with rpb on 1x16 tiles: B64 8 heads 0.0346 -> 0.0283 ms (2x16 capped
# at 168 -> 1x16 at 96; uncapped 0.0285), without rpb 0.0209 -> 0.0206 (uncapped). On the large maps the forward's
# 2x8 tiles at the shipped caps stay best (4x8, 1x8, 2x16, 4x16 tiles 3-108% slower). On dilated 14x14 maps the
# forward keeps 2x16 tiles (1x16: B64 8 heads d 2 0.0266 -> 0.0330 ms, with rpb 0.0335 -> 0.0466).
# Two heads per forward program (one warp computing the tables, key offsets and masks of a step once for heads 2p and
# 2p + 1, their softmaxes side by side; bitwise the same outputs) measured faster only with the bias in bfloat16, which
# no model holds: with float32 rpb, one head -> two (H200, B64, 2026-12-01 05:18) 56x56 0.1045 -> 0.1368 ms, 28x28
# 0.0627 -> 0.0855, 7x7 0.0150 -> 0.0200; with bfloat16 rpb 0.1048 -> 0.1005, 0.0627 -> 0.0604, 0.0153 -> 0.0131;
# without rpb within 3%. Not kept (docs/benchmarks.md, runs of 2026-12-01 04:52-05:19).
# The bias table by padded halo rows (FWD_ROW_TABLE, DQ_ROW_TABLE; H200, B64 unless said, bf16, rpb, CUDA-graph time,
# 3 interleaved rounds, 2026-12-01 11:40-11:50 UTC, `.gpu/fwdtab.py`, `.gpu/bwdtab.py`). Forward, rpb gathered per
# pair -> table at the best of the caps tried (none, 64, 80, 96, 128): 56x56 2 heads 0.1057 -> 0.1029 ms (cap 80 or
# none), 28x28 4 heads 0.0630 -> 0.0570 (80), 14x14 8 heads 0.0310 -> 0.0270 (none), 7x7 16 heads 0.0152 -> 0.0108
# (128), B8 128x128 4 heads 0.1364 -> 0.1300 (80); outputs within one bfloat16 step (the table holds rpb * log2(e)).
# Backward (dq, dk/dv, d(rpb) binning), dq by flat chunks -> rows (caps none, 64-160): 56x56 0.3235 -> 0.3089 (128),
# 28x28 0.2020 -> 0.1950 (128), B8 128x128 0.4439 -> 0.4237 (128), 7x7 0.0681 -> 0.0530 (none; B128 0.1203 ->
# 0.0984), but 14x14 0.1190 -> 0.1193 at best (none), so that map keeps the flat walk; d(rpb) bitwise the same.
# Tiles of 8 rows x 2 columns for the forward and dq on undilated maps (same date, `.gpu/tile82.py`, `cap82.py`): at k 7
# their halo is 14 rows of exactly 8 keys, walked in 7 steps of two rows (112 pairs per query), where 2x8 tiles walk 8
# steps of 14 keys padded to 16 (128 pairs). Forward, 2x8 -> 8x2: B64 56x56 2 heads 0.0728 -> 0.0689 ms, with rpb
# 0.1037 -> 0.0949, B8 128x128 4 heads 0.0947 -> 0.0898, B64 28x28 4 heads with rpb 0.0568 -> 0.0536; the backward
# with dq on 8x2: 0.2167 -> 0.2139, 0.3114 -> 0.3009, 0.2848 -> 0.2789, 0.1959 -> 0.1897. The same caps stay best of
# four pairs tried (none; 72/96 and 80/96; 80/128 and 96/160). On 14x14 maps 8x2 was slower (forward 0.0204 -> 0.0210,
# backward 0.0684 -> 0.0778), and 4x4 tiles slower everywhere (forward 0.0887 at 56x56). Dilated maps keep 2x8.
_LARGE_MAP = (
    KernelConfig((8, 2), Launch(block_n=16, num_warps=1, num_stages=2), Launch(block_n=32, num_warps=1),
                 caps=(64, 80), flat_tile=(2, 8)),  # forward
    KernelConfig((8, 2), Launch(block_n=16, num_warps=1, num_stages=2), caps=(64, 128), flat_tile=(2, 8)),  # dq
    KernelConfig((2, 8), Launch(block_n=32, num_warps=1, num_stages=2), rpb_tile=(4, 8), flat_tile=(4, 8),
                 key_rows=(Launch(block_n=32, num_warps=1, num_stages=2, maxnreg=128),
                           Launch(block_n=64, num_warps=1, num_stages=2))),  # dk/dv
)
_SMALL_MAP = (  # maps of 9 to 16 rows (NAT's third stage at 224 px); from CUDA-graph timings (18:30 UTC), where the
    # forward at B64 14x14 8 heads took 0.026 ms on 2x16 tiles against 0.030-0.034 on 1x16 or 2x8 (before the two
    # pipeline stages; 1x16 is now as fast without rpb and faster with it, above)
    KernelConfig((1, 16), Launch(block_n=16, num_warps=1, num_stages=2), Launch(block_n=16, num_warps=1),
                 flat_tile=(2, 16)),
    KernelConfig((2, 16), Launch(block_n=16, num_warps=2, num_stages=2), caps=(64, None), table_rows=False),
    KernelConfig((1, 16), Launch(block_n=32, num_warps=1, num_stages=2),
                 key_rows=(Launch(block_n=32, num_warps=1, num_stages=2, maxnreg=128),) * 2),
)
_TINY_MAP = (  # maps of at most 8 rows (the last stage): B128 7x7 16 heads, forward 0.021 ms, dq and dk/dv 0.054 each
    # (one stage; the forward's row loop with two measured as fast, 0.029 against 0.030 ms with rpb)
    KernelConfig((4, 8), Launch(block_n=16, num_warps=1, num_stages=2), Launch(block_n=16, num_warps=1),
                 caps=(None, 128)),
    KernelConfig((4, 8), Launch(block_n=16, num_warps=1)),
    KernelConfig((4, 8), Launch(block_n=16, num_warps=1), key_rows=(Launch(block_n=64, num_warps=1),) * 2),
)
_SMALL_MAP_ROWS, _TINY_MAP_ROWS = 16, 8
# Head dims over 32 (no official NAT/DiNAT model has one; the sweeps above ran at 32): the 8x8 tiles of 4 warps, the
# best configuration before those sweeps. Compiled for sm_90, the one-warp programs spill at head dim 64 (dk/dv 252
# bytes) and 128 (forward 80-492, dk/dv 1244-1568), the 4-warp ones at most 8 and 364 bytes.
_WIDE_HEADS = (KernelConfig((8, 8), Launch(block_n=32, num_warps=4)),) * 3
_WIDE_HEAD_DIM = 32
# Where the backward computes d(rpb): "dq" (in the dq kernel, which then reads the bias from a table on every map;
# as "rows" where the table would be too large), "rows" (na2d_rpb_grad_rows, row tiles on tensor cores) or "slots"
# (na2d_rpb_grad, CUDA cores, slot by slot). H200, k 7, head dim 32, bf16, profiler kernel time of forward + backward
# with rpb, rows -> dq (2026-11-30 22:05-22:38, `.gpu/ab_dqrpb.py`, `ab_atomic.py`, `ab_small2.py`; dq at the launches
# of _rpb_grad_launch): B64 56x56 2 heads 0.734 -> 0.466 ms, 28x28 4 heads 0.411 -> 0.296, 14x14 8 heads 0.196 ->
# 0.182 (B128 0.336 -> 0.303), 7x7 16 heads 0.114 -> 0.111 (B128 0.218 -> 0.182), 56x56 dilation 8 0.720 -> 0.453,
# 28x28 dilation 4 0.378 -> 0.263, 14x14 dilation 2 0.237 -> 0.204, B8 128x128 4 heads 0.888 -> 0.593. Rows against
# slots (CUDA-graph kernel time, 2026-11-29 20:27): B64 56x56 2 heads 0.41 against 0.56 ms, 28x28 4 heads 0.23 /
# 0.33, 14x14 8 heads 0.090 / 0.150, B128 7x7 16 heads 0.107 / 0.132, B128 56x56 0.79 / 1.09.
RPB_GRAD = "dq"
_RPB_GRAD_CHOICES = ("dq", "rows", "slots")
# The dq kernel's d(rpb) needs float32 blocks of at least one image (a program's block per tile and head: 7 KB at
# k 7 on 2x8 tiles, so 2.7 MB for a 56x56 map of 2 heads, 115 MB for 512x256); past this many bytes per image the
# row-tile kernel, whose partial tables are small, sums d(rpb) instead.
_RPB_GRAD_IMAGE_BYTES = 64 << 20


def _rpb_grad_launch(dilation: int, height: int) -> tuple[str, int, int]:
    """How the dq kernel sums d(rpb) on a map (``rpb_grad_sum`` of halo_bwd), and about how many programs it runs
    with at most how many bytes of float32 blocks (see vizattn.kernels._halo2d.triton._images_per_program). H200,
    same method as RPB_GRAD's (22:05-22:38), ms at 2048 / 4096 / 8192 programs with 16 / 32 / 64 MB: by stores, 56x56
    dilation 8 0.497 / 0.453 / 0.465, 28x28 dilation 4 0.280 / 0.263 / 0.274 (by atomic adds 0.480-0.529 and
    0.282-0.304); by atomic adds at 512 / 1024 / 2048 programs with 4 / 8 / 16 MB, B64 56x56 2 heads 0.658 / 0.498 /
    0.466 (4096: 0.486), B128 1.245 / 0.923 / 0.849, B64 28x28 4 heads 0.414 / 0.324 / 0.296, B128 0.767 / 0.584 /
    0.519, B64 14x14 8 heads 0.209 / 0.182 / 0.194, B128 0.369 / 0.303 / 0.317, B64 7x7 16 heads 0.112 / 0.111 / 0.117,
    B128 0.193 / 0.182 / 0.205 (by stores at 4096 / 32 MB: B64 14x14 0.218, 7x7 0.113, B128 7x7 0.172). "first-store"
    (a store in a program's first image, atomic adds after it: no zeroed blocks) against atomic adds into zeroed
    blocks (against stores where dilated), same launches (2026-12-01 00:48, `.gpu/ab_first.py`, the binning of
    vizattn.kernels._halo2d.triton._pair_grads_to_rpb): B64 56x56 2 heads 0.456 against 0.437 ms (the dq kernel
    0.196 against 0.171), 28x28 4 heads 0.298 / 0.266, but 14x14 8 heads 0.149 / 0.158 (B128 0.266 / 0.279), 7x7 16
    heads 0.087 / 0.088 (B128 0.165 / 0.159); dilated 56x56 d 8 0.411 / 0.425, 28x28 d 4 0.222 / 0.230, 14x14 d 2
    0.149 / 0.155."""
    if dilation > 1:
        return "first-store", 4096, 32 << 20
    if height <= _TINY_MAP_ROWS:
        return "atomic", 1024, 8 << 20
    if height <= _SMALL_MAP_ROWS:
        return "first-store", 1024, 8 << 20
    return "atomic", 2048, 16 << 20


# Where the halo kernels read each (query, key) pair's mask and bias from a small table per class of tiles
# (vizattn.kernels._halo2d.triton.bias_table) instead of building them per pair (window arithmetic, an rpb gather):
# "never", "auto" or "always". The table cuts the sm_90 loop of the dk/dv kernel with rpb from 756 to 468
# instructions (dq 357 -> 238), but its loads cost latency. H200, B64, k 7, head dim 32, CUDA-graph kernel time
# (2026-11-29 20:59 and 21:14; per pair -> table): the backward with rpb gains (56x56 2 heads 0.872 -> 0.750 ms,
# 28x28 4 heads 0.488 -> 0.441, 56x56 dilation 8 0.781 -> 0.701; 14x14 0.216 -> 0.221, 7x7 0.101 -> 0.104); the
# forward with dilation 1 is fastest with the row-by-row loop (below), with dilation and rpb with the table (56x56
# dilation 8: flat loop 0.122, rows 0.164, table 0.109). "auto" takes the table in those two cases, and (since
# 2026-12-01, FWD_ROW_TABLE) in the forward with rpb at dilation 1 too, which reads it in its row walk. With RPB_GRAD
# "dq" (the dq kernel then sums d(rpb) off the table) every backward with rpb takes it; else not that of maps of at
# most _TINY_MAP_ROWS rows at dilation 1 (2026-11-30 20:39, profiler kernel time of the forward and backward with rpb,
# d(rpb) by row tiles, per pair -> table: 7x7 16 heads 0.115 -> 0.126 ms, the loss of 11-29 again; 14x14 8 heads
# 0.213 -> 0.196, 28x28 0.471 -> 0.408, 56x56 0.812 -> 0.729).
BIAS_TABLE = "auto"
# Whether "auto" also gives the forward with rpb at dilation 1 (its row-by-row walk) a bias table, laid out by padded
# halo rows: a step reads whole aligned table rows instead of a masked gather from rpb per pair (measured above
# _LARGE_MAP).
FWD_ROW_TABLE = True
# Whether the dq kernel walks the halo by whole rows, as the forward (NA at dilation 1 without a bias table). A row
# walk for dq and dk/dv together measured slower at one pipeline stage (2026-11-29 21:49: 0.352 against 0.282 ms at
# B64 56x56 2 heads, dk/dv taking 34 more registers); the dq kernel alone by rows, at two stages, is faster (H200,
# CUDA-graph time of the whole backward, 2026-11-30 05:53, `.gpu/dq_rows_ab.py`; flat -> rows at the shipped dq
# launch): B64 56x56 2 heads 0.248 -> 0.232 ms, B8 128x128 4 heads 0.322 -> 0.303, B64 14x14 8 heads 0.071 -> 0.070,
# with rpb and no table 56x56 0.796 -> 0.785, 28x28 4 heads 0.487 -> 0.480 (32 keys per step: 0.231 / 0.302 without
# rpb, but 0.845 / 0.515 with; one stage: 0.269 / 0.352; three: 0.243 / 0.317).
DQ_ROWS = True
# Whether the dk/dv kernel walks its halo of queries by whole rows on undilated maps (as the forward and dq walk their
# key halos; a bias table then laid out by padded halo rows) instead of flat chunks: None where its map's config has a
# row launch (KernelConfig.key_rows) and the row walk pads the halo to no more (query, key) pairs than the flat walk
# (_dkdv_walk), True / False everywhere (True: at the row launch if any, else the flat one). The rows, unlike flat
# chunks, pad each halo row to a power of two and the halo's height to whole steps; where that costs no extra pairs they
# save the per-pair index arithmetic. H200, k 7, head dim 32, bf16, CUDA-graph time of the backward (dq, dk/dv, d(rpb)),
# flat -> rows at the best launch (2026-12-01 14:45-14:55 UTC, `.gpu/dkdvtab.py`; caps none, 96, 128, 160, 192 at 32 and
# 64 queries per step): B64 28x28 4 heads 0.1546 -> 0.1279 ms (32, cap 128; key tiles 2x8, halo 11x15, 192 pairs either
# way), with rpb 0.1895 -> 0.1818 (4x8 tiles: 64, no cap; cap 128 spills: 0.257); B64 14x14 8 heads 0.0681 -> 0.0649
# (B128 0.1283 -> 0.1204), with rpb 0.1203 -> 0.1172 (B128 0.2061 -> 0.1981) (32, cap 128); B64 7x7 16 heads 0.0324 ->
# 0.0300 (B128 0.0614 -> 0.0591), with rpb 0.0528 -> 0.0497 (B128 0.0983 -> 0.0956) (64: the whole halo in one step).
# Where the rows pad more (B64 56x56 2 heads, B8 128x128 4 heads: halo 11x14, 192 pairs against 160) they were as fast
# at best (56x56 0.2132 -> 0.2129 and 0.2208 -> 0.2139 in two runs, cap 128) and slower with rpb (0.2992 -> 0.3005 at
# best, 64) and on 128x128 (0.2775 -> 0.2837; rpb 0.4064 -> 0.4053); 8x2 key tiles were slower everywhere (56x56 0.296
# at 16 per step), as was one pipeline stage (0.300).
DKDV_ROWS: bool | None = None
# Whether the dk/dv kernel's row walk covers, per key tile, only the rows of its query halo that hold queries seeing
# its keys (whole steps of them; where that skips any), not the whole halo: a key tile's halo is as tall as the border
# tiles' (k 7: 11 rows for tiles of 2 or 4 rows), where the windows are shifted inward, but away from the borders
# T + k - 1 rows (8 for 2-row tiles) pair with its keys. Exact: the rows skipped pair with none of the keys. H200, same
# method as DKDV_ROWS's (2026-12-01 15:15 UTC), backward ms, whole halo -> span: B64 56x56 2 heads 0.2150 (flat) ->
# 0.1895 (rows of 32, cap 128: 4.14 steps a tile on average against 6, 132 pairs against the flat walk's 160), B8
# 128x128 4 heads 0.2809 -> 0.2469 (flat -> rows), B64 28x28 4 heads 0.1277 -> 0.1153 (rows), B64 14x14 8 heads
# 0.0642 -> 0.0604 (rows; with rpb 0.1168 -> 0.1087); with rpb on 4x8 key tiles (64 per step) 28x28 0.1805 -> 0.1827,
# and 56x56 / 128x128 stay flat (2.86 steps of 64 against 160 pairs; rows with the span 0.3084 / 0.4174 against
# 0.2999 / 0.4091). The span's run-time loop bounds cost where they skip nothing (7x7 16 heads with rpb, one step:
# 0.0504 -> 0.0582), and the flat walk over a span was slower (56x56 0.2150 -> 0.2261, 14x14 0.0679 -> 0.0720, 128x128
# 0.2809 -> 0.3002; 28x28 0.1543 -> 0.1338, where the rows are faster still): rows only, where they skip steps.
DKDV_SPAN = True
# Whether the dq kernel also walks by rows where it reads a bias table (then laid out by padded halo rows; else it
# walks flat chunks there): None per map size (KernelConfig.table_rows), True / False everywhere.
DQ_ROW_TABLE: bool | None = None
_BIAS_TABLE_CHOICES = ("never", "auto", "always")


def _use_table(backward: bool, rpb: torch.Tensor | None, dilation: int, height: int) -> bool:
    """Whether the kernels read the mask and bias from a bias table (see BIAS_TABLE)."""
    if BIAS_TABLE not in _BIAS_TABLE_CHOICES:
        raise ValueError(f"vizattn.kernels.na2d.triton.BIAS_TABLE must be one of {_BIAS_TABLE_CHOICES}, got "
                         f"{BIAS_TABLE!r}.")
    if BIAS_TABLE != "auto":
        return BIAS_TABLE == "always"
    if not backward:
        return rpb is not None and (dilation > 1 or FWD_ROW_TABLE)
    return rpb is not None and (dilation > 1 or RPB_GRAD == "dq" or height > _TINY_MAP_ROWS)


# The forward walks each tile's halo by whole rows (the row-by-row loop of the halo kernels: the key columns, their
# addresses and the W-axis window hoisted out of the loop) at dilation 1, by flat chunks otherwise. H200 (21:14, flat
# -> rows): 56x56 2 heads 0.108 -> 0.092 ms, with rpb 0.135 -> 0.129; B8 128x128 4 heads 0.141 -> 0.119; 14x14 8 heads
# 0.029 -> 0.027; 7x7 16 heads with rpb 0.0157 -> 0.0163; 56x56 dilation 8 with rpb 0.122 -> 0.164.


def launch_configs(
    height: int, head_dim: int = 32, tile: tuple[int, int] | None = None
) -> tuple[KernelConfig, ...]:
    """The (forward, dq, dk/dv) configurations for a map of ``height`` rows and heads of ``head_dim`` (the larger of
    the q/k and v dims); ``tile`` overrides every kernel's tile (tests cover odd tilings with it), keeping the
    launches."""
    if head_dim > _WIDE_HEAD_DIM:
        configs = _WIDE_HEADS
    elif height <= _TINY_MAP_ROWS:
        configs = _TINY_MAP
    else:
        configs = _SMALL_MAP if height <= _SMALL_MAP_ROWS else _LARGE_MAP
    if tile is None:
        return configs
    return tuple(c._replace(tile=tuple(tile), rpb_tile=None, flat_tile=None) for c in configs)


@functools.lru_cache(maxsize=256)
def _tables(length: int, kernel_size: int, dilation: int, tile: int, device: torch.device) -> DeviceTables:
    return device_tables(axis_tiles(length, kernel_size, dilation, tile), device)


@functools.lru_cache(maxsize=256)
def _key_tables(length: int, kernel_size: int, dilation: int, tile: int, device: torch.device) -> DeviceTables:
    return device_tables(key_axis_tiles(length, kernel_size, dilation, tile), device, key_tiles=True)


def _axes(q: torch.Tensor, kernel_size: int, dilation: int, tile: tuple[int, int], tables=_tables):
    """The two axes' tables of ``q``'s map with ``tile``: the forward's (query tiles) or, with
    ``tables=_key_tables``, the key tiles of the backward's key-centric kernel."""
    return tuple(tables(q.shape[1 + i], kernel_size, dilation, tile[i], q.device) for i in range(2))


def _walks_rows(dilation: int, cols: DeviceTables, launch: Launch) -> bool:
    """Whether a kernel walks the halo by whole rows under ``launch`` (a row-walking kernel, see
    :func:`~vizattn.kernels._halo2d.triton.halo_fwd`): undilated, and a step holds a whole padded halo row."""
    return dilation == 1 and _next_pow2(cols.halo) <= launch.block_n


@functools.lru_cache(maxsize=256)
def _key_span_steps(length: int, kernel_size: int, tile: int, per_step: int) -> tuple[float, int]:
    """The dk/dv row walk over the key tiles of an undilated axis, ``per_step`` halo rows a step: the mean number of
    steps per tile when each walks only its span (:func:`~vizattn.kernels._halo2d.triton._key_tile_span`), and the
    number of steps of the whole halo."""
    tables = device_tables(key_axis_tiles(length, kernel_size, 1, tile), torch.device("cpu"), key_tiles=True)
    first, last = tables.window[:, 0].min(1).values, tables.window[:, 1].max(1).values
    needed = -(-last // per_step) - first // per_step
    return needed.double().mean().item(), -(-tables.halo // per_step)


def _dkdv_walk(cfg: KernelConfig, key_rows: DeviceTables, key_cols: DeviceTables, has_rpb: bool, height: int,
               kernel_size: int, dilation: int) -> tuple[Launch, bool, bool]:
    """The dk/dv kernel's launch, whether it walks its query halo by whole rows (see DKDV_ROWS) and whether it then
    walks each key tile's span only (DKDV_SPAN; where that skips steps). The rows' mean pairs per tile (spans
    included) against the flat chunks' decide under None."""
    rows_launch = cfg.key_rows[has_rpb]
    if DKDV_ROWS is False or dilation != 1:
        return cfg.launch, False, False
    launch = rows_launch or cfg.launch
    if launch.block_n is None or not _walks_rows(dilation, key_cols, launch):
        return cfg.launch, False, False
    step = launch.block_n
    mean_steps, full_steps = _key_span_steps(height, kernel_size, key_rows.tile, step // _next_pow2(key_cols.halo))
    span = DKDV_SPAN and mean_steps < full_steps
    if DKDV_ROWS:
        return launch, True, span
    if rows_launch is None or cfg.launch.block_n is None:
        return cfg.launch, False, False
    flat_step = cfg.launch.block_n
    rows_pairs = (mean_steps if span else full_steps) * step
    flat_pairs = -(-(key_rows.halo * key_cols.halo) // flat_step) * flat_step
    return (rows_launch, True, span) if rows_pairs <= flat_pairs else (cfg.launch, False, False)


def na2d_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rpb: torch.Tensor | None,
    kernel_size: int,
    dilation: int,
    scale: float,
    tile: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher; shapes as :func:`vizattn.kernels.na2d.na2d`, arguments already validated.

    Returns:
        out (B, H, W, heads, head_dim_v) contiguous in v's dtype, and lse (B, H, W, heads) float32, the base-2
        logsumexp of each query's scores (what the backward needs).
    """
    fwd = launch_configs(q.shape[1], max(q.shape[-1], v.shape[-1]), tile)[0]
    rows, cols = _axes(q, kernel_size, dilation, fwd.tile_for(rpb, dilation))
    # The row launch where a step holds a whole padded halo row of keys (k 7 and 9 on the large maps' tiles), else
    # the flat launch (dilation, or halos wider than the step: the kernel then walks rows only if they fit).
    by_rows = _walks_rows(dilation, cols, fwd.launch)
    launch = fwd.launch if by_rows or fwd.flat is None else fwd.flat
    cap = fwd.caps[rpb is not None] if by_rows else None  # measured on the row walk only
    return halo_fwd(q, k, v, rows, cols, scale, rpb=rpb, block_n=launch.block_n, num_warps=launch.num_warps,
                    num_stages=launch.num_stages, maxnreg=cap, table=_use_table(False, rpb, dilation, q.shape[1]),
                    rows_loop=dilation == 1)


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
    tile: tuple[int, int] | None = None,
    grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Backward launcher: (dq, dk, dv, d_rpb) in the dtypes of q, k, v, rpb (d_rpb None without rpb); ``grads``:
    optional (dq, dk, dv) tensors to write into (see :func:`~vizattn.kernels._halo2d.triton.halo_bwd`)."""
    _, dq_cfg, dkdv_cfg = launch_configs(q.shape[1], max(q.shape[-1], v.shape[-1]), tile)
    rows, cols = _axes(q, kernel_size, dilation, dq_cfg.tile_for(rpb, dilation))
    key_rows, key_cols = _axes(q, kernel_size, dilation, dkdv_cfg.tile_for(rpb, dilation), _key_tables)
    grad_out = grad_out.contiguous()
    delta = new_output(tuple(lse.shape), torch.float32, q.device)  # written by the dq kernel, read by the others
    # the register cap was measured on the row walk only (a step holding a whole padded halo row, as the forward's)
    table = _use_table(True, rpb, dilation, q.shape[1])
    row_table = dq_cfg.table_rows if DQ_ROW_TABLE is None else DQ_ROW_TABLE
    dq_rows = DQ_ROWS and dilation == 1 and (row_table or not table)
    by_rows = dq_rows and _walks_rows(dilation, cols, dq_cfg.launch)
    dq_launch = dq_cfg.launch._replace(maxnreg=dq_cfg.caps[rpb is not None] if by_rows else None)
    dkdv_launch, dkdv_rows, key_span = _dkdv_walk(dkdv_cfg, key_rows, key_cols, rpb is not None, q.shape[1],
                                                  kernel_size, dilation)
    if RPB_GRAD not in _RPB_GRAD_CHOICES:
        raise ValueError(f"vizattn.kernels.na2d.triton.RPB_GRAD must be one of {_RPB_GRAD_CHOICES}, got {RPB_GRAD!r}.")
    how, programs, max_bytes = _rpb_grad_launch(dilation, q.shape[1])
    block_bytes = 4 * rows.tile * cols.tile * rows.halo * cols.halo  # a dq program's float32 pair-bias block
    image_bytes = rows.n_tiles * cols.n_tiles * q.shape[3] * block_bytes
    in_dq = rpb is not None and RPB_GRAD == "dq" and image_bytes <= _RPB_GRAD_IMAGE_BYTES
    grads = halo_bwd(
        grad_out, q, k, v, out, lse, rows, cols, scale, rpb=rpb, key_rows=key_rows, key_cols=key_cols,
        delta=delta, dq_launch=dq_launch, dkdv_launch=dkdv_launch,
        table=table, dq_rows=dq_rows, dkdv_rows=dkdv_rows, key_span=key_span, rpb_grad=in_dq, rpb_grad_sum=how,
        images_per_program=_images_per_program(q.shape[0], rows.n_tiles * cols.n_tiles * q.shape[3], block_bytes,
                                               programs, max_bytes) if in_dq else None,
        grads=grads,
    )
    dq, dk, dv = grads[:3]
    drpb = grads[5] if in_dq else None  # None there too when the dq kernel read no bias table
    if rpb is not None and drpb is None:
        if RPB_GRAD == "slots":
            drpb = na2d_rpb_grad(grad_out, q, k, v, rpb, lse, delta, kernel_size, dilation, scale)
        else:
            w_tiles = _tables(q.shape[2], kernel_size, dilation, ROW_TILE, q.device)
            drpb = na2d_rpb_grad_rows(grad_out, q, k, v, rpb, lse, delta, kernel_size, dilation, scale, w_tiles)
    return dq, dk, dv, drpb
