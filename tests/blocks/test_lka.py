"""LKA and VAN's attention unit against an independent shift-and-add formulation, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vizattn.blocks import LKA, VANAttention

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _dw(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int) -> torch.Tensor:
    """Depthwise 'same' convolution as a sum of shifted copies of the zero-padded input."""
    k = weight.shape[-1]
    pad = dilation * (k - 1) // 2
    xp = F.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[-2:]
    out = bias[None, :, None, None].expand_as(x).clone()
    for i in range(k):
        for j in range(k):
            shifted = xp[..., i * dilation : i * dilation + h, j * dilation : j * dilation + w]
            out += weight[None, :, 0, i, j, None, None] * shifted
    return out


def _lka(m: LKA, x: torch.Tensor) -> torch.Tensor:
    attn = _dw(x, m.conv0.weight, m.conv0.bias, 1)
    attn = _dw(attn, m.conv_spatial.weight, m.conv_spatial.bias, 3)
    attn = torch.einsum("oc,bchw->bohw", m.conv1.weight[:, :, 0, 0], attn) + m.conv1.bias[None, :, None, None]
    return x * attn


def _randomize(module: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


@pytest.mark.parametrize("shape", [(2, 4, 9, 13), (1, 3, 30, 27), (1, 2, 1, 1)], ids=["9x13", "30x27", "1x1"])
def test_lka_matches_shift_and_add(shape):
    m = LKA(shape[1]).double()
    _randomize(m)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = m(x)
    ref = _lka(m, x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *m.parameters()], g)
    want = torch.autograd.grad(ref, [x, *m.parameters()], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_lka_intermediate_is_zero_padded_not_extended():
    """The dilated conv sees zeros beyond the border, not conv0 (with its bias) evaluated outside the image."""
    m = LKA(1).double()
    with torch.no_grad():
        for conv in (m.conv0, m.conv_spatial, m.conv1):
            conv.weight.fill_(1.0)
            conv.bias.zero_()
        m.conv0.bias.fill_(1.0)
    x = torch.ones(1, 1, 5, 5, dtype=torch.float64)
    # At the centre of a 5x5 map conv0 sees all 25 pixels: 25 + bias 1. The dilated 7x7 taps at offsets -9..9 step 3
    # hit only the centre itself inside the map; outside it they must read zeros. Were conv0 evaluated outside the
    # image, taps at -3 and 3 would add its bias plus the in-image counts there.
    assert m.conv0(x)[0, 0, 2, 2] == 26
    assert m(x)[0, 0, 2, 2] == 26


def test_attention_unit_and_official_names():
    m = VANAttention(6).double()
    _randomize(m)
    x = torch.randn(2, 6, 11, 7, dtype=torch.float64)
    u = F.gelu(F.conv2d(x, m.proj_1.weight, m.proj_1.bias))
    ref = F.conv2d(_lka(m.spatial_gating_unit, u), m.proj_2.weight, m.proj_2.bias) + x
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)
    assert set(m.state_dict()) == {
        f"{p}.{s}"
        for p in (
            "proj_1",
            "proj_2",
            "spatial_gating_unit.conv0",
            "spatial_gating_unit.conv_spatial",
            "spatial_gating_unit.conv1",
        )
        for s in ("weight", "bias")
    }
    assert m.spatial_gating_unit.conv_spatial.weight.shape == (6, 1, 7, 7)


def test_wrong_channels_raise():
    with pytest.raises(ValueError, match=r"expects an NCHW map \(B, 8, H, W\), got shape \(1, 4, 5, 5\)"):
        LKA(8)(torch.randn(1, 4, 5, 5))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_triton_backend_matches_the_torch_path(layout, monkeypatch):
    """LKA on the fused Triton op (interpreted without CUDA) against the torch convs: output, input and every
    parameter gradient, in NCHW and channels_last, outputs NaN-poisoned so an unwritten element fails."""
    monkeypatch.setenv("VIZATTN_POISON_OUTPUTS", "1")
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    ref = LKA(3)
    _randomize(ref)
    ref = ref.to(DEVICE)
    ours = LKA(3, backend="triton").to(DEVICE)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 12, 10).to(DEVICE).contiguous(memory_format=fmt).requires_grad_()
    out, want = ours(x), ref(x)
    assert out.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *ours.parameters()], g)
    expected = torch.autograd.grad(want, [x, *ref.parameters()], g)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_backend_is_passed_down_and_the_state_dict_is_unchanged():
    m = VANAttention(4, backend="torch")
    assert m.spatial_gating_unit.backend == "torch"
    assert VANAttention(4).spatial_gating_unit.backend == "auto"
    assert set(LKA(4, backend="triton").state_dict()) == set(LKA(4).state_dict())
    with pytest.raises(ValueError, match="backend='cuda' is not one of"):
        LKA(4, backend="cuda")(torch.randn(1, 4, 5, 5))
