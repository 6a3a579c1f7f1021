"""CLEAR's circular local attention: the reference against independent formulations, and both backends (the fused
Triton kernels and the tiled PyTorch path) against the reference, forward and every gradient (extra tokens included).

On a machine without CUDA the kernels run under ``TRITON_INTERPRET=1`` at small sizes; with CUDA the same tests run
on the GPU with larger ones (DiT-XL/2 grids, head_dim 72). Outputs and dq are allocated NaN-poisoned
(``VIZATTN_POISON_OUTPUTS=1``), so an element a kernel never writes fails the comparison. Errors are measured against
the reference computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from kernel_checks import ATTN_TOL, DEVICE, DTYPES, ON_GPU, rel_errors

from vizattn.kernels.clear import clear_attention
from vizattn.kernels.clear.reference import circle_mask, clear_attention_reference
from vizattn.kernels.clear.tiles import circle_axis_tiles, clear_tiled


@dataclass(frozen=True)
class Case:
    b: int
    heads: int
    hh: int
    ww: int
    r: int
    m: int
    dtype: str = "fp32"
    head_dim: int = 16

    @property
    def id(self) -> str:
        dims = "" if self.head_dim == 16 else f"-hd{self.head_dim}"
        return f"B{self.b}-H{self.heads}-{self.hh}x{self.ww}-r{self.r}-M{self.m}{dims}-{self.dtype}"


CPU_CASES = [
    Case(2, 3, 13, 11, 3, 5),  # partial tiles on both axes
    Case(1, 2, 10, 7, 5, 3, head_dim=72),  # head_dim not a power of two, halo clipped by the map
    Case(1, 1, 17, 9, 2, 0, head_dim=64),  # no extra tokens, a one-row last tile
    Case(1, 2, 6, 5, 9, 4),  # radius beyond the diagonal: full attention
    Case(1, 1, 20, 19, 6, 0),  # halo of 18 x 18 keys: several key chunks per program, circle truncated inside it
    Case(1, 1, 7, 6, 2, 300),  # extra tokens over several chunks
    Case(1, 1, 9, 12, 4, 2, "bf16", 64),
    Case(1, 2, 12, 9, 3, 7, "fp16", 32),
    # maps large against the halos: the 'torch' backend takes the tiled path here (the reference on the ones above)
    Case(1, 1, 24, 20, 2, 3),
    Case(1, 1, 26, 21, 3, 6, "bf16", 24),
    # head dims the kernels split into a main and a tail block (head_split): 40 = 32 + 16, 96 = 64 + 32
    Case(1, 2, 9, 10, 4, 6, "bf16", 40),
    Case(1, 1, 11, 8, 3, 70, "fp16", 96),
]
GPU_CASES = [
    Case(2, 4, 32, 32, 8, 0, "bf16", 72),  # DiT-XL/2 at 256 px
    Case(1, 2, 64, 64, 16, 256, "bf16", 72),  # DiT-XL/2 at 512 px with 4x4-pooled tokens
    Case(1, 2, 64, 64, 8, 0, "fp16", 72),
    Case(2, 3, 45, 61, 5, 17, "fp16", 64),
    Case(1, 2, 33, 40, 8, 64, "fp32", 128),
    Case(2, 2, 30, 31, 12, 9, "bf16", 40),
] + CPU_CASES
CASES = GPU_CASES if ON_GPU else CPU_CASES


def _inputs(c: Case, seed: int = 0) -> list[torch.Tensor]:
    """q, k, v, extra_k, extra_v, grad_out on DEVICE in the case's dtype (the extras have M = c.m rows)."""
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(c.b, c.hh, c.ww, c.heads, c.head_dim, generator=g) for _ in range(3)]
    extras = [torch.randn(c.b, c.m, c.heads, c.head_dim, generator=g) for _ in range(2)]
    grad = torch.randn(c.b, c.hh, c.ww, c.heads, c.head_dim, generator=g)
    return [t.to(DEVICE, DTYPES[c.dtype]) for t in (*maps, *extras, grad)]


