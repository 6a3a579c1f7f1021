"""The Triton kernels of routed attention (BiFormer) against the reference, forward and every gradient.

On a machine without CUDA the kernels run under ``TRITON_INTERPRET=1`` at small sizes; with CUDA the same tests run
on the GPU with larger ones. Outputs and gradients are allocated NaN-poisoned (``VIZATTN_POISON_OUTPUTS=1``), so an
element a kernel never writes fails the comparison. Errors are measured against the reference in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from kernel_checks import ATTN_TOL, DEVICE, DTYPES, ON_GPU

from vizattn.kernels.routed import (
    bi_level_routing_attention,
    region_routing,
    routed_attention,
)
from vizattn.kernels.routed import triton as kernels
from vizattn.kernels.routed.reference import routed_attention_reference


@dataclass(frozen=True)
class Case:
    n: int
    hh: int
    ww: int
    n_win: int
    topk: int
    heads: int
    d_qk: int
    d_v: int
    dtype: str = "fp32"

    @property
    def id(self) -> str:
        dims = f"d{self.d_qk}" if self.d_qk == self.d_v else f"d{self.d_qk}v{self.d_v}"
        return f"B{self.n}-H{self.heads}-{self.hh}x{self.ww}-nwin{self.n_win}-topk{self.topk}-{dims}-{self.dtype}"


CPU_CASES = [
    Case(2, 8, 12, 2, 2, 2, 16, 16),  # 4x6 regions
    Case(1, 9, 15, 3, 1, 1, 24, 16),  # 3x5 regions, topk 1, d 24, C_qk != C_v
    Case(1, 6, 6, 3, 9, 2, 32, 32),  # 2x2 regions, topk = n_win^2 (dense kernel)
    Case(1, 12, 20, 4, 3, 1, 32, 64, "bf16"),  # non-square 3x5 regions
    Case(1, 8, 8, 2, 4, 1, 64, 64, "fp16"),  # topk = all, d 64
    Case(1, 10, 10, 5, 5, 2, 16, 16, "bf16"),  # 2x2 regions (dense kernel), like stage 2 at 224 px
]
GPU_CASES = [
    Case(4, 56, 56, 7, 1, 2, 32, 32, "bf16"),  # BiFormer stage 0 at 224 px
    Case(4, 28, 28, 7, 4, 4, 32, 32, "bf16"),  # stage 1
    Case(4, 14, 14, 7, 16, 8, 32, 32, "bf16"),  # stage 2
    Case(2, 14, 14, 7, 16, 8, 32, 32, "fp16"),
    Case(2, 28, 28, 7, 4, 4, 32, 32, "fp32"),
    Case(2, 39, 63, 3, 4, 3, 24, 16, "bf16"),  # 13x21 regions (273 tokens), d 24, C_qk != C_v
    Case(1, 48, 48, 8, 64, 2, 64, 96, "bf16"),  # topk = n_win^2, d 64 / 96
    Case(2, 32, 48, 4, 3, 2, 128, 128, "bf16"),  # d 128, 8x12 regions
    Case(1, 64, 64, 16, 16, 4, 16, 16, "bf16"),  # n_win 16 (dense prediction), 4x4 regions
] + CPU_CASES
CASES = GPU_CASES if ON_GPU else CPU_CASES


def _inputs(case: Case, seed: int = 0, duplicates: bool = False):
    """q, k, v as channel slices of one tensor (as the model's projection makes them), and a routing."""
    g = torch.Generator().manual_seed(seed)
    c_qk, c_v = case.heads * case.d_qk, case.heads * case.d_v
    qkv = torch.randn(case.n, case.hh, case.ww, 2 * c_qk + c_v, generator=g).to(DEVICE, DTYPES[case.dtype])
    q, k, v = qkv.split([c_qk, c_qk, c_v], dim=-1)
    p2 = case.n_win**2
    if duplicates:
        r_idx = torch.randint(0, p2, (case.n, p2, case.topk), generator=g)
    else:
        r_idx = torch.rand(case.n, p2, p2, generator=g).argsort(dim=-1)[..., : case.topk]
    return q, k, v, r_idx.to(DEVICE)


def _assert_close(name: str, got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    rel_l2, rel_max = ATTN_TOL[dtype]
    assert torch.isfinite(got).all(), f"{name}: non-finite values (an element was not written?)"
    diff = (got.double() - ref).abs()
    err = diff.norm() / ref.norm()
    worst = diff.max() / ref.abs().max()
    assert err <= rel_l2, f"{name}: relative L2 error {err:.3e} > {rel_l2:.1e}"
    assert worst <= rel_max, f"{name}: max error {worst:.3e} of max |ref| > {rel_max:.1e}"


def _reference(q, k, v, r_idx, case, grad):
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = routed_attention_reference(*leaves, r_idx, case.n_win, case.heads, (case.heads * case.d_qk) ** -0.5)
    return (ref.detach(), *torch.autograd.grad(ref, leaves, grad.double()))


def _check_against_reference(case: Case, run, duplicates: bool = False) -> None:
    q, k, v, r_idx = _inputs(case, duplicates=duplicates)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = run(*leaves, r_idx)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, out.dtype)
    got = (out, *torch.autograd.grad(out, leaves, grad))
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, _reference(q, k, v, r_idx, case, grad)):
        assert a.dtype == q.dtype and a.shape == b.shape, name
        _assert_close(name, a, b, q.dtype)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_forward_and_gradients_match_reference(case):
    def run(q, k, v, r_idx):
        return routed_attention(q, k, v, r_idx, case.n_win, case.heads, backend="triton")

    _check_against_reference(case, run)


