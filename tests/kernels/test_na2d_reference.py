"""The neighborhood-attention reference and its PyTorch backend, against independent formulations of spec §3.

- dense attention over the whole map with an explicit window mask and an explicit bias table, both built query by
  query from the spec's centre formula ``c = clamp(p, r, L_g - 1 - r)`` (no shared index code);
- the sub-grid decomposition of §3.6: dilated NA equals d^2 independent non-dilated NA problems;
- ``k * d`` equal to the map: full attention with a position-dependent bias;
- the tiled PyTorch backend (``backend='torch'``) equals the reference, forward and every gradient, for every tile size.
"""

from __future__ import annotations

import pytest
import torch

from vizattn.kernels.na2d import na2d
from vizattn.kernels.na2d.reference import na2d_reference, neighborhood_indices
from vizattn.kernels.na2d.tiles import na2d_tiled


def _axis_window(p_global: int, length: int, k: int, d: int) -> tuple[list[int], list[int]]:
    """Spec §3.2/§3.4 for one query, odd k: global key indices and bias indices of its window."""
    r = k // 2
    g, p = p_global % d, p_global // d
    group_len = -(-(length - g) // d)
    c = min(max(p, r), group_len - 1 - r)
    keys = [(c - r + t) * d + g for t in range(k)]
    bias = [(c - r + t - p) + k - 1 for t in range(k)]
    return keys, bias


def _dense_masked(q, k, v, ks, d, rpb, scale):
    """Full attention over all H*W tokens, masked to each query's window, bias from an explicit (N, N) table."""
    b, hh, ww, heads, _ = q.shape
    n = hh * ww
    mask = torch.zeros(n, n, dtype=torch.bool)
    bias = torch.zeros(heads, n, n, dtype=torch.float64)
    for i in range(hh):
        rows, bias_r = _axis_window(i, hh, ks, d)
        for j in range(ww):
            cols, bias_c = _axis_window(j, ww, ks, d)
            for ki, bi in zip(rows, bias_r):
                for kj, bj in zip(cols, bias_c):
                    mask[i * ww + j, ki * ww + kj] = True
                    if rpb is not None:
                        bias[:, i * ww + j, ki * ww + kj] = rpb[:, bi, bj].double()
    assert (mask.sum(1) == ks * ks).all()  # exactly k*k keys per query, never truncated
    qh, kh, vh = (t.double().reshape(b, n, heads, -1).transpose(1, 2) for t in (q, k, v))
    logits = (qh * scale) @ kh.transpose(-1, -2) + bias
    attn = logits.masked_fill(~mask, float("-inf")).softmax(-1)
    return (attn @ vh).transpose(1, 2).reshape(b, hh, ww, heads, -1)


def _inputs(b, hh, ww, heads, dim, ks, seed=0, dim_v=None):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, b, hh, ww, heads, dim, generator=g)
    v = torch.randn(b, hh, ww, heads, dim_v or dim, generator=g)
    rpb = torch.randn(heads, 2 * ks - 1, 2 * ks - 1, generator=g)
    return q, k, v, rpb


SPEC_CASES = [
    # (B, H, W, heads, head_dim, k, d)
    (2, 9, 11, 2, 4, 3, 1),
    (1, 14, 10, 1, 4, 5, 2),
    (1, 13, 17, 2, 3, 3, 4),
    (1, 7, 8, 3, 4, 7, 1),  # k = H: every window spans all rows
    (1, 21, 16, 1, 2, 7, 2),  # uneven dilation groups on H (21 = 2 * 10 + 1)
]


def _case_id(c):
    return "B{}-{}x{}-h{}-hd{}-k{}-d{}".format(*c)


