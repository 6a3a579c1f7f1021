"""The Triton depthwise convolution against the reference (torch conv2d), forward and every gradient.

On a machine without CUDA the kernels run under ``TRITON_INTERPRET=1`` at small sizes; with CUDA the same tests run
on the GPU with larger ones (VAN's shapes). Outputs are allocated NaN-poisoned (``VIZATTN_POISON_OUTPUTS=1``), so an
element a kernel never writes fails the comparison. Errors are measured against the reference computed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from vizattn.kernels.dwconv import _dwconv2d_op, dwconv2d
from vizattn.kernels.dwconv.reference import dwconv2d_reference

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# max |ours - ref| / max |ref| per input dtype (the reference in float64 on the same, rounded, inputs)
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@dataclass(frozen=True)
class Case:
    b: int
    c: int
    h: int
    w: int
    k: int
    d: int

    @property
    def id(self) -> str:
        return f"B{self.b}-C{self.c}-{self.h}x{self.w}-k{self.k}-d{self.d}"


CPU_CASES = [
    Case(2, 3, 13, 9, 3, 1),
    Case(1, 2, 20, 17, 7, 3),  # LKA's conv_spatial
    Case(1, 4, 11, 12, 5, 1),  # LKA's conv0
    Case(1, 1, 5, 4, 7, 3),  # window far larger than the map: mostly padding
    Case(2, 2, 1, 1, 3, 1),
    Case(1, 2, 33, 18, 1, 1),  # 1x1: a per-channel scale
    Case(1, 1, 19, 21, 9, 2),  # tiles that do not divide the map
]
GPU_CASES = [
    Case(8, 64, 56, 56, 7, 3),
    Case(4, 160, 28, 28, 5, 1),
    Case(2, 96, 57, 45, 31, 1),
    Case(2, 32, 40, 50, 3, 4),
]
CASES = GPU_CASES + CPU_CASES if ON_GPU else CPU_CASES


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("VIZATTN_POISON_OUTPUTS", "1")


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    assert torch.isfinite(ours).all()
    return ((ours.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def _inputs(case: Case, dtype: torch.dtype, bias: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.b, case.c, case.h, case.w, generator=g).to(DEVICE, dtype)
    w = (torch.randn(case.c, 1, case.k, case.k, generator=g) / case.k).to(DEVICE, dtype)
    b = torch.randn(case.c, generator=g).to(DEVICE, dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_forward_and_gradients_match_reference(case, dtype):
    x, w, b = _inputs(case, dtype)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    out = dwconv2d(*leaves, dilation=case.d, backend="triton")
    assert out.dtype == dtype
    ref_leaves = [t.double().requires_grad_() for t in (x, w, b)]
    ref = dwconv2d_reference(*ref_leaves, dilation=case.d)
    assert _rel(out, ref) < TOL[dtype]
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    out.backward(grad)
    ref.backward(grad.double())
    for name, leaf, ref_leaf in zip(("dx", "dweight", "dbias"), leaves, ref_leaves):
        assert leaf.grad.dtype == dtype
        assert _rel(leaf.grad, ref_leaf.grad) < TOL[dtype] * 2, name


def test_without_bias_and_non_contiguous_input():
    case = Case(2, 3, 10, 14, 5, 2)
    x, w, _ = _inputs(case, torch.float32, bias=False)
    x_nc = x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2).requires_grad_()  # NCHW values, transposed strides
    assert not x_nc.is_contiguous()
    w = w.requires_grad_()
    out = dwconv2d(x_nc, w, None, dilation=2, backend="triton")
    ref = dwconv2d_reference(x.double(), w.double(), None, 2)
    assert _rel(out, ref) < 1e-5
    out.sum().backward()
    x_ref = x.double().requires_grad_()
    w_ref = w.detach().double().requires_grad_()
    dwconv2d_reference(x_ref, w_ref, None, 2).sum().backward()
    assert _rel(x_nc.grad, x_ref.grad) < 1e-5 and _rel(w.grad, w_ref.grad) < 1e-5


def test_equals_the_convolution_of_nn_conv2d():
    conv = torch.nn.Conv2d(6, 6, 7, padding=9, dilation=3, groups=6).to(DEVICE)
    x = torch.randn(2, 6, 15, 13, device=DEVICE)
    with torch.no_grad():
        assert _rel(dwconv2d(x, conv.weight, conv.bias, 3, backend="triton"), conv(x).double()) < 1e-5


def test_custom_op_registration():
    x, w, b = _inputs(Case(1, 2, 6, 7, 3, 1), torch.float32)
    torch.library.opcheck(_dwconv2d_op, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), 1))


def test_auto_backend_uses_the_reference_on_cpu_tensors():
    x, w, b = _inputs(Case(1, 2, 6, 7, 3, 1), torch.float64)
    out = dwconv2d(x.cpu(), w.cpu(), b.cpu(), 1)
    assert out.dtype == torch.float64
    with pytest.raises(ValueError, match="backend='triton' was requested but cannot run: the kernels take float16"):
        dwconv2d(x, w, b, 1, backend="triton")


def test_bad_arguments():
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"weight must be \(C, 1, k, k\) with C = 4, got \(4, 2, 3, 3\)"):
        dwconv2d(x, torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match="the kernel size must be odd"):
        dwconv2d(x, torch.randn(4, 1, 4, 4))
    with pytest.raises(ValueError, match=r"bias must be \(C,\) = \(4,\), got \(3,\)"):
        dwconv2d(x, torch.randn(4, 1, 3, 3), torch.randn(3))
    with pytest.raises(ValueError, match="dilation must be a positive int, got 0"):
        dwconv2d(x, torch.randn(4, 1, 3, 3), dilation=0)
    with pytest.raises(ValueError, match=r"x must be a floating-point NCHW map"):
        dwconv2d(torch.randn(4, 8, 8), torch.randn(4, 1, 3, 3))