class _Kernels(torch.autograd.Function):
    """The launchers with a forced key enumeration, so both kernels are tested on every shape."""

    @staticmethod
    def forward(ctx, q, k, v, r_idx, n_win, heads, mode, distinct):
        scale = q.shape[-1] ** -0.5
        out, lse = kernels.routed_attention_fwd(q, k, v, r_idx, n_win, heads, scale, distinct, mode)
        ctx.save_for_backward(q, k, v, r_idx, out, lse)
        ctx.args = (n_win, heads, scale, distinct, mode)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, r_idx, out, lse = ctx.saved_tensors
        return (*kernels.routed_attention_bwd(grad, q, k, v, out, lse, r_idx, *ctx.args), None, None, None, None, None)


MODE_CASES = [c for c in CASES if c.n_win**2 <= 64][: 6 if ON_GPU else 3] + [
    Case(1, 6, 6, 3, 4, 2, 16, 32),
    Case(1, 16, 8, 8, 6, 1, 16, 16),  # 64 regions: every bit of the dense kernel's masks, 128 mask columns
]


@pytest.mark.parametrize("mode", ["gather", "dense"])
@pytest.mark.parametrize("case", MODE_CASES, ids=lambda c: c.id)
def test_both_key_enumerations_match_reference(case, mode):
    def run(q, k, v, r_idx):
        return _Kernels.apply(q, k, v, r_idx, case.n_win, case.heads, mode, True)

    _check_against_reference(case, run)


@pytest.mark.parametrize("mode", ["gather", "dense"])
def test_repeated_regions_count_twice(mode):
    # A routing list may name a region twice; the reference then attends to its tokens twice.
    case = Case(2, 8, 12, 2, 5, 2, 16, 16)

    def run(q, k, v, r_idx):
        return _Kernels.apply(q, k, v, r_idx, case.n_win, case.heads, mode, False)

    _check_against_reference(case, run, duplicates=True)


class _Counted:
    """A Triton kernel whose ``kernel[grid](...)`` launches are counted: each appends 1 to ``calls``, or with ``key``
    the value of that keyword argument of the launch."""

    def __init__(self, kernel, calls: list, key: str | None = None):
        self.kernel, self.calls, self.key = kernel, calls, key

    def __getitem__(self, grid):
        if self.key is None:
            self.calls.append(1)
            return self.kernel[grid]

        def launch(*args, **kwargs):
            self.calls.append(kwargs[self.key])
            return self.kernel[grid](*args, **kwargs)

        return launch


HOIST_CASES = [
    Case(2, 8, 8, 2, 3, 2, 16, 16, "bf16"),  # 16-token regions: the small-region launch (BiFormer's stage 1)
    Case(1, 20, 18, 2, 3, 1, 16, 32),  # 10x9 = 90-token regions: two query blocks of 64 per region
]


@pytest.mark.parametrize(("hoist", "region_steps"), [(False, False), (True, False), (False, True), (True, True)],
                         ids=["shipped", "dkdv-hoist", "dq-region-steps", "both"])
