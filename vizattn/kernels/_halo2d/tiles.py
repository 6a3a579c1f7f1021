"""Query tiles and their key halos along one axis, and 2-D halo attention computed tile by tile in PyTorch.

Along one axis of length ``L`` split every dilation group's in-group positions into tiles of ``T`` consecutive
queries. An op describes the window of one query by where it starts (``window_start``, possibly before 0 for a window
truncated at the border) and how many keys it spans (``span``). Window starts never decrease along the axis, so the
windows of a tile's queries all lie inside a halo of ``T + span - 1`` consecutive in-group keys starting at the first
query's window start (clipped to the group). A 2-D tile (a row tile times a column tile) is then a dense
``(T_h * T_w) x (halo_h * halo_w)`` attention whose (query, key) pairs outside the op's 2-D window are masked.

Per axis the pairs carry a relative index ``key - query + center`` (in-group units), or -1 where the key is outside
the query's window along that axis; NA reads its relative position bias with it, the circle its offsets.

The backward's key-centric kernel needs the transposed relation: tiles of ``T`` consecutive keys and, for each, the
halo of the queries whose windows reach any of them. :func:`build_key_axis_tiles` builds it in the same
:class:`AxisTiles` layout, the roles swapped (tiles of keys, halos of queries), with the same relative index
``key - query + center`` of each pair. A key near a border can be seen by more than ``span`` queries (NA shifts the
windows inward there), so that halo is measured, not derived from ``span``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

__all__ = ["AxisTiles", "build_axis_tiles", "build_key_axis_tiles", "one_hot_rel", "pair_rel", "tiled_attention"]


class AxisTiles(NamedTuple):
    """Tiling of one axis (length L) with tile size T and halo size ``halo`` (``n`` tiles in all).

    The tables of :func:`build_key_axis_tiles` swap the roles: ``q_idx`` holds tiles of keys, ``k_idx`` the halos of
    queries that see them, ``rel_idx`` is indexed (key slot, halo query) and ``tile_of``/``slot_of`` place the keys.

    Attributes:
        q_idx: (n, T) global index of each query slot; the slots past a group's end repeat its last query (a real
            window, so no row is fully masked) and are never read back.
        k_idx: (n, halo) global index of each halo key; slots past the group's end (none with ``inward``) repeat its
            last key and are masked for every query.
        rel_idx: (n, T, halo) relative index ``key - query + center`` (in-group positions) of (query slot, halo key),
            or -1 when the key is outside the query's window along this axis.
        tile_of: (L,) the tile holding position i as a query.
        slot_of: (L,) its slot in that tile.
    """

    q_idx: torch.Tensor
    k_idx: torch.Tensor
    rel_idx: torch.Tensor
    tile_of: torch.Tensor
    slot_of: torch.Tensor


def build_axis_tiles(
    length: int,
    dilation: int,
    tile: int,
    span: int,
    center: int,
    window_start: Callable[[torch.Tensor, int], torch.Tensor],
    inward: bool = False,
) -> AxisTiles:
    """The :class:`AxisTiles` of one axis, on the CPU.

    Args:
        length: axis length L.
        dilation: d; a query attends only to keys of its dilation group (positions equal modulo d).
        tile: queries per tile T, clipped to the longest group.
        span: keys of one query's window along the axis; the halo holds ``T + span - 1`` keys (at most the group).
        center: added to ``key - query`` to make the relative index non-negative inside the window.
        window_start: maps the in-group positions of a tile's queries (T,) and the group length to the first
            in-group key of each one's window (T,), non-decreasing, negative where a window is truncated at the start.
        inward: shift each halo inward at the group's end so that it never holds slots past the end (every halo key
            is then a distinct real key); without it those slots repeat the last key and are masked.
    """
    group_lens = [(length - g + dilation - 1) // dilation for g in range(dilation)]
    tile = min(tile, max(group_lens))
    halo = min(tile + span - 1, max(group_lens))
    q_rows, k_rows, rel_rows = [], [], []
    # Explicitly on the CPU: cached tables must not capture tensors of a default-device context (e.g. "meta").
    tile_of = torch.empty(length, dtype=torch.long, device="cpu")
    slot_of = torch.empty(length, dtype=torch.long, device="cpu")
    slots, window = torch.arange(tile, device="cpu"), torch.arange(halo, device="cpu")
    for g, group_len in enumerate(group_lens):
        for first in range(0, group_len, tile):
            pos = (first + slots).clamp(max=group_len - 1)  # in-group query positions (padded slots repeat)
            lo = window_start(pos, group_len)
            start = lo[0].clamp(min=0)
            if inward:
                start = start.clamp(max=max(group_len - halo, 0))
            halo_pos = start + window  # in-group key positions of the halo
            allowed = (
                (halo_pos[None, :] >= lo[:, None])
                & (halo_pos[None, :] < lo[:, None] + span)
                & (halo_pos[None, :] < group_len)
            )
            rel = halo_pos[None, :] - pos[:, None] + center
            n = len(q_rows)
            real = first + slots[: min(tile, group_len - first)]
            tile_of[real * dilation + g] = n
            slot_of[real * dilation + g] = real - first
            q_rows.append(pos * dilation + g)
            k_rows.append(halo_pos.clamp(max=group_len - 1) * dilation + g)
            rel_rows.append(torch.where(allowed, rel, -1))
    return AxisTiles(torch.stack(q_rows), torch.stack(k_rows), torch.stack(rel_rows), tile_of, slot_of)


def build_key_axis_tiles(
    length: int,
    dilation: int,
    tile: int,
    span: int,
    center: int,
    window_start: Callable[[torch.Tensor, int], torch.Tensor],
) -> AxisTiles:
    """The transposed relation of :func:`build_axis_tiles` (same arguments): tiles of keys, halos of queries.

    Each dilation group's keys are split into tiles of ``T`` consecutive in-group keys (``T`` clipped to the longest
    group, padded slots repeating the group's last key, as for queries). Since window starts never decrease, the
    queries whose windows reach a tile's keys are consecutive; the halo size is the longest such run over all tiles
    (clipped to the longest group) and each halo is shifted inward at the group's end, so its slots are distinct
    queries except in groups shorter than the halo, whose slots past the end repeat the last query with every pair
    masked.

    Returns:
        :class:`AxisTiles` with ``q_idx`` (n, T) the keys of each tile, ``k_idx`` (n, halo) the queries of its halo,
        ``rel_idx`` (n, T, halo) the relative index ``key - query + center`` of (key slot, halo query) when the key is
        inside that query's window along this axis (the forward's value for the same pair), else -1, and
        ``tile_of``/``slot_of`` (L,) the tile and slot of each key.
    """
    group_lens = [(length - g + dilation - 1) // dilation for g in range(dilation)]
    tile = min(tile, max(group_lens))
    slots = torch.arange(tile, device="cpu")
    tiles = []  # (group, first key, in-group keys (T,), window starts of the group's queries)
    for g, group_len in enumerate(group_lens):
        lo = window_start(torch.arange(group_len, device="cpu"), group_len)
        for first in range(0, group_len, tile):
            tiles.append((g, first, (first + slots).clamp(max=group_len - 1), lo))

    def seen_by(keys: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
        # (T, group_len): whether query x's window holds key p
        return (keys[:, None] >= lo[None, :]) & (keys[:, None] < lo[None, :] + span)

    runs = []
    for _, _, keys, lo in tiles:
        seers = seen_by(keys, lo).any(0).nonzero()[:, 0]
        runs.append((int(seers[0]), int(seers[-1]) + 1))
    halo = min(max(hi - first for first, hi in runs), max(group_lens))
    k_rows, q_rows, rel_rows = [], [], []
    tile_of = torch.empty(length, dtype=torch.long, device="cpu")
    slot_of = torch.empty(length, dtype=torch.long, device="cpu")
    window = torch.arange(halo, device="cpu")
    for n, ((g, first, keys, lo), (seer0, _)) in enumerate(zip(tiles, runs)):
        group_len = lo.shape[0]
        start = min(seer0, max(group_len - halo, 0))
        halo_pos = start + window  # in-group query positions of the halo
        real_q = halo_pos < group_len
        halo_pos = halo_pos.clamp(max=group_len - 1)
        allowed = seen_by(keys, lo[halo_pos]) & real_q[None, :]
        rel = keys[:, None] - halo_pos[None, :] + center
        real = first + slots[: min(tile, group_len - first)]
        tile_of[real * dilation + g] = n
        slot_of[real * dilation + g] = real - first
        k_rows.append(keys * dilation + g)
        q_rows.append(halo_pos * dilation + g)
        rel_rows.append(torch.where(allowed, rel, -1))
    return AxisTiles(torch.stack(k_rows), torch.stack(q_rows), torch.stack(rel_rows), tile_of, slot_of)


def pair_rel(rows: AxisTiles, cols: AxisTiles) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative indices of every (query, key) pair of every 2-D tile, as two broadcastable views.

    Returns:
        rel_h (n_th, 1, T_h, 1, halo_h, 1) and rel_w (1, n_tw, 1, T_w, 1, halo_w); they broadcast to
        (n_th, n_tw, T_h, T_w, halo_h, halo_w), which :func:`tiled_attention` flattens to (tiles, T_h * T_w,
        halo_h * halo_w).
    """
    return rows.rel_idx[:, None, :, None, :, None], cols.rel_idx[None, :, None, :, None, :]


