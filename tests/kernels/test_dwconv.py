"""The Triton depthwise convolution and fused LKA spatial op against their references, forward and every gradient.

On a machine without CUDA the kernels run under ``TRITON_INTERPRET=1`` at small sizes; with CUDA the same tests run
on the GPU with larger ones (VAN's shapes). Each case names its memory format: NCHW (contiguous) or NHWC
(channels_last), which the kernels read and write directly. Outputs (and the fused op's scratch) are allocated
NaN-poisoned (``VIZATTN_POISON_OUTPUTS=1``), so an element a kernel never writes, or a scratch element it reads
without having written it, fails the comparison. Errors are measured against the reference computed in float64 on
the same (rounded) inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from kernel_checks import DEVICE, DTYPES, ON_GPU

import vizattn.kernels.dwconv as dw
from vizattn.kernels._dispatch import select_backend
from vizattn.kernels._triton_util import cdiv as _cdiv
from vizattn.kernels.dwconv import (
    _dwconv2d_backward_op,
    _dwconv2d_op,
    _lka_spatial_backward_op,
    _lka_spatial_op,
    dwconv2d,
    lka_spatial,
)
from vizattn.kernels.dwconv.reference import dwconv2d_reference, lka_spatial_reference

# max |ours - ref| / max |ref| per input dtype (the reference in float64 on the same, rounded, inputs)
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
CL = torch.channels_last


@dataclass(frozen=True)
class Case:
    b: int
    c: int
    h: int
    w: int
    k: int
    d: int
    layout: str  # "nchw" or "nhwc"
    dtype: str
    bias: bool = True

    @property
    def id(self) -> str:
        bias = "" if self.bias else "-nobias"
        return f"B{self.b}-C{self.c}-{self.h}x{self.w}-k{self.k}-d{self.d}-{self.layout}-{self.dtype}{bias}"


# Small enough for the interpreter (about 80 s for the whole file on one core); together they cover both formats,
# every dtype, kernels 1 to 31, dilations 1 to 4, odd and non-square maps, channel blocks with a masked tail (C = 33
# is two NHWC forward blocks of 32 and three weight-gradient blocks of 16) and maps smaller than the window.
CPU_CASES = [
    *(Case(2, 3, 13, 9, 3, 1, layout, dt) for layout in ("nchw", "nhwc") for dt in DTYPES),
    Case(1, 5, 11, 12, 5, 1, "nhwc", "bf16"),  # LKA's conv0
    Case(1, 4, 11, 12, 5, 1, "nchw", "fp32"),
    Case(1, 2, 20, 17, 7, 3, "nchw", "bf16"),  # LKA's conv_spatial
    Case(1, 3, 20, 17, 7, 3, "nhwc", "fp32"),
    Case(1, 3, 17, 10, 7, 3, "nhwc", "fp16"),
    Case(1, 3, 10, 14, 5, 2, "nhwc", "fp32", bias=False),
    Case(1, 2, 10, 14, 5, 2, "nchw", "fp16", bias=False),
    Case(1, 33, 6, 5, 3, 2, "nhwc", "bf16"),
    Case(1, 1, 5, 4, 7, 3, "nchw", "fp32"),  # window far larger than the map: mostly padding
    Case(1, 3, 4, 5, 7, 3, "nhwc", "fp32"),
    Case(2, 2, 1, 1, 3, 1, "nhwc", "fp32"),  # a 1x1 map is dense in both formats: it runs as NCHW
    Case(1, 2, 33, 18, 1, 1, "nhwc", "fp32"),  # 1x1: a per-channel scale
    Case(1, 1, 19, 21, 9, 2, "nchw", "fp32"),  # tiles that do not divide the map
    Case(1, 2, 7, 9, 13, 4, "nhwc", "fp32"),  # above 11 x 11 the kernels loop over taps instead of unrolling them
    Case(1, 1, 8, 9, 15, 2, "nchw", "bf16"),
    Case(1, 3, 9, 7, 31, 1, "nhwc", "fp32"),  # 31 x 31 on a small map (most taps are padding)
    # bfloat16 NHWC with an even C: the weight gradient reads channel pairs. Two column strips (the second 1 wide),
    # a masked tail of pairs; two channel blocks (the second masked) on a map narrower than a strip, no bias; two tap
    # chunks with the bias slot in the second.
    Case(2, 6, 13, 9, 7, 3, "nhwc", "bf16"),
    Case(1, 18, 9, 6, 3, 1, "nhwc", "bf16", bias=False),
    Case(1, 4, 7, 9, 9, 1, "nhwc", "bf16"),
]
GPU_CASES = [Case(8, 64, 56, 56, 7, 3, layout, "bf16") for layout in ("nchw", "nhwc")] + [
    Case(4, 160, 28, 28, 5, 1, "nhwc", "fp16"),
    Case(2, 96, 57, 45, 31, 1, "nhwc", "bf16"),
    Case(2, 32, 40, 50, 3, 4, "nchw", "fp32"),
    Case(2, 35, 30, 31, 9, 2, "nhwc", "fp32", bias=False),
]
CASES = GPU_CASES + CPU_CASES if ON_GPU else CPU_CASES


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    assert torch.isfinite(ours).all(), "unwritten (NaN) or non-finite elements"
    return ((ours.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def _to_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.contiguous(memory_format=CL) if layout == "nhwc" else x.contiguous()


def _assert_layout(t: torch.Tensor, layout: str) -> None:
    assert t.is_contiguous(memory_format=CL) if layout == "nhwc" else t.is_contiguous()


def _inputs(case: Case, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dt = DTYPES[case.dtype]
    x = _to_layout(torch.randn(case.b, case.c, case.h, case.w, generator=g).to(DEVICE, dt), case.layout)
    w = (torch.randn(case.c, 1, case.k, case.k, generator=g) / case.k).to(DEVICE, dt)
    b = torch.randn(case.c, generator=g).to(DEVICE, dt) if case.bias else None
    return x, w, b


def _grads(out: torch.Tensor, ref: torch.Tensor, leaves, ref_leaves, seed: int = 1):
    """Backpropagate one random cotangent (given in the output's format) through ours and the reference."""
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, out.dtype)
    grad = grad.contiguous(memory_format=CL) if out.is_contiguous(memory_format=CL) else grad
    ours = torch.autograd.grad(out, leaves, grad)
    theirs = torch.autograd.grad(ref, ref_leaves, grad.double())
    return ours, theirs


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_forward_and_gradients_match_reference(case):
    x, w, b = _inputs(case)
    dtype = DTYPES[case.dtype]
    leaves = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
    out = dwconv2d(*leaves[:2], leaves[2] if case.bias else None, case.d, backend="triton")
    assert out.dtype == dtype
    _assert_layout(out, case.layout)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = dwconv2d_reference(*ref_leaves[:2], ref_leaves[2] if case.bias else None, case.d)
    assert _rel(out, ref) < TOL[dtype]
    ours, theirs = _grads(out, ref, leaves, ref_leaves)
    _assert_layout(ours[0], case.layout)
    for name, got, want in zip(("dx", "dweight", "dbias"), ours, theirs):
        assert got.dtype == dtype
        assert _rel(got, want) < TOL[dtype] * 2, name