@pytest.mark.parametrize("case", HOIST_CASES, ids=lambda c: c.id)
def test_gather_backward_loop_orders(case, hoist, region_steps, monkeypatch):
    """The gather-mode backward with its dk/dv kernel's query blocks outside its routing-list entries (DKDV_HOIST)
    or inside, and its dq kernel stepping one routed region at a time (DQ_REGION_STEPS: where a step of keys is
    exactly one region, the first case) or by key blocks; with regions named twice (their pairs weighted 2) and
    regions of one or two query blocks."""
    monkeypatch.setattr(kernels, "DKDV_HOIST", hoist)
    monkeypatch.setattr(kernels, "DQ_REGION_STEPS", region_steps)
    used = []
    monkeypatch.setattr(kernels, "_routed_bwd_dq_kernel", _Counted(kernels._routed_bwd_dq_kernel, used, "REGION_STEP"))

    def run(q, k, v, r_idx):
        return _Kernels.apply(q, k, v, r_idx, case.n_win, case.heads, "gather", False)

    _check_against_reference(case, run, duplicates=True)
    # by region only where asked and where a step is exactly one region (16 tokens here, 90 in the second case)
    assert used == [region_steps and case is HOIST_CASES[0]]


@pytest.mark.parametrize("distinct", [True, False])
@pytest.mark.parametrize("heads_per_program", [2, 4])
def test_dense_programs_over_several_heads(heads_per_program, distinct, monkeypatch):
    """Dense mode, forward and dq programs that each run several heads on one routing prologue (``HEADS``): with 6
    heads, 4 per program falls back to 3 (the largest divisor), and each head must still get its own outputs."""
    case = Case(2, 6, 6, 3, 4, 6, 16, 16)
    for kernel in ("fwd", "dq"):
        monkeypatch.setitem(kernels.CONFIGS, (kernel, "dense"), dict(kernels.CONFIGS[(kernel, "dense")],
                                                                      HEADS=heads_per_program))

    def run(q, k, v, r_idx):
        return _Kernels.apply(q, k, v, r_idx, case.n_win, case.heads, "dense", distinct)

    _check_against_reference(case, run, duplicates=not distinct)


def test_heads_per_program_divides_the_heads():
    assert kernels._config("fwd", "dense", 4, 256, 32)["HEADS"] == kernels.CONFIGS[("fwd", "dense")]["HEADS"] > 1
    assert "HEADS" not in kernels._config("fwd", "dense", 4, 256, 64)  # measured at head dim 32 only
    assert [kernels._heads_per_program(4, h) for h in (1, 2, 3, 4, 6, 8, 12)] == [1, 2, 3, 4, 3, 4, 4]
    assert kernels._heads_per_program(1, 8) == 1


def test_public_op_counts_repeated_regions_by_default():
    case = Case(1, 6, 6, 3, 6, 2, 16, 16)  # 2x2 regions: the dense kernel

    def run(q, k, v, r_idx):
        return routed_attention(q, k, v, r_idx, case.n_win, case.heads, backend="triton")

    _check_against_reference(case, run, duplicates=True)


def test_bi_level_routing_attention_matches_torch_backend():
    case = Case(2, 12, 12, 3, 4, 2, 16, 16)
    q, k, v, _ = _inputs(case)
    got = bi_level_routing_attention(q, k, v, case.n_win, case.topk, case.heads, backend="triton")
    ref = bi_level_routing_attention(
        q.double(), k.double(), v.double(), case.n_win, case.topk, case.heads, backend="torch"
    )
    _assert_close("out", got, ref, q.dtype)


TOPK1_CASES = [
    Case(1, 9, 15, 3, 1, 1, 24, 16),  # 15-token regions, one query block, C_qk != C_v
    Case(2, 8, 8, 2, 1, 2, 16, 16, "bf16"),  # 16-token regions: the one-warp launch
    Case(1, 20, 10, 2, 1, 1, 16, 32),  # 50-token regions: keys padded to 64
    Case(1, 18, 18, 9, 1, 1, 16, 16),  # 81 regions of 4 tokens
    Case(1, 8, 8, 2, 1, 2, 16, 16, "fp16"),
    Case(1, 20, 20, 2, 1, 1, 16, 16, "bf16"),  # 100-token regions: two query blocks of 64 per key region
] + ([Case(4, 56, 56, 7, 1, 2, 32, 32, "bf16"), Case(2, 32, 64, 4, 1, 2, 32, 32, "bf16")] if ON_GPU else [])
# skewed routing on two CPU cases (float32, bfloat16) and on BiFormer's stage 0
ONE_KERNEL_CASES = [(c, "random") for c in TOPK1_CASES] + [
    (c, "skewed") for c in TOPK1_CASES if c in (TOPK1_CASES[0], TOPK1_CASES[1]) or (c.hh, c.n_win) == (56, 7)
]


