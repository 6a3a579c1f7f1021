"""Triton launchers of CLEAR's circular local attention, forward and backward.

The kernels are the tiled halo attention of :mod:`vizattn.kernels._halo2d.triton` in its circle mode: a program owns
a query tile of one image and one head (8x8 queries in the forward), walks the ``(T + 2r - 2)^2`` halo keys around it
(shifted inward at the borders, see :mod:`vizattn.kernels.clear.tiles`) in chunks, keeps a key iff its squared
distance to the query is below ``r^2``, then runs the same online softmax over the ``M`` extra tokens. Nothing of
size ``N * window`` is ever written. The backward writes every gradient once, without atomics (so deterministically):
a query-centric kernel ``dq``, a key-centric one ``dk``, ``dv`` (the disc is symmetric and the halos are shifted inward
at the borders, so the forward's tables also list the queries that see a key tile), and a dense kernel the extra
tokens' gradients.
"""

from __future__ import annotations

import functools

import torch

from vizattn.kernels._halo2d.triton import DeviceTables, Launch, device_tables, halo_bwd, halo_fwd
from vizattn.kernels.clear.tiles import circle_axis_tiles

__all__ = ["clear_fwd", "clear_bwd", "TILE"]

TILE = (8, 8)  # the forward's queries per program along H and W
# Launches on a GPU. Until 2026-12-02 every sweep below ran with the loads of q, k, v (head dim 72, DiT's) compiled as
# scalar two-byte loads: the head offsets (head * 72) and the head-dim masks (c < 72) looked unaligned to Triton, which
# specialises on multiples of 16 only. The kernels now declare the alignment the launcher checks (ALIGN_LOG2, see
# vizattn.kernels._halo2d.triton._align_log2; sm_90 compiles, tools/kernel_report.py: the forward's key-block loop 2127
# -> 1260 instructions, 160 two-byte loads -> 20 vector loads; the dq loop 2057 -> 1199; the dk/dv loop 1538 -> 772),
# and the launches were swept again. H200, B2, 16 heads of 72, bf16, q/k/v views of one qkv tensor, CUDA-graph time
# of 10 calls (median of 5 replays), 2026-12-02 13:40-13:47 UTC (docs/benchmarks.md):
# - forward, 128x128 r 8: 0.863 ms (scalar loads) -> 0.636 (vector loads, same launch) -> 0.516 with two pipeline
#   stages (8x8 tiles, 128 keys, 4 warps); 64x64 r 8 0.227 -> 0.139, 128x128 r 16 1.564 -> 1.286 (stages 1 -> 2), with
#   256 extra tokens 0.823 -> 0.675, 32x32 0.039 -> 0.036. Three stages 0.758; 64 keys 0.75-1.72; 8 warps 1.04-1.97;
#   8x16 / 16x8 / 4x16 tiles 0.60-1.54.
# - backward, 128x128 r 8: 3.161 (scalar loads) -> 2.164 (vector loads, the one-warp launches of 11-29) -> 1.815 with
#   dq on 4x16 query tiles with 32 keys x 4 warps and dk/dv on 8x8 key tiles with 64 queries x 4 warps (dq on 8x8
#   1.838; dq alone at its best 2.03 against 2.16, dk/dv alone 1.97; two stages 2.09-2.46, one-warp programs 2.2-6.1);
#   64x64 0.559 -> 0.486, 128x128 r 16 6.578 -> 4.807, 256 extra tokens 3.286 -> 2.753, 32x32 0.145 -> 0.138.
# - 2026-12-02 17:20-17:30 UTC, after the circle mask became a small MMA (CIRCLE_DOT) and, in the backward, the scores
#   outside were set to -inf before the exponent: forward 0.413 ms (128 keys x 4 warps x 2 stages again best: 3 stages
#   0.457, 64 keys 0.466-0.571, a 168-register cap 0.475); backward 1.338 with dq on 8x8 query tiles x 128 keys x 2
#   stages (4x16 x 32 keys x 2 stages 1.412, 8x8 x 64 keys 1.454) and dk/dv as before (32 queries 1.577, two stages
#   1.355), against 1.804 before these changes.
# - 2026-12-02 22:05 UTC, after the dk/dv kernel summed its halo queries' offsets in int32 (80c5746, its loop 901 -> 808
#   instructions): backward 1.341 -> 1.294 (the kernels of 24b25c7 against these, one run), of which dq 0.552 and dk/dv
#   0.750; dk/dv with two pipeline stages (its q and dO loads become asynchronous copies, loop 808 -> 521) 1.207. Its
#   other launches: 32 queries x 2 stages 1.309, 128 queries 1.460, 8 warps 2.35-2.43, 16x8 or 8x16 key tiles 1.70-2.83;
#   dq with 8 warps 1.864, 64 keys x 3 stages 1.489.
# - 2026-12-03 07:52-08:10 UTC: the forward on one-warp programs of 4x8 or 8x4 query tiles (their halos walk 30% fewer
#   keys per query, on 16-row MMAs) 0.459-0.463 ms against 0.425 here (4x4, 2x8, 8x2: 0.72-0.78); halo keys read in
#   int32 and loaded without masks (forward loop 821 -> 703 instructions) forward 0.4278 -> 0.4230, backward no faster
#   (dq 1.2094 -> 1.2123, dk/dv 1.2229, all three 1.2319). Not kept.
# Earlier (scalar loads): the forward at 128 keys x 4 warps beat 2.7-9.4 ms of other launches (2026-11-29), and walking
# the halo by whole rows or computing each step's keys from the halo's first key measured slower (11-30); see
# docs/benchmarks.md.
# The forward's launch as scalars, so that tools/benchmark.py --set can change each. 64 keys x 3 stages with an int32
# halo walk (three programs per SM) measured 20% slower at 128x128 r 8 on 2026-12-03 (docs/benchmarks.md); the walk
# was removed.
_FWD_KEYS, _FWD_WARPS, _FWD_STAGES = 128, 4, 2
_DQ_TILE, _DKDV_TILE = (8, 8), (8, 8)
_BWD = dict(
    dq_launch=Launch(block_n=128, num_warps=4, num_stages=2),
    dkdv_launch=Launch(block_n=64, num_warps=4, num_stages=2),
    extra_launch=Launch(block_n=16, num_warps=4, block_m=64),
)
# The dq launch above does not fit in shared memory with wide rows (float32 at head dim 128: 234 KB on sm_90, the
# limit is 227 KB); rows of more than this many bytes take the dq launch of before 2026-12-02 (4x16 query tiles, 32
# keys, one stage).
_DQ_WIDE_ROW_BYTES = 256
_DQ_TILE_WIDE, _DQ_LAUNCH_WIDE = (4, 16), Launch(block_n=32, num_warps=4)