@pytest.mark.parametrize(("layout", "dtype"), [("nhwc", "bf16"), ("nhwc", "fp16"), ("nchw", "fp32")])
def test_weight_gradient_in_runs_of_rows(layout, dtype, monkeypatch):
    """The tile weight-gradient kernel: however the batch's rows are cut into runs (one row each, runs crossing images,
    one run), the weight and bias gradients are the reference's; a bfloat16 map that is not 4-byte aligned is read
    channel by channel. The weight is float32, so the gradients are not rounded to the map's dtype: float32 sums of
    exact products."""
    from vizattn.kernels.dwconv import triton as kernels

    monkeypatch.setattr(kernels, "WGRAD", "tiles")

    x, w, _ = _inputs(Case(2, 4, 5, 6, 3, 2, layout, dtype))
    w = w.float()
    grad = _to_layout(torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, x.dtype), layout)
    ref_leaves = [x.double(), w.double().requires_grad_(), torch.zeros(4, device=DEVICE).double().requires_grad_()]
    want = torch.autograd.grad(dwconv2d_reference(*ref_leaves, 2), ref_leaves[1:], grad.double())
    maps = [(x, grad)]
    if dtype == "bf16":
        assert kernels._wgrad_pairs(True, x, grad)
        shifted = torch.empty(x.numel() + 1, dtype=x.dtype, device=DEVICE)[1:]  # 2 bytes past an aligned address
        x_odd = shifted.view(2, 5, 6, 4).permute(0, 3, 1, 2).copy_(x)
        assert x_odd.is_contiguous(memory_format=CL) and not kernels._wgrad_pairs(True, x_odd, grad)
        maps.append((x_odd, grad))
    for xx, gg in maps:
        for rows in (1, 3, 7, 10):  # a row each; runs of 3 and 7 rows cross the first image's end; the whole batch
            _, dw, db = kernels.dwconv2d_bwd(gg, xx, w, 2, True, rows_per_program=rows)
            assert _rel(dw, want[0]) < 1e-5 and _rel(db, want[1]) < 1e-5, rows


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_strided_inputs_are_made_dense_once(layout):
    """A transposed map becomes NCHW; a channels_last map cropped along W (channels still innermost) stays NHWC."""
    g = torch.Generator().manual_seed(3)
    if layout == "nchw":
        x = torch.randn(2, 3, 14, 10, generator=g).transpose(-1, -2)
    else:
        x = torch.randn(2, 3, 10, 15, generator=g).contiguous(memory_format=CL)[..., :14]
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=CL)
    x = x.to(DEVICE).requires_grad_()
    w = torch.randn(3, 1, 5, 5, generator=g).to(DEVICE).requires_grad_()
    out = dwconv2d(x, w, None, dilation=2, backend="triton")
    _assert_layout(out, layout)
    x_ref = x.detach().double().requires_grad_()
    w_ref = w.detach().double().requires_grad_()
    ref = dwconv2d_reference(x_ref, w_ref, None, 2)
    assert _rel(out, ref) < 1e-5
    (gx, gw), (rx, rw) = _grads(out, ref, [x, w], [x_ref, w_ref])
    assert _rel(gx, rx) < 1e-5 and _rel(gw, rw) < 1e-5


def test_equals_the_convolution_of_nn_conv2d():
    conv = torch.nn.Conv2d(6, 6, 7, padding=9, dilation=3, groups=6).to(DEVICE)
    x = torch.randn(2, 6, 15, 13, device=DEVICE)
    with torch.no_grad():
        for xx in (x, x.contiguous(memory_format=CL)):
            assert _rel(dwconv2d(xx, conv.weight, conv.bias, 3, backend="triton"), conv(x).double()) < 1e-5


