"""ELA-T/B/S/L against an independent formulation (explicit taps and group statistics, float64), and its timm hooks."""

from __future__ import annotations

import functools

import pytest
import timm
import torch

from vizattn.blocks import ELA


def _conv1d(z: torch.Tensor, weight: torch.Tensor, group_width: int) -> torch.Tensor:
    """Zero-padded 'same' Conv1d without bias, each output channel summing over its group's input channels."""
    c, cin, k = weight.shape
    assert cin == group_width
    zp = torch.nn.functional.pad(z, (k // 2, k // 2))
    length = z.shape[-1]
    out = torch.zeros_like(z)
    for o in range(c):
        first = (o // group_width) * group_width
        for i in range(group_width):
            for t in range(k):
                out[:, o] += weight[o, i, t] * zp[:, first + i, t : t + length]
    return out


def _group_norm(y: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    b, c, length = y.shape
    g = y.reshape(b, groups, c // groups * length)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    out = ((g - mean) / torch.sqrt(var + 1e-5)).reshape(b, c, length)
    return out * weight[None, :, None] + bias[None, :, None]


def _ela(m: ELA, x: torch.Tensor, group_width: int, groups: int) -> torch.Tensor:
    def gate(z):
        return torch.sigmoid(_group_norm(_conv1d(z, m.conv.weight, group_width), groups, m.norm.weight, m.norm.bias))

    return x * gate(x.mean(3))[..., None] * gate(x.mean(2))[:, :, None, :]


VARIANTS = {"T": (5, 1, 32), "B": (7, 1, 16), "S": (5, 8, 16), "L": (7, 8, 16)}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ela_matches_independent_formulation(variant):
    k, group_width, groups = VARIANTS[variant]
    c = 64
    m = ELA(c, variant).double()
    assert m.conv.weight.shape == (c, group_width, k)
    assert sum(p.numel() for p in m.parameters()) == c * group_width * k + 2 * c
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    x = torch.randn(2, c, 9, 6, dtype=torch.float64, generator=g, requires_grad=True)
    out = m(x)
    ref = _ela(m, x, group_width, groups)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    go = torch.randn_like(out)
    for a, b in zip(
        torch.autograd.grad(out, [x, *m.parameters()], go), torch.autograd.grad(ref, [x, *m.parameters()], go)
    ):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_conv_and_norm_are_shared_between_directions():
    m = ELA(32, "B")
    assert set(m.state_dict()) == {"conv.weight", "norm.weight", "norm.bias"}


def test_channel_constraints_are_explained():
    with pytest.raises(ValueError, match=r"ELA-T: channels must be a multiple of 32 \(GroupNorm groups\), got 144"):
        ELA(144, "T")
    with pytest.raises(ValueError, match=r"multiple of 16 \(GroupNorm groups\) and of 8 \(conv groups\), got 24"):
        ELA(24, "S")
    with pytest.raises(ValueError, match="variant must be one of"):
        ELA(64, "X")
    ELA(144, "B")  # MobileNetV2's 144-channel blocks fit B/S/L


def test_drops_into_timm_resnet_attention_hook():
    model = timm.create_model("resnet18", block_args=dict(attn_layer=functools.partial(ELA, variant="B")))
    assert isinstance(model.layer3[1].se, ELA) and model.layer3[1].se.channels == 256
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_drops_into_timm_efficientnet_se_hook_without_rd_ratio():
    """timm probes se_layer(8, rd_ratio=1.0) and must get a TypeError, not build GroupNorm(16, 8)."""
    with pytest.raises(TypeError):
        ELA(8, rd_ratio=1.0)
    m = ELA(64, "S", act_layer=torch.nn.ReLU, device="cpu", dtype=torch.float64)
    assert m.conv.weight.dtype == torch.float64


def test_wrong_channels_raise():
    with pytest.raises(ValueError, match=r"ELA expects an NCHW map \(B, 32, H, W\), got shape \(1, 16, 4, 4\)"):
        ELA(32)(torch.randn(1, 16, 4, 4))
