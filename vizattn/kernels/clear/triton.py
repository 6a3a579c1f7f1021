"""Triton launchers of CLEAR's circular local attention, forward and backward.

The kernels are the tiled halo attention of :mod:`vizattn.kernels._halo2d.triton` in its circle mode: a program owns
an 8x8 query tile of one image and one head, walks the ``(8 + 2r - 2)^2`` halo keys around it (shifted inward at the
borders, see :mod:`vizattn.kernels.clear.tiles`) in chunks, keeps a key iff its squared distance to the query is
below ``r^2``, then runs the same online softmax over the ``M`` extra tokens. Nothing of size ``N * window`` is ever
written. The backward adds ``dk``, ``dv`` and the extra tokens' gradients with float32 atomics, so those are not
bitwise deterministic on a GPU.
"""

from __future__ import annotations

import functools

import torch

from vizattn.kernels._halo2d.triton import DeviceTables, device_tables, halo_bwd, halo_fwd
from vizattn.kernels.clear.tiles import circle_axis_tiles

__all__ = ["clear_fwd", "clear_bwd", "TILE"]

TILE = (8, 8)  # queries per program along H and W
# Launch configuration on a GPU, chosen from ptxas register reports for sm_90 (not yet timed): with the default 4 warps
# a 64-query tile spills at head_dim 72 (padded to 128); 8 warps remove the forward's spills, and the backward, which
# also holds dq, needs chunks of 32 keys when head_dim > 64.
_NUM_WARPS = 8


def _bwd_block_n(head_dim: int) -> int | None:
    return 32 if head_dim > 64 else None


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
        q, k, v, rows, cols, scale, circle_radius=radius, extra_k=extra_k, extra_v=extra_v, num_warps=_NUM_WARPS
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
    tile: tuple[int, int] = TILE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Backward launcher: (dq, dk, dv, d_extra_k, d_extra_v) in their inputs' dtypes (the last two None without
    extra tokens)."""
    rows, cols = _axes(q, radius, tile)
    dq, dk, dv, _, dek, dev = halo_bwd(
        grad_out, q, k, v, out, lse, rows, cols, scale, circle_radius=radius, extra_k=extra_k, extra_v=extra_v,
        block_n=_bwd_block_n(q.shape[-1]), num_warps=_NUM_WARPS,
    )
    return dq, dk, dv, dek, dev