def test_empty_batch():
    x = torch.randn(0, 3, 5, 6, device=DEVICE, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, device=DEVICE, requires_grad=True)
    out = dwconv2d(x, w, None, 1, backend="triton")
    assert out.shape == x.shape
    out.sum().backward()
    assert w.grad.abs().sum() == 0


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_custom_op_registration(layout):
    x, w, b = _inputs(Case(1, 2, 6, 7, 3, 1, layout, "fp32"))
    torch.library.opcheck(_dwconv2d_op, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), 1))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_backward_op_matches_its_fake(layout):
    # the backward op's outputs must have the fake implementation's strides (torch.compile asserts them); NHWC maps
    # take the row-walking weight gradient
    x, w, _ = _inputs(Case(1, 2, 6, 7, 3, 1, layout, "fp32"))
    torch.library.opcheck(_dwconv2d_backward_op, (torch.randn_like(x), x, w, 1, True))


# --- the fused LKA spatial op -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LkaCase:
    b: int
    c: int
    h: int
    w: int
    layout: str
    dtype: str
    bias: bool = True
    k: tuple[int, int] = (5, 7)
    d: tuple[int, int] = (1, 3)

    @property
    def id(self) -> str:
        kd = "" if (self.k, self.d) == ((5, 7), (1, 3)) else f"-k{self.k[0]}d{self.d[0]}-k{self.k[1]}d{self.d[1]}"
        bias = "" if self.bias else "-nobias"
        return f"B{self.b}-C{self.c}-{self.h}x{self.w}-{self.layout}-{self.dtype}{kd}{bias}"


LKA_CPU_CASES = [
    LkaCase(1, 5, 23, 11, "nhwc", "fp32"),  # an 8-column strip and a partial one
    LkaCase(1, 3, 13, 21, "nhwc", "bf16"),
    LkaCase(1, 19, 12, 9, "nhwc", "fp16"),  # two channel blocks, the second masked
    LkaCase(1, 2, 22, 17, "nchw", "fp32"),
    LkaCase(1, 2, 13, 11, "nchw", "bf16", bias=False),
    LkaCase(2, 3, 5, 4, "nhwc", "fp32"),  # map smaller than the 23-pixel field; the batch of two (a small map)
    LkaCase(1, 3, 14, 12, "nhwc", "fp32", bias=False, k=(3, 5), d=(2, 2)),
]
LKA_GPU_CASES = [
    LkaCase(8, 64, 56, 56, "nhwc", "bf16"),
    LkaCase(4, 64, 56, 56, "nchw", "bf16"),
    LkaCase(4, 160, 28, 28, "nhwc", "fp16"),
    LkaCase(2, 320, 14, 14, "nhwc", "fp32"),
    LkaCase(1, 64, 200, 333, "nhwc", "bf16"),  # a detection-size map: several bands
]
LKA_CASES = LKA_GPU_CASES + LKA_CPU_CASES if ON_GPU else LKA_CPU_CASES


