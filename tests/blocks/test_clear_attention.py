"""ClearAttention against CLEAR's official mask definition written out as one dense boolean mask over the
concatenated sequence [T prefix | H*W image | pooled], and the conversion of a model's attention layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vizattn.blocks.clear import ClearAttention, convert_to_clear, is_clear_trainable


def official_mask(t: int, h: int, w: int, radius: int, m: int) -> torch.Tensor:
    """allowed(q, k) of ``init_local_mask_flex`` / ``init_local_downsample_mask_flex``, pair by pair."""
    n = t + h * w
    allowed = torch.zeros(n, n + m, dtype=torch.bool)
    for qi in range(n):
        for ki in range(n + m):
            if qi < t:
                allowed[qi, ki] = ki < n
            elif ki < t or ki >= n:
                allowed[qi, ki] = True
            else:
                dr = (qi - t) // w - (ki - t) // w
                dc = (qi - t) % w - (ki - t) % w
                allowed[qi, ki] = dr * dr + dc * dc < radius * radius
    return allowed


def dense_clear(attn: ClearAttention, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """CLEAR as the official FlexAttention code computes it: keys/values extended by the pooled tokens, one mask."""
    b, n, c = x.shape
    h, w = hw
    t, d, nh = attn.num_prefix_tokens, attn.down_factor, attn.num_heads
    q, k, v = attn.qkv(x).reshape(b, n, 3, nh, c // nh).permute(2, 0, 3, 1, 4)  # (B, heads, N, hd) each
    if d > 1:
        pooled = []
        for m in (k, v):  # avg-pool-like weighted sum over d x d patches, with the module's weights
            img = m[:, :, t:].reshape(b, nh, h // d, d, w // d, d, c // nh)
            pooled.append((img * attn.spatial_weight).sum(dim=(3, 5)).reshape(b, nh, -1, c // nh))
        k = torch.cat([k, pooled[0]], 2)
        v = torch.cat([v, pooled[1]], 2)
    mask = official_mask(t, h, w, attn.radius, k.shape[2] - n)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.proj(out.transpose(1, 2).reshape(b, n, c))


CASES = [  # (T, H, W, radius, down_factor)
    (0, 6, 7, 2, 1),
    (0, 8, 8, 3, 4),
    (3, 5, 6, 2, 1),
    (2, 4, 6, 3, 2),
    (0, 5, 5, 1, 1),
]


@pytest.mark.parametrize("t,h,w,radius,d", CASES, ids=[f"T{c[0]}-{c[1]}x{c[2]}-r{c[3]}-d{c[4]}" for c in CASES])
def test_matches_official_mask(t, h, w, radius, d):
    torch.manual_seed(0)
    attn = ClearAttention(32, 4, radius, down_factor=d, num_prefix_tokens=t, backend="torch")
    if attn.spatial_weight is not None:
        with torch.no_grad():  # not average pooling any more, so a wrong weighting shows
            attn.spatial_weight.uniform_(0.0, 0.5)
    x = torch.randn(2, t + h * w, 32, requires_grad=True)
    out = attn(x, (h, w))
    ref = dense_clear(attn, x, (h, w))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *attn.parameters()], g)
    grads_ref = torch.autograd.grad(ref, [x, *attn.parameters()], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_large_radius_is_full_attention():
    torch.manual_seed(0)
    attn = ClearAttention(24, 3, radius=10, backend="torch")  # 10 > diagonal of 5x6
    x = torch.randn(2, 30, 24)
    q, k, v = attn.qkv(x).reshape(2, 30, 3, 3, 8).permute(2, 0, 3, 1, 4)
    full = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 30, 24))
    torch.testing.assert_close(attn(x, (5, 6)), full, rtol=1e-5, atol=1e-6)


def test_tap_sees_pre_projection_output():
    attn = ClearAttention(16, 2, radius=2, backend="torch")
    seen = []
    attn.tap.register_forward_hook(lambda mod, inp, out: seen.append(out))
    x = torch.randn(1, 12, 16)
    out = attn(x, (3, 4))
    assert len(seen) == 1 and seen[0].shape == (1, 12, 16)
    torch.testing.assert_close(attn.proj(seen[0]), out)


class _Attn(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, hw):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"attn": _Attn(16, 2), "mlp": nn.Linear(16, 16)}) for _ in range(2))

    def forward(self, x, hw):
        for blk in self.blocks:
            x = x + blk["attn"](x, hw)
            x = x + blk["mlp"](x)
        return x


def test_convert_keeps_weights_and_names():
    torch.manual_seed(0)
    net = _Net().double()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 20, 16, dtype=torch.float64)
    full = net(x, (4, 5))
    convert_to_clear(net, radius=7)  # radius over the 4x5 diagonal: still full attention
    assert all(isinstance(b["attn"], ClearAttention) for b in net.blocks)
    assert net.blocks[0]["attn"].qkv.weight.dtype == torch.float64
    after = net.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    torch.testing.assert_close(net(x, (4, 5)), full)

    convert_to_clear(net, radius=2, down_factor=2)
    assert sorted(k for k in net.state_dict() if "spatial_weight" in k) == [
        "blocks.0.attn.spatial_weight",
        "blocks.1.attn.spatial_weight",
    ]
    trainable = sorted(n for n, _ in net.named_parameters() if is_clear_trainable(n))
    assert trainable == sorted(
        f"blocks.{i}.attn.{p}" for i in range(2) for p in ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias",
                                                          "spatial_weight")
    )
    assert not is_clear_trainable("blocks.0.mlp.weight")


def test_bad_arguments():
    with pytest.raises(ValueError, match="radius"):
        ClearAttention(16, 2, radius=0)
    with pytest.raises(ValueError, match="down_factor"):
        ClearAttention(16, 2, radius=2, down_factor=0)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        ClearAttention(15, 2, radius=2)
    attn = ClearAttention(16, 2, radius=2, down_factor=4)
    with pytest.raises(ValueError, match="divisible"):
        attn(torch.randn(1, 30, 16), (5, 6))
    with pytest.raises(ValueError, match="tokens"):
        attn(torch.randn(1, 31, 16), (4, 8))
    with pytest.raises(ValueError, match="no attention module"):
        convert_to_clear(nn.Linear(3, 3), radius=2)


class _SumInFloat32(torch.overrides.TorchFunctionMode):
    """What CUDA autocast does to ``sum`` (it is on autocast's float32 list; CPU autocast leaves it alone)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.sum, torch.Tensor.sum) and out.is_floating_point():
            return out.float()
        return out


@pytest.mark.parametrize("t", [0, 2])
def test_pooled_tokens_keep_the_dtype_of_q_when_sum_runs_in_float32(t):
    # Seen on the H200: under bf16 autocast the pooled tokens came out float32 and clear_attention refused them.
    torch.manual_seed(0)
    attn = ClearAttention(16, 2, radius=2, down_factor=2, num_prefix_tokens=t).to(torch.bfloat16)
    x = torch.randn(1, t + 16, 16, dtype=torch.bfloat16)
    with _SumInFloat32():
        out = attn(x, (4, 4))
    assert out.dtype == torch.bfloat16
    ref = dense_clear(attn.float(), x.float(), (4, 4))
    assert torch.allclose(out.float(), ref, atol=5e-2, rtol=5e-2), (out.float() - ref).abs().max()