@pytest.mark.parametrize("case", SPEC_CASES, ids=_case_id)
@pytest.mark.parametrize("with_rpb", [True, False], ids=["rpb", "norpb"])
def test_reference_matches_dense_masked_attention(case, with_rpb):
    b, hh, ww, heads, dim, ks, d = case
    q, k, v, rpb = _inputs(b, hh, ww, heads, dim, ks)
    rpb = rpb if with_rpb else None
    expected = _dense_masked(q, k, v, ks, d, rpb, 0.7)
    for out in (na2d_reference(q, k, v, ks, d, rpb, 0.7), na2d(q, k, v, ks, d, rpb, 0.7, backend="torch")):
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hh,ww,ks,d", [(20, 17, 7, 2), (24, 30, 5, 4), (13, 13, 3, 4)])
def test_dilation_is_independent_subgrids(hh, ww, ks, d):
    """Spec §3.6: sub-grid {i = g_h mod d, j = g_w mod d} is a non-dilated NA problem with the same bias table."""
    q, k, v, rpb = _inputs(1, hh, ww, 2, 4, ks, seed=1)
    out = na2d_reference(q, k, v, ks, d, rpb)
    for gh in range(d):
        for gw in range(d):
            sub = [t[:, gh::d, gw::d] for t in (q, k, v)]
            torch.testing.assert_close(out[:, gh::d, gw::d], na2d_reference(*sub, ks, 1, rpb), rtol=1e-5, atol=1e-6)


def test_window_equal_to_map_is_full_attention_with_position_bias():
    """k = H = W (level 3 at 224): every query attends to all tokens; bias index = key - query + k - 1."""
    q, k, v, rpb = _inputs(2, 7, 7, 3, 8, 7, seed=2)
    out = na2d_reference(q, k, v, 7, 1, rpb)
    pos = torch.arange(7)
    rel = pos[None, :] - pos[:, None] + 6  # (query, key)
    bias = rpb[:, rel[:, None, :, None], rel[None, :, None, :]].reshape(3, 49, 49)
    qh, kh, vh = (t.reshape(2, 49, 3, 8).transpose(1, 2) for t in (q, k, v))
    expected = torch.softmax((qh * 8**-0.5) @ kh.transpose(-1, -2) + bias, -1) @ vh
    torch.testing.assert_close(out, expected.transpose(1, 2).reshape(2, 7, 7, 3, 8), rtol=1e-5, atol=1e-5)


def test_neighborhood_indices_follow_natten_window_and_bias_starts():
    """The 1-D tables against NATTEN's get_window_start / get_pb_start formulas (natten_cpu_commons.h, v0.17.5)."""

    def window_start(i, length, k, d):
        r = k // 2
        gi, p = i % d, i // d
        lp = (length + d - 1) // d
        lp -= 1 if gi >= d - (lp * d - length) else 0
        return (max(p - r, 0) + (p + r >= lp) * (lp - p - r - 1)) * d + gi

    def pb_start(i, length, k, d):
        r = k // 2
        if d <= 1:
            return r + (i < r) * (r - i) + (i + r >= length) * (length - i - 1 - r)
        if i - r * d < 0:
            return k - 1 - i // d
        if i + r * d >= length:
            return (length - i - 1) // d
        return r

    for k in (3, 5, 7, 9, 11, 13):
        for d in (1, 2, 3, 5, 8, 13):
            for length in range(k * d, k * d + 12):
                keys, bias = neighborhood_indices(length, k, d)
                for i in range(length):
                    assert keys[i, 0].item() == window_start(i, length, k, d), (k, d, length, i)
                    assert bias[i, 0].item() == pb_start(i, length, k, d), (k, d, length, i)
                assert torch.equal(keys[:, 1:] - keys[:, :-1], torch.full((length, k - 1), d))
                assert torch.equal(bias[:, 1:] - bias[:, :-1], torch.ones(length, k - 1, dtype=torch.long))
                assert ((keys - torch.arange(length)[:, None]) == 0).any(1).all()  # the query is in its window


