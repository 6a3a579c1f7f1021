"""CLEAR's circular window as query tiles over key halos (:mod:`vizattn.kernels._halo2d.tiles`), and the PyTorch
backend built on them.

Along one axis the disc of radius r reaches ``r - 1`` keys on either side of the query (``span = 2r - 1``), truncated
at the map's borders. A tile of ``T`` queries starting at ``s`` needs the keys ``[s - (r - 1), s + T - 1 + (r - 1)]``
clipped to the map: a halo of ``T + 2r - 2`` keys, shifted inward at the borders so that it never holds a key twice.
The relative index is ``key - query + r - 1``; the 2-D mask is ``(rel_h - r + 1)^2 + (rel_w - r + 1)^2 < r^2`` on
top of both indices being valid.

:func:`clear_tiled` computes each tile as a small dense attention over its halo plus the extra tokens: it holds
``N * (T + 2r - 2)^2`` logits instead of the reference's ``N * N`` and gathers each key ``((T + 2r - 2) / T)^2``
times. It is the ``'torch'`` backend of :func:`vizattn.kernels.clear.clear_attention`.
"""

from __future__ import annotations

import functools

import torch

from vizattn.kernels._halo2d.tiles import AxisTiles, build_axis_tiles, pair_rel, tiled_attention

__all__ = ["DEFAULT_TILE", "circle_axis_tiles", "clear_tiled"]

DEFAULT_TILE = 8


@functools.lru_cache(maxsize=256)
def _circle_axis_tiles_cpu(length: int, radius: int, tile: int) -> AxisTiles:
    def window_start(pos: torch.Tensor, group_len: int) -> torch.Tensor:
        return pos - (radius - 1)  # negative at the start: truncated, not shifted

    return build_axis_tiles(length, 1, tile, 2 * radius - 1, radius - 1, window_start, inward=True)


@functools.lru_cache(maxsize=256)
def _circle_axis_tiles_on(length: int, radius: int, tile: int, device: torch.device) -> AxisTiles:
    return AxisTiles(*(t.to(device) for t in _circle_axis_tiles_cpu(length, radius, tile)))


def circle_axis_tiles(
    length: int, radius: int, tile: int = DEFAULT_TILE, device: torch.device | None = None
) -> AxisTiles:
    """The :class:`~vizattn.kernels._halo2d.tiles.AxisTiles` of one axis of length ``length`` for radius r."""
    if device is None or torch.device(device).type == "cpu":
        return _circle_axis_tiles_cpu(length, radius, tile)
    return _circle_axis_tiles_on(length, radius, tile, torch.device(device))


def clear_tiled(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    radius: int,
    extra_k: torch.Tensor | None,
    extra_v: torch.Tensor | None,
    scale: float,
    tile: int = DEFAULT_TILE,
) -> torch.Tensor:
    """Circular local attention by query tiles and key halos; arguments and result as
    :func:`vizattn.kernels.clear.reference.clear_attention_reference` (scale given).

    Computes in float32 (float64 for float64 inputs) and returns q's dtype. Differentiable in q, k, v and the extra
    tokens through autograd.
    """
    rows = circle_axis_tiles(q.shape[1], radius, tile, q.device)
    cols = circle_axis_tiles(q.shape[2], radius, tile, q.device)
    n_th, t_h = rows.q_idx.shape
    n_tw, t_w = cols.q_idx.shape
    halo_h, halo_w = rows.k_idx.shape[1], cols.k_idx.shape[1]
    ct = torch.promote_types(q.dtype, torch.float32)

    rel_h, rel_w = pair_rel(rows, cols)
    inside = (rel_h >= 0) & (rel_w >= 0) & ((rel_h - radius + 1) ** 2 + (rel_w - radius + 1) ** 2 < radius * radius)
    bias = torch.zeros(inside.shape, dtype=ct, device=q.device).masked_fill(~inside, float("-inf"))
    bias = bias.reshape(1, n_th * n_tw, t_h * t_w, halo_h * halo_w)
    return tiled_attention(q, k, v, rows, cols, scale, bias, extra_k, extra_v, dtype=ct).to(q.dtype)
