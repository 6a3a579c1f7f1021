"""Triton launchers of 2-D neighborhood attention (NAT / DiNAT), forward and backward, with relative position bias.

The kernels are the tiled halo attention of :mod:`vizattn.kernels._halo2d.triton` in its window mode: a program owns
one query tile (``T_h x T_w`` queries of one dilation group, laid out by :func:`vizattn.kernels.na2d.tiles.axis_tiles`)
of one image and one head, walks the ``halo_h x halo_w`` keys around it in chunks, masks each pair by the query's
window along each axis (a run of halo slots, loaded once per program from the tables) and adds ``rpb[head, b_h, b_w]``,
whose per-axis index steps by one along that run. Nothing of size ``N * k * k`` is ever written.

The backward is split like FlashAttention-2's: a query-centric kernel writes ``dq`` (and ``delta = rowsum(dO * O)``),
and a key-centric one owns a tile of keys, walks the queries that see them (the transposed tables of
:func:`vizattn.kernels.na2d.tiles.key_axis_tiles`: a key near a border can be seen by more than ``k`` queries per
axis) and writes ``dk``, ``dv`` once. With a bias, ``d(rpb)`` comes from a third kernel,
:func:`vizattn.kernels.na2d.rpb_grad.na2d_rpb_grad`, which walks each query's ``k x k`` window slot by slot and sums
the score gradients in registers (the halo dq kernel's per-pair atomics cost twice the rest of the backward). Every
gradient, ``d(rpb)`` included, is deterministic.
"""

from __future__ import annotations

import functools

import torch

from vizattn.kernels._alloc import new_output
from vizattn.kernels._halo2d.triton import DeviceTables, device_tables, halo_bwd, halo_fwd
from vizattn.kernels.na2d.rpb_grad import na2d_rpb_grad
from vizattn.kernels.na2d.tiles import axis_tiles, key_axis_tiles

__all__ = ["na2d_fwd", "na2d_bwd", "TILE", "SMALL_MAP_TILE", "default_tile"]

TILE = (8, 8)  # queries per program along H and W
SMALL_MAP_TILE = (4, 8)  # maps of at most 16 rows: more programs (H200, 14x14, 8 heads: 0.085 ms against 0.127)


def default_tile(height: int) -> tuple[int, int]:
    """The query tile of a map with ``height`` rows."""
    return SMALL_MAP_TILE if height <= 16 else TILE


@functools.lru_cache(maxsize=256)
def _tables(length: int, kernel_size: int, dilation: int, tile: int, device: torch.device) -> DeviceTables:
    return device_tables(axis_tiles(length, kernel_size, dilation, tile), device)


@functools.lru_cache(maxsize=256)
def _key_tables(length: int, kernel_size: int, dilation: int, tile: int, device: torch.device) -> DeviceTables:
    return device_tables(key_axis_tiles(length, kernel_size, dilation, tile), device, key_tiles=True)


def _axes(
    q: torch.Tensor, kernel_size: int, dilation: int, tile: tuple[int, int] | None, tables=_tables
) -> tuple[DeviceTables, ...]:
    """The two axes' tables of ``q``'s map: the forward's (query tiles) or, with ``tables=_key_tables``, the key
    tiles of the backward's key-centric kernel."""
    tile = tile or default_tile(q.shape[1])
    return tuple(tables(q.shape[1 + i], kernel_size, dilation, tile[i], q.device) for i in range(2))


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
    rows, cols = _axes(q, kernel_size, dilation, tile)
    return halo_fwd(q, k, v, rows, cols, scale, rpb=rpb)


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Backward launcher: (dq, dk, dv, d_rpb) in the dtypes of q, k, v, rpb (d_rpb None without rpb)."""
    rows, cols = _axes(q, kernel_size, dilation, tile)
    key_rows, key_cols = _axes(q, kernel_size, dilation, tile, _key_tables)
    grad_out = grad_out.contiguous()
    delta = new_output(tuple(lse.shape), torch.float32, q.device)  # written by the dq kernel, read by the others
    dq, dk, dv, _, _ = halo_bwd(
        grad_out, q, k, v, out, lse, rows, cols, scale, rpb=rpb, key_rows=key_rows, key_cols=key_cols,
        delta=delta,
    )
    drpb = None
    if rpb is not None:
        drpb = na2d_rpb_grad(grad_out, q, k, v, rpb, lse, delta, kernel_size, dilation, scale)
    return dq, dk, dv, drpb