def test_even_kernel_has_one_key_less_after_the_query():
    keys, bias = neighborhood_indices(12, 4, 1)
    assert keys[5].tolist() == [3, 4, 5, 6]  # 2 before, 1 after
    assert keys[0].tolist() == [0, 1, 2, 3] and keys[11].tolist() == [8, 9, 10, 11]
    assert bias[5].tolist() == [1, 2, 3, 4] and bias[11].tolist() == [0, 1, 2, 3]
    q, k, v, rpb = _inputs(1, 12, 9, 2, 4, 4, seed=3)
    torch.testing.assert_close(na2d(q, k, v, 4, 2, rpb, backend="torch"), na2d_reference(q, k, v, 4, 2, rpb))


TILED_CASES = [
    # (B, H, W, heads, head_dim, k, d)
    (2, 20, 17, 3, 8, 7, 2),
    (1, 7, 7, 2, 4, 7, 1),
    (1, 13, 9, 2, 4, 3, 3),
    (1, 30, 23, 2, 8, 5, 1),
    (1, 56, 56, 1, 4, 7, 8),
    (1, 29, 33, 1, 4, 11, 2),
]


@pytest.mark.parametrize("tile", [1, 3, 8, 16])
@pytest.mark.parametrize("case", TILED_CASES, ids=_case_id)
def test_tiled_backend_equals_reference_forward_and_gradients(case, tile):
    b, hh, ww, heads, dim, ks, d = case
    q, k, v, rpb = _inputs(b, hh, ww, heads, dim, ks, seed=4, dim_v=dim + 2)
    grad = torch.randn(b, hh, ww, heads, dim + 2)
    results = []
    for fn in (na2d_reference, lambda *a: na2d_tiled(*a, tile=tile)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
        out = fn(*leaves[:3], ks, d, leaves[3], 0.4)
        out.backward(grad)
        results.append([out.detach()] + [t.grad for t in leaves])
    for name, ours, ref in zip(("out", "dq", "dk", "dv", "drpb"), *results):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=2e-5, msg=name)


def test_dtype_layout_and_views():
    """Low-precision inputs come back in their dtype; non-contiguous views (packed qkv slices) are read correctly."""
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(1, 10, 9, 3, 2, 4, generator=g)
    q, k, v = qkv.unbind(3)
    assert not q.is_contiguous()
    out = na2d(q, k, v, 3, 2)
    torch.testing.assert_close(out, na2d_reference(q.contiguous(), k.contiguous(), v.contiguous(), 3, 2))
    out16 = na2d(q.bfloat16(), k.bfloat16(), v.bfloat16(), 3, 2)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out, rtol=3e-2, atol=3e-2)


def test_argument_errors_name_the_value(monkeypatch):
    q = torch.randn(1, 8, 8, 2, 4)
    rpb = torch.zeros(2, 5, 5)
    with pytest.raises(ValueError, match=r"the map is 8x8 but kernel_size \* dilation = 3 \* 3 = 9"):
        na2d(q, q, q, 3, 3)
    with pytest.raises(ValueError, match=r"kernel_size must be an int >= 2.*got 1"):
        na2d(q, q, q, 1)
    with pytest.raises(ValueError, match=r"dilation must be a positive int, got 0"):
        na2d(q, q, q, 3, 0)
    with pytest.raises(
        ValueError, match=r"rpb must have shape \(heads, 2k - 1, 2k - 1\) = \(2, 7, 7\), got \(2, 5, 5\)"
    ):
        na2d(q, q, q, 4, rpb=rpb)
    with pytest.raises(ValueError, match=r"q must be a heads-last map"):
        na2d(q[0], q[0], q[0], 3)
    with pytest.raises(ValueError, match=r"k must have the shape of q"):
        na2d(q, q[:, :7], q, 3)
    with pytest.raises(ValueError, match=r"v must be \(B, H, W, heads, head_dim_v\)"):
        na2d(q, q, q[..., :1, :], 3)
    with pytest.raises(ValueError, match=r"backend='cuda' is not one of"):
        na2d(q, q, q, 3, backend="cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the kernel tests may have set it for this process
    with pytest.raises(ValueError, match=r"backend='triton' was requested but cannot run.*not on a CUDA device"):
        na2d(q, q, q, 3, backend="triton")