def _sdpa_masked(q, k, v, mask, extra_k=None, extra_v=None, scale=None):
    """Plain SDPA over the flattened map (and the extra tokens concatenated after it) with a boolean (N, N) mask."""
    b, hh, ww, heads, d = q.shape
    qs, ks, vs = (t.reshape(b, hh * ww, heads, d).transpose(1, 2) for t in (q, k, v))
    if extra_k is not None:
        ks = torch.cat([ks, extra_k.transpose(1, 2)], 2)
        vs = torch.cat([vs, extra_v.transpose(1, 2)], 2)
        mask = torch.cat([mask, mask.new_ones(hh * ww, extra_k.shape[1])], 1)
    out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask.to(q.device), scale=scale)
    return out.transpose(1, 2).reshape(b, hh, ww, heads, d)


def _loop_mask(hh: int, ww: int, r: int) -> torch.Tensor:
    """The circle written out pair by pair from the definition (no shared index code)."""
    mask = torch.zeros(hh * ww, hh * ww, dtype=torch.bool)
    for i in range(hh):
        for j in range(ww):
            for i2 in range(hh):
                for j2 in range(ww):
                    mask[i * ww + j, i2 * ww + j2] = math.hypot(i - i2, j - j2) < r
    return mask


# ---------------------------------------------------------------------------------------------------------------------
# The definition


@pytest.mark.parametrize("hh,ww,r", [(7, 9, 3), (5, 5, 1), (6, 11, 4), (4, 3, 7), (9, 8, 2)])
def test_circle_mask_is_the_strict_euclidean_disc(hh, ww, r):
    assert torch.equal(circle_mask(hh, ww, r), _loop_mask(hh, ww, r))