def _lka_inputs(case: LkaCase, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dt = DTYPES[case.dtype]
    x = _to_layout(torch.randn(case.b, case.c, case.h, case.w, generator=g).to(DEVICE, dt), case.layout)
    params = []
    for k in case.k:
        params.append((torch.randn(case.c, 1, k, k, generator=g) / k).to(DEVICE, dt))
        params.append(torch.randn(case.c, generator=g).to(DEVICE, dt) if case.bias else None)
    return x, *params


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two-kernels"])
@pytest.mark.parametrize("case", LKA_CASES, ids=[c.id for c in LKA_CASES])
def test_lka_spatial_matches_two_convs(case, fused):
    x, w0, b0, w1, b1 = _lka_inputs(case)
    dtype = DTYPES[case.dtype]
    args = [t.clone().requires_grad_() if t is not None else None for t in (x, w0, b0, w1, b1)]
    out = lka_spatial(*args, dilations=case.d, backend="triton", fused=fused)
    assert out.dtype == dtype
    _assert_layout(out, case.layout)
    ref_args = [t.detach().double().requires_grad_() if t is not None else None for t in args]
    ref = lka_spatial_reference(*ref_args, dilations=case.d)
    assert _rel(out, ref) < TOL[dtype]
    leaves = [t for t in args if t is not None]
    ours, theirs = _grads(out, ref, leaves, [t for t in ref_args if t is not None])
    _assert_layout(ours[0], case.layout)
    names = ["dx", "dw0", "db0", "dw1", "db1"] if case.bias else ["dx", "dw0", "dw1"]
    for name, got, want in zip(names, ours, theirs):
        assert got.dtype == dtype
        assert _rel(got, want) < TOL[dtype] * 2, name


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_lka_spatial_bands_and_persistent_programs(layout):
    """Maps cut into bands whose halo rows overlap, fewer programs than work items (each reuses its scratch slot)."""
    from vizattn.kernels.dwconv import triton as kernels

    b, c = (1, 1) if layout == "nchw" else (2, 5)
    x, w0, b0, w1, b1 = _lka_inputs(LkaCase(b, c, 21, 13, layout, "fp32"), seed=4)
    ref = lka_spatial_reference(*(t.double() for t in (x, w0, b0, w1, b1)))
    for band_rows, programs in ((4, 3), (8, 1)):
        out = kernels.lka_spatial_fwd(x, w0, b0, w1, b1, (1, 3), band_rows=band_rows, programs=programs)
        _assert_layout(out, layout)
        assert _rel(out, ref) < 1e-5, (band_rows, programs)


def test_lka_spatial_torch_path_is_the_two_module_convs():
    """The torch backend runs exactly what LKA's nn.Conv2d modules run (same dtype, bit for bit)."""
    conv0 = torch.nn.Conv2d(4, 4, 5, padding=2, groups=4).to(DEVICE)
    conv_spatial = torch.nn.Conv2d(4, 4, 7, padding=9, groups=4, dilation=3).to(DEVICE)
    x = torch.randn(2, 4, 16, 11, device=DEVICE)
    args = (conv0.weight, conv0.bias, conv_spatial.weight, conv_spatial.bias)
    with torch.no_grad():
        assert torch.equal(lka_spatial(x, *args, backend="torch"), conv_spatial(conv0(x)))
        out = lka_spatial(x.contiguous(memory_format=CL), *args, backend="torch")
    assert out.is_contiguous(memory_format=CL)


def test_lka_spatial_auto_mixes_backends_per_conv(monkeypatch):
    """What 'auto' does on CUDA for a channels_last map: an undilated 11x11 (beyond the row-walking kernel) on torch,
    the dilated 7x7 on Triton; VAN's 5x5 and 7x7 d3 both on Triton."""
    calls = []

    def as_on_cuda(op, backend, tensors, reasons=(), auto_triton=True):
        calls.append(auto_triton)
        return "triton" if auto_triton else "torch"

    monkeypatch.setattr(dw, "select_backend", as_on_cuda)
    x, w0, b0, w1, b1 = _lka_inputs(LkaCase(1, 2, 6, 5, "nhwc", "fp32"))
    lka_spatial(x, w0, b0, w1, b1, dilations=(1, 3))
    assert calls == [True, True]
    calls.clear()
    x, w0, b0, w1, b1 = _lka_inputs(LkaCase(2, 3, 13, 11, "nhwc", "fp32", k=(11, 7)))
    args = [t.clone().requires_grad_() for t in (x, w0, b0, w1, b1)]
    out = lka_spatial(*args, dilations=(1, 3), fused=True)  # fused needs both convs on Triton: not taken
    assert calls == [False, True]
    _assert_layout(out, "nhwc")
    ref_args = [t.detach().double().requires_grad_() for t in args]
    ref = lka_spatial_reference(*ref_args, dilations=(1, 3))
    assert _rel(out, ref) < TOL[torch.float32]
    ours, theirs = _grads(out, ref, args, ref_args)
    for name, got, want in zip(["dx", "dw0", "db0", "dw1", "db1"], ours, theirs):
        assert _rel(got, want) < TOL[torch.float32] * 2, name


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_lka_custom_op_registration(layout):
    x, w0, b0, w1, b1 = _lka_inputs(LkaCase(1, 2, 6, 5, layout, "fp32"))
    args = (x.requires_grad_(), w0.requires_grad_(), b0.requires_grad_(), w1.requires_grad_(), None, 1, 3)
    torch.library.opcheck(
        _lka_spatial_op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration")
    )
    grad_args = (torch.randn_like(x), x.detach(), w0.detach(), b0.detach(), w1.detach(), 1, 3, True, False)
    torch.library.opcheck(_lka_spatial_backward_op, grad_args, test_utils=("test_schema", "test_faketensor"))


# --- forward algorithms, weight-gradient source, nn.Conv2d modules ---------------------------------------------------


ALGO_CASES = [
    Case(2, 5, 11, 12, 5, 1, "nhwc", "bf16"),
    Case(1, 3, 20, 17, 7, 3, "nhwc", "fp32"),
    Case(1, 33, 6, 5, 3, 2, "nhwc", "fp16", bias=False),
    Case(1, 2, 13, 9, 9, 1, "nhwc", "fp32"),
    Case(1, 3, 2, 5, 3, 4, "nhwc", "fp32"),  # dilation above the map's height: phases without rows
]


@pytest.mark.parametrize("algo", ["rows", "tiles"])
@pytest.mark.parametrize("case", ALGO_CASES, ids=[c.id for c in ALGO_CASES])
def test_forward_algorithms_match_reference(case, algo):
    """Both forward kernels of NHWC maps; the row-walking one also with chains cut into segments of 3 rows, and of 1
    row for kernels up to 5 (halo rows loaded twice, outputs outside a segment skipped; 1-row segments of the k7 and
    k9 cases re-read 7-9 halo rows per output row, the interpreter's slowest forward)."""
    from vizattn.kernels.dwconv import triton as kernels

    x, w, b = _inputs(case)
    ref = dwconv2d_reference(x.double(), w.double(), None if b is None else b.double(), case.d)
    for seg_rows in ([None, 1, 3] if case.k <= 5 else [None, 3]) if algo == "rows" else [None]:
        out = kernels.dwconv2d_fwd(x, w, b, case.d, algo=algo, seg_rows=seg_rows)
        _assert_layout(out, "nhwc")
        assert _rel(out, ref) < TOL[DTYPES[case.dtype]], seg_rows


@pytest.mark.parametrize("case", ALGO_CASES[:3], ids=[c.id for c in ALGO_CASES[:3]])
def test_rows_kernels_with_a_constant_column_stride(case, monkeypatch):
    """ROWS_CONST_STRIDE hands the row-walking kernels the column stride as a compile-time constant: the same
    addresses, so bitwise the same forward, input gradient and weight gradient, and what reaches the launch is the
    map's column stride (0 without the flag)."""
    from vizattn.kernels.dwconv import triton as kernels

    x, w, b = _inputs(case)
    grad = _to_layout(torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE, x.dtype), "nhwc")
    results = []
    for const in (False, True):
        monkeypatch.setattr(kernels, "ROWS_CONST_STRIDE", const)
        assert kernels._const_stride(x) == (x.stride(3) if const else 0) and x.stride(3) == case.c
        out = kernels.dwconv2d_fwd(x, w, b, case.d, algo="rows")
        results.append((out, *kernels._rows_wgrad(grad, x, w.float(), case.d, b is not None, None)))
    for name, plain, const in zip(["out", "dweight", "dbias"], *results):
        if plain is not None:
            assert torch.isfinite(plain).all() and torch.equal(plain, const), name