@pytest.mark.parametrize("query_rows", [False, True], ids=["key-rows", "query-rows"])
@pytest.mark.parametrize(("case", "routing"), ONE_KERNEL_CASES, ids=[f"{c.id}-{r}" for c, r in ONE_KERNEL_CASES])
def test_one_kernel_backward_of_topk1(case, routing, query_rows, monkeypatch):
    """topk 1: the backward as one kernel (a program per key region writes the dq of the query regions that chose it,
    with delta summed from its probabilities), against the reference and against the dq + dk/dv kernels, with its
    blocks of scores laid out (keys, queries) or (queries, keys) (FUSED_QUERY_ROWS). Skewed routing (every query
    region of an image picks one of two regions) leaves most key regions chosen by none, whose dk, dv must still be
    written as zeros (outputs are NaN-poisoned), and one chosen by many."""
    monkeypatch.setattr(kernels, "FUSED_QUERY_ROWS", query_rows)
    mode = "gather"
    n_tok = (case.hh // case.n_win) * (case.ww // case.n_win)
    assert kernels.fused_backward_applies(mode, case.topk, n_tok, case.d_qk, case.d_v)
    launches = []
    name = "_routed_bwd_fused_kernel"
    monkeypatch.setattr(kernels, name, _Counted(getattr(kernels, name), launches))
    q, k, v, r_idx = _inputs(case)
    if routing == "skewed":
        r_idx = (torch.arange(case.n_win**2, device=DEVICE) % 3 == 0).long().expand(case.n, -1)[..., None].contiguous()
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = _Kernels.apply(*leaves, r_idx, case.n_win, case.heads, mode, True)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, out.dtype)
    got = (out, *torch.autograd.grad(out, leaves, grad))
    assert launches == [1]
    for label, a, b in zip(("out", "dq", "dk", "dv"), got, _reference(q, k, v, r_idx, case, grad)):
        _assert_close(label, a, b, q.dtype)
    if routing == "skewed":
        dk = got[2].unflatten(1, (case.n_win, -1)).unflatten(3, (case.n_win, -1))  # N, wy, h, wx, w, C
        unchosen = dk.permute(0, 1, 3, 2, 4, 5).flatten(1, 2)[:, 2:]  # regions 2.. (0 and 1 are chosen)
        assert torch.equal(unchosen, torch.zeros_like(unchosen))
    # the two-kernel backward: the same gradients up to float32 summation order
    monkeypatch.setattr(kernels, "FUSED_TOPK1", False)
    two = torch.autograd.grad(_Kernels.apply(*leaves, r_idx, case.n_win, case.heads, mode, True), leaves, grad)
    assert launches == [1]
    for label, a, b in zip(("dq", "dk", "dv"), got[1:], two):
        _assert_close(label, a, b.double(), q.dtype)


def test_one_kernel_backward_rule(monkeypatch):
    assert kernels.fused_backward_applies("gather", 1, 64)
    assert kernels.fused_backward_applies("gather", 1, 128)
    assert not kernels.fused_backward_applies("gather", 1, 129)  # a program holds one whole key region
    assert not kernels.fused_backward_applies("gather", 2, 64)  # dq would need the sum over several programs
    assert kernels.fused_backward_applies("gather", 1, 64, 128, 128)  # the widest measured
    assert kernels.fused_backward_applies("gather", 1, 128, 64, 64)
    assert not kernels.fused_backward_applies("gather", 1, 128, 128, 128)  # k, v, dk, dv too large for a program
    assert not kernels.fused_backward_applies("gather", 1, 100, 64, 96)  # padded: 128 x (64 + 128)
    assert not kernels.fused_backward_applies("dense", 1, 4)
    monkeypatch.setattr(kernels, "FUSED_TOPK1", False)
    assert not kernels.fused_backward_applies("gather", 1, 64)
    cfg = kernels._config("fused", "gather", 50, 50, 32, interpret=True)
    assert cfg["BLOCK_N"] == 64 and cfg["BLOCK_M"] == 64


