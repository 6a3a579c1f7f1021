"""NeighborhoodAttention2d: official parameter layout, q/k/v channel order, scale and bias placement, small inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vizattn.blocks import NeighborhoodAttention2d
from vizattn.kernels.na2d.reference import na2d_reference


def _manual(block: NeighborhoodAttention2d, x: torch.Tensor) -> torch.Tensor:
    """The official module's computation written out: qkv rows s*C + h*head_dim + c, q scaled, rpb after scaling."""
    b, hh, ww, c = x.shape
    heads, hd = block.num_heads, c // block.num_heads
    qkv = x @ block.qkv.weight.T + block.qkv.bias
    q = qkv[..., :c].reshape(b, hh, ww, heads, hd)
    k = qkv[..., c : 2 * c].reshape(b, hh, ww, heads, hd)
    v = qkv[..., 2 * c :].reshape(b, hh, ww, heads, hd)
    out = na2d_reference(q, k, v, block.kernel_size, block.dilation, block.rpb, hd**-0.5).reshape(b, hh, ww, c)
    return out @ block.proj.weight.T + block.proj.bias


def test_official_parameter_names_and_shapes():
    block = NeighborhoodAttention2d(64, num_heads=2, kernel_size=7, dilation=4)
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    assert shapes == {
        "qkv.weight": (192, 64),
        "qkv.bias": (192,),
        "rpb": (2, 13, 13),
        "proj.weight": (64, 64),
        "proj.bias": (64,),
    }
    assert block.rpb.abs().max() <= 2.0 and 0.01 < block.rpb.std() < 0.03  # trunc_normal(std 0.02, a=-2, b=2)
    assert set(NeighborhoodAttention2d(32, 1, rel_pos_bias=False, qkv_bias=False).state_dict()) == {
        "qkv.weight",
        "proj.weight",
        "proj.bias",
    }


@pytest.mark.parametrize("hh,ww,ks,d", [(9, 11, 3, 2), (14, 14, 7, 2), (8, 13, 5, 1)])
def test_forward_matches_written_out_official_computation(hh, ww, ks, d):
    torch.manual_seed(0)
    block = NeighborhoodAttention2d(24, num_heads=3, kernel_size=ks, dilation=d).eval()
    with torch.no_grad():
        block.rpb.normal_()
        block.qkv.bias.normal_()
        x = torch.randn(2, hh, ww, 24)
        torch.testing.assert_close(block(x), _manual(block, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hh,ww,ks,d", [(5, 12, 3, 2), (4, 4, 7, 1), (13, 30, 7, 2), (3, 2, 3, 1)])
def test_small_input_is_padded_before_qkv_and_cropped_before_proj(hh, ww, ks, d):
    """NATTEN <= 0.15: zero-pad the module input bottom/right to k*d, so padded keys/values equal the qkv bias."""
    torch.manual_seed(1)
    block = NeighborhoodAttention2d(16, num_heads=2, kernel_size=ks, dilation=d).eval()
    with torch.no_grad():
        block.rpb.normal_()
        block.qkv.bias.normal_()
        x = torch.randn(1, hh, ww, 16)
        win = ks * d
        padded = F.pad(x, (0, 0, 0, max(0, win - ww), 0, max(0, win - hh)))
        expected = _manual(block, padded)[:, :hh, :ww]
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    block.auto_pad = False
    with pytest.raises(ValueError, match=rf"the map is {hh}x{ww} but kernel_size \* dilation"):
        block(x)


def test_gradients_reach_every_parameter_and_the_input():
    torch.manual_seed(2)
    block = NeighborhoodAttention2d(16, num_heads=2, kernel_size=3, dilation=2)
    x = torch.randn(1, 5, 9, 16, requires_grad=True)  # padded on H
    block(x).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_block_errors_name_the_value():
    with pytest.raises(ValueError, match=r"dim=30 must be a multiple of num_heads=4"):
        NeighborhoodAttention2d(30, 4)
    with pytest.raises(ValueError, match=r"kernel_size must be an int >= 2, got 1"):
        NeighborhoodAttention2d(32, 1, kernel_size=1)
    with pytest.raises(ValueError, match=r"dilation must be a positive int, got -1"):
        NeighborhoodAttention2d(32, 1, dilation=-1)
    block = NeighborhoodAttention2d(32, 1)
    with pytest.raises(ValueError, match=r"\(B, H, W, 32\), got shape \(1, 32, 8, 8\)"):
        block(torch.randn(1, 32, 8, 8))
    assert NeighborhoodAttention2d(32, 1, dilation=None).dilation == 1  # NATTEN's default for NAT's dilation=None