@functools.lru_cache(maxsize=256)
def _tables(length: int, radius: int, tile: int, device: torch.device) -> DeviceTables:
    return device_tables(circle_axis_tiles(length, radius, tile), device)


def _axes(q: torch.Tensor, radius: int, tile: tuple[int, int]) -> tuple[DeviceTables, ...]:
    return tuple(_tables(q.shape[1 + i], radius, tile[i], q.device) for i in range(2))


def clear_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    extra_k: torch.Tensor | None,
    extra_v: torch.Tensor | None,
    radius: int,
    scale: float,
    tile: tuple[int, int] = TILE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher; shapes as :func:`vizattn.kernels.clear.clear_attention`, arguments already validated.

    Returns:
        out (B, H, W, heads, head_dim) contiguous in q's dtype, and lse (B, H, W, heads) float32, the base-2
        logsumexp of each query's scores over its disc and the extra tokens (what the backward needs).
    """
    rows, cols = _axes(q, radius, tile)
    return halo_fwd(
        q, k, v, rows, cols, scale, circle_radius=radius, extra_k=extra_k, extra_v=extra_v, block_n=_FWD_KEYS,
        num_warps=_FWD_WARPS, num_stages=_FWD_STAGES,
    )


def clear_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    extra_k: torch.Tensor | None,
    extra_v: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    radius: int,
    scale: float,
    tile: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Backward launcher: (dq, dk, dv, d_extra_k, d_extra_v) in their inputs' dtypes (the last two None without
    extra tokens). ``tile`` sets the query tiles of the dq kernel and the key tiles of the dk/dv kernel (None: their
    defaults)."""
    launches = dict(_BWD)
    dq_tile = _DQ_TILE
    if q.element_size() * max(q.shape[-1], v.shape[-1]) > _DQ_WIDE_ROW_BYTES:
        dq_tile, launches["dq_launch"] = _DQ_TILE_WIDE, _DQ_LAUNCH_WIDE
    rows, cols = _axes(q, radius, tile or dq_tile)
    key_rows, key_cols = _axes(q, radius, tile or _DKDV_TILE)  # the circle's key tiles are query tiles too
    dq, dk, dv, dek, dev = halo_bwd(
        grad_out, q, k, v, out, lse, rows, cols, scale, circle_radius=radius, extra_k=extra_k, extra_v=extra_v,
        key_rows=key_rows, key_cols=key_cols, **launches,
    )
    return dq, dk, dv, dek, dev
