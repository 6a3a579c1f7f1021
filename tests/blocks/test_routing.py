"""RoutingAttention / AttentionLePE and the routed-attention reference, checked against independent formulations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vizattn.blocks import AttentionLePE, RoutingAttention
from vizattn.kernels.routed import region_routing, routed_attention

torch.set_default_dtype(torch.float32)


def _dense_masked_attention(q, k, v, r_idx, n_win, num_heads, scale):
    """Full attention over all tokens, masked to the routed regions: no gather, no region layout."""
    n, hh, ww, c_qk = q.shape
    region = (torch.arange(hh)[:, None] // (hh // n_win)) * n_win + torch.arange(ww)[None, :] // (ww // n_win)
    region = region.flatten()  # token -> region id
    allowed = torch.zeros(n, n_win * n_win, n_win * n_win, dtype=torch.bool)
    allowed.scatter_(2, r_idx, True)
    mask = allowed[:, region][:, :, region]  # (n, tokens, tokens)
    qh = q.reshape(n, hh * ww, num_heads, -1).transpose(1, 2).double()
    kh = k.reshape(n, hh * ww, num_heads, -1).transpose(1, 2).double()
    vh = v.reshape(n, hh * ww, num_heads, -1).transpose(1, 2).double()
    logits = (qh * scale) @ kh.transpose(-1, -2)
    logits = logits.masked_fill(~mask[:, None], float("-inf"))
    out = logits.softmax(-1) @ vh
    return out.transpose(1, 2).reshape(n, hh, ww, -1)


CASES = [
    # (N, H, W, n_win, topk, heads, c_qk, c_v)
    (2, 14, 14, 7, 1, 2, 16, 16),
    (1, 12, 20, 4, 3, 2, 32, 32),
    (2, 6, 9, 3, 9, 3, 24, 24),  # topk = all regions
    (1, 8, 8, 2, 2, 1, 16, 8),  # C_qk != C_v
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-{}x{}-nwin{}-topk{}-h{}-qk{}-v{}".format(*c))
def test_reference_matches_dense_masked_attention(case):
    n, hh, ww, n_win, topk, heads, c_qk, c_v = case
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, n, hh, ww, c_qk, generator=g)
    v = torch.randn(n, hh, ww, c_v, generator=g)
    r_idx = torch.stack([torch.randperm(n_win * n_win, generator=g)[:topk] for _ in range(n * n_win * n_win)])
    r_idx = r_idx.reshape(n, n_win * n_win, topk)
    out = routed_attention(q, k, v, r_idx, n_win, heads, backend="torch")
    expected = _dense_masked_attention(q, k, v, r_idx, n_win, heads, c_qk**-0.5)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_topk_all_regions_is_global_attention():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, 2, 9, 6, 32, generator=g)
    r_idx = region_routing(q, k, n_win=3, topk=9)
    out = routed_attention(q, k, v, r_idx, n_win=3, num_heads=2)
    heads = [t.reshape(2, 54, 2, 16).transpose(1, 2) for t in (q, k, v)]
    expected = F.scaled_dot_product_attention(*heads, scale=32**-0.5).transpose(1, 2).reshape(2, 9, 6, 32)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_region_routing_picks_top_mean_affinity():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 2, 12, 8, 16, generator=g)
    idx = region_routing(q, k, n_win=4, topk=5, scale=0.25)
    # region means with avg_pool2d (NCHW), row-major flattening
    qm = F.avg_pool2d(q.permute(0, 3, 1, 2), (3, 2)).flatten(2).transpose(1, 2)
    km = F.avg_pool2d(k.permute(0, 3, 1, 2), (3, 2)).flatten(2).transpose(1, 2)
    logits = 0.25 * qm @ km.transpose(1, 2)
    expected = logits.argsort(dim=-1, descending=True)[..., :5]
    assert torch.equal(idx, expected)
    assert not idx.requires_grad


def test_routing_attention_auto_pad_is_pad_then_crop():
    torch.manual_seed(3)
    padded = RoutingAttention(32, num_heads=2, n_win=4, topk=3, side_dwconv=5, auto_pad=True).eval()
    plain = RoutingAttention(32, num_heads=2, n_win=4, topk=3, side_dwconv=5, auto_pad=False).eval()
    plain.load_state_dict(padded.state_dict())
    x = torch.randn(2, 10, 13, 32)
    with torch.no_grad():
        out = padded(x)
        expected = plain(F.pad(x, (0, 0, 0, 3, 0, 2)))[:, :10, :13]
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected)


def test_routing_attention_gradients_flow_to_qkv_lepe_and_output():
    torch.manual_seed(4)
    block = RoutingAttention(32, num_heads=2, n_win=2, topk=2, side_dwconv=3)
    x = torch.randn(1, 8, 8, 32, requires_grad=True)
    block(x).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_routing_attention_official_key_names():
    keys = set(RoutingAttention(64, 2, 7, topk=1, side_dwconv=5).state_dict())
    assert keys == {"qkv.qkv.weight", "qkv.qkv.bias", "lepe.weight", "lepe.bias", "wo.weight", "wo.bias"}


def test_attention_lepe_matches_manual_computation():
    torch.manual_seed(5)
    block = AttentionLePE(64, num_heads=8, side_dwconv=5).eval()
    assert block.qkv.bias is None and set(block.state_dict()) == {
        "qkv.weight",
        "proj.weight",
        "proj.bias",
        "lepe.weight",
        "lepe.bias",
    }
    x = torch.randn(2, 5, 7, 64)
    qkv = torch.einsum("nhwc,oc->nhwo", x, block.qkv.weight).reshape(2, 35, 3, 8, 8)
    q, k, v = qkv.unbind(2)  # (n, tokens, heads, d)
    attn = (torch.einsum("nihd,njhd->nhij", q, k) * 8**-0.5).softmax(-1)
    out = torch.einsum("nhij,njhd->nihd", attn, v).reshape(2, 5, 7, 64)
    out = out + F.conv2d(x.permute(0, 3, 1, 2), block.lepe.weight, block.lepe.bias, padding=2, groups=64).permute(
        0, 2, 3, 1
    )
    expected = out @ block.proj.weight.T + block.proj.bias
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_block_errors_name_the_value():
    block = RoutingAttention(32, num_heads=2, n_win=4, topk=2)
    with pytest.raises(ValueError, match=r"\(N, H, W, 32\), got shape \(1, 8, 8, 16\)"):
        block(torch.randn(1, 8, 8, 16))
    with pytest.raises(ValueError, match=r"10x12 is not a multiple of n_win=4"):
        block(torch.randn(1, 10, 12, 32))
    with pytest.raises(ValueError, match=r"topk must be in \[1, n_win\^2 = 16\], got 17"):
        RoutingAttention(32, num_heads=2, n_win=4, topk=17)
    with pytest.raises(ValueError, match=r"multiples of num_heads=3"):
        RoutingAttention(32, num_heads=3)


def test_op_argument_errors():
    q = torch.randn(1, 8, 8, 16)
    r_idx = torch.zeros(1, 16, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"backend='cuda' is not one of"):
        routed_attention(q, q, q, r_idx, 4, 2, backend="cuda")
    with pytest.raises(
        ValueError, match=r"r_idx must be an integer tensor of shape \(N, n_win\^2, topk\) = \(1, 16, topk\)"
    ):
        routed_attention(q, q, q, r_idx[:, :8], 4, 2)
    with pytest.raises(ValueError, match=r"k must have the shape of q"):
        routed_attention(q, q[:, :4], q, r_idx, 4, 2)
    with pytest.raises(ValueError, match=r"topk must be an int in \[1, n_win\^2 = 4\], got 5"):
        region_routing(q, q, 2, 5)


def test_env_var_forces_backend(monkeypatch):
    q = torch.randn(1, 4, 4, 8)
    r_idx = torch.zeros(1, 4, 1, dtype=torch.long)
    monkeypatch.setenv("VIZATTN_BACKEND", "torch")
    assert routed_attention(q, q, q, r_idx, 2, 1).shape == (1, 4, 4, 8)
    monkeypatch.setenv("VIZATTN_BACKEND", "gpu")
    with pytest.raises(ValueError, match=r"VIZATTN_BACKEND='gpu' is not one of"):
        routed_attention(q, q, q, r_idx, 2, 1)


def test_lepe_saves_no_dense_copy_of_v():
    """LePE's conv must keep (for its backward) the view of v inside the qkv output, not a dense copy of v: a copy
    per block is retained until the backward (about 0.5 GiB for BiFormer-S at batch 128)."""
    torch.manual_seed(0)
    n, h, w, c = 2, 7, 14, 32  # distinct sizes, so an NCHW-shaped (n, c, h, w) tensor is unambiguous
    attn = RoutingAttention(dim=c, num_heads=2, n_win=7, topk=2, side_dwconv=5, backend="torch")
    qkv_out = []
    attn.qkv.qkv.register_forward_hook(lambda mod, inp, out: qkv_out.append(out))
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.untyped_storage().data_ptr()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = attn(torch.randn(n, h, w, c, requires_grad=True))
    conv_inputs = [ptr for shape, ptr in saved if shape == (n, c, h, w)]
    assert conv_inputs, "the LePE conv saved no input of shape (N, C, H, W)"
    assert all(ptr == qkv_out[0].untyped_storage().data_ptr() for ptr in conv_inputs)
    out.sum().backward()
    assert attn.lepe.weight.grad is not None and attn.lepe.weight.grad.abs().sum() > 0