SPLIT_CASES = [  # (case, segment rows): small maps, for the interpreter's sake
    (Case(1, 2, 10, 9, 5, 1, "nhwc", "bf16"), (None, 3)),  # a chain of 10: 4 middle rows; segments of 3: none
    (ALGO_CASES[2], (None, 1, 4)),  # k 3, dilation 2, channels not filling the block, no bias
    (ALGO_CASES[4], (None,)),  # phases without rows
]


@pytest.mark.parametrize("case,segs", SPLIT_CASES, ids=[c.id for c, _ in SPLIT_CASES])
def test_rows_forward_split_loop_matches_the_guarded_one(case, segs, monkeypatch):
    """ROWS_SPLIT_LOOP walks the middle of each segment without the per-row tests of outputs outside it: the same
    products in the same order, so bitwise the same outputs, for whole chains and for segments with and without
    middle rows."""
    from vizattn.kernels.dwconv import triton as kernels

    x, w, b = _inputs(case)
    for seg_rows in segs:
        outs = []
        for split in (False, True):
            monkeypatch.setattr(kernels, "ROWS_SPLIT_LOOP", split)
            outs.append(kernels.dwconv2d_fwd(x, w, b, case.d, algo="rows", seg_rows=seg_rows))
        assert torch.isfinite(outs[0]).all() and torch.equal(*outs), seg_rows


FLAT_CASES = [  # (case, flat rows per program): ranges that end mid-chain, span phases and images
    (Case(2, 2, 7, 6, 5, 1, "nhwc", "bf16"), (3, 9)),  # 9: the first image's last rows and the second's first two
    (Case(2, 3, 8, 5, 3, 3, "nhwc", "fp32", bias=False), (2, 5)),  # chains of 3, 3 and 2 rows per image
    (ALGO_CASES[4], (1, 3)),  # dilation 4 on 2 rows: phases without rows
]


@pytest.mark.parametrize("case,ranges", FLAT_CASES, ids=[c.id for c, _ in FLAT_CASES])
def test_rows_forward_flat_ranges_match_the_segments(case, ranges):
    """The flat schedule hands each program a range of the batch's rows (image, then phase, then chain row) and the
    program walks the piece of every chain its range meets: each output gets the same products in the same order as
    under the segment schedule, so bitwise the same outputs, and every output is written (outputs start as NaN)."""
    from vizattn.kernels.dwconv import triton as kernels

    x, w, b = _inputs(case)
    segments = kernels.dwconv2d_fwd(x, w, b, case.d, algo="rows", seg_rows=2)
    assert torch.isfinite(segments).all()
    for rows in ranges:
        flat = kernels.dwconv2d_fwd(x, w, b, case.d, algo="rows", flat_rows=rows)
        assert torch.isfinite(flat).all() and torch.equal(flat, segments), rows


def _record_rows_launches(monkeypatch, kernel: str, rows_args: tuple[int, int], regs: int | None = None) -> list:
    """Replace the row-walking kernel named ``kernel`` by a recorder of (grid, FLAT, its positional arguments at
    ``rows_args``) per launch, returning a compiled kernel of ``regs`` registers; the device gets 132 SMs and the
    forward an empty cache of resident programs."""
    from vizattn.kernels.dwconv import triton as kernels

    seen = []

    class Launcher:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append((grid, kwargs["FLAT"], *(args[i] for i in rows_args)))
                return SimpleNamespace(n_regs=regs)

            return launch

    monkeypatch.setattr(kernels, kernel, Launcher())
    monkeypatch.setattr(kernels, "_sm_count", lambda device: 132)
    monkeypatch.setattr(kernels, "_ROWS_RESIDENT", {})
    return seen