def one_hot_rel(rel: torch.Tensor, side: int) -> torch.Tensor:
    """(..., side) float32 one-hot of relative (bias) indices, all zero where the index is -1 (outside the window):
    products with it sum per-pair gradients into a bias table without a scatter."""
    return torch.nn.functional.one_hot(rel.clamp(min=0), side).float() * (rel >= 0)[..., None]


def tiled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: AxisTiles,
    cols: AxisTiles,
    scale: float,
    logit_bias: torch.Tensor,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Attention of every query tile over its key halo (and over the extra keys), one softmax per query.

    Args:
        q, k: (B, H, W, heads, D); v: (B, H, W, heads, Dv).
        rows, cols: the tiling of the two axes (tables on q's device).
        scale: multiplies q before the dot product.
        logit_bias: (heads or 1, n_th * n_tw, T_h * T_w, halo_h * halo_w) added to the halo logits, ``-inf`` for the
            pairs outside the window.
        extra_k, extra_v: optional (B, M, heads, D) and (B, M, heads, Dv) keys and values every query attends to.
        dtype: the compute dtype.

    Returns:
        (B, H, W, heads, Dv) in ``dtype``; differentiable in q, k, v, the extras and ``logit_bias`` through autograd.
    """
    b, _, _, heads, _ = q.shape
    n_th, t_h = rows.q_idx.shape
    n_tw, t_w = cols.q_idx.shape

    def gather(x: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # (B, H, W, heads, D) -> (B, heads, tiles, |r| * |c|, D)
        x = x.to(dtype)[:, r[:, None, :, None], c[None, :, None, :]]
        return x.flatten(3, 4).flatten(1, 2).permute(0, 3, 1, 2, 4)

    qt = gather(q, rows.q_idx, cols.q_idx) * scale
    kt = gather(k, rows.k_idx, cols.k_idx)
    vt = gather(v, rows.k_idx, cols.k_idx)
    logits = qt @ kt.transpose(-1, -2) + logit_bias
    if extra_k is None:
        out = torch.softmax(logits, dim=-1) @ vt  # (B, heads, tiles, T_h * T_w, Dv)
    else:
        # The extra keys are the same for every tile: broadcast them over the tile axis instead of copying.
        ek = extra_k.to(dtype).permute(0, 2, 1, 3)[:, :, None]  # (B, heads, 1, M, D)
        ev = extra_v.to(dtype).permute(0, 2, 1, 3)[:, :, None]
        attn = torch.softmax(torch.cat([logits, qt @ ek.transpose(-1, -2)], dim=-1), dim=-1)
        halo = logits.shape[-1]
        out = attn[..., :halo] @ vt + attn[..., halo:] @ ev
    out = out.permute(0, 2, 3, 1, 4).reshape(b, n_th, n_tw, t_h, t_w, heads, -1)
    return out[:, rows.tile_of[:, None], cols.tile_of[None, :], rows.slot_of[:, None], cols.slot_of[None, :]]
