"""PointwiseConv2d against nn.Conv2d with the same parameters: values, gradients, layouts, state dict, arguments."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vizattn.blocks import PointwiseConv2d

LAYOUTS = ["nchw", "channels_last", "strided"]


def _map(shape: tuple[int, int, int, int], layout: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if layout == "strided":  # every other column of a wider map: dense in neither format
        b, c, h, w = shape
        return torch.randn(b, c, h, 2 * w, generator=g, dtype=dtype)[..., ::2]
    x = torch.randn(shape, generator=g, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _pair(cin: int, cout: int, bias: bool) -> tuple[PointwiseConv2d, nn.Conv2d]:
    ours = PointwiseConv2d(cin, cout, bias=bias)
    ref = nn.Conv2d(cin, cout, 1, bias=bias)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _ops(module: nn.Module, x: torch.Tensor) -> set[str]:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return {str(op) for op in counter.get_flop_counts()["Global"]}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "shape,cout", [((2, 5, 7, 3), 6), ((3, 16, 9, 11), 8), ((1, 3, 1, 1), 4)], ids=["B2-C5-7x3", "B3-C16-9x11", "1x1"]
)
def test_matches_conv2d_forward_and_gradients(shape, cout, layout, bias):
    ours, ref = _pair(shape[1], cout, bias)
    x = _map(shape, layout).requires_grad_()
    out, want = ours(x), ref(x)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad(out, [x, *ours.parameters()], g)
    expected = torch.autograd.grad(want, [x, *ref.parameters()], g)
    assert len(got) == (3 if bias else 2)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_channels_last_runs_as_one_gemm_and_stays_channels_last(layout):
    ours, _ = _pair(6, 10, bias=True)
    x = _map((2, 6, 5, 7), layout)
    out = ours(x)
    if layout == "channels_last":
        # the (B, H, W, O) result of the GEMM seen as (B, O, H, W): no copy back to NCHW
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
        assert _ops(ours, x) == {"aten.addmm"}
    else:
        assert out.is_contiguous()
        assert _ops(ours, x) == {"aten.convolution"}


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_autocast_bf16(layout):
    ours, ref = _pair(12, 20, bias=True)
    x = _map((2, 12, 6, 5), layout).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, want = ours(x), ref(x)
    assert out.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(out, want)  # bf16 tolerances: both round the same fp32 sums to bf16
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and ours.weight.grad.dtype == ours.bias.grad.dtype == torch.float32
    assert torch.isfinite(ours.weight.grad).all()


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_parameters_and_state_dict_are_conv2d(bias):
    ours, ref = PointwiseConv2d(7, 3, bias=bias), nn.Conv2d(7, 3, 1, bias=bias)
    assert isinstance(ours, nn.Conv2d)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert ours.weight.shape == (3, 7, 1, 1)
    for attr in ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert PointwiseConv2d(4, 8, 1, 1, 0, 1, 1).weight.shape == (8, 4, 1, 1)  # nn.Conv2d's positional arguments
    ours.load_state_dict(ref.state_dict())  # strict: same keys, same shapes
    assert torch.equal(ours.weight, ref.weight)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(kernel_size=3), "kernel_size must be 1 (or (1, 1)), got 3"),
        (dict(kernel_size=(1, 3)), "kernel_size must be 1 (or (1, 1)), got (1, 3)"),
        (dict(stride=2), "stride must be 1 (or (1, 1)), got 2"),
        (dict(padding=1), "padding must be 0 (or (0, 0)), got 1"),
        (dict(padding="same"), "padding must be 0 (or (0, 0)), got 'same'"),
        (dict(dilation=(2, 1)), "dilation must be 1 (or (1, 1)), got (2, 1)"),
        (dict(groups=2), "groups must be 1, got 2"),
    ],
    ids=["k3", "k1x3", "s2", "p1", "psame", "d2", "g2"],
)
def test_non_pointwise_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(f"PointwiseConv2d: {message}.")):
        PointwiseConv2d(4, 4, **kwargs)