def test_non_contiguous_output_gradient():
    case = Case(1, 8, 12, 2, 2, 2, 16, 16)
    q, k, v, r_idx = _inputs(case)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = routed_attention(*leaves, r_idx, case.n_win, case.heads, backend="triton")
    grad = torch.randn(1, case.ww, case.hh, out.shape[-1], device=DEVICE).transpose(1, 2)
    assert not grad.is_contiguous()
    got = torch.autograd.grad(out, leaves, grad)
    for name, a, b in zip(("dq", "dk", "dv"), got, _reference(q, k, v, r_idx, case, grad)[1:]):
        _assert_close(name, a, b, q.dtype)


def test_backward_is_deterministic():
    case = CASES[0] if ON_GPU else Case(1, 6, 6, 3, 2, 1, 16, 16)
    q, k, v, r_idx = _inputs(case)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    grads = []
    for _ in range(2):
        out = routed_attention(*leaves, r_idx, case.n_win, case.heads, backend="triton")
        grads.append(torch.autograd.grad(out, leaves, torch.ones_like(out)))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_torch_compile_has_no_graph_break():
    case = Case(1, 8, 12, 2, 2, 2, 16, 16)
    q, k, v, r_idx = _inputs(case)

    def f(q, k, v):
        return routed_attention(q, k, v, r_idx, case.n_win, case.heads, backend="triton").square().sum()

    # On the CPU the kernels run under the interpreter, which inductor cannot fuse with: aot_eager still traces the
    # ops through their fake implementations and the autograd function, which is what a graph break would stop.
    compiled = torch.compile(f, fullgraph=True, backend="inductor" if ON_GPU else "aot_eager")
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    got = torch.autograd.grad(compiled(*leaves), leaves)
    ref_leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    expected = torch.autograd.grad(f(*ref_leaves), ref_leaves)
    for name, a, b in zip(("dq", "dk", "dv"), got, expected):
        # Inductor may fuse the elementwise tail differently from eager; the op itself is the same kernels.
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_region_routing_feeds_the_kernel():
    case = Case(1, 8, 8, 2, 2, 1, 16, 16)
    q, k, v, _ = _inputs(case)
    r_idx = region_routing(q, k, case.n_win, case.topk)
    assert r_idx.shape == (1, 4, 2) and r_idx.dtype == torch.int64
    out = routed_attention(q, k, v, r_idx, case.n_win, case.heads, backend="triton", distinct_routing=True)
    _assert_close("out", out, _reference(q, k, v, r_idx, case, torch.zeros_like(out))[0], q.dtype)


