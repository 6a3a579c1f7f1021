"""The ops with Triton kernels run eager calls without their torch.library custom op (vizattn.kernels._eager) and
must give exactly what the custom op gives: same outputs, same gradients, bit for bit."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DEVICE

from vizattn.kernels import clear as clear_mod
from vizattn.kernels import dwconv as dwconv_mod
from vizattn.kernels import na2d as na2d_mod
from vizattn.kernels import routed as routed_mod
from vizattn.kernels.clear import clear_attention
from vizattn.kernels.dwconv import dwconv2d, lka_spatial
from vizattn.kernels.na2d import na2d, na2d_qkv
from vizattn.kernels.routed import routed_attention


def _na2d_case():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 9, 10, 2, 16, generator=g) for _ in range(3))
    rpb = torch.randn(2, 5, 5, generator=g)
    return na2d_mod._NA2D, [q, k, v, rpb], lambda q, k, v, rpb: na2d(q, k, v, 3, 2, rpb, backend="triton")


def _na2d_qkv_case():
    g = torch.Generator().manual_seed(5)
    qkv, rpb = torch.randn(1, 9, 10, 3, 2, 16, generator=g), torch.randn(2, 5, 5, generator=g)
    return na2d_mod._NA2D_QKV, [qkv, rpb], lambda qkv, rpb: na2d_qkv(qkv, 3, 2, rpb, backend="triton")


def _clear_case():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 8, 9, 2, 16, generator=g) for _ in range(3))
    ek, ev = (torch.randn(1, 4, 2, 16, generator=g) for _ in range(2))
    return clear_mod._CLEAR, [q, k, v, ek, ev], lambda q, k, v, ek, ev: clear_attention(
        q, k, v, 3, ek, ev, backend="triton"
    )


def _dwconv_case():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 9, 11, generator=g)
    w, b = torch.randn(4, 1, 3, 3, generator=g), torch.randn(4, generator=g)
    return dwconv_mod._DWCONV2D, [x, w, b], lambda x, w, b: dwconv2d(x, w, b, 2, backend="triton")


def _lka_case():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 12, 10, generator=g)
    w0, b0 = torch.randn(4, 1, 5, 5, generator=g), torch.randn(4, generator=g)
    w1, b1 = torch.randn(4, 1, 7, 7, generator=g), torch.randn(4, generator=g)
    return dwconv_mod._LKA_SPATIAL, [x, w0, b0, w1, b1], lambda x, w0, b0, w1, b1: lka_spatial(
        x, w0, b0, w1, b1, dilations=(1, 2), backend="triton", fused=True
    )


def _routed_case():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 8, 8, 32, generator=g) for _ in range(3))
    r_idx = torch.tensor([[[0, 1], [1, 3], [2, 0], [3, 2]]])
    return routed_mod._ROUTED, [q, k, v, r_idx], lambda q, k, v, r_idx: routed_attention(
        q, k, v, r_idx, 2, 2, backend="triton"
    )


CASES = {
    "routed": _routed_case,
    "na2d": _na2d_case,
    "na2d_qkv": _na2d_qkv_case,
    "clear": _clear_case,
    "dwconv2d": _dwconv_case,
    "lka_spatial": _lka_case,
}


def _run(fn, inputs):
    leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    out.backward(torch.linspace(-1, 1, out.numel(), device=out.device).reshape(out.shape))
    return out.detach(), [t.grad for t in leaves if t.is_floating_point()]


@pytest.mark.parametrize("name", list(CASES))
def test_eager_path_matches_the_custom_op_bit_for_bit(name, monkeypatch):
    kernel_op, inputs, fn = CASES[name]()
    inputs = [t.to(DEVICE) for t in inputs]
    calls = []
    op = kernel_op.op

    def spy(*args):
        calls.append(1)
        return op(*args)

    monkeypatch.setattr(kernel_op, "op", spy)
    out, grads = _run(fn, inputs)
    assert calls == [], "the eager call went through the custom op"
    with torch.no_grad():
        no_grad_out = fn(*inputs)
    assert calls == []
    # as under torch.compile: the custom op with its registered autograd formula
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    op_out, op_grads = _run(fn, inputs)
    assert calls == [1]
    assert torch.equal(out, op_out) and torch.equal(no_grad_out, op_out)
    for g, g_op in zip(grads, op_grads):
        assert g is not None and torch.equal(g, g_op)


def test_fake_tensors_take_the_custom_op():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(1, 9, 10, 2, 16, device=DEVICE)
        out = na2d(q, q, q, 3, 2, backend="triton")
    assert out.shape == (1, 9, 10, 2, 16)


def test_unused_output_gives_no_gradient():
    q, k, v = (torch.randn(1, 7, 7, 1, 8, device=DEVICE, requires_grad=True) for _ in range(3))
    out, lse = na2d_mod._NA2D(q, k, v, None, 3, 1, 0.5)
    lse.sum().backward(retain_graph=True)  # the logsumexp is not differentiable through the op, as with the custom op
    assert q.grad is None and k.grad is None and v.grad is None
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
