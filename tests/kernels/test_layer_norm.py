"""The layer norm's Triton kernels against its reference: forward, every gradient, the op's registration, the
module and the errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from kernel_checks import DEVICE, DTYPES, rel_errors, split_programs

from vizattn.blocks.layers import LayerNorm
from vizattn.kernels import layer_norm as ln
from vizattn.kernels.layer_norm import _layer_norm_backward_op, _layer_norm_op, layer_norm, layer_norm_reference


@dataclass(frozen=True)
class Case:
    shape: tuple[int, ...]
    dtype: str
    affine: str = "wb"  # "wb", "w" or ""
    out: str | None = None

    @property
    def id(self) -> str:
        out = f"-to-{self.out}" if self.out else ""
        return "x".join(map(str, self.shape)) + f"-{self.dtype}-{self.affine or 'none'}" + out


CASES = [
    Case((2, 5, 7, 64), "fp32"),
    Case((3, 9, 72), "bf16", out="fp32"),  # 16-bit input under autocast: a float32 result
    Case((130, 5), "fp16", "w"),  # rows not filling the last tile, columns not a power of two
    Case((4, 320), "fp32", ""),
    Case((2, 1030), "bf16"),  # several row tiles of few rows each
    Case((7, 1), "fp32"),  # one channel: x - mean is 0, the result is the bias
]
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _inputs(case: Case, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = case.shape[-1]
    x = (torch.randn(case.shape, generator=g) * 2 + 0.5).to(DEVICE, DTYPES[case.dtype])
    w = (torch.randn(c, generator=g) + 1).to(DEVICE) if "w" in case.affine else None
    b = torch.randn(c, generator=g).to(DEVICE) if "b" in case.affine else None
    return x, w, b


def _max_rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return rel_errors(ours, ref)[1]  # max-abs error over max |ref|


@pytest.mark.parametrize("programs", [None, 1, 3], ids=["default-programs", "1-program", "3-programs"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_forward_and_gradients_match_the_reference(case, programs, monkeypatch):
    split_programs(monkeypatch, ln._kernels(), "layer_norm_bwd", programs)
    x, w, b = _inputs(case)
    out_dtype = DTYPES[case.out] if case.out else None
    args = [t.clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    ref_args = [t.clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    out = layer_norm(*args, eps=1e-5, out_dtype=out_dtype, backend="triton")
    ref = layer_norm_reference(*ref_args, eps=1e-5, out_dtype=out_dtype)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert _max_rel(out, ref) <= TOL[out.dtype]
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, out.dtype)
    live = [t for t in args if t is not None]
    grads = torch.autograd.grad(out, live, gout)
    ref_grads = torch.autograd.grad(ref, [t for t in ref_args if t is not None], gout)
    for name, got, want, inp in zip("x weight bias".split(), grads, ref_grads, live, strict=False):
        assert got.dtype == inp.dtype and got.shape == inp.shape, name
        assert torch.isfinite(got).all(), name
        if case.shape[-1] == 1 and name in ("x", "weight"):
            # x - mean is 0: neither gradient depends on anything but rounding residues, against a scale of
            # rstd = 1 / sqrt(eps) times |g * w| (x) or the rows' count times |g| (weight)
            g_max = gout.abs().max().item()
            scale = g_max * w.abs().max().item() / 1e-5**0.5 if name == "x" else g_max * x.numel()
            assert got.abs().max() <= TOL[x.dtype] * scale, name
            continue
        assert _max_rel(got, want) <= TOL[x.dtype] * (2 if name != "x" else 1), name


def test_the_statistics_are_float32_of_the_rows():
    x, w, b = _inputs(CASES[0])
    _, mean, rstd = ln._fwd(x, w, b, 1e-5, x.dtype)
    torch.testing.assert_close(mean, x.mean(-1))
    torch.testing.assert_close(rstd, torch.rsqrt(x.var(-1, unbiased=False) + 1e-5))


def test_strided_parameters():
    x, w, b = _inputs(CASES[0])
    w2, b2 = w.repeat_interleave(2)[::2], b.repeat_interleave(2)[::2]  # the same values, stride 2
    assert not w2.is_contiguous()
    torch.testing.assert_close(layer_norm(x, w2, b2, backend="triton"), layer_norm_reference(x, w, b))


def test_empty_input():
    x, w, b = (t.requires_grad_() for t in _inputs(Case((0, 3, 8), "fp32")))
    out = layer_norm(x, w, b, backend="triton")
    assert out.shape == x.shape
    out.sum().backward()
    assert w.grad.abs().sum() == 0 and b.grad.abs().sum() == 0


@pytest.mark.parametrize("needs", [(True, True), (False, False)], ids=["param-grads", "no-param-grads"])
def test_custom_ops_match_their_fakes(needs):
    x, w, b = _inputs(CASES[1])
    torch.library.opcheck(_layer_norm_op, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), 1e-5,
                                           torch.float32))  # fmt: skip
    _, mean, rstd = ln._fwd(x.detach(), w.detach(), b.detach(), 1e-5, torch.float32)
    grad = torch.randn(x.shape, device=DEVICE)
    torch.library.opcheck(_layer_norm_backward_op, (grad, x.detach(), w.detach(), mean, rstd, *needs))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_module_is_nn_layer_norm(backend):
    """Same keys, same initialisation, same outputs and gradients as nn.LayerNorm, on either path."""
    torch.manual_seed(0)
    ours = LayerNorm(24, eps=1e-6, backend=backend).to(DEVICE)
    ref = torch.nn.LayerNorm(24, eps=1e-6).to(DEVICE)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 3, 24, device=DEVICE).permute(0, 2, 1, 3).requires_grad_()  # not contiguous
    out, want = ours(x), ref(x)
    torch.testing.assert_close(out, want, rtol=2e-5, atol=2e-5)
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(out, [x, *ours.parameters()], g),
                    torch.autograd.grad(want, [x, *ref.parameters()], g), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=5e-5, atol=5e-5)


def test_module_under_autocast_gives_the_dtype_nn_layer_norm_gives():
    ours = LayerNorm(16).to(DEVICE)
    x = torch.randn(3, 16, device=DEVICE, dtype=torch.bfloat16)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = ours(x)
        want = torch.nn.functional.layer_norm(x, (16,), ours.weight, ours.bias)
    assert out.dtype == want.dtype
    assert out.dtype == (torch.float32 if DEVICE.type == "cuda" else torch.bfloat16)  # the devices' autocast policies
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize("channels", [16, 64])
def test_half_output_is_the_float32_output_rounded(channels):
    """What a norm marked as feeding a linear layer relies on (vizattn.blocks.layers.norms_feed_linears): the Triton
    op with a 16-bit output gives the float32 output rounded, bit for bit, and from a 16-bit output gradient the
    gradients that the float32 path gives from the same gradient in float32 (up to float32 summation order: the
    kernel's load layout can follow the gradient's dtype). float16 here: Triton's interpreter truncates float32 to
    bfloat16 where compiled kernels round to nearest even; bfloat16 is checked on a GPU by
    tests/backbones/test_fast_paths.py (whole models under autocast, bitwise logits)."""
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(5, 7, channels, generator=g) * 2 + 0.5).to(DEVICE).requires_grad_()
    w, b = ((torch.randn(channels, generator=g) + 1).to(DEVICE).requires_grad_() for _ in range(2))
    grad = torch.randn(5, 7, channels, generator=g).to(DEVICE).to(torch.float16)
    half = layer_norm(x, w, b, out_dtype=torch.float16, backend="triton")
    full = layer_norm(x, w, b, out_dtype=torch.float32, backend="triton")
    assert half.dtype == torch.float16 and torch.equal(half, full.to(torch.float16))
    got = torch.autograd.grad(half, (x, w, b), grad)
    want = torch.autograd.grad(full, (x, w, b), grad.float())
    for ours, theirs in zip(got, want):
        assert ours.dtype == theirs.dtype == torch.float32
        assert (ours - theirs).abs().max().item() <= 1e-5 * theirs.abs().max().item()


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "match"),
    [((2, 8), (7,), r"weight must have shape \(8,\)"), ((), None, "floating-point")],
)
def test_bad_shapes_raise(x_shape, w_shape, match):
    with pytest.raises(ValueError, match=match):
        layer_norm(torch.zeros(x_shape), torch.zeros(w_shape) if w_shape else None)


def test_module_errors():
    with pytest.raises(ValueError, match=r"expects \(\.\.\., 8\) inputs, got shape \(2, 7\)"):
        LayerNorm(8)(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="one"):
        LayerNorm((4, 8))
