"""ULSAM against the spec's equation written out independently (float64), BatchNorm momentum, subspace layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vizattn.blocks import ULSAM


def _bn(y, mean, var, weight, bias):
    return (y - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + 1e-5) * weight[
        None, :, None, None
    ] + bias[None, :, None, None]


def _maxpool3(y):
    h, w = y.shape[-2:]
    yp = F.pad(y, (1, 1, 1, 1), value=float("-inf"))
    shifts = [yp[..., i : i + h, j : j + w] for i in range(3) for j in range(3)]
    return torch.stack(shifts).amax(0)


def _subspace(s, f):
    """A = softmax_HW(ReLU(BN_p(sum_c w_c MaxPool3(ReLU(BN_d(a_c F_c + b_c))) + b_p))); out = F (1 + A), eval mode."""
    y = f * s.conv_dws.weight.view(1, -1, 1, 1) + s.conv_dws.bias.view(1, -1, 1, 1)
    y = _maxpool3(torch.relu(_bn(y, s.bn_dws.running_mean, s.bn_dws.running_var, s.bn_dws.weight, s.bn_dws.bias)))
    p = torch.einsum("c,bchw->bhw", s.conv_point.weight[0, :, 0, 0], y)[:, None] + s.conv_point.bias[0]
    bp = s.bn_point
    p = torch.relu(_bn(p, bp.running_mean, bp.running_var, bp.weight, bp.bias))
    a = torch.exp(p) / torch.exp(p).sum((2, 3), keepdim=True)
    return f * (1 + a)


def _randomize(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if "bias" in name else 1.0))
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g, dtype=torch.float64) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g, dtype=torch.float64) + 0.5)


@pytest.mark.parametrize("num_splits", [1, 2, 4])
def test_ulsam_matches_equation(num_splits):
    m = ULSAM(16, num_splits).double().eval()
    _randomize(m)
    x = torch.randn(2, 16, 7, 5, dtype=torch.float64) * 2
    ref = torch.cat([_subspace(s, f) for s, f in zip(m.subspaces, x.split(16 // num_splits, dim=1))], dim=1)
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


def test_subspaces_are_contiguous_chunks_and_attention_sums_to_one():
    m = ULSAM(8, 2).double().eval()
    _randomize(m, 3)
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    y = m(x)
    # Perturbing channel 5 (second subspace) must leave the first subspace's output unchanged.
    x2 = x.clone()
    x2[:, 5] += 1.0
    y2 = m(x2)
    torch.testing.assert_close(y[:, :4], y2[:, :4])
    assert not torch.allclose(y[:, 4:], y2[:, 4:])
    gain = y / x - 1  # = A, identical for every channel of a subspace, summing to 1 over H * W
    torch.testing.assert_close(gain[:, :4].sum((2, 3)), torch.ones(1, 4, dtype=torch.float64))
    torch.testing.assert_close(gain[:, 0], gain[:, 3])


def test_parameters_keys_and_bn_momentum():
    m = ULSAM(512, 4)
    assert sum(p.numel() for p in m.parameters()) == 4 * (5 * 128 + 3)  # 5G + 3 per subspace
    assert m.subspaces[3].conv_point.weight.shape == (1, 128, 1, 1)
    assert "subspaces.0.bn_dws.running_mean" in m.state_dict()
    sub = ULSAM(4, 1).train()
    x = torch.randn(8, 4, 5, 5) + 3.0
    sub(x)
    bn = sub.subspaces[0].bn_dws
    pre = sub.subspaces[0].conv_dws(x)
    torch.testing.assert_close(bn.running_mean, 0.9 * pre.mean((0, 2, 3)).detach())


def test_errors():
    with pytest.raises(ValueError, match=r"channels=10 must be a positive multiple of num_splits=4"):
        ULSAM(10, 4)
    with pytest.raises(ValueError, match=r"ULSAM expects an NCHW map \(B, 8, H, W\), got shape \(1, 4, 3, 3\)"):
        ULSAM(8, 2)(torch.randn(1, 4, 3, 3))
