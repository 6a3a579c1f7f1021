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
# Launch configuration on a GPU, from sweeps on the H200 (2026-11-29; 128x128 grid, r 8, batch 2, 16 heads of 72,
# bf16, one pipeline stage). Forward: 1.29 ms with 128 keys per step and 4 warps against 2.7-9.4 ms for the other
# (keys, warps, stages) combinations. Backward (forward 1.30 ms without extra tokens, 1.69 ms with 256): 6.6 ms, and
# 10.2 ms with 256 extra tokens, with dq 32 keys x 4 warps, dk/dv 16 queries x 4 warps, extra tokens 64 per program x
# 16 queries x 4 warps; 10.5-16.3 ms for the other 35 combinations of (16/32 keys or queries, 4/8 warps) per kernel
# tried, those with 8 warps (no register spills for sm_90, while these spill 80-170 bytes) slower. The backward with
# atomics it replaced took 24.7 ms. These sweeps ran with head_dim 72 padded to 128 columns; it is now split as 64 + 16
# (head_split), after which ptxas for sm_90 reports, with these configurations and 0 / 256 extra tokens, 204 / 248
# bytes of spill stores for the forward (the circle mask: each thread holds 64 query rows of one key column), 0 / 12
# for dq, 16 for dk/dv, 0 for the extra tokens' kernel; with 8 warps only the forward at 128 keys spills.
_FWD = dict(block_n=128, num_warps=4)
# Swept again at the current kernel (2026-12-01 05:08; 8x8, 8x16, 16x8, 4x16, 16x4, 4x8, 8x4 tiles x 64 / 128 keys x
# 4 / 8 warps): 8x8 with 128 keys and 4 warps 0.867 ms, next 4x16 1.101 and 16x4 1.149; the others 1.7-4.1.
# A second sweep (2026-11-29 18:10 UTC; same shape, head dim split as 64 + 16) tried smaller tiles with 1-2 warps: the
# forward stays best as above (1.03 ms; 4x8 tiles of 32 keys x 1 warp 1.13, 2x8 1.19), but the backward kernels each
# gain ~0.7 ms with one-warp programs (each measured with the other kernel at its former 8x8 configuration, total
# 4.95 ms): dq on 4x8 query tiles with 32 keys per step (4.18 ms), dk/dv on 4x4 key tiles with 32 queries per step
# (4.27 ms); together 3.21 ms (CUDA-graph timing, 18:30), and tools/benchmark.py's fwd+bwd 6.25 -> 4.26 ms.
_DQ_TILE, _DKDV_TILE = (4, 8), (4, 4)
# The forward walks the halo in flat chunks of _FWD's keys. Walking it by whole halo rows (the squared column offsets
# and the key columns' addresses computed once per program), as NA's forward does, measured slower (H200, B2 16 heads
# of 72, r 8, 8x8 tiles, CUDA-graph time, 2026-11-30 05:55): at 128x128 the flat loop 0.865 ms, rows at best 0.952 (17
# launches of 32-256 keys, 1-8 warps, 1-2 stages tried), at 64x64 0.227 against 0.250. A step of whole rows walks 22
# padded rows of 32 slots (704 pairs per query) where the flat loop walks 640. That walk was removed.
# Computing each step's halo keys from the halo's first key (the circle's halos are blocks of consecutive rows and
# columns) instead of gathering them from the tables, so that the key addresses depend on the loop counter alone and
# Triton's pipeliner can prefetch them, measured slower at every launch tried (H200, CUDA-graph time, 2026-11-30 10:01
# UTC; 128x128 r 8: forward 0.866 -> 2.27 ms at this launch, 1.35 at best (64 keys, 2-3 stages); backward 3.16 -> 4.68
# at best; 64x64 r 16 alike). That variant was removed.
_BWD = dict(
    dq_launch=Launch(block_n=32, num_warps=1),
    dkdv_launch=Launch(block_n=32, num_warps=1),
    extra_launch=Launch(block_n=16, num_warps=4, block_m=64),
)


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
        q, k, v, rows, cols, scale, circle_radius=radius, extra_k=extra_k, extra_v=extra_v, **_FWD
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
    rows, cols = _axes(q, radius, tile or _DQ_TILE)
    key_rows, key_cols = _axes(q, radius, tile or _DKDV_TILE)  # the circle's key tiles are query tiles too
    dq, dk, dv, dek, dev = halo_bwd(
        grad_out, q, k, v, out, lse, rows, cols, scale, circle_radius=radius, extra_k=extra_k, extra_v=extra_v,
        key_rows=key_rows, key_cols=key_cols, **_BWD,
    )
    return dq, dk, dv, dek, dev
