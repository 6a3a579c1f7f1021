"""The per-axis tables of the 2-D halo kernels against brute force: the forward's query tiles, the backward's key tiles.

The key-centric backward kernel walks, for each tile of keys, the halo of the queries that see them, with the relative
index of each (key, query) pair. For neighborhood attention those are the transposed tables of
:func:`vizattn.kernels.na2d.tiles.key_axis_tiles`; CLEAR's circle reuses the forward tables, which is right only
because the disc is symmetric and the halos are shifted inward. Both are checked here pair by pair: every (query, key)
pair of the op's relation is enumerated exactly once, with the forward's relative index, and nothing else.
"""

from __future__ import annotations

import pytest
import torch

from vizattn.kernels._halo2d.triton import slot_windows
from vizattn.kernels.clear.reference import circle_mask
from vizattn.kernels.clear.tiles import circle_axis_tiles
from vizattn.kernels.na2d.reference import neighborhood_indices
from vizattn.kernels.na2d.tiles import axis_tiles, key_axis_tiles


def _forward_pairs(t) -> list[tuple[int, int, int]]:
    """(query, key, rel) of every real query slot and in-window halo key of the forward tables."""
    pairs = []
    for q in range(t.tile_of.shape[0]):
        n, slot = int(t.tile_of[q]), int(t.slot_of[q])
        assert int(t.q_idx[n, slot]) == q
        for key, rel in zip(t.k_idx[n].tolist(), t.rel_idx[n, slot].tolist()):
            if rel >= 0:
                pairs.append((q, key, rel))
    return pairs


def _key_tile_pairs(t) -> list[tuple[int, int, int]]:
    """(query, key, rel) of every real key slot and in-window halo query of key-tile tables."""
    pairs = []
    for key in range(t.tile_of.shape[0]):
        n, slot = int(t.tile_of[key]), int(t.slot_of[key])
        assert int(t.q_idx[n, slot]) == key
        for q, rel in zip(t.k_idx[n].tolist(), t.rel_idx[n, slot].tolist()):
            if rel >= 0:
                pairs.append((q, key, rel))
    return pairs


def _na_pairs(length: int, k: int, d: int) -> list[tuple[int, int, int]]:
    keys, bias = neighborhood_indices(length, k, d)
    return [(q, key, b) for q in range(length) for key, b in zip(keys[q].tolist(), bias[q].tolist())]


@pytest.mark.parametrize("tile", [1, 3, 4, 8, 16])
@pytest.mark.parametrize("k,d", [(3, 1), (5, 1), (7, 1), (13, 1), (3, 2), (7, 2), (5, 3), (7, 4), (3, 7), (13, 2)])
def test_na_key_tiles_enumerate_the_forward_pairs(k, d, tile):
    """Many lengths per (k, d): ragged dilation groups, groups shorter than the tile, keys seen by k + k // 2
    queries at the borders."""
    for length in sorted({k * d, k * d + 1, k * d + d - 1, 2 * k * d + 3, k * d + tile * d + 1, 3 * k * d + 5}):
        expected = sorted(_na_pairs(length, k, d))
        assert sorted(_forward_pairs(axis_tiles(length, k, d, tile))) == expected, length
        inverse = key_axis_tiles(length, k, d, tile)
        pairs = _key_tile_pairs(inverse)
        assert len(pairs) == len(set(pairs)), f"{length}: a (query, key) pair is enumerated twice"
        assert sorted(pairs) == expected, length
        # every halo slot is a query of the tile's dilation group, and padded halo slots see nothing
        group = inverse.q_idx[:, :1] % d
        assert torch.equal(inverse.k_idx % d, group.expand_as(inverse.k_idx))
        assert int(inverse.k_idx.min()) >= 0 and int(inverse.k_idx.max()) < length


def _check_windows(t, key_tiles: bool) -> torch.Tensor:
    """What the NA kernels read instead of ``rel_idx``: per slot one run ``[lo, hi)`` of halo slots, inside the halo,
    along which the relative index is ``off + c`` (query tiles) or ``off - c`` (key tiles), and -1 elsewhere."""
    window = slot_windows(t.rel_idx, key_tiles)
    halo = t.k_idx.shape[1]
    assert window.shape == (t.q_idx.shape[0], 3, t.q_idx.shape[1])
    sign = -1 if key_tiles else 1
    for n in range(window.shape[0]):
        for slot in range(window.shape[2]):
            lo, hi, off = window[n, :, slot].tolist()
            assert 0 <= lo < hi <= halo  # every slot pairs with something, and only with halo slots
            rel = [off + sign * c if lo <= c < hi else -1 for c in range(halo)]
            assert rel == t.rel_idx[n, slot].tolist(), (n, slot)
    return window


@pytest.mark.parametrize("tile", [1, 3, 8, 16])
@pytest.mark.parametrize("k,d", [(3, 1), (4, 1), (7, 1), (13, 1), (3, 2), (6, 2), (5, 3), (7, 4), (3, 7)])
def test_na_slot_windows_encode_the_tables(k, d, tile):
    """The kernels' per-slot windows rebuild the tables' relative indices exactly, for query tiles (each window k
    wide: NA windows are shifted inward, never truncated) and key tiles (runs of the queries that see a key)."""
    for length in sorted({k * d, k * d + 1, k * d + d - 1, 2 * k * d + 3, k * d + tile * d + 1, 3 * k * d + 5}):
        window = _check_windows(axis_tiles(length, k, d, tile), key_tiles=False)
        assert torch.equal(window[:, 1] - window[:, 0], torch.full_like(window[:, 0], k)), length
        _check_windows(key_axis_tiles(length, k, d, tile), key_tiles=True)


