"""Query tiles and their key halos: neighborhood attention as small dense attention problems.

Along one axis, split every dilation group's in-group positions into tiles of ``T`` consecutive queries. Window starts
never decrease and grow by at most one per position, so the windows of a tile's queries all lie inside a halo of
``T + k - 1`` consecutive in-group keys starting at the first query's window start. A 2-D tile (a row tile times a
column tile) is then a dense ``(T_h * T_w) x (halo_h * halo_w)`` attention whose logits outside each query's window
are masked and whose bias entries are looked up per axis. That costs ``(T + k - 1)^2`` logits per query instead of
``k^2`` but gathers each key ``((T + k - 1) / T)^2`` times instead of ``k^2`` times, and its matmuls are
BLAS-sized: :func:`na2d_tiled` is the PyTorch backend of :func:`vizattn.kernels.na2d.na2d` (exactly the reference's
function, several times faster and leaner on the CPU).

The per-axis tables (:class:`AxisTiles`) are tiny (``O(L * (T + k))`` integers) and cached per shape.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

__all__ = ["AxisTiles", "axis_tiles", "na2d_tiled", "DEFAULT_TILE"]

DEFAULT_TILE = 8


class AxisTiles(NamedTuple):
    """Tiling of one axis (length L) for kernel k, dilation d and tile size T (``n`` tiles in all).

    Attributes:
        q_idx: (n, T) global index of each query slot; the slots past a group's end repeat its last query (a real
            window, so no row is fully masked) and are never read back.
        k_idx: (n, halo) global index of each halo key; slots past the group's end repeat its last key and are
            masked for every query.
        bias_idx: (n, T, halo) relative-position-bias index of (query slot, halo key) in ``[0, 2k - 2]``, or -1 when
            the key is outside the query's window.
        tile_of: (L,) the tile holding position i as a query.
        slot_of: (L,) its slot in that tile.
    """

    q_idx: torch.Tensor
    k_idx: torch.Tensor
    bias_idx: torch.Tensor
    tile_of: torch.Tensor
    slot_of: torch.Tensor


@functools.lru_cache(maxsize=256)
def _axis_tiles_cpu(length: int, kernel_size: int, dilation: int, tile: int) -> AxisTiles:
    group_lens = [(length - g + dilation - 1) // dilation for g in range(dilation)]
    tile = min(tile, max(group_lens))
    halo = min(tile + kernel_size - 1, max(group_lens))
    q_rows, k_rows, b_rows = [], [], []
    # Explicitly on the CPU: the cache must not capture tensors of a default-device context (e.g. torch.device("meta")).
    tile_of = torch.empty(length, dtype=torch.long, device="cpu")
    slot_of = torch.empty(length, dtype=torch.long, device="cpu")
    slots, window = torch.arange(tile, device="cpu"), torch.arange(halo, device="cpu")
    for g, group_len in enumerate(group_lens):
        for first in range(0, group_len, tile):
            pos = (first + slots).clamp(max=group_len - 1)  # in-group query positions (padded slots repeat)
            start = (pos - kernel_size // 2).clamp(min=0).clamp(max=group_len - kernel_size)
            halo_pos = start[0] + window  # in-group key positions of the halo
            rel = halo_pos[None, :] - start[:, None]  # offset of each halo key inside each query's window
            in_window = (rel >= 0) & (rel < kernel_size) & (halo_pos[None, :] < group_len)
            bias = halo_pos[None, :] - pos[:, None] + kernel_size - 1
            n = len(q_rows)
            real = first + slots[: min(tile, group_len - first)]
            tile_of[real * dilation + g] = n
            slot_of[real * dilation + g] = real - first
            q_rows.append(pos * dilation + g)
            k_rows.append(halo_pos.clamp(max=group_len - 1) * dilation + g)
            b_rows.append(torch.where(in_window, bias, -1))
    return AxisTiles(torch.stack(q_rows), torch.stack(k_rows), torch.stack(b_rows), tile_of, slot_of)


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
    b, hh, ww, heads, _ = q.shape
    rows = axis_tiles(hh, kernel_size, dilation, tile, q.device)
    cols = axis_tiles(ww, kernel_size, dilation, tile, q.device)
    n_th, t_h = rows.q_idx.shape
    n_tw, t_w = cols.q_idx.shape
    halo_h, halo_w = rows.k_idx.shape[1], cols.k_idx.shape[1]

    def gather(x: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # (B, H, W, heads, D) -> (B, heads, tiles, |r| * |c|, D)
        x = x.float()[:, r[:, None, :, None], c[None, :, None, :]]
        return x.flatten(3, 4).flatten(1, 2).permute(0, 3, 1, 2, 4)

    qt = gather(q, rows.q_idx, cols.q_idx) * scale
    kt = gather(k, rows.k_idx, cols.k_idx)
    vt = gather(v, rows.k_idx, cols.k_idx)

    bh = rows.bias_idx[:, None, :, None, :, None]  # (n_th, 1, T_h, 1, halo_h, 1)
    bw = cols.bias_idx[None, :, None, :, None, :]  # (1, n_tw, 1, T_w, 1, halo_w)
    outside = (bh < 0) | (bw < 0)
    if rpb is not None:
        bias = rpb.float()[:, bh.clamp(min=0), bw.clamp(min=0)]  # (heads, n_th, n_tw, T_h, T_w, halo_h, halo_w)
        bias = bias.masked_fill(outside, float("-inf"))
    else:
        bias = torch.zeros(outside.shape, device=q.device).masked_fill(outside, float("-inf"))[None]
    bias = bias.reshape(bias.shape[0], n_th * n_tw, t_h * t_w, halo_h * halo_w)

    attn = torch.softmax(qt @ kt.transpose(-1, -2) + bias, dim=-1)
    out = attn @ vt  # (B, heads, tiles, T_h * T_w, Dv)
    out = out.permute(0, 2, 3, 1, 4).reshape(b, n_th, n_tw, t_h, t_w, heads, -1)
    out = out[:, rows.tile_of[:, None], cols.tile_of[None, :], rows.slot_of[:, None], cols.slot_of[None, :]]
    return out.to(v.dtype)
