"""The channel-scaled residual add's Triton kernels against its reference: forward, the three gradients, the op's
registration and its errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from kernel_checks import DEVICE, DTYPES, rel_errors, split_programs

from vizattn.kernels import scaled_add as sa
from vizattn.kernels.scaled_add import _scaled_add_backward_op, _scaled_add_op, scaled_add, scaled_add_reference


@dataclass(frozen=True)
class Case:
    b: int
    c: int
    h: int
    w: int
    x_dtype: str
    y_dtype: str

    @property
    def id(self) -> str:
        return f"B{self.b}-C{self.c}-{self.h}x{self.w}-x{self.x_dtype}-y{self.y_dtype}"


CASES = [
    Case(2, 5, 3, 7, "fp32", "fp32"),
    Case(1, 64, 9, 8, "fp32", "bf16"),  # VAN under autocast: float32 residual, bfloat16 branch
    Case(3, 70, 5, 5, "bf16", "bf16"),  # channels not a power of two, two channel blocks
    Case(1, 130, 2, 3, "fp16", "fp32"),
    Case(2, 1, 4, 4, "fp32", "fp16"),
]
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def _inputs(case: Case, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def cl(dtype):
        t = torch.randn(case.b, case.c, case.h, case.w, generator=g).to(DEVICE, DTYPES[dtype])
        return t.contiguous(memory_format=torch.channels_last)

    x, y = cl(case.x_dtype), cl(case.y_dtype)
    scale = torch.randn(case.c, generator=g).to(DEVICE)
    return x, scale, y


def _max_rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return rel_errors(ours, ref)[1]  # max-abs error over max |ref|


@pytest.mark.parametrize("programs", [None, 1, 3], ids=["default-programs", "1-program", "3-programs"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_forward_and_gradients_match_the_reference(case, programs, monkeypatch):
    split_programs(monkeypatch, sa._kernels(), "scaled_add_bwd", programs)
    x, scale, y = _inputs(case)
    args = [t.clone().requires_grad_() for t in (x, scale, y)]
    ref_args = [t.clone().requires_grad_() for t in (x, scale, y)]
    out = scaled_add(*args, backend="triton")
    ref = scaled_add_reference(*ref_args)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert _max_rel(out, ref) <= TOL[out.dtype]
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, out.dtype)
    grads = torch.autograd.grad(out, args, gout)
    ref_grads = torch.autograd.grad(ref, ref_args, gout)
    for name, got, want, inp in zip("x scale y".split(), grads, ref_grads, args, strict=True):
        assert got.dtype == inp.dtype and got.shape == inp.shape, name
        assert torch.isfinite(got).all(), name
        # the scale's gradient sums B*H*W products: the reference rounds the float32 sum of 16-bit products too
        assert _max_rel(got, want) <= max(TOL[inp.dtype], TOL[out.dtype]) * (4 if name == "scale" else 1), name


def test_only_some_gradients():
    x, scale, y = _inputs(CASES[1])
    y.requires_grad_()
    out = scaled_add(x, scale, y, backend="triton")
    (gy,) = torch.autograd.grad(out.sum(), [y])
    # scale rounded once to bfloat16 (the interpreter rounds toward zero, a GPU to nearest: one unit apart at most)
    torch.testing.assert_close(gy.float(), scale[None, :, None, None].expand_as(y), rtol=2**-7, atol=0)


def test_empty_batch():
    x, scale, y = (t.requires_grad_() for t in _inputs(Case(0, 4, 3, 3, "fp32", "fp32")))
    out = scaled_add(x, scale, y, backend="triton")
    assert out.shape == x.shape
    out.sum().backward()
    assert scale.grad.abs().sum() == 0


@pytest.mark.parametrize("needs_scale", [True, False])
def test_custom_ops_match_their_fakes(needs_scale):
    x, scale, y = _inputs(CASES[1])
    torch.library.opcheck(_scaled_add_op, (x.requires_grad_(), scale.requires_grad_(), y.requires_grad_()))
    grad = torch.randn(x.shape, device=DEVICE).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(_scaled_add_backward_op, (grad, scale.detach(), y.detach(), needs_scale))


def test_auto_takes_the_reference_on_the_cpu_and_for_nchw_maps():
    x, scale, y = _inputs(CASES[0])
    want = scaled_add_reference(x, scale, y)
    torch.testing.assert_close(scaled_add(x.contiguous(), scale, y.contiguous(), backend="auto"), want)
    with pytest.raises(ValueError, match="channels_last"):
        scaled_add(x.contiguous(), scale, y.contiguous(), backend="triton")


@pytest.mark.parametrize(
    ("x_shape", "scale_shape", "y_shape", "match"),
    [
        ((2, 3, 4, 4), (3,), (2, 3, 4, 5), "one shape"),
        ((2, 3, 4), (3,), (2, 3, 4), "one shape"),
        ((2, 3, 4, 4), (4,), (2, 3, 4, 4), r"\(3,\)"),
        ((2, 3, 4, 4), (1, 3), (2, 3, 4, 4), r"\(3,\)"),
    ],
)
def test_bad_shapes_raise(x_shape, scale_shape, y_shape, match):
    with pytest.raises(ValueError, match=match):
        scaled_add(torch.zeros(x_shape), torch.zeros(scale_shape), torch.zeros(y_shape))