def test_rows_forward_schedule_flat_where_segments_cut_chains(monkeypatch):
    """ROWS_FLAT takes the flat schedule only where the segment schedule would cut the chains (as at 56x56 C64 B64
    k 5: 5 segments per chain), sized to one wave of the programs an SM holds by the compiled kernel's registers
    (a guess before the first launch); whole chains (7x7 dilation 3 there) keep the segments, and so does
    ROWS_FLAT=False."""
    from vizattn.kernels.dwconv import triton as kernels

    # (grid, FLAT, seg_rows, n_segs); 128 registers: 8 programs of 2 warps per SM
    seen = _record_rows_launches(monkeypatch, "_dw_rows_fwd_kernel", (11, 12), regs=128)
    x = torch.empty(64, 64, 56, 56).to(memory_format=CL)
    w5, w7 = torch.empty(64, 1, 5, 5), torch.empty(64, 1, 7, 7)
    for _ in range(2):
        kernels.dwconv2d_fwd(x, w5, None, 1)
    kernels.dwconv2d_fwd(x, w7, None, 3)
    monkeypatch.setattr(kernels, "ROWS_FLAT", False)
    kernels.dwconv2d_fwd(x, w5, None, 1)
    # 7 strips of 8 columns, one block of 64 channels; 64 * 56 rows over 132 * 4 (guess), then 132 * 8 programs
    guess, measured = _cdiv(64 * 56, 132 * 4 // 7), _cdiv(64 * 56, 132 * 8 // 7)
    assert seen[0] == ((_cdiv(64 * 56, guess), 7, 1), True, guess, 64 * 56)
    assert seen[1] == ((_cdiv(64 * 56, measured), 7, 1), True, measured, 64 * 56)
    assert seen[2] == ((64 * 3, 7, 1), False, 19, 1)  # chains of 19 rows, whole
    assert seen[3] == ((64 * 5, 7, 1), False, 12, 5)  # the segments the flat schedule replaced


@pytest.mark.parametrize("regs,warps,resident", [(128, 2, 8), (255, 2, 4), (200, 2, 4), (64, 2, 16), (32, 2, 32),
                                                  (96, 4, 5), (None, 2, None)])
def test_resident_programs_follow_the_registers(regs, warps, resident):
    """Programs an SM holds at once: four schedulers of 16384 registers, given to warps in multiples of 256, at most
    32 programs and 64 warps; None (the interpreter's launch) leaves the guess."""
    from vizattn.kernels.dwconv import triton as kernels

    assert kernels._resident_programs(SimpleNamespace(n_regs=regs), warps) == resident


def test_forward_algorithm_is_validated():
    from vizattn.kernels.dwconv import triton as kernels

    x, w, b = _inputs(Case(1, 2, 6, 5, 3, 1, "nchw", "fp32"))
    with pytest.raises(ValueError, match="algo='rows': 'tiles', or 'rows' for channels_last maps with k <= 9"):
        kernels.dwconv2d_fwd(x, w, b, 1, algo="rows")  # NCHW
    with pytest.raises(ValueError, match="algo='cols'"):
        kernels.dwconv2d_fwd(_to_layout(x, "nhwc"), w, b, 1, algo="cols")
    w11 = torch.randn(2, 1, 11, 11, device=DEVICE)
    with pytest.raises(ValueError, match="algo='rows'"):
        kernels.dwconv2d_fwd(_to_layout(x, "nhwc"), w11, b, 1, algo="rows")


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_weight_gradient_from_aten(monkeypatch, dtype):
    """WGRAD='aten' (what 'auto' takes for undilated 16-bit convs on CUDA beyond the row-walking kernel): the weight
    and bias gradients from ATen's convolution backward, in the weight's dtype, next to the kernel's input gradient."""
    from vizattn.kernels.dwconv import triton as kernels

    case = Case(2, 6, 9, 7, 3, 1, "nhwc", dtype)
    x, w, b = _inputs(case)
    monkeypatch.setattr(kernels, "WGRAD", "aten")
    leaves = [x.clone().requires_grad_(), w.float().requires_grad_(), b.float().requires_grad_()]
    out = dwconv2d(*leaves, 1, backend="triton")
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = dwconv2d_reference(*ref_leaves, 1)
    ours, theirs = _grads(out, ref, leaves, ref_leaves)
    for name, got, want, leaf in zip(("dx", "dweight", "dbias"), ours, theirs, leaves):
        assert got.dtype == leaf.dtype, name
        assert _rel(got, want) < TOL[DTYPES[dtype]] * 2, name
    monkeypatch.setattr(kernels, "WGRAD", "cudnn")
    with pytest.raises(ValueError, match="WGRAD='cudnn': 'auto', 'rows', 'tiles' or 'aten'"):
        kernels.dwconv2d_bwd(x, x, w, 1, True)
    monkeypatch.setattr(kernels, "WGRAD", "rows")
    with pytest.raises(ValueError, match="WGRAD='rows' takes channels_last maps with k <= 9"):
        kernels.dwconv2d_bwd(x.contiguous(), x.contiguous(), w, 1, True)


def _wgrad_case(case: Case):
    """x, the float32 weight, a dy and the float64 reference's (dweight, dbias) of ``case``."""
    x, w, _ = _inputs(case)
    w = w.float()
    grad = _to_layout(torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, x.dtype), "nhwc")
    zeros = torch.zeros(case.c, device=DEVICE).double().requires_grad_()
    ref_leaves = [x.double(), w.double().requires_grad_(), zeros]
    want = torch.autograd.grad(dwconv2d_reference(*ref_leaves, case.d), ref_leaves[1:], grad.double())
    return x, w, grad, want


@pytest.mark.parametrize("programs", [1, None])
@pytest.mark.parametrize("case", ALGO_CASES, ids=[c.id for c in ALGO_CASES])
def test_rows_weight_gradient(case, programs, monkeypatch):
    """The row-walking weight-gradient kernel: one program for every (image, phase, strip), or the default schedule
    (a few programs under the interpreter: whole chains, or flat ranges where chains fall unequally on them); the
    float32 weight's gradients are float32 sums of exact products."""
    from vizattn.kernels.dwconv import triton as kernels

    monkeypatch.setattr(kernels, "WGRAD", "rows")
    x, w, grad, want = _wgrad_case(case)
    _, dw_, db = kernels.dwconv2d_bwd(grad, x, w, case.d, case.bias, rows_programs=programs)
    assert dw_.dtype == torch.float32 and _rel(dw_, want[0]) < 1e-5
    assert (db is None) if not case.bias else _rel(db, want[1]) < 1e-5


@pytest.mark.parametrize("case", ALGO_CASES, ids=[c.id for c in ALGO_CASES])
def test_rows_weight_gradient_other_prefetch(case, monkeypatch):
    """The row-walking weight gradient with the other choice of row prefetch than its rule makes for the case (on
    for the short chains, including phases without rows and pieces of flat ranges; off for the long ones)."""
    from vizattn.kernels.dwconv import triton as kernels

    other = not kernels._wgrad_prefetch(case.h, case.k, case.d)
    monkeypatch.setattr(kernels, "_wgrad_prefetch", lambda h, k, d: other)
    x, w, grad, want = _wgrad_case(case)
    for rows in (None, 3):
        dw_, db = kernels._rows_wgrad(grad, x, w, case.d, True, None, rows)
        assert _rel(dw_, want[0]) < 1e-5 and _rel(db, want[1]) < 1e-5, rows


