"""The drop-in layers (vizattn.blocks.layers): Linear's GEMV bias gradient and the in-place switch of a model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vizattn.blocks.layers import LayerNorm, Linear, pointwise_conv, use_fast_layers

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("shape", [(2, 5, 7), (3, 7), (2, 1, 4, 7)], ids=["3d", "2d", "4d"])
def test_linear_matches_nn_linear(shape):
    torch.manual_seed(0)
    ref = nn.Linear(7, 6).to(DEVICE, torch.float64)
    ours = Linear(7, 6).to(DEVICE, torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(shape, device=DEVICE, dtype=torch.float64, requires_grad=True)
    out, want = ours(x), ref(x)
    torch.testing.assert_close(out, want)
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(out, [x, *ours.parameters()], g),
                    torch.autograd.grad(want, [x, *ref.parameters()], g), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b)


def test_linear_under_autocast():
    lin = Linear(4, 3).to(DEVICE)
    x = torch.randn(5, 4, device=DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = lin(x)
        want = nn.functional.linear(x, lin.weight, lin.bias)
    assert out.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(out, want)
    out.float().sum().backward()
    assert lin.weight.grad.dtype == lin.bias.grad.dtype == torch.float32
    torch.testing.assert_close(lin.bias.grad, torch.full((3,), 5.0, device=DEVICE))


def test_use_fast_layers_switches_in_place_and_keeps_the_state():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8, eps=1e-6), nn.GELU(), nn.Linear(8, 2, bias=False),
                          nn.LayerNorm((2, 3)))  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    assert use_fast_layers(model, backend="triton") is model
    assert [type(m) for m in model] == [Linear, LayerNorm, nn.GELU, Linear, nn.LayerNorm]
    assert model[1].backend == "triton" and model[1].eps == 1e-6
    assert [id(p) for p in model.parameters()] == params
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    plain = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
    use_fast_layers(plain, backend="torch")
    assert [type(m) for m in plain] == [nn.Linear, nn.LayerNorm]


def test_pointwise_conv_torch_backend_runs_the_module():
    conv = nn.Conv2d(3, 4, 1).to(DEVICE)
    x = torch.randn(2, 3, 5, 5, device=DEVICE).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert "Convolution" in pointwise_conv(conv, x, backend="torch").grad_fn.name()
    assert "Convolution" not in pointwise_conv(conv, x).grad_fn.name()


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_pointwise_conv_matches_the_conv(layout, bias):
    conv = torch.nn.Conv2d(5, 7, 1, bias=bias).to(DEVICE, torch.float64)
    with torch.no_grad():
        for p in conv.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 5, 6, 9, device=DEVICE, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    gy = torch.randn(2, 7, 6, 9, device=DEVICE, dtype=torch.float64)
    params = [conv.weight] + ([conv.bias] if bias else [])
    got = pointwise_conv(conv, x)
    got_grads = torch.autograd.grad(got, [x, *params], gy)
    want = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x)
    if bias:
        want = want + conv.bias[None, :, None, None]
    want_grads = torch.autograd.grad(want, [x, *params], gy)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)
    assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


def test_pointwise_conv_under_autocast_casts_as_linear_does():
    conv = torch.nn.Conv2d(4, 6, 1).to(DEVICE)
    x = torch.randn(2, 4, 5, 3, device=DEVICE).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        got = pointwise_conv(conv, x)
        want = conv(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    got.float().sum().backward()
    assert conv.weight.grad.dtype == conv.bias.grad.dtype == x.grad.dtype == torch.float32
    # every output pixel adds the bias once: its gradient is the pixel count, exact in bfloat16
    torch.testing.assert_close(conv.bias.grad, torch.full((6,), 30.0, device=DEVICE))