@pytest.mark.parametrize(
    ("n_win", "hh", "ww", "topk", "expected"),
    [
        (7, 56, 56, 1, "gather"),
        (7, 28, 28, 4, "gather"),
        (7, 14, 14, 16, "dense"),
        (16, 64, 64, 16, "gather"),
        (3, 6, 6, 9, "dense"),
        (9, 9, 9, 2, "gather"),
    ],
)
def test_mode_choice(n_win, hh, ww, topk, expected):
    assert kernels.choose_mode(n_win, hh // n_win, ww // n_win, topk) == expected


def test_launch_configuration_by_region_size_and_head_dim():
    """Gather mode: regions of <= 16 tokens at head dim <= 32 run one-warp programs (SMALL_REGION_CONFIGS); larger
    regions or wider heads the general CONFIGS, tiles clipped to the region's rows and the query's keys."""
    small = [kernels._config(k, "gather", 16, 64, 32, interpret=True) for k in ("fwd", "dq", "dkdv")]
    assert small == [kernels.SMALL_REGION_CONFIGS[k] for k in ("fwd", "dq", "dkdv")]
    wide = kernels._config("fwd", "gather", 16, 64, 64)
    assert wide["num_warps"] == kernels.CONFIGS[("fwd", "gather")]["num_warps"] and wide["BLOCK_M"] == 16
    assert kernels._config("fwd", "gather", 64, 64, 32) == kernels.CONFIGS[("fwd", "gather")]
    assert kernels._config("fwd", "dense", 4, 64, 32, interpret=True) == kernels.CONFIGS[("fwd", "dense")]


def test_register_caps_reach_gpu_launches_only():
    """REGISTER_CAPS: a compiled launch of a capped (kernel, configuration) at head dim <= 32 gets ``maxnreg``; the
    interpreter, wider heads and uncapped kernels get none."""
    caps = {("dkdv", "gather"): 128, ("dkdv", "small"): 96, ("fwd", "dense"): 128, ("dq", "dense"): 128}
    assert kernels.REGISTER_CAPS == caps
    # (kernel, mode, region tokens, keys) -> the cap's key: 64-token regions are "gather", 16-token ones "small"
    for kernel, mode, n_tok, n_keys, key in [("dkdv", "gather", 64, 64, ("dkdv", "gather")),
                                             ("dkdv", "gather", 16, 64, ("dkdv", "small")),
                                             ("fwd", "dense", 4, 256, ("fwd", "dense")),
                                             ("fwd", "gather", 64, 64, None), ("dq", "gather", 16, 64, None),
                                             ("dq", "dense", 4, 256, ("dq", "dense")),
                                             ("dkdv", "dense", 4, 256, None)]:
        gpu = kernels._config(kernel, mode, n_tok, n_keys, 32, interpret=False)
        assert gpu.get("maxnreg") == caps.get(key), (kernel, mode, n_tok)
        assert "maxnreg" not in kernels._config(kernel, mode, n_tok, n_keys, 32, interpret=True)
        assert "maxnreg" not in kernels._config(kernel, mode, n_tok, n_keys, 64, interpret=False)
        gpu.pop("maxnreg", None)
        assert gpu == kernels._config(kernel, mode, n_tok, n_keys, 32, interpret=True)


def test_argument_errors(monkeypatch):
    q = torch.randn(1, 8, 8, 16, device=DEVICE)
    r_idx = torch.zeros(1, 4, 2, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match=r"topk must be an int in \[1, n_win\^2 = 4\], got 5"):
        routed_attention(q, q, q, torch.zeros(1, 4, 5, dtype=torch.long, device=DEVICE), 2, 2, backend="triton")
    with pytest.raises(ValueError, match=r"topk must be an int in \[1, n_win\^2 = 4\], got 0"):
        routed_attention(q, q, q, torch.zeros(1, 4, 0, dtype=torch.long, device=DEVICE), 2, 2, backend="triton")
    with pytest.raises(ValueError, match=r"the map size 8x8 is not a multiple of n_win=3"):
        routed_attention(q, q, q, r_idx, 3, 2, backend="triton")
    with pytest.raises(ValueError, match=r"r_idx must be an integer tensor of shape \(N, n_win\^2, topk\)"):
        routed_attention(q, q, q, r_idx[:, :3], 2, 2, backend="triton")
    with pytest.raises(ValueError, match=r"r_idx must be an integer tensor"):
        routed_attention(q, q, q, r_idx.float(), 2, 2, backend="triton")
    with pytest.raises(ValueError, match=r"must both be multiples of num_heads=3"):
        routed_attention(q, q, q, r_idx, 2, 3, backend="triton")
    with pytest.raises(ValueError, match=r"one dtype among float16, bfloat16, float32, got torch.float64"):
        routed_attention(q.double(), q.double(), q.double(), r_idx, 2, 2, backend="triton")


def test_forced_triton_without_cuda_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 4, 4, 8)
    r_idx = torch.zeros(1, 4, 1, dtype=torch.long)
    with pytest.raises(ValueError, match=r"backend='triton' was requested but cannot run: the inputs are not on a"):
        routed_attention(q, q, q, r_idx, 2, 1, backend="triton")
    # 'auto' on the CPU is the reference, interpreter or not.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ref = routed_attention_reference(q, q, q, r_idx, 2, 1, 8**-0.5)
    torch.testing.assert_close(routed_attention(q, q, q, r_idx, 2, 1), ref)


def test_auto_takes_triton_on_cuda_only(monkeypatch):
    calls = []
    launcher = kernels.routed_attention_fwd

    def counting(*args, **kwargs):
        calls.append(1)
        return launcher(*args, **kwargs)

    monkeypatch.setattr(kernels, "routed_attention_fwd", counting)
    case = Case(1, 8, 8, 2, 2, 1, 16, 16, "bf16")
    q, k, v, r_idx = _inputs(case)
    routed_attention(q, k, v, r_idx, case.n_win, case.heads)
    routed_attention(q.double(), k.double(), v.double(), r_idx, case.n_win, case.heads)  # unsupported: reference
    # On CUDA the supported call launches the kernel; on the CPU 'auto' never picks Triton, interpreter or not.
    assert len(calls) == (1 if ON_GPU else 0)