def test_slot_windows_reject_what_is_not_a_run():
    rel = torch.tensor([[[0, 1, 2, -1]], [[0, -1, 2, -1]], [[0, 2, 3, -1]]])
    slot_windows(rel[:1])
    with pytest.raises(ValueError, match="run"):
        slot_windows(rel[1:2])  # a hole in the run
    with pytest.raises(ValueError, match="run"):
        slot_windows(rel[2:])  # a step of two
    with pytest.raises(ValueError, match="run"):
        slot_windows(rel[:1], key_tiles=True)  # rising where a key tile's index falls


@pytest.mark.parametrize("k", [3, 7])
def test_na_border_keys_are_seen_by_more_than_k_queries(k):
    """The case the key-tile halo must be measured for: windows shifted inward pile up on the border keys."""
    length = 4 * k
    counts = torch.zeros(length, dtype=torch.long)
    for _, key, _ in _key_tile_pairs(key_axis_tiles(length, k, 1, 8)):
        counts[key] += 1
    assert int(counts.max()) == k + k // 2 and int(counts[k - 1]) == k + k // 2


@pytest.mark.parametrize("tile", [(8, 8), (3, 5), (16, 4)])
@pytest.mark.parametrize("hh,ww,k,d", [(9, 11, 3, 2), (14, 7, 7, 1), (10, 13, 5, 2)])
def test_na_key_tiles_in_2d(hh, ww, k, d, tile):
    """The 2-D relation is the product of the axes: enumerate it from the key-tile tables of both axes."""
    kr, kc = (key_axis_tiles(n, k, d, t) for n, t in zip((hh, ww), tile))
    keys_h, bias_h = neighborhood_indices(hh, k, d)
    keys_w, bias_w = neighborhood_indices(ww, k, d)
    expected = {
        (i, j, int(keys_h[i, a]), int(keys_w[j, c]), int(bias_h[i, a]), int(bias_w[j, c]))
        for i in range(hh)
        for j in range(ww)
        for a in range(k)
        for c in range(k)
    }
    got = []
    for th in range(kr.q_idx.shape[0]):
        for tw in range(kc.q_idx.shape[0]):
            for sh, key_h in enumerate(kr.q_idx[th].tolist()):
                for sw, key_w in enumerate(kc.q_idx[tw].tolist()):
                    if int(kr.tile_of[key_h]) != th or int(kr.slot_of[key_h]) != sh:
                        continue  # a padded key slot: not stored
                    if int(kc.tile_of[key_w]) != tw or int(kc.slot_of[key_w]) != sw:
                        continue
                    for qh, rh in zip(kr.k_idx[th].tolist(), kr.rel_idx[th, sh].tolist()):
                        for qw, rw in zip(kc.k_idx[tw].tolist(), kc.rel_idx[tw, sw].tolist()):
                            if rh >= 0 and rw >= 0:
                                got.append((qh, qw, key_h, key_w, rh, rw))
    assert len(got) == len(set(got)) and set(got) == expected


@pytest.mark.parametrize("tile", [1, 3, 8, 16])
@pytest.mark.parametrize("r", [1, 2, 3, 5, 9])
def test_clear_forward_tables_serve_as_key_tiles(r, tile):
    """Per axis: the forward tables read as (key tile, query halo) enumerate exactly the pairs within r - 1, each
    once, and the halo slots are distinct real positions (no padded query that
    the distance mask would let through twice)."""
    for length in (1, 2, 5, 8, 9, 16, 17, 23, 31):
        t = circle_axis_tiles(length, r, tile)
        expected = sorted(
            (q, key, key - q + r - 1) for q in range(length) for key in range(length) if abs(key - q) <= r - 1
        )
        assert sorted(_forward_pairs(t)) == expected, length
        # read transposed, the tables' relative index is the mirrored one (query - key + r - 1); the circle mode masks
        # by distance and never reads it
        pairs = [(q, key, 2 * (r - 1) - rel) for q, key, rel in _key_tile_pairs(t)]
        assert len(pairs) == len(set(pairs)) and sorted(pairs) == expected, length
        for n in range(t.k_idx.shape[0]):
            halo = t.k_idx[n].tolist()
            assert len(set(halo)) == len(halo) and all(0 <= x < length for x in halo)


@pytest.mark.parametrize("tile", [(8, 8), (3, 5), (16, 16)])
@pytest.mark.parametrize("hh,ww,r", [(9, 11, 3), (13, 6, 5), (5, 7, 2), (6, 5, 9)])
def test_clear_key_tiles_in_2d(hh, ww, r, tile):
    """The circle mask on (key slot, halo query) over the forward tables is the transposed circle mask."""
    rows, cols = (circle_axis_tiles(n, r, t) for n, t in zip((hh, ww), tile))
    seen = torch.zeros(hh * ww, hh * ww, dtype=torch.long)  # [query, key]: times enumerated
    for th in range(rows.q_idx.shape[0]):
        for tw in range(cols.q_idx.shape[0]):
            for sh, key_h in enumerate(rows.q_idx[th].tolist()):
                for sw, key_w in enumerate(cols.q_idx[tw].tolist()):
                    if (int(rows.tile_of[key_h]), int(rows.slot_of[key_h])) != (th, sh):
                        continue  # a padded key slot: not stored
                    if (int(cols.tile_of[key_w]), int(cols.slot_of[key_w])) != (tw, sw):
                        continue
                    for qh in rows.k_idx[th].tolist():
                        for qw in cols.k_idx[tw].tolist():
                            if (qh - key_h) ** 2 + (qw - key_w) ** 2 < r * r:
                                seen[qh * ww + qw, key_h * ww + key_w] += 1
    assert torch.equal(seen, circle_mask(hh, ww, r).long())