def test_rows_weight_gradient_prefetch_rule():
    """Rows are prefetched where each phase's chain has at least 2k rows (H200: 5x5 and 7x7 d3 at 56x56 faster,
    7x7 d3 at 14x14, 5-row chains, slower)."""
    from vizattn.kernels.dwconv import triton as kernels

    assert kernels._wgrad_prefetch(56, 5, 1) and kernels._wgrad_prefetch(28, 5, 1)
    assert kernels._wgrad_prefetch(56, 7, 3)  # chains of 19 rows
    assert not kernels._wgrad_prefetch(14, 7, 3) and not kernels._wgrad_prefetch(7, 7, 3)
    assert kernels._wgrad_prefetch(10, 5, 1) and not kernels._wgrad_prefetch(9, 5, 1)


@pytest.mark.parametrize("case,ranges", FLAT_CASES, ids=[c.id for c, _ in FLAT_CASES])
def test_rows_weight_gradient_flat_ranges(case, ranges):
    """The weight gradient's flat schedule: programs own ranges of all strips' rows, pieces of chains that end
    anywhere (each reloading the dy rows around its ends, each dy row added to the bias once); the float32 weight's
    gradients match the reference's to float32 rounding of the sums, however the ranges fall."""
    from vizattn.kernels.dwconv import triton as kernels

    x, w, grad, want = _wgrad_case(case)
    for rows in ranges:
        dw_, db = kernels._rows_wgrad(grad, x, w, case.d, True, None, rows)
        assert _rel(dw_, want[0]) < 1e-5 and _rel(db, want[1]) < 1e-5, rows


def test_rows_weight_gradient_schedule(monkeypatch):
    """WGRAD_FLAT hands out ranges of rows only where whole chains would fall unequally on the programs (B64 56x56
    C64 7x7 d3: 1344 chains on 528 programs), on as many programs; one chain per program (5x5 there: 448) stays, and
    so does everything with WGRAD_FLAT=False."""
    from vizattn.kernels.dwconv import triton as kernels

    seen = _record_rows_launches(monkeypatch, "_dw_rows_wgrad_kernel", (12, 13))  # (grid, FLAT, n_work, rows)
    x = torch.empty(64, 64, 56, 56, dtype=torch.bfloat16).to(memory_format=CL)
    w5, w7 = torch.empty(64, 1, 5, 5), torch.empty(64, 1, 7, 7)
    kernels._rows_wgrad(x, x, w5, 1, True, None)
    kernels._rows_wgrad(x, x, w7, 3, True, None)
    monkeypatch.setattr(kernels, "WGRAD_FLAT", False)
    kernels._rows_wgrad(x, x, w7, 3, True, None)
    rows = 7 * 64 * 56  # 7 strips of 8 columns
    assert seen[0] == ((448, 1), False, 448, 0)
    assert seen[1] == ((_cdiv(rows, _cdiv(rows, 528)), 1), True, rows, _cdiv(rows, 528))
    assert seen[2] == ((528, 1), False, 64 * 3 * 7, 0)


def test_rows_weight_gradient_programs(monkeypatch):
    """Programs of the row-walking weight gradient: partial sums kept to 1/8 of the maps' bytes unless that leaves
    fewer than 4 programs per SM over the channel blocks; at most 8 per SM and block, and never more than the work."""
    from vizattn.kernels.dwconv import triton as kernels

    monkeypatch.setattr(kernels, "_sm_count", lambda device: 132)
    mib = 2**20
    # VAN-B2's stage-3 7x7 d3 at B128 (C320, 5 blocks): 4 per SM over the blocks (the 1/8 share allows 64).
    assert kernels._rows_wgrad_programs(768, 5, 320, 7, 2 * 128 * 320 * 196 * 2, None) == 132 * 4 // 5
    # Its MLP 3x3 at 56x56 C512: large maps, the cap of 8 per SM and block.
    assert kernels._rows_wgrad_programs(1792, 8, 512, 3, 822 * mib, None) == 132 * 8
    # In between: the share.
    assert kernels._rows_wgrad_programs(512, 20, 1280, 3, 128 * mib, None) == 128 * mib // (8 * 9 * 1280 * 4)
    assert kernels._rows_wgrad_programs(3, 1, 64, 7, 10 * mib, None) == 3


def test_wgrad_auto_rule():
    from vizattn.kernels.dwconv import triton as kernels

    assert kernels._wgrad_auto(True, torch.bfloat16, 1, True) == "rows"
    assert kernels._wgrad_auto(True, torch.bfloat16, 3, True) == "rows"
    assert kernels._wgrad_auto(True, torch.float16, 1, False) == "aten"
    assert kernels._wgrad_auto(True, torch.bfloat16, 3, False) == "tiles"
    assert kernels._wgrad_auto(True, torch.float32, 1, False) == "tiles"
    assert kernels._wgrad_auto(False, torch.bfloat16, 1, False) == "tiles"


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_dwconv2d_module(backend):
    """An nn.Conv2d run through the backends: Triton matches the reference, torch is the module's own output."""
    from vizattn.kernels.dwconv import dwconv2d_module

    conv = torch.nn.Conv2d(6, 6, 3, padding=1, groups=6).to(DEVICE)
    x = _to_layout(torch.randn(2, 6, 9, 7, device=DEVICE), "nhwc").requires_grad_()
    out = dwconv2d_module(conv, x, backend=backend)
    want = conv(x)
    if backend == "torch":
        assert torch.equal(out, want)
    else:
        assert _rel(out, want.double()) < TOL[torch.float32]
        (dx,) = torch.autograd.grad(out.sum(), x)
        (want_dx,) = torch.autograd.grad(want.sum(), x)
        assert _rel(dx, want_dx.double()) < TOL[torch.float32] * 2
    for bad in (torch.nn.Conv2d(6, 6, 3, padding=0, groups=6), torch.nn.Conv2d(6, 6, 3, padding=1, groups=3),
                torch.nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6),
                torch.nn.Conv2d(6, 6, 3, padding=1, dilation=(1, 2), groups=6)):  # fmt: skip
        with pytest.raises(ValueError, match="dwconv2d_module: the conv must be depthwise, stride 1, square, 'same'"):
            dwconv2d_module(bad.to(DEVICE), x, backend=backend)


