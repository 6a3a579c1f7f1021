"""Query tiles and their key halos: neighborhood attention as small dense attention problems.

Along one axis, split every dilation group's in-group positions into tiles of ``T`` consecutive queries. Window starts
never decrease and grow by at most one per position, so the windows of a tile's queries all lie inside a halo of
``T + k - 1`` consecutive in-group keys starting at the first query's window start. A 2-D tile (a row tile times a
column tile) is then a dense ``(T_h * T_w) x (halo_h * halo_w)`` attention whose logits outside each query's window
are masked and whose bias entries are looked up per axis. That costs ``(T + k - 1)^2`` logits per query instead of
``k^2`` but gathers each key ``((T + k - 1) / T)^2`` times instead of ``k^2`` times, and its matmuls are
BLAS-sized: :func:`na2d_tiled` is the PyTorch backend of :func:`vizattn.kernels.na2d.na2d` (exactly the reference's
function, several times faster and leaner on the CPU).

The tiling itself is the one CLEAR's circular window uses too (:mod:`vizattn.kernels._halo2d.tiles`); this module
only says what an NA window is along one axis. The per-axis tables (:class:`AxisTiles`) are tiny
(``O(L * (T + k))`` integers) and cached per shape. Their relative index is NA's bias index: the true offset in
dilated units plus ``k - 1``.
"""

from __future__ import annotations

import functools

import torch

from vizattn.kernels._halo2d.tiles import (
    AxisTiles,
    build_axis_tiles,
    build_key_axis_tiles,
    one_hot_rel,
    pair_rel,
    tiled_attention,
)

__all__ = ["AxisTiles", "axis_tiles", "key_axis_tiles", "na2d_tiled", "DEFAULT_TILE"]

DEFAULT_TILE = 8


def _window_start(kernel_size: int):
    def window_start(pos: torch.Tensor, group_len: int) -> torch.Tensor:
        # shifted inward at the borders, never truncated
        return (pos - kernel_size // 2).clamp(min=0).clamp(max=group_len - kernel_size)

    return window_start


@functools.lru_cache(maxsize=256)
def _axis_tiles_cpu(length: int, kernel_size: int, dilation: int, tile: int) -> AxisTiles:
    return build_axis_tiles(length, dilation, tile, kernel_size, kernel_size - 1, _window_start(kernel_size))


@functools.lru_cache(maxsize=256)
def key_axis_tiles(length: int, kernel_size: int, dilation: int, tile: int = DEFAULT_TILE) -> AxisTiles:
    """The transposed tables of one axis, on the CPU: tiles of keys and the halos of the queries that see them.

    Near a border a key can be seen by more than ``k`` queries of its group (the windows are shifted inward: up to
    ``k + k // 2`` next to one border of a long group, the whole group when it is at most ``2k - 1`` long), so the
    halo can be longer than the forward's ``T + k - 1``; it is measured, not derived from a bound. The relative
    indices are the forward's (the bias index).
    """
    return build_key_axis_tiles(length, dilation, tile, kernel_size, kernel_size - 1, _window_start(kernel_size))


def axis_tiles(
    length: int, kernel_size: int, dilation: int, tile: int = DEFAULT_TILE, device: torch.device | None = None
) -> AxisTiles:
    """The :class:`AxisTiles` of one axis, on ``device`` (requires ``length >= kernel_size * dilation``)."""
    if device is None or torch.device(device).type == "cpu":
        return _axis_tiles_cpu(length, kernel_size, dilation, tile)
    return _axis_tiles_on(length, kernel_size, dilation, tile, torch.device(device))


@functools.lru_cache(maxsize=256)
def _axis_tiles_on(length: int, kernel_size: int, dilation: int, tile: int, device: torch.device) -> AxisTiles:
    return AxisTiles(*(t.to(device) for t in _axis_tiles_cpu(length, kernel_size, dilation, tile)))


class _PairBias(torch.autograd.Function):
    """Every (query, key) pair's bias ``rpb[head, rel_h, rel_w]`` as a float32 (heads, n_th, n_tw, T_h, T_w, halo_h,
    halo_w) tensor, ``-inf`` outside the window. The forward gathers; the backward sums the pairs' gradients per bias
    entry as two products with the axes' one-hot relative indices (the gather's own backward, an accumulating
    scatter into the table's few entries, took most of the tiled backward's time on a CPU). Those products follow
    PyTorch's float32 matmul precision."""

    @staticmethod
    def forward(ctx, rpb: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
        bh, bw = rel_h[:, None, :, None, :, None], rel_w[None, :, None, :, None, :]  # as pair_rel's views
        ctx.save_for_backward(rel_h, rel_w)
        ctx.side, ctx.dtype = rpb.shape[-1], rpb.dtype
        bias = rpb.float()[:, bh.clamp(min=0), bw.clamp(min=0)]
        return bias.masked_fill((bh < 0) | (bw < 0), float("-inf"))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rel_h, rel_w = ctx.saved_tensors
        by_w = torch.einsum("hijaxsy,jxyc->hiasc", grad, one_hot_rel(rel_w, ctx.side))
        return torch.einsum("hiasc,iasb->hbc", by_w, one_hot_rel(rel_h, ctx.side)).to(ctx.dtype), None, None


def na2d_tiled(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int,
    rpb: torch.Tensor | None,
    scale: float,
    tile: int = DEFAULT_TILE,
) -> torch.Tensor:
    """Neighborhood attention by query tiles and key halos; arguments and result as :func:`na2d_reference`.

    Computes in float32 and returns ``v.dtype``. Differentiable in q, k, v and rpb through autograd.
    """
    rows = axis_tiles(q.shape[1], kernel_size, dilation, tile, q.device)
    cols = axis_tiles(q.shape[2], kernel_size, dilation, tile, q.device)
    n_th, t_h = rows.q_idx.shape
    n_tw, t_w = cols.q_idx.shape
    halo_h, halo_w = rows.k_idx.shape[1], cols.k_idx.shape[1]

    if rpb is not None:
        bias = _PairBias.apply(rpb, rows.rel_idx, cols.rel_idx)  # (heads, n_th, n_tw, T_h, T_w, halo_h, halo_w)
    else:
        bh, bw = pair_rel(rows, cols)
        outside = (bh < 0) | (bw < 0)
        bias = torch.zeros(outside.shape, device=q.device).masked_fill(outside, float("-inf"))[None]
    bias = bias.reshape(bias.shape[0], n_th * n_tw, t_h * t_w, halo_h * halo_w)
    return tiled_attention(q, k, v, rows, cols, scale, bias).to(v.dtype)