def test_circle_mask_counts_match_the_spec():
    """Keys per interior query and mean densities computed from CLEAR's official mask (spec §1.2)."""
    for r, keys in ((4, 45), (8, 193), (16, 793)):
        side = 2 * r + 1
        assert circle_mask(side, side, r)[(side * side) // 2].sum().item() == keys
    for side, r, density in ((16, 4, 0.142), (32, 8, 0.151), (64, 8, 0.042)):
        assert round(circle_mask(side, side, r).float().mean().item(), 3) == density
    # truncated at the borders, not shifted inward: a corner query keeps the quarter disc a, b >= 0, a^2 + b^2 < 16
    assert circle_mask(20, 20, 4)[0].sum().item() == 15


REF_CASES = [(2, 7, 9, 3, 4), (1, 5, 5, 1, 0), (1, 6, 11, 4, 3), (2, 9, 8, 2, 0)]  # (B, H, W, r, M)


@pytest.mark.parametrize("b,hh,ww,r,m", REF_CASES, ids=[f"B{c[0]}-{c[1]}x{c[2]}-r{c[3]}-M{c[4]}" for c in REF_CASES])
def test_reference_matches_sdpa_with_loop_mask(b, hh, ww, r, m):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(b, hh, ww, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    ek, ev = (torch.randn(b, m, 2, 8, generator=g, dtype=torch.float64) for _ in range(2))
    extras = (ek, ev) if m else (None, None)
    expected = _sdpa_masked(q, k, v, _loop_mask(hh, ww, r), *extras, scale=0.3)
    torch.testing.assert_close(clear_attention_reference(q, k, v, r, *extras, 0.3), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(clear_attention(q, k, v, r, *extras, 0.3), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# The backends against the reference


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_forward_and_gradients_match_reference(case, backend):
    q, k, v, ek, ev, grad = _inputs(case)
    scale = case.head_dim**-0.5
    leaves = [t.clone().requires_grad_() for t in (q, k, v, ek, ev)]
    out = clear_attention(*leaves[:3], case.r, *leaves[3:], backend=backend)
    out.backward(grad)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = clear_attention_reference(*ref_leaves[:3], case.r, *ref_leaves[3:], scale)
    ref.backward(grad.double())

    assert out.dtype == q.dtype and out.shape == ref.shape
    l2_tol, max_tol = ATTN_TOL[q.dtype]
    names = ["out", "dq", "dk", "dv", "d_extra_k", "d_extra_v"]
    for name, ours, theirs in zip(names, [out] + [t.grad for t in leaves], [ref] + [t.grad for t in ref_leaves]):
        assert ours.shape == theirs.shape, name
        assert torch.isfinite(ours).all(), f"{name}: unwritten (NaN) or non-finite elements"
        if theirs.numel():
            l2, mx = rel_errors(ours, theirs)
            assert l2 < l2_tol and mx < max_tol, f"{name}: rel L2 {l2:.2e}, rel max {mx:.2e}"


@pytest.mark.parametrize("tile", [1, 3, 8, 16])
@pytest.mark.parametrize("hh,ww,r,m", [(13, 11, 3, 5), (20, 17, 5, 0), (9, 30, 2, 3), (16, 16, 8, 0)])
def test_tiled_torch_path_equals_reference_for_every_tile(hh, ww, r, m, tile):
    """clear_tiled directly ('torch' picks the reference when the halos cover most of a small map)."""
    g = torch.Generator().manual_seed(2)
    q, k, v, grad = (torch.randn(2, hh, ww, 2, 8, generator=g) for _ in range(4))
    ek, ev = (torch.randn(2, m, 2, 8, generator=g) for _ in range(2))
    results = []
    for fn in (clear_attention_reference, lambda *a: clear_tiled(*a, tile=tile)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, ek, ev)]
        out = fn(*leaves[:3], r, *leaves[3:], 0.4)
        out.backward(grad)
        results.append([out.detach()] + [t.grad for t in leaves])
    for name, ours, ref in zip(("out", "dq", "dk", "dv", "dek", "dev"), *results):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=2e-5, msg=name)


@pytest.mark.parametrize("length", [1, 2, 7, 8, 9, 16, 17, 31])
@pytest.mark.parametrize("r", [1, 2, 4, 9])
@pytest.mark.parametrize("tile", [1, 3, 8])
def test_circle_halos_hold_distinct_keys_and_cover_every_window(length, r, tile):
    """The kernel's circle mode relies on both: it masks by distance only, never by halo slot."""
    t = circle_axis_tiles(length, r, tile)
    for n in range(t.q_idx.shape[0]):
        keys = t.k_idx[n].tolist()
        assert len(set(keys)) == len(keys) and all(0 <= key < length for key in keys)
        for slot, query in enumerate(t.q_idx[n].tolist()):
            needed = set(range(max(query - r + 1, 0), min(query + r, length)))
            assert needed <= set(keys), (n, query)
            rel = t.rel_idx[n, slot]
            assert [key for key, x in zip(keys, rel.tolist()) if x >= 0] == sorted(needed)
    assert torch.equal(t.q_idx[t.tile_of, t.slot_of], torch.arange(length))


TILE_CASES = [  # (H, W, r, M, tile, extra splits): the backward's key tiles and the extra keys' kernel at their corners
    (9, 13, 3, 5, (32, 32), 1),  # tiles larger than a non-square map
    (11, 7, 2, 70, (3, 5), 3),  # odd tiles; two blocks of extra keys, the queries in three parts
    (7, 8, 4, 0, (1, 1), 1),  # one key per tile, extra tokens given but M = 0 (a small map: 56 programs per head)
    (8, 9, 5, 1, (4, 8), 7),  # a single extra token, more parts than query steps
]


@pytest.mark.parametrize(
    "hh,ww,r,m,tile,splits",
    TILE_CASES,
    ids=[f"{c[0]}x{c[1]}-r{c[2]}-M{c[3]}-t{c[4][0]}x{c[4][1]}-s{c[5]}" for c in TILE_CASES],
)
def test_triton_gradients_match_reference_for_any_tile(hh, ww, r, m, tile, splits):
    from vizattn.kernels._halo2d.triton import Launch, halo_bwd
    from vizattn.kernels.clear import triton as kernels

    g = torch.Generator().manual_seed(10)
    q, k, v, grad = (torch.randn(1, hh, ww, 2, 16, generator=g).to(DEVICE) for _ in range(4))
    ek, ev = (torch.randn(1, m, 2, 16, generator=g).to(DEVICE) for _ in range(2))
    out, lse = kernels.clear_fwd(q, k, v, ek, ev, r, 0.3, tile=tile)
    rows, cols = kernels._axes(q, r, tile)
    grads = halo_bwd(
        grad, q, k, v, out, lse, rows, cols, 0.3, circle_radius=r, extra_k=ek, extra_v=ev, extra_splits=splits,
        extra_launch=Launch(block_n=16, block_m=32),
    )
    leaves = [t.double().requires_grad_() for t in (q, k, v, ek, ev)]
    ref = clear_attention_reference(*leaves[:3], r, *leaves[3:], 0.3)
    ref.backward(grad.double())
    assert len(grads) == 5  # dq, dk, dv, d_extra_k, d_extra_v
    l2_tol, max_tol = ATTN_TOL[torch.float32]
    names = ["out", "dq", "dk", "dv", "d_extra_k", "d_extra_v"]
    ours_all = [out, *grads]
    for name, ours, theirs in zip(names, ours_all, [ref] + [t.grad for t in leaves]):
        assert ours.shape == theirs.shape, name
        assert torch.isfinite(ours).all(), f"{name}: unwritten (NaN) or non-finite elements"
        if theirs.numel():
            l2, mx = rel_errors(ours, theirs)
            assert l2 < l2_tol and mx < max_tol, f"{name}: rel L2 {l2:.2e}, rel max {mx:.2e}"


SPLIT_CASES = [  # (head_dim of q/k, of v, M, dtype): the kernels split q/k and v independently (head_split)
    (72, 40, 5, "fp32"),  # 64 + 16 and 32 + 16
    (40, 96, 0, "fp32"),  # 32 + 16 and 64 + 32
    (24, 72, 3, "bf16"),  # one block of 32 and 64 + 16
    (96, 16, 4, "fp16"),  # 64 + 32 and one block of 16
]


@pytest.mark.parametrize("d_qk,d_v,m,dtype", SPLIT_CASES, ids=[f"d{c[0]}-v{c[1]}-M{c[2]}-{c[3]}" for c in SPLIT_CASES])
def test_triton_kernels_take_a_value_dim_other_than_the_key_dim(d_qk, d_v, m, dtype):
    """The op takes one head_dim; its launchers (and the reference) do not need to, which exercises a main + tail
    split of q/k with another (or no) split of v in every kernel."""
    from vizattn.kernels.clear import triton as kernels

    g = torch.Generator().manual_seed(11)
    q, k = (torch.randn(2, 9, 11, 2, d_qk, generator=g) for _ in range(2))
    ek = torch.randn(2, m, 2, d_qk, generator=g)
    v, grad = (torch.randn(2, 9, 11, 2, d_v, generator=g) for _ in range(2))
    ev = torch.randn(2, m, 2, d_v, generator=g)
    q, k, v, ek, ev, grad = (t.to(DEVICE, DTYPES[dtype]) for t in (q, k, v, ek, ev, grad))
    out, lse = kernels.clear_fwd(q, k, v, ek, ev, 4, 0.2)
    grads = kernels.clear_bwd(grad, q, k, v, ek, ev, out, lse, 4, 0.2)
    leaves = [t.double().requires_grad_() for t in (q, k, v, ek, ev)]
    ref = clear_attention_reference(*leaves[:3], 4, *leaves[3:], 0.2)
    ref.backward(grad.double())
    l2_tol, max_tol = ATTN_TOL[q.dtype]
    names = ["out", "dq", "dk", "dv", "d_extra_k", "d_extra_v"]
    for name, ours, theirs in zip(names, [out, *grads], [ref] + [t.grad for t in leaves]):
        assert ours.shape == theirs.shape, name
        assert torch.isfinite(ours).all(), f"{name}: unwritten (NaN) or non-finite elements"
        if theirs.numel():
            l2, mx = rel_errors(ours, theirs)
            assert l2 < l2_tol and mx < max_tol, f"{name}: rel L2 {l2:.2e}, rel max {mx:.2e}"


# ---------------------------------------------------------------------------------------------------------------------
# Special radii and extra tokens


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("m", [0, 3])
def test_radius_beyond_the_diagonal_is_full_attention(backend, m):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 5, 6, 2, 16, generator=g).to(DEVICE) for _ in range(3))
    ek, ev = (torch.randn(2, m, 2, 16, generator=g).to(DEVICE) for _ in range(2))
    extras = (ek, ev) if m else (None, None)
    full = _sdpa_masked(q, k, v, torch.ones(30, 30, dtype=torch.bool), *extras)
    for r in (7, 100):  # the farthest pair of a 5x6 map is sqrt(4^2 + 5^2) = 6.4 apart
        torch.testing.assert_close(clear_attention(q, k, v, r, *extras, backend=backend), full, rtol=1e-5, atol=1e-5)
    # r = 6 misses the opposite corners, so it is not full attention
    assert not torch.allclose(clear_attention(q, k, v, 6, *extras, backend=backend), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_radius_one_is_attention_to_self_and_the_extra_tokens(backend):
    g = torch.Generator().manual_seed(4)
    q, k, v, grad = (torch.randn(1, 9, 10, 2, 16, generator=g).to(DEVICE).requires_grad_() for _ in range(4))
    out = clear_attention(q, k, v, 1, backend=backend)
    torch.testing.assert_close(out, v, rtol=1e-6, atol=1e-6)  # one key: softmax weight exactly 1
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    torch.testing.assert_close(dv, grad, rtol=1e-6, atol=1e-6)
    for d in (dq, dk):
        torch.testing.assert_close(d, torch.zeros_like(d), rtol=0, atol=1e-5)

    ek, ev = (torch.randn(1, 4, 2, 16, generator=g).to(DEVICE) for _ in range(2))
    out = clear_attention(q, k, v, 1, ek, ev, 0.5, backend=backend)
    keys = torch.cat([k[..., None, :], ek[:, None, None].expand(-1, 9, 10, -1, -1, -1).transpose(3, 4)], -2)
    vals = torch.cat([v[..., None, :], ev[:, None, None].expand(-1, 9, 10, -1, -1, -1).transpose(3, 4)], -2)
    attn = torch.softmax((0.5 * q[..., None, :] * keys).sum(-1), -1)  # (1, 9, 10, heads, 1 + M)
    torch.testing.assert_close(out, (attn[..., None] * vals).sum(-2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_zero_extra_tokens_equal_none_and_get_empty_gradients(backend):
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 7, 9, 1, 16, generator=g).to(DEVICE) for _ in range(3))
    ek, ev = (torch.zeros(2, 0, 1, 16, device=DEVICE, requires_grad=True) for _ in range(2))
    out = clear_attention(q, k, v, 3, ek, ev, backend=backend)
    torch.testing.assert_close(out, clear_attention(q, k, v, 3, backend=backend), rtol=0, atol=0)
    out.sum().backward()
    assert ek.grad is not None and ek.grad.shape == ek.shape and ev.grad.shape == ev.shape


def test_packed_qkv_views_are_read_in_place():
    """q, k, v as slices of one (B, H, W, 3, heads, D) projection; extra tokens as slices of a packed K/V tensor."""
    g = torch.Generator().manual_seed(6)
    qkv = torch.randn(2, 10, 9, 3, 2, 16, generator=g).to(DEVICE)
    ekv = torch.randn(2, 5, 2, 2, 16, generator=g).to(DEVICE)
    q, k, v = qkv.unbind(3)
    ek, ev = ekv.unbind(2)
    assert not (q.is_contiguous() or ek.is_contiguous())
    expected = clear_attention_reference(q.contiguous(), k.contiguous(), v.contiguous(), 3, ek.contiguous(),
                                         ev.contiguous())
    for backend in ("triton", "torch"):
        out = clear_attention(q, k, v, 3, ek, ev, backend=backend)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_alignment_declared_only_where_it_holds():
    """_align_log2: the element alignment the kernels declare (ALIGN_LOG2) is the largest power of two up to 8 that
    divides every row stride of a dim longer than 1 and the head dim, 0 where Triton sees it already (multiples of 16)
    or where the last dim is strided."""
    from vizattn.kernels._halo2d.triton import _align_log2

    qkv = torch.zeros(2, 8, 8, 3, 16, 72)  # DiT-XL: head dim 72, q/k/v views of one projection
    assert _align_log2(*qkv.unbind(3)) == 3
    assert _align_log2(torch.zeros(2, 8, 8, 4, 32)) == 0  # every stride a multiple of 16: nothing to declare
    assert _align_log2(torch.zeros(2, 8, 8, 4, 32), torch.zeros(2, 8, 8, 4, 36)) == 2
    assert _align_log2(torch.zeros(2, 8, 8, 3, 40)) == 3
    assert _align_log2(torch.zeros(2, 8, 8, 3, 42)) == 1
    assert _align_log2(torch.zeros(2, 8, 8, 3, 21)) == 0
    assert _align_log2(torch.zeros(1, 8, 8, 1, 72)[:, :, :, :, :64]) == 3  # size-1 dims' strides never multiply
    assert _align_log2(torch.zeros(2, 8, 8, 4, 64).transpose(-1, -2)) == 0  # strided head dim: no vector loads
    assert _align_log2(torch.zeros(2, 8, 8, 4, 16)[:, 1:, :, :, 8:]) == 3  # a view's offset is Triton's to check


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "separate"])
def test_declared_alignment_changes_no_result(monkeypatch, packed):
    """The kernels with ALIGN_LOG2 (head dim 72: strides and head dim multiples of 8) compute what they compute
    without it, forward and backward, extra tokens included: the declaration only informs the compiler. Bitwise under
    the interpreter. On the H200 (float32) the two compiles' results have differed in their last bits since the circle
    mask became a distance dot (2026-12-02; the cause is not found: the forward's Triton IR is the same but for the
    addresses, and the multiply-adds are explicit), so there they are compared to 1e-5: wrong addresses would differ
    by O(1)."""
    import vizattn.kernels._halo2d.triton as halo

    g = torch.Generator().manual_seed(8)
    if packed:
        q, k, v = torch.randn(1, 9, 11, 3, 2, 72, generator=g).to(DEVICE).unbind(3)
    else:
        q, k, v = (torch.randn(1, 9, 11, 2, 72, generator=g).to(DEVICE) for _ in range(3))
    ek, ev = (torch.randn(1, 5, 2, 72, generator=g).to(DEVICE) for _ in range(2))
    assert halo._align_log2(q, k, v, ek, ev) == 3
    results = []
    for declared in (True, False):
        if not declared:
            monkeypatch.setattr(halo, "_align_log2", lambda *maps: 0)
        leaves = [t.clone().requires_grad_() for t in (q, k, v, ek, ev)]
        out = clear_attention(*leaves[:3], 3, *leaves[3:], backend="triton")
        out.backward(torch.ones_like(out))
        results.append([out.detach()] + [t.grad for t in leaves])
    for ours, theirs in zip(*results):
        if DEVICE.type == "cpu":
            assert torch.equal(ours, theirs)
        else:
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_circle_terms_give_exact_squared_distances():
    """The halo terms of the circle's distance dot (CIRCLE_DOT) are exact in float16 and, times each slot's terms (as
    the kernels build them), give every squared distance exactly, at the largest halo that takes the dot; keys past
    the halo's end and masked slots come out at least 2 * BIG (4096) away, beyond every radius that takes it."""
    import vizattn.kernels._halo2d.triton as halo

    side = halo._CIRCLE_DOT_MAX_HALO
    terms = halo.circle_terms(side, side, 128, torch.device("cpu"))
    n_keys = side * side
    assert terms.shape == (16, -(-n_keys // 128) * 128) and terms.dtype == torch.float16
    y = torch.arange(side)
    pos = torch.stack(torch.meshgrid(y, y, indexing="ij"), -1).reshape(-1, 2).double()  # (row, col) of each halo slot
    c = pos - side // 2
    slots = torch.zeros(n_keys + 1, 16, dtype=torch.float64)
    slots[:-1, :2] = 1
    slots[:-1, 2:4] = c
    slots[:-1, 4:6] = c * c
    slots[-1, 4:6] = halo._CIRCLE_BIG  # a masked slot
    assert torch.equal(slots.half().double(), slots)  # every slot term is a float16
    dist = slots @ terms.double()
    truth = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
    assert torch.equal(dist[:-1, :n_keys], truth)
    assert (dist[:, n_keys:] >= 2 * halo._CIRCLE_BIG).all() and (dist[-1] >= 2 * halo._CIRCLE_BIG).all()
    assert halo._CIRCLE_DOT_MAX_RADIUS ** 2 <= 2 * halo._CIRCLE_BIG


@pytest.mark.parametrize("radius", [3, 5])
def test_circle_mask_by_dot_changes_no_result(monkeypatch, radius):
    """The circle mask from the distance dot (CIRCLE_DOT) gives the results of the integer mask per pair, forward and
    every gradient, on a map with padded tiles and extra tokens; the dot is what the launchers take here, and they
    fall back to the integer mask past its radius and halo limits. The kernels with the dot also scale the scores in
    the exponent's multiply-add, so on a GPU the two differ by the rounding of fused multiply-adds (float32 here:
    1e-6); one pair more or less in a window of at most 81 moves them by orders of magnitude more."""
    import vizattn.kernels._halo2d.triton as halo
    from vizattn.kernels.clear.triton import _axes

    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(2, 9, 11, 2, 16, generator=g).to(DEVICE) for _ in range(3))
    ek, ev = (torch.randn(2, 3, 2, 16, generator=g).to(DEVICE) for _ in range(2))
    rows, cols = _axes(q, radius, (4, 4))
    assert halo._circle_mask_args(rows, cols, 32, radius, q)[1]
    assert not halo._circle_mask_args(rows, cols, 32, halo._CIRCLE_DOT_MAX_RADIUS + 1, q)[1]
    assert not halo._circle_mask_args(rows, cols, 32, None, q)[1]
    big = _axes(torch.zeros(1, 100, 100, 1, 1), 47, (8, 8))  # halo 8 + 2 * 47 - 2 = 100 > 91
    assert not halo._circle_mask_args(*big, 32, 47, q)[1]
    results = []
    real = halo._circle_mask_args
    for by_dot in (True, False):
        if not by_dot:
            monkeypatch.setattr(halo, "_circle_mask_args", lambda rows, cols, block_n, r, placeholder: (placeholder,
                                                                                                        False))
        leaves = [t.clone().requires_grad_() for t in (q, k, v, ek, ev)]
        out = clear_attention(*leaves[:3], radius, *leaves[3:], backend="triton")
        out.backward(torch.ones_like(out))
        results.append([out.detach()] + [t.grad for t in leaves])
    assert real is not halo._circle_mask_args
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Arguments, dispatch and registration


def _bad(**changes):
    g = torch.Generator().manual_seed(7)
    args = dict(
        q=torch.randn(1, 6, 5, 2, 4, generator=g),
        k=torch.randn(1, 6, 5, 2, 4, generator=g),
        v=torch.randn(1, 6, 5, 2, 4, generator=g),
        radius=2,
        extra_k=torch.randn(1, 3, 2, 4, generator=g),
        extra_v=torch.randn(1, 3, 2, 4, generator=g),
    )
    args.update(changes)
    return args


BAD_ARGS = {
    "q-4d": (_bad(q=torch.zeros(1, 6, 5, 8)), r"q must be a heads-last map .* got shape \(1, 6, 5, 8\)"),
    "k-shape": (_bad(k=torch.zeros(1, 6, 4, 2, 4)),
                r"k must have the shape of q \(1, 6, 5, 2, 4\), got \(1, 6, 4, 2, 4\)"),
    "v-shape": (_bad(v=torch.zeros(1, 6, 5, 2, 8)), r"v must have the shape of q .* got \(1, 6, 5, 2, 8\)"),
    "radius-0": (_bad(radius=0), r"radius must be an int >= 1 .* got 0\."),
    "radius-float": (_bad(radius=2.5), r"radius must be an int >= 1 .* got 2\.5\."),
    "radius-bool": (_bad(radius=True), r"radius must be an int >= 1 .* got True\."),
    "only-extra-k": (_bad(extra_v=None), r"extra_k was given without extra_v; pass both"),
    "only-extra-v": (_bad(extra_k=None), r"extra_v was given without extra_k; pass both"),
    "extra-heads": (_bad(extra_k=torch.zeros(1, 3, 1, 4)),
                    r"extra_k must be \(B, M, heads, head_dim\) = \(1, M, 2, 4\), got \(1, 3, 1, 4\)"),
    "extra-batch": (_bad(extra_k=torch.zeros(2, 3, 2, 4)), r"extra_k must be .* got \(2, 3, 2, 4\)"),
    "extra-v-shape": (_bad(extra_v=torch.zeros(1, 4, 2, 4)),
                      r"extra_v must have the shape of extra_k \(1, 3, 2, 4\), got \(1, 4, 2, 4\)"),
    "int-dtype": (_bad(q=torch.zeros(1, 6, 5, 2, 4, dtype=torch.int32)), r"q must be a floating-point tensor"),
    "mixed-dtype": (_bad(v=torch.zeros(1, 6, 5, 2, 4, dtype=torch.float64)),
                    r"v is torch.float64 but q is torch.float32"),
    "extra-dtype": (_bad(extra_v=torch.zeros(1, 3, 2, 4, dtype=torch.float16)), r"extra_v is torch.float16 but q"),
    "scale": (_bad(scale="0.5"), r"scale must be a float or None, got '0.5'"),
    "backend": (_bad(backend="cuda"), r"backend='cuda' is not one of"),
}


@pytest.mark.parametrize("name", list(BAD_ARGS))
def test_bad_arguments_raise_value_error_naming_the_value(name):
    kwargs, match = BAD_ARGS[name]
    with pytest.raises(ValueError, match=match):
        clear_attention(**kwargs)


def test_unsupported_triton_cases_are_explained():
    q = torch.randn(1, 6, 6, 1, 4, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match=r"float16, bfloat16 or float32 tensors, got torch.float64"):
        clear_attention(q, q, q, 2, backend="triton")
    big = torch.randn(1, 3, 3, 1, 160, device=DEVICE)
    with pytest.raises(ValueError, match=r"head_dim is at most 128, got 160"):
        clear_attention(big, big, big, 2, backend="triton")
    # 'auto' falls back to the PyTorch backend for what the kernel does not take
    assert clear_attention(q, q, q, 2).dtype == torch.float64


def test_auto_may_take_triton_on_cuda(monkeypatch):
    """'auto' lets the dispatcher pick the Triton kernels for CUDA tensors (they beat flex_attention forward and
    backward on the H200; see TRITON_BY_DEFAULT), and the PyTorch path everywhere else."""
    import vizattn.kernels.clear as clear_mod

    seen = []

    def spy(op, backend, tensors, reasons=(), auto_triton=True):
        seen.append((op, backend, auto_triton))
        return "torch"

    monkeypatch.setattr(clear_mod, "select_backend", spy)
    q = torch.randn(1, 5, 6, 2, 16)
    clear_attention(q, q, q, 2)
    assert seen == [("clear_attention", "auto", True)]


def test_custom_op_registration():
    """Schema, fake (meta) implementation and autograd registration, as torch.compile needs them."""
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 7, 8, 1, 16, generator=g).to(DEVICE) for _ in range(3))
    ek, ev = (torch.randn(1, 3, 1, 16, generator=g).to(DEVICE) for _ in range(2))
    for extras in ((ek, ev), (None, None)):
        torch.library.opcheck(
            torch.ops.vizattn.clear_attention.default,
            (q, k, v, *extras, 3, 0.25),
            test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
        )


def test_torch_compile_has_no_graph_break():
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 7, 8, 1, 16, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    ek, ev = (torch.randn(1, 3, 1, 16, generator=g).to(DEVICE).requires_grad_() for _ in range(2))
    leaves = (q, k, v, ek, ev)

    def fn(q, k, v, ek, ev):
        return clear_attention(q * 1.0, k, v, 3, ek, ev, backend="triton").sum()

    compiled = torch.compile(fn, fullgraph=True, backend="inductor" if ON_GPU else "aot_eager")
    compiled(*leaves).backward()
    grads = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    fn(*leaves).backward()
    for ours, eager in zip(grads, [t.grad for t in leaves]):
        torch.testing.assert_close(ours, eager, rtol=1e-5, atol=1e-5)