# --- backend choice and argument checks ---------------------------------------------------------------------------


def test_auto_takes_triton_for_channels_last_maps_only(monkeypatch):
    # The H200 measurements (see dw.TRITON_BY_DEFAULT): Triton faster for channels_last maps, dilated or within the
    # row-walking kernel's sizes; torch for NCHW maps and for large undilated kernels.
    assert dw.TRITON_BY_DEFAULT is False
    nchw = torch.empty(2, 8, 5, 6)
    nhwc = nchw.contiguous(memory_format=torch.channels_last)
    assert dw._auto_triton(nchw, 7, 3) is False
    assert dw._auto_triton(nchw, 3, 1) is False
    assert dw._auto_triton(nhwc, 7, 3) is True
    assert dw._auto_triton(nhwc, 3, 1) is True
    assert dw._auto_triton(nhwc, 9, 1) is True
    assert dw._auto_triton(nhwc, 11, 1) is False
    assert dw._auto_triton(nhwc, 13, 4) is True  # dilated: the tile kernel
    assert dw._auto_triton(torch.empty(2, 1, 5, 6), 7, 3) is False  # dense in both formats: NCHW
    on_cuda = [SimpleNamespace(is_cuda=True)]
    assert select_backend("dwconv2d", "auto", on_cuda, auto_triton=False) == "torch"
    assert select_backend("dwconv2d", "auto", on_cuda) == "triton"  # what other ops get, unchanged
    assert select_backend("dwconv2d", "triton", on_cuda, auto_triton=False) == "triton"
    # VIZATTN_BACKEND=triton still forces the kernels: float64 is refused by them, which shows they were chosen.
    x, w = torch.randn(1, 2, 5, 5, dtype=torch.float64), torch.randn(2, 1, 3, 3, dtype=torch.float64)
    monkeypatch.setenv("VIZATTN_BACKEND", "triton")
    with pytest.raises(ValueError, match="dwconv2d: backend='triton' was requested but cannot run"):
        dwconv2d(x, w)
    with pytest.raises(ValueError, match="lka_spatial: backend='triton' was requested but cannot run"):
        lka_spatial(x, w, None, w, None)


def test_auto_backend_uses_the_torch_path_on_cpu_tensors():
    x, w, b = _inputs(Case(1, 2, 6, 7, 3, 1, "nchw", "fp32"))
    x, w, b = x.double().cpu(), w.double().cpu(), b.double().cpu()
    assert dwconv2d(x, w, b, 1).dtype == torch.float64
    assert lka_spatial(x, w, b, w, b).dtype == torch.float64
    with pytest.raises(ValueError, match="backend='triton' was requested but cannot run: the kernels take float16"):
        dwconv2d(x, w, b, 1, backend="triton")


def test_bad_arguments():
    x = torch.randn(1, 4, 8, 8)
    w3, w5, w7 = (torch.randn(4, 1, k, k) for k in (3, 5, 7))
    with pytest.raises(ValueError, match=r"weight must be \(C, 1, k, k\) with C = 4, got \(4, 2, 3, 3\)"):
        dwconv2d(x, torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match=r"the kernel size of weight must be odd \('same' padding\), got 4"):
        dwconv2d(x, torch.randn(4, 1, 4, 4))
    with pytest.raises(ValueError, match=r"bias must be \(C,\) = \(4,\), got \(3,\)"):
        dwconv2d(x, w3, torch.randn(3))
    with pytest.raises(ValueError, match="dilation must be a positive int, got 0"):
        dwconv2d(x, w3, dilation=0)
    with pytest.raises(ValueError, match=r"x must be a floating-point \(B, C, H, W\) map"):
        dwconv2d(torch.randn(4, 8, 8), w3)
    with pytest.raises(ValueError, match="backend='cuda' is not one of"):
        dwconv2d(x, w3, backend="cuda")
    with pytest.raises(ValueError, match=r"lka_spatial: w0 must be \(C, 1, k, k\) with C = 4, got \(3, 1, 5, 5\)"):
        lka_spatial(x, torch.randn(3, 1, 5, 5), None, w7, None)
    with pytest.raises(ValueError, match=r"lka_spatial: the kernel size of w1 must be odd \('same' padding\), got 6"):
        lka_spatial(x, w5, None, torch.randn(4, 1, 6, 6), None)
    with pytest.raises(ValueError, match=r"lka_spatial: b1 must be \(C,\) = \(4,\), got \(5,\)"):
        lka_spatial(x, w5, None, w7, torch.randn(5))
    with pytest.raises(ValueError, match=r"lka_spatial: dilations\[1\] must be a positive int, got 0"):
        lka_spatial(x, w5, None, w7, None, dilations=(1, 0))
    with pytest.raises(ValueError, match=r"lka_spatial: dilations must be a pair \(d0, d1\), got 3"):
        lka_spatial(x, w5, None, w7, None, dilations=3)
