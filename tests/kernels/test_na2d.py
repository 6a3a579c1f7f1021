"""The Triton kernels of 2-D neighborhood attention against the reference, forward and every gradient (d_rpb included).

On a machine without CUDA the kernels run under ``TRITON_INTERPRET=1`` at small sizes; with CUDA the same tests run
on the GPU with larger ones (the official shapes: head_dim 32, k 7 and 11, dilations up to 28). Outputs and dq are
allocated NaN-poisoned (``VIZATTN_POISON_OUTPUTS=1``), so an element a kernel never writes fails the comparison.
Errors are measured against the reference computed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch
import triton
from kernel_checks import ATTN_TOL, DEVICE, DTYPES, ON_GPU, count_device_calls, rel_errors

from vizattn.kernels._triton_util import head_block, head_split
from vizattn.kernels.na2d import na2d, na2d_qkv
from vizattn.kernels.na2d import triton as kernels
from vizattn.kernels.na2d.reference import na2d_reference


@dataclass(frozen=True)
class Case:
    b: int
    heads: int
    hh: int
    ww: int
    k: int
    d: int
    dtype: str = "fp32"
    head_dim: int = 16
    dim_v: int | None = None
    rpb: bool = True

    @property
    def id(self) -> str:
        dims = "" if self.head_dim == 16 and self.dim_v is None else f"-hd{self.head_dim}v{self.dim_v or self.head_dim}"
        return f"B{self.b}-H{self.heads}-{self.hh}x{self.ww}-k{self.k}-d{self.d}{dims}-{self.dtype}" + (
            "" if self.rpb else "-norpb"
        )


CPU_CASES = [
    Case(1, 1, 20, 17, 7, 2),  # odd sizes, uneven dilation groups on W
    Case(2, 1, 9, 11, 3, 1),
    Case(1, 2, 13, 10, 3, 3, "bf16"),  # 3 groups per axis of sizes 5/4/4 and 4/3/3
    Case(1, 2, 7, 7, 7, 1, "fp16"),  # k = map: full attention with position-dependent bias
    Case(1, 1, 12, 9, 4, 2, rpb=False),  # even kernel, no bias
    Case(1, 1, 11, 13, 11, 1, head_dim=24, dim_v=40),  # k 11, non-power-of-two head dims
    Case(1, 1, 15, 16, 5, 3, head_dim=32),
    # head dims the kernels split into a main and a tail block (head_split), q/k and v independently
    Case(1, 2, 10, 9, 3, 2, "bf16", head_dim=72, dim_v=40),
    Case(1, 1, 9, 12, 5, 1, "fp16", head_dim=96, dim_v=72, rpb=False),
    Case(2, 1, 8, 11, 3, 1, head_dim=40, dim_v=96),
]
GPU_CASES = [
    Case(8, 2, 56, 56, 7, 1, "bf16", 32),  # NAT-T level 0
    Case(4, 2, 56, 56, 7, 8, "bf16", 32),  # DiNAT-T level 0, k*d = map
    Case(8, 4, 28, 28, 7, 4, "fp16", 32),
    Case(8, 8, 14, 14, 7, 2, "bf16", 32),
    Case(8, 16, 7, 7, 7, 1, "bf16", 32),  # level 3: full attention
    Case(2, 6, 96, 96, 11, 8, "bf16", 32),  # DiNAT-L 384 11x11 level 0
    Case(1, 2, 200, 304, 7, 28, "bf16", 32),  # COCO 800x1216, dilation 28
    Case(2, 4, 128, 128, 7, 1, "fp32", 32),
    Case(2, 4, 45, 61, 13, 3, "bf16", 64),
    Case(1, 2, 40, 33, 5, 2, "fp16", 128),
    Case(2, 3, 30, 31, 7, 2, "bf16", 32, rpb=False),
] + CPU_CASES
CASES = GPU_CASES if ON_GPU else CPU_CASES


def _inputs(c: Case, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dt = DTYPES[c.dtype]
    q, k = (torch.randn(c.b, c.hh, c.ww, c.heads, c.head_dim, generator=g) for _ in range(2))
    v = torch.randn(c.b, c.hh, c.ww, c.heads, c.dim_v or c.head_dim, generator=g)
    rpb = torch.randn(c.heads, 2 * c.k - 1, 2 * c.k - 1, generator=g) if c.rpb else None
    grad = torch.randn(c.b, c.hh, c.ww, c.heads, c.dim_v or c.head_dim, generator=g)
    move = lambda t: None if t is None else t.to(DEVICE, dt)  # noqa: E731
    return move(q), move(k), move(v), None if rpb is None else rpb.to(DEVICE), move(grad)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_forward_and_gradients_match_reference(case):
    q, k, v, rpb, grad = _inputs(case)
    scale = case.head_dim**-0.5
    leaves = [t.clone().requires_grad_() for t in (q, k, v)] + ([rpb.clone().requires_grad_()] if case.rpb else [])
    out = na2d(*leaves[:3], case.k, case.d, leaves[3] if case.rpb else None, scale, backend="triton")
    out.backward(grad)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = na2d_reference(*ref_leaves[:3], case.k, case.d, ref_leaves[3] if case.rpb else None, scale)
    ref.backward(grad.double())

    assert out.dtype == v.dtype and out.shape == ref.shape
    l2_tol, max_tol = ATTN_TOL[q.dtype]
    names = ["out", "dq", "dk", "dv", "drpb"][: 4 + case.rpb]
    for name, ours, theirs in zip(names, [out] + [t.grad for t in leaves], [ref] + [t.grad for t in ref_leaves]):
        assert torch.isfinite(ours).all(), f"{name}: unwritten (NaN) or non-finite elements"
        l2, mx = rel_errors(ours, theirs)
        assert l2 < l2_tol and mx < max_tol, f"{name}: rel L2 {l2:.2e}, rel max {mx:.2e}"


# Batch 1 in the tests over TILE_CASES: CPU_CASES and RPB_CASES check batch offsets.
TILE_CASES = [  # (H, W, k, d, tile): the backward's key tiles have their own halos, checked at their corners
    (9, 11, 3, 2, (32, 32)),  # tiles larger than a non-square map (and than every dilation group)
    (13, 10, 3, 3, (3, 5)),  # ragged dilation groups (5/4/4, 4/3/3) cut by tiles of odd sizes
    (15, 14, 13, 1, (4, 8)),  # border keys seen by k + k // 2 = 19 queries along each axis
    (7, 6, 5, 1, (1, 1)),  # one query (one key) per tile
    (12, 9, 4, 2, (2, 16)),  # even kernel
]


@pytest.mark.parametrize("rpb_on", [True, False], ids=["rpb", "norpb"])
@pytest.mark.parametrize(
    "hh,ww,k,d,tile", TILE_CASES, ids=[f"{c[0]}x{c[1]}-k{c[2]}-d{c[3]}-t{c[4][0]}x{c[4][1]}" for c in TILE_CASES]
)
def test_gradients_match_reference_for_any_tile(hh, ww, k, d, tile, rpb_on):
    g = torch.Generator().manual_seed(5)
    q, kk, v, grad = (torch.randn(1, hh, ww, 2, 16, generator=g).to(DEVICE) for _ in range(4))
    rpb = torch.randn(2, 2 * k - 1, 2 * k - 1, generator=g).to(DEVICE) if rpb_on else None
    out, lse = kernels.na2d_fwd(q, kk, v, rpb, k, d, 0.3, tile=tile)
    grads = kernels.na2d_bwd(grad, q, kk, v, rpb, out, lse, k, d, 0.3, tile=tile)
    leaves = [t.double().requires_grad_() for t in (q, kk, v) + ((rpb,) if rpb_on else ())]
    ref = na2d_reference(*leaves[:3], k, d, leaves[3] if rpb_on else None, 0.3)
    ref.backward(grad.double())
    l2_tol, max_tol = ATTN_TOL[torch.float32]
    for name, ours, theirs in zip(["out", "dq", "dk", "dv", "drpb"], [out, *grads], [ref] + [t.grad for t in leaves]):
        assert torch.isfinite(ours).all(), f"{name}: unwritten (NaN) or non-finite elements"
        l2, mx = rel_errors(ours, theirs)
        assert l2 < l2_tol and mx < max_tol, f"{name}: rel L2 {l2:.2e}, rel max {mx:.2e}"
    assert (grads[3] is None) == (not rpb_on)


DQ_ROWS_CASES = [  # (H, W, k, d, tile, rpb): dq by whole halo rows (DQ_ROWS, the default; dilation 1 without a table)
    (13, 12, 11, 1, (4, 8), True),  # every query a border query; an 18-key halo row padded to 32
    (7, 6, 5, 1, (3, 3), False),  # 9 queries of a 16-slot tile: padded slots
    (12, 9, 4, 1, (2, 16), True),  # even kernel, a tile wider than the map
]


@pytest.mark.parametrize(
    "hh,ww,k,d,tile,rpb_on", DQ_ROWS_CASES, ids=[f"{c[0]}x{c[1]}-k{c[2]}-rpb{int(c[5])}" for c in DQ_ROWS_CASES]
)
def test_dq_by_halo_rows_matches_reference(monkeypatch, hh, ww, k, d, tile, rpb_on):
    """The dq kernel's row-by-row walk (padded query slots pair with nothing; rpb gathered per pair) against the
    reference, and equal to the flat walk's dq."""
    from vizattn.kernels._halo2d import triton as halo

    g = torch.Generator().manual_seed(12)
    q, kk, v, grad = (torch.randn(1, hh, ww, 2, 16, generator=g).to(DEVICE) for _ in range(4))
    rpb = torch.randn(2, 2 * k - 1, 2 * k - 1, generator=g).to(DEVICE) if rpb_on else None
    monkeypatch.setattr(kernels, "BIAS_TABLE", "never")  # the rows walk builds masks and bias per pair
    out, lse = kernels.na2d_fwd(q, kk, v, rpb, k, d, 0.3, tile=tile)
    monkeypatch.setattr(kernels, "DQ_ROWS", False)
    flat = kernels.na2d_bwd(grad, q, kk, v, rpb, out, lse, k, d, 0.3, tile=tile)
    calls = count_device_calls(monkeypatch, halo, "_rows_step")  # the backward's row steps
    monkeypatch.setattr(kernels, "DQ_ROWS", True)
    grads = kernels.na2d_bwd(grad, q, kk, v, rpb, out, lse, k, d, 0.3, tile=tile)
    assert ON_GPU or calls
    leaves = [t.double().requires_grad_() for t in (q, kk, v)]
    na2d_reference(*leaves, k, d, rpb.double() if rpb_on else None, 0.3).backward(grad.double())
    l2_tol, max_tol = ATTN_TOL[torch.float32]
    l2, mx = rel_errors(grads[0], leaves[0].grad)
    assert torch.isfinite(grads[0]).all() and l2 < l2_tol and mx < max_tol, f"dq: rel L2 {l2:.2e}, rel max {mx:.2e}"
    torch.testing.assert_close(grads[0], flat[0], rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(grads[1:3], flat[1:3]):
        assert torch.equal(ours, theirs)  # dk, dv: the same kernel either way


DKDV_ROWS_CASES = [  # (H, W, k, tile): undilated maps, key tiles of several shapes, odd halos
    (15, 14, 13, (4, 8)),  # border keys seen by 19 queries along each axis
    (7, 6, 5, (1, 1)),
    (11, 13, 3, (8, 2)),
    (12, 9, 4, (2, 16)),  # even kernel
]


# (rpb, masks, key block): both bias paths with rpb and the mask built per pair without it, each at the GPU's key
# blocks (one or two padded halo rows per step); a mask table without rpb (BIAS_TABLE "always", which "auto" never
# chooses) at one of them, and the interpreter's whole-halo block once.
DKDV_ROWS_WALKS = [(rpb, masks, n) for rpb, masks in ((True, "never"), (True, "always"), (False, "never"))
                   for n in (16, 32)] + [(False, "always", 32), (True, "never", None)]


@pytest.mark.parametrize("rpb_on,masks,block_n", DKDV_ROWS_WALKS,
                         ids=[f"{'rpb' if r else 'norpb'}-{m}-{n}" for r, m, n in DKDV_ROWS_WALKS])
@pytest.mark.parametrize("hh,ww,k,tile", DKDV_ROWS_CASES, ids=[f"{c[0]}x{c[1]}-k{c[2]}" for c in DKDV_ROWS_CASES])
def test_dkdv_by_halo_rows_matches_reference(monkeypatch, hh, ww, k, tile, rpb_on, masks, block_n):
    """The dk/dv kernel's row-by-row walk of its query halo (DKDV_ROWS), with the mask and bias built per pair (a
    falling relative index: key tiles) or read from a bias table by padded rows, at the interpreter's key block and
    at the GPU's (one or two padded halo rows per step, halos of a height that is not a multiple of them): dk, dv and
    d(rpb) against the float64 reference, and dk, dv equal to the flat walk's."""
    import vizattn.kernels._halo2d.triton as halo

    g = torch.Generator().manual_seed(21)
    q, kk, v, grad = (torch.randn(1, hh, ww, 2, 16, generator=g).to(DEVICE) for _ in range(4))
    rpb = torch.randn(2, 2 * k - 1, 2 * k - 1, generator=g).to(DEVICE) if rpb_on else None
    monkeypatch.setattr(kernels, "BIAS_TABLE", masks)
    monkeypatch.setattr(kernels, "DQ_ROWS", False)  # so that every row step below is the dk/dv kernel's
    monkeypatch.setattr(kernels, "DKDV_ROWS", False)
    if block_n is not None:
        monkeypatch.setattr(halo, "_BLOCK_N_INTERPRET", block_n)
    halo._cached_meta.cache_clear()
    try:
        out, lse = kernels.na2d_fwd(q, kk, v, rpb, k, 1, 0.3, tile=tile)
        flat = kernels.na2d_bwd(grad, q, kk, v, rpb, out, lse, k, 1, 0.3, tile=tile)
        steps = count_device_calls(monkeypatch, halo, "_rows_step")
        monkeypatch.setattr(kernels, "DKDV_ROWS", True)
        grads = kernels.na2d_bwd(grad, q, kk, v, rpb, out, lse, k, 1, 0.3, tile=tile)
    finally:
        halo._cached_meta.cache_clear()
    assert ON_GPU or steps
    leaves = [t.double().requires_grad_() for t in (q, kk, v)] + ([rpb.double().requires_grad_()] if rpb_on else [])
    ref = na2d_reference(*leaves[:3], k, 1, leaves[3] if rpb_on else None, 0.3)
    ref.backward(grad.double())
    l2_tol, max_tol = ATTN_TOL[torch.float32]
    names = ["dq", "dk", "dv", "drpb"][: len(leaves)]
    for name, ours, leaf in zip(names, grads, leaves):
        l2, mx = rel_errors(ours, leaf.grad)
        assert torch.isfinite(ours).all() and l2 < l2_tol and mx < max_tol, f"{name}: rel L2 {l2:.2e}, max {mx:.2e}"
    for ours, theirs in zip(grads[1:3], flat[1:3]):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("masks", ["never", "always"])
def test_dkdv_walks_only_the_halo_rows_its_keys_need(monkeypatch, masks):
    """DKDV_SPAN: the dk/dv kernel's row walk skips the halo rows that pair with none of its key tile's keys (the key
    tiles' halo is as tall as the border tiles'), by whole steps: the same gradients as walking the whole halo, in
    exactly the steps that the rows ``[first, last)`` of the tile's windows need."""
    import vizattn.kernels._halo2d.triton as halo

    hh, ww, k, tile, block_n, heads = 23, 21, 5, (2, 8), 16, 1
    g = torch.Generator().manual_seed(5)
    q, kk, v, grad = (torch.randn(1, hh, ww, heads, 16, generator=g).to(DEVICE) for _ in range(4))
    rpb = torch.randn(heads, 2 * k - 1, 2 * k - 1, generator=g).to(DEVICE)
    monkeypatch.setattr(kernels, "BIAS_TABLE", masks)
    monkeypatch.setattr(kernels, "DKDV_ROWS", True)
    monkeypatch.setattr(halo, "_BLOCK_N_INTERPRET", block_n)
    halo._cached_meta.cache_clear()
    calls = count_device_calls(monkeypatch, halo, "_step_offsets")  # twice per dk/dv step (inputs, then stats)
    grads, counts = {}, {}
    try:
        out, lse = kernels.na2d_fwd(q, kk, v, rpb, k, 1, 0.3, tile=tile)
        for span in (False, True):
            monkeypatch.setattr(kernels, "DKDV_SPAN", span)
            before = len(calls)
            grads[span] = kernels.na2d_bwd(grad, q, kk, v, rpb, out, lse, k, 1, 0.3, tile=tile)
            counts[span] = len(calls) - before
    finally:
        halo._cached_meta.cache_clear()
    for ours, theirs in zip(grads[True], grads[False]):
        assert torch.equal(ours, theirs)
    key_rows, key_cols = kernels._axes(q, k, 1, tile, kernels._key_tables)
    window = key_rows.window.cpu()
    first, last = window[:, 0].min(1).values, window[:, 1].max(1).values  # per key-row tile
    height, width = key_rows.halo, key_cols.halo
    per_step = block_n // kernels._next_pow2(width)
    full = -(-height // per_step)
    needed = -(-last // per_step) - first // per_step
    saved = (full - needed).sum().item() * key_cols.n_tiles * heads
    assert height > 2 * tile[0] and saved > 0  # the case has interior tiles whose steps it can skip
    assert ON_GPU or counts[False] - counts[True] == 2 * saved, (counts, saved)


MASK_CASES = [(*c, m) for c in TILE_CASES[1:4] for m in ("never", "always", "dq-row-table")] + [
    (*TILE_CASES[1], "table-too-large")
]


@pytest.mark.parametrize(
    "hh,ww,k,d,tile,masks", MASK_CASES, ids=[f"{c[0]}x{c[1]}-k{c[2]}-d{c[3]}-{c[5]}" for c in MASK_CASES]
)
def test_masks_and_bias_both_ways_match_reference(monkeypatch, hh, ww, k, d, tile, masks):
    """Both ways to the mask and bias in every kernel: the bias table (BIAS_TABLE = "always"; by default the backward
    with rpb on maps of more than 8 rows and the dilated forward with rpb read it) and window arithmetic with an rpb
    gather per pair (BIAS_TABLE = "never", and what the kernels fall back to when a table would be too large). The
    undilated forward walks its table by rows; "dq-row-table": so does the dq kernel (DQ_ROW_TABLE), its d(rpb) then
    summed from row steps."""
    import vizattn.kernels._halo2d.triton as halo

    monkeypatch.setattr(kernels, "BIAS_TABLE", "never" if masks == "never" else "always")
    monkeypatch.setattr(kernels, "DQ_ROW_TABLE", masks == "dq-row-table")  # not per map size
    if masks == "table-too-large":
        monkeypatch.setattr(halo, "_TABLE_MAX", 0)
        assert halo.bias_table(*kernels._axes(torch.empty(1, hh, ww, 1, 16, device=DEVICE), k, d, tile), None,
                               16, 16) is None
    calls = []
    real = halo.bias_table
    monkeypatch.setattr(halo, "bias_table", lambda *a: calls.append(real(*a)) or calls[-1])
    g = torch.Generator().manual_seed(6)
    q, kk, v, grad = (torch.randn(1, hh, ww, 2, 16, generator=g).to(DEVICE) for _ in range(4))
    rpb = torch.randn(2, 2 * k - 1, 2 * k - 1, generator=g).to(DEVICE)
    out, lse = kernels.na2d_fwd(q, kk, v, rpb, k, d, 0.3, tile=tile)
    steps = count_device_calls(monkeypatch, halo, "_rows_step")  # the backward's row steps (dq only)
    grads = kernels.na2d_bwd(grad, q, kk, v, rpb, out, lse, k, d, 0.3, tile=tile)
    assert ON_GPU or bool(steps) == (d == 1 and masks in ("never", "dq-row-table"))
    assert len(calls) == (0 if masks == "never" else 3)
    assert all((c is None) == (masks == "table-too-large") for c in calls)
    leaves = [t.double().requires_grad_() for t in (q, kk, v, rpb)]
    ref = na2d_reference(*leaves[:3], k, d, leaves[3], 0.3)
    ref.backward(grad.double())
    l2_tol, max_tol = ATTN_TOL[torch.float32]
    for name, ours, theirs in zip(["out", "dq", "dk", "dv", "drpb"], [out, *grads], [ref] + [t.grad for t in leaves]):
        l2, mx = rel_errors(ours, theirs)
        assert l2 < l2_tol and mx < max_tol, f"{name}: rel L2 {l2:.2e}, rel max {mx:.2e}"


@pytest.mark.parametrize("masks", ["never", "always"])
@pytest.mark.parametrize("block_n", [16, 32, 64])
@pytest.mark.parametrize(
    "hh,ww,k,d,tile", TILE_CASES[:4], ids=[f"{c[0]}x{c[1]}-k{c[2]}-d{c[3]}" for c in TILE_CASES[:4]]
)
def test_forward_at_the_gpu_key_blocks(monkeypatch, hh, ww, k, d, tile, block_n, masks):
    """The forward at the key blocks of a GPU (the interpreter's default is 256 keys per step): one or several padded
    halo rows per step of the row-by-row loop, halos of a height that is not a multiple of the rows per step, and
    the flat loop where a padded halo row is wider than a step; each with the mask and bias built per pair and read
    from a bias table (by padded halo rows in the row walk)."""
    import vizattn.kernels._halo2d.triton as halo

    monkeypatch.setattr(halo, "_BLOCK_N_INTERPRET", block_n)
    monkeypatch.setattr(kernels, "BIAS_TABLE", masks)
    halo._cached_meta.cache_clear()
    try:
        g = torch.Generator().manual_seed(7)
        q, kk, v = (torch.randn(1, hh, ww, 2, 24, generator=g).to(DEVICE) for _ in range(3))
        rpb = torch.randn(2, 2 * k - 1, 2 * k - 1, generator=g).to(DEVICE)
        out, lse = kernels.na2d_fwd(q, kk, v, rpb, k, d, 0.3, tile=tile)
    finally:
        halo._cached_meta.cache_clear()
    ref = na2d_reference(q.double(), kk.double(), v.double(), k, d, rpb.double(), 0.3)
    l2_tol, max_tol = ATTN_TOL[torch.float32]
    l2, mx = rel_errors(out, ref)
    assert l2 < l2_tol and mx < max_tol, f"out: rel L2 {l2:.2e}, rel max {mx:.2e}"


def test_bias_table_auto_rule(monkeypatch):
    """The "auto" rule: the table with rpb in the backward (with d(rpb) by row tiles, not on maps of at most 8 rows at
    dilation 1, where it measured slower; with d(rpb) in the dq kernel, which sums it off the table, everywhere) and
    in the forward (at dilation 1 only with FWD_ROW_TABLE); never without rpb; "always" / "never" as named."""
    rpb = torch.zeros(1, 5, 5)
    use = kernels._use_table
    assert use(True, rpb, 1, 56) and use(True, rpb, 1, 9) and use(True, rpb, 2, 8) and use(True, rpb, 3, 7)
    assert kernels.RPB_GRAD == "dq" and use(True, rpb, 1, 8) and use(True, rpb, 1, 7)
    monkeypatch.setattr(kernels, "RPB_GRAD", "rows")
    assert not use(True, rpb, 1, 8) and not use(True, rpb, 1, 7) and use(True, rpb, 1, 9)
    assert use(False, rpb, 2, 56) and use(False, rpb, 2, 7) and use(False, rpb, 1, 56) and use(False, rpb, 1, 7)
    monkeypatch.setattr(kernels, "FWD_ROW_TABLE", False)
    assert use(False, rpb, 2, 56) and not use(False, rpb, 1, 56) and not use(False, rpb, 1, 7)
    assert not any(use(b, None, d, h) for b in (False, True) for d in (1, 2) for h in (7, 56))
    monkeypatch.setattr(kernels, "BIAS_TABLE", "always")
    assert use(False, None, 1, 7) and use(True, rpb, 1, 7)
    monkeypatch.setattr(kernels, "BIAS_TABLE", "never")
    assert not use(True, rpb, 1, 56) and not use(False, rpb, 2, 56)


def test_bias_table_choice_is_checked(monkeypatch):
    monkeypatch.setattr(kernels, "BIAS_TABLE", True)
    q = torch.randn(1, 9, 9, 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match=r"BIAS_TABLE must be one of \('never', 'auto', 'always'\), got True"):
        kernels.na2d_fwd(q, q, q, None, 3, 1, 0.25)


@pytest.mark.parametrize("rpb_on", [True, False], ids=["rpb", "mask"])
@pytest.mark.parametrize("layout", ["query-tiles", "key-tiles", "padded-rows"])
def test_bias_table_holds_each_pairs_bias(layout, rpb_on):
    """bias_table[class_h, class_w, head, slot, halo slot] = rpb[head, rel_h, rel_w] * log2(e) (0 without rpb) for
    the pairs in the window (relative indices from the tables' index lists), -inf elsewhere; every tile's class
    reproduces its own pairs; the table is contiguous (the kernels' layout). Halo slots are flat (row * halo_w +
    column) or, for the forward's row walk (``halo_wp``), padded rows of 8 slots, whose columns past the halo's
    width are -inf."""
    import vizattn.kernels._halo2d.triton as halo

    hh, ww, k, d, tile = 13, 10, 3, 3, (3, 5)
    tables = kernels._key_tables if layout == "key-tiles" else kernels._tables
    rows, cols = kernels._axes(torch.empty(1, hh, ww, 1, 16, device=DEVICE), k, d, tile, tables)
    halo_wp = 8 if layout == "padded-rows" else 0
    row_w = halo_wp or cols.halo
    assert row_w > cols.halo or not halo_wp  # some padded columns
    rpb = torch.randn(2, 2 * k - 1, 2 * k - 1, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    tab, cls_h, cls_w, n_cw = halo.bias_table(rows, cols, rpb if rpb_on else None, 16, 16, halo_wp)
    assert tab.is_contiguous() and tab.dtype == torch.float32 and n_cw == tab.shape[1]
    assert tab.shape[2] == (2 if rpb_on else 1) and tab.shape[-1] % halo._table_align() == 0
    rel_h, rel_w = halo._rel_idx(rows).cpu(), halo._rel_idx(cols).cpu()  # inverse of slot_windows (checked there)
    tab, rpb = tab.cpu(), rpb.cpu()
    for th in range(rows.n_tiles):
        for tw in range(cols.n_tiles):
            rh, rw = rel_h[th][:, None, :, None], rel_w[tw][None, :, None, :]  # (T_h, T_w, halo_h, halo_w)
            inside = (rh >= 0) & (rw >= 0)
            bias = rpb[:, rh.clamp(min=0), rw.clamp(min=0)] * halo._LOG2E if rpb_on else torch.zeros(1)
            want = torch.where(inside, bias, float("-inf"))
            cls = tab[cls_h[th], cls_w[tw]]  # (heads, block_m, npad)
            body = cls[:, : rows.tile * cols.tile, : rows.halo * row_w].unflatten(-1, (rows.halo, row_w))
            assert torch.equal(body[..., : cols.halo], want.reshape(-1, *body.shape[1:-1], cols.halo)), (th, tw)
            assert (body[..., cols.halo :] == float("-inf")).all()
            assert (cls[:, rows.tile * cols.tile :] == float("-inf")).all()
            assert (cls[:, :, rows.halo * row_w :] == float("-inf")).all()
    assert tab.shape[0] < rows.n_tiles or tab.shape[1] < cols.n_tiles  # border classes shared


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_forward_half_bias_table(monkeypatch, dtype):
    """With _FWD_TABLE_HALF the forward of 16-bit inputs reads its bias table in float16 (the float32 table rounded
    to float16, -inf kept) and still matches the reference to its dtype's tolerance and the float32 table's output to
    a few 16-bit steps; float32 inputs keep the float32 table, so their output does not change at all."""
    import vizattn.kernels._halo2d.triton as halo

    rows, cols = kernels._axes(torch.empty(1, 13, 10, 1, 16, device=DEVICE), 3, 1, (2, 8))
    rpb = torch.randn(2, 5, 5, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    full, *classes = halo.bias_table(rows, cols, rpb, 16, 16, 16)
    half, *classes_half = halo.bias_table(rows, cols, rpb, 16, 16, 16, torch.float16)
    assert half.dtype == torch.float16 and classes_half == classes
    assert torch.equal(half, full.to(torch.float16))

    c = Case(2, 2, 15, 13, 5, 1, dtype, 32)
    q, k, v, rpb, _ = _inputs(c, seed=5)
    seen = []
    real = halo.bias_table

    def recording(*args, **kwargs):
        table = real(*args, **kwargs)
        seen.append(None if table is None else table[0].dtype)
        return table

    monkeypatch.setattr(halo, "bias_table", recording)
    monkeypatch.setattr(kernels, "BIAS_TABLE", "always")
    outs = []
    for half_table in (False, True):
        monkeypatch.setattr(halo, "_FWD_TABLE_HALF", half_table)
        outs.append(na2d(q, k, v, c.k, c.d, rpb, backend="triton"))
    want = torch.float32 if dtype == "fp32" else torch.float16
    assert seen == [torch.float32, want]
    ref = na2d_reference(*(t.double() for t in (q, k, v)), c.k, c.d, rpb.double())
    l2_tol, max_tol = ATTN_TOL[q.dtype]
    l2, mx = rel_errors(outs[1], ref)
    assert l2 < l2_tol and mx < max_tol, f"rel L2 {l2:.2e}, rel max {mx:.2e}"
    if dtype == "fp32":
        assert torch.equal(outs[0], outs[1])
    else:
        step = torch.finfo(q.dtype).eps * outs[0].float().abs().amax()
        assert (outs[1].float() - outs[0].float()).abs().max() <= 4 * step


def test_launch_configs_follow_the_map_size_and_head_dim():
    """One-warp small tiles at head dim 32 (the measured case), by map height; wider heads keep 8x8 tiles of 4 warps
    (the one-warp programs spill there); an explicit tile replaces every kernel's tile and keeps its launch."""
    large, small, tiny, wide = (kernels.launch_configs(h, d) for h, d in ((56, 32), (14, 32), (7, 32), (56, 64)))
    assert [c.tile for c in large] == [(8, 2), (8, 2), (2, 8)]
    assert [c.tile_for(None, 2) for c in large] == [(2, 8), (2, 8), (4, 8)]  # dilated maps
    assert [c.tile for c in small] == [(1, 16), (2, 16), (1, 16)]
    assert large[2].rpb_tile == (4, 8) and small[0].flat_tile == (2, 16)
    assert [c.tile for c in tiny] == [(4, 8)] * 3
    assert [c.tile for c in wide] == [(8, 8)] * 3 and {c.launch.num_warps for c in wide} == {4}
    assert {c.launch.num_warps for c in large + tiny} == {1}
    assert kernels.launch_configs(14, 128) == wide
    forced = kernels.launch_configs(56, 32, (3, 5))
    assert [c.tile for c in forced] == [(3, 5)] * 3 and [c.launch for c in forced] == [c.launch for c in large]
    assert all(c.tile_for(torch.zeros(1), d) == (3, 5) for c in forced for d in (1, 2))


def _record_halo_bwd(monkeypatch, pick) -> list:
    """Replace the halo backward (and the d(rpb) kernel) of na2d_bwd by a recorder of ``pick(its keyword
    arguments)`` per call; returns the record."""
    seen = []

    def fake_bwd(grad_out, q, *args, **kwargs):
        seen.append(pick(kwargs))
        return (q, q, q, None, None) + ((None,) if kwargs.get("rpb_grad") else ())

    monkeypatch.setattr(kernels, "halo_bwd", fake_bwd)
    monkeypatch.setattr(kernels, "na2d_rpb_grad_rows", lambda *args: None)
    return seen


def test_tiles_follow_the_bias_and_the_dilation(monkeypatch):
    """The launchers build their tables with each kernel's tile for the call: the dk/dv key tiles of the large maps
    differ with and without rpb (rpb_tile) and with dilation (flat_tile), the 14x14-class forward's with dilation."""
    fwd_tiles = []
    monkeypatch.setattr(kernels, "halo_fwd", lambda q, k, v, rows, cols, *a, **kw: fwd_tiles.append((rows.tile,
                                                                                                      cols.tile)))
    bwd_tiles = _record_halo_bwd(monkeypatch, lambda kw: (kw["key_rows"].tile, kw["key_cols"].tile))
    large, small = kernels.launch_configs(56, 32), kernels.launch_configs(14, 32)
    for hh in (56, 14):  # 14 rows of 64 columns: no tile is clipped to the map
        q = torch.zeros(1, hh, 64, 2, 32)
        lse = torch.zeros(1, hh, 64, 2)
        rpb = torch.zeros(2, 13, 13)
        for bias, dilation in ((None, 1), (rpb, 1), (None, 2)):
            kernels.na2d_fwd(q, q, q, bias, 7, dilation, 0.2)
            kernels.na2d_bwd(q, q, q, q, bias, q, lse, 7, dilation, 0.2)
    assert bwd_tiles[:3] == [large[2].tile, large[2].rpb_tile, large[2].flat_tile] and large[2].tile != (4, 8)
    assert fwd_tiles[3:] == [small[0].tile, small[0].tile, small[0].flat_tile] and small[0].tile != (2, 16)


def test_forward_launch_follows_its_loop(monkeypatch):
    """The forward's row-by-row loop gets the pipelined row launch and its register cap (with and without rpb); the
    flat loop (dilation, or a halo row wider than a step: k 17 on an 8x2 tile) keeps its own unpipelined, uncapped
    launch, under which gathered key loads are not slowed."""
    seen = []
    monkeypatch.setattr(kernels, "halo_fwd", lambda *args, **kwargs: seen.append(kwargs))
    q = torch.zeros(1, 56, 56, 2, 32)
    rpb = torch.zeros(2, 13, 13)
    fwd = kernels.launch_configs(56, 32)[0]
    rows_launch, flat_launch, caps = fwd.launch, fwd.flat, fwd.caps
    for ks, dilation in ((7, 1), (9, 1), (7, 2), (17, 1)):
        kernels.na2d_fwd(q, q, q, None, ks, dilation, 0.2)
    kernels.na2d_fwd(q, q, q, rpb, 7, 1, 0.2)
    got = [(kw["block_n"], kw["num_warps"], kw["num_stages"], kw["maxnreg"], kw["rows_loop"]) for kw in seen]
    assert rows_launch.num_stages == 2 and flat_launch.num_stages is None
    assert caps[0] is not None and caps[1] is not None and caps[0] != caps[1]
    row = (rows_launch.block_n, rows_launch.num_warps, rows_launch.num_stages)
    flat = (flat_launch.block_n, flat_launch.num_warps, flat_launch.num_stages, None)
    assert got == [(*row, caps[0], True), (*row, caps[0], True), (*flat, False), (*flat, True), (*row, caps[1], True)]


def test_dq_register_cap_follows_its_loop(monkeypatch):
    """The dq kernel's register caps apply to its row walk (where they were measured), without rpb and with it (a
    bias table read by rows), not to the flat loop of dilated maps or of halos wider than a step (k 17 on the 56x56
    map's tiles; k 11 on 14x14 walks rows: the halo is the map's width, which a step holds); on maps whose dq config
    walks a table by flat chunks (``table_rows`` false: 14x14) the dq kernel with rpb does not walk rows, nor
    anywhere with DQ_ROW_TABLE false."""
    seen = _record_halo_bwd(monkeypatch, lambda kw: (kw["dq_launch"].maxnreg, kw["dq_rows"], kw["table"]))
    rpb = torch.zeros(2, 13, 13)
    caps = kernels.launch_configs(56, 32)[1].caps
    for side, wide in ((56, 17), (14, 11)):
        q = torch.zeros(1, side, side, 2, 32)
        lse = torch.zeros(1, side, side, 2)
        for ks, dilation, bias in ((7, 1, None), (7, 2, None), (wide, 1, None), (7, 1, rpb)):
            kernels.na2d_bwd(q, q, q, q, bias, q, lse, ks, dilation, 0.2)
    monkeypatch.setattr(kernels, "DQ_ROW_TABLE", False)
    kernels.na2d_bwd(q, q, q, q, rpb, q, lse, 7, 1, 0.2)
    assert None not in caps and caps[0] != caps[1]
    assert kernels.launch_configs(56, 32)[1].table_rows and not kernels.launch_configs(14, 32)[1].table_rows
    small_cap = kernels.launch_configs(14, 32)[1].caps[0]
    assert seen == [(caps[0], True, False), (None, False, False), (None, True, False), (caps[1], True, True),
                    (small_cap, True, False), (None, False, False), (small_cap, True, False), (None, False, True),
                    (None, False, True)]


def test_dkdv_row_walk_where_it_pads_no_more_than_flat_chunks(monkeypatch):
    """DKDV_ROWS None: the dk/dv kernel walks its query halo by rows (at its map's row launch) where the rows, each key
    tile walking only its span of halo rows (DKDV_SPAN, where that skips steps), pad it to no more pairs per tile on
    average than the flat chunks. k 7, head dim 32, by hand from the windows: 2x8 key tiles on 56 rows have an 11x14
    halo (flat: 154 -> 160 pairs in 32s); by rows of 16, two a step of 32, the whole halo takes 6 steps, a tile's
    span 4.14 on average (132.6 pairs: rows). With rpb, 4x8 tiles and 64 per step (four rows): 2.86 steps (182.9
    pairs: flat). 128 rows: 4.06 steps (130: rows), with rpb 2.94 (188: flat). 28 rows: halo 11x15 (flat 192):
    4.29 steps (137: rows), with rpb 2.71 (173.7: rows). 14x14, 1x16 tiles: halo 10x14 (flat 160), 3.71 steps of 32
    (118.9: rows). 7x7, 4x8 tiles: halo 7x7 in one step of 64 (flat 49 -> 64 in 16s: rows), the span skipping
    nothing. Never dilated nor at head dims over 32 (no row launch); True walks rows everywhere undilated, False
    nowhere."""
    seen = _record_halo_bwd(monkeypatch, lambda kw: (kw["dkdv_rows"], kw["dkdv_launch"], kw["key_span"]))
    expected = {(28, False): (True, True), (28, True): (True, True), (56, False): (True, True),
                (56, True): (False, False), (128, False): (True, True), (128, True): (False, False),
                (14, False): (True, True), (14, True): (True, True), (7, False): (True, False),
                (7, True): (True, False)}
    got = {}
    for (side, with_rpb) in expected:
        q = torch.zeros(1, side, side, 2, 32)
        lse = torch.zeros(1, side, side, 2)
        kernels.na2d_bwd(q, q, q, q, torch.zeros(2, 13, 13) if with_rpb else None, q, lse, 7, 1, 0.2)
        rows, launch, span = seen[-1]
        cfg = kernels.launch_configs(side, 32)[2]
        assert launch == (cfg.key_rows[with_rpb] if rows else cfg.launch), (side, with_rpb, launch)
        got[(side, with_rpb)] = (rows, span)
    assert got == expected
    large_rows = kernels.launch_configs(28, 32)[2].key_rows
    assert (large_rows[0].block_n, large_rows[0].maxnreg, large_rows[1].block_n, large_rows[1].maxnreg) == (
        32, 128, 64, None)
    q, lse = torch.zeros(1, 28, 28, 2, 32), torch.zeros(1, 28, 28, 2)
    kernels.na2d_bwd(q, q, q, q, None, q, lse, 7, 2, 0.2)
    assert seen[-1] == (False, kernels.launch_configs(28, 32)[2].launch, False)
    wide = torch.zeros(1, 28, 28, 2, 64)
    kernels.na2d_bwd(wide, wide, wide, wide, None, wide, lse, 7, 1, 0.2)
    assert seen[-1] == (False, kernels.launch_configs(28, 64)[2].launch, False)
    monkeypatch.setattr(kernels, "DKDV_ROWS", True)
    q, lse = torch.zeros(1, 56, 56, 2, 32), torch.zeros(1, 56, 56, 2)
    kernels.na2d_bwd(q, q, q, q, None, q, lse, 7, 1, 0.2)
    assert seen[-1] == (True, kernels.launch_configs(56, 32)[2].key_rows[0], True)
    kernels.na2d_bwd(q, q, q, q, None, q, lse, 7, 2, 0.2)
    assert seen[-1][0] is False
    monkeypatch.setattr(kernels, "DKDV_ROWS", False)
    q, lse = torch.zeros(1, 28, 28, 2, 32), torch.zeros(1, 28, 28, 2)
    kernels.na2d_bwd(q, q, q, q, None, q, lse, 7, 1, 0.2)
    assert seen[-1] == (False, kernels.launch_configs(28, 32)[2].launch, False)


def test_head_split_covers_each_head_dim_with_the_fewest_columns():
    """The halo kernels' (main, tail) blocks: two powers of two >= 16 (or one, tail 0) covering d in as few columns as
    such a pair can, and one block, head_block's, whenever a split would not cover fewer columns."""
    powers = [16, 32, 64, 128]
    for d in range(1, 129):
        main, tail = head_split(d)
        assert main in powers and tail in [0, *powers] and tail <= main, (d, main, tail)
        fewest = min(a + b for a in powers for b in [0, *powers] if a + b >= d)
        assert main + tail >= d and main + tail == fewest, (d, main, tail)
        if fewest == head_block(d):
            assert (main, tail) == (head_block(d), 0), d
    expected = {16: (16, 0), 24: (32, 0), 40: (32, 16), 64: (64, 0), 72: (64, 16), 96: (64, 32), 100: (128, 0)}
    assert {d: head_split(d) for d in expected} == expected


def test_lse_is_the_base2_logsumexp_of_the_scores():
    c = CPU_CASES[0]
    q, k, v, rpb, _ = _inputs(c, seed=1)
    _, lse = kernels.na2d_fwd(q, k, v, rpb, c.k, c.d, 0.25)
    # logsumexp of one query's k*k scores, from the reference with a one-hot value per key (v = identity rows)
    from vizattn.kernels.na2d.reference import neighborhood_indices

    rows, bh = neighborhood_indices(c.hh, c.k, c.d)
    cols, bw = neighborhood_indices(c.ww, c.k, c.d)
    i, j = 3, 16
    keys = k[0, rows[i][:, None], cols[j][None, :], 0].double()  # (k, k, head_dim)
    s = (q[0, i, j, 0].double() * 0.25 * keys).sum(-1) + rpb[0][bh[i][:, None], bw[j][None, :]].double()
    expected = torch.logsumexp(s.flatten(), 0) / torch.log(torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(lse[0, i, j, 0].double(), expected, rtol=1e-5, atol=1e-5)


def test_packed_qkv_views_are_read_in_place():
    """q, k, v as slices of one (B, H, W, 3, heads, D) projection output: strided, no copies needed."""
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(1, 10, 9, 3, 2, 16, generator=g).to(DEVICE)
    rpb = torch.randn(2, 5, 5, generator=g).to(DEVICE)
    q, k, v = qkv.unbind(3)
    out = na2d(q, k, v, 3, 3, rpb, backend="triton")
    torch.testing.assert_close(out, na2d_reference(q, k, v, 3, 3, rpb), rtol=1e-5, atol=1e-5)


def test_unsupported_cases_are_explained():
    q = torch.randn(1, 8, 8, 1, 4, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match=r"one dtype among float16, bfloat16, float32, got torch.float64"):
        na2d(q, q, q, 3, backend="triton")
    big = torch.randn(1, 3, 3, 1, 160, device=DEVICE)
    with pytest.raises(ValueError, match=r"head_dim is at most 128, got q/k 160"):
        na2d(big, big, big, 3, backend="triton")
    # 'auto' falls back to the PyTorch backend for what the kernel does not take
    assert na2d(q, q, q, 3).dtype == torch.float64


@pytest.mark.parametrize("packed", [False, True], ids=["na2d", "na2d_qkv"])
def test_custom_op_registration(packed):
    """Schema, fake (meta) implementation and autograd registration, as torch.compile needs them."""
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(1, 7, 8, 3, 1, 16, generator=g).to(DEVICE)
    rpb = torch.randn(1, 5, 5, generator=g).to(DEVICE)
    op, tensors = (torch.ops.vizattn.na2d_qkv, (qkv,)) if packed else (torch.ops.vizattn.na2d, qkv.unbind(3))
    torch.library.opcheck(
        op.default, (*tensors, rpb, 3, 2, 0.25),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_packed_qkv_equals_the_unbound_call(monkeypatch, backend):
    """na2d_qkv(qkv) is na2d(*qkv.unbind(3)): the same output, and a packed gradient equal to the one autograd builds
    from the three (on the Triton path written by the kernels into one tensor, poisoned first so that an unwritten
    element shows), with rpb's."""
    monkeypatch.setenv("VIZATTN_POISON_OUTPUTS", "1")
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(2, 9, 10, 3, 2, 16, generator=g).to(DEVICE).requires_grad_()
    rpb = torch.randn(2, 5, 5, generator=g).to(DEVICE).requires_grad_()
    grad = torch.randn(2, 9, 10, 2, 16, generator=g).to(DEVICE)
    out = na2d_qkv(qkv, 3, 2, rpb, 0.3, backend=backend)
    got = torch.autograd.grad(out, (qkv, rpb), grad)
    want_out = na2d(*qkv.unbind(3), 3, 2, rpb, 0.3, backend=backend)
    want = torch.autograd.grad(want_out, (qkv, rpb), grad)
    torch.testing.assert_close(out, want_out, rtol=0, atol=0)
    assert got[0].shape == qkv.shape and got[0].is_contiguous()
    for ours, theirs in zip(got, want):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_packed_qkv_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"packed \(B, H, W, 3, heads, head_dim\) tensor, got shape \(1, 8, 8, 2"):
        na2d_qkv(torch.zeros(1, 8, 8, 2, 1, 4, device=DEVICE), 3)
    with pytest.raises(ValueError, match=r"the map is 4x8 but kernel_size \* dilation = 5"):
        na2d_qkv(torch.zeros(1, 4, 8, 3, 1, 4, device=DEVICE), 5)


def test_halo_backward_checks_the_given_gradient_tensors():
    from vizattn.kernels._halo2d.triton import halo_bwd

    q = torch.randn(1, 9, 10, 1, 16, device=DEVICE)
    rows, cols = kernels._axes(q, 3, 1, (8, 8))
    key_rows, key_cols = kernels._axes(q, 3, 1, (8, 8), kernels._key_tables)
    lse = torch.zeros(1, 9, 10, 1, device=DEVICE)
    with pytest.raises(ValueError, match="grads must match q, k and v"):
        halo_bwd(q, q, q, q, q, lse, rows, cols, 0.25, key_rows=key_rows, key_cols=key_cols,
                 grads=(q, q, q.half()))


@pytest.mark.parametrize("packed", [False, True], ids=["na2d", "na2d_qkv"])
def test_torch_compile_has_no_graph_break(packed):
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 7, 8, 1, 16, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    rpb = torch.randn(1, 5, 5, generator=g).to(DEVICE).requires_grad_()

    def fn(q, k, v, rpb):
        if packed:
            return na2d_qkv(torch.stack((q * 1.0, k, v), 3), 3, 2, rpb, backend="triton").sum()
        return na2d(q * 1.0, k, v, 3, 2, rpb, backend="triton").sum()

    compiled = torch.compile(fn, fullgraph=True, backend="inductor" if ON_GPU else "aot_eager")
    out = compiled(q, k, v, rpb)
    out.backward()
    grads = [t.grad.clone() for t in (q, k, v, rpb)]
    for t in (q, k, v, rpb):
        t.grad = None
    fn(q, k, v, rpb).backward()
    for ours, eager in zip(grads, [t.grad for t in (q, k, v, rpb)]):
        torch.testing.assert_close(ours, eager, rtol=1e-5, atol=1e-5)


# d(rpb) has its own kernel (vizattn.kernels.na2d.rpb_grad): windows from arithmetic, border queries' off-centre bias
# entries, blocks of queries that straddle dilation groups and the map's edges.
RPB_CASES = [
    Case(2, 3, 14, 14, 7, 2),  # maps exactly k * d: every query of a group sees the whole group
    Case(1, 2, 13, 13, 13, 1, "bf16"),  # k = map, k 13: every query a border query
    Case(2, 2, 23, 17, 3, 3, "fp16"),  # ragged dilation groups: 8/8/7 rows, 6/6/5 columns
    Case(1, 3, 21, 14, 7, 2, "bf16", head_dim=40, dim_v=24),  # non-square, exact on W only; split head dim
    Case(2, 1, 13, 12, 4, 3),  # even kernel with dilation: k // 2 keys before the query, k // 2 - 1 after
    Case(1, 2, 9, 33, 6, 1, "fp16"),  # even kernel, wide map: more than one column block on a GPU
]


ALONE_CASES = [RPB_CASES[i] for i in (1, 4, 5)]  # odd and even kernels; the geometries are the row-tile test's


@pytest.mark.parametrize("case", ALONE_CASES, ids=[c.id for c in ALONE_CASES])
def test_rpb_grad_alone_matches_reference(case):
    """Only the bias requires a gradient (q, k, v are constants), through the op."""
    q, k, v, rpb, grad = _inputs(case, seed=6)
    scale = case.head_dim**-0.5
    leaf = rpb.clone().requires_grad_()
    na2d(q, k, v, case.k, case.d, leaf, scale, backend="triton").backward(grad)
    ref_leaf = rpb.double().requires_grad_()
    na2d_reference(q.double(), k.double(), v.double(), case.k, case.d, ref_leaf, scale).backward(grad.double())
    assert leaf.grad.dtype == rpb.dtype and torch.isfinite(leaf.grad).all()
    l2_tol, max_tol = ATTN_TOL[q.dtype]
    l2, mx = rel_errors(leaf.grad, ref_leaf.grad)
    assert l2 < l2_tol and mx < max_tol, f"drpb: rel L2 {l2:.2e}, rel max {mx:.2e}"


BLOCK_CASES = [  # (H, W, k, d, block, rows per program): the GPU's block shapes and partial chunks, on the CPU
    (14, 14, 7, 2, (1, 16), 3),  # one row per block, chunks of 3 rows (the last one 2)
    (23, 17, 3, 3, (2, 8), 5),  # ragged groups; 5 rows rounded up to 6 per program
    (7, 7, 7, 1, (8, 8), None),  # a level-3 map in one block of 8 x 8 (one row and one column padded)
    (13, 12, 4, 3, (4, 4), 4),  # even kernel, blocks that cut the map's columns in three
    (11, 9, 5, 1, (16, 1), 1),  # one column per block
]


@pytest.mark.parametrize(
    "hh,ww,k,d,block,rows",
    BLOCK_CASES,
    ids=[f"{c[0]}x{c[1]}-k{c[2]}-d{c[3]}-b{c[4][0]}x{c[4][1]}-r{c[5]}" for c in BLOCK_CASES],
)
def test_rpb_grad_for_any_block(hh, ww, k, d, block, rows):
    from vizattn.kernels.na2d.rpb_grad import na2d_rpb_grad

    g = torch.Generator().manual_seed(7)
    q, kk, v, grad = (torch.randn(1, hh, ww, 2, 16, generator=g).to(DEVICE) for _ in range(4))
    rpb = torch.randn(2, 2 * k - 1, 2 * k - 1, generator=g).to(DEVICE)
    out, lse = kernels.na2d_fwd(q, kk, v, rpb, k, d, 0.3)
    delta = (grad * out).sum(-1)
    drpb = na2d_rpb_grad(grad, q, kk, v, rpb, lse, delta, k, d, 0.3, block=block, rows_per_program=rows)
    ref_rpb = rpb.double().requires_grad_()
    na2d_reference(q.double(), kk.double(), v.double(), k, d, ref_rpb, 0.3).backward(grad.double())
    l2_tol, max_tol = ATTN_TOL[torch.float32]
    l2, mx = rel_errors(drpb, ref_rpb.grad)
    assert l2 < l2_tol and mx < max_tol, f"drpb: rel L2 {l2:.2e}, rel max {mx:.2e}"
    if ON_GPU:  # a fixed-order sum of partial tables, no atomics (the interpreter runs programs in order anyway)
        again = na2d_rpb_grad(grad, q, kk, v, rpb, lse, delta, k, d, 0.3, block=block, rows_per_program=rows)
        assert torch.equal(drpb, again), "d(rpb) is not bitwise reproducible"


# Chunks of 3 rows where a chunk's rows mix borders and interiors differently (k 13 on 13 rows, an even kernel with
# dilation), all rows in one program for the other geometries. The backward runs this kernel only where the dq
# kernel cannot sum d(rpb) (bias tables or blocks too large).
ROW_TILE_CASES = [(c, 3 if i in (1, 4) else None) for i, c in enumerate(RPB_CASES)]


@pytest.mark.parametrize(
    "case,rows", ROW_TILE_CASES, ids=[f"{c.id}-r{rows}" for c, rows in ROW_TILE_CASES]
)
def test_rpb_grad_by_row_tiles_matches_reference(case, rows):
    """The tensor-core d(rpb) kernel (row tiles, window columns gathered out of the halo's scores): every RPB_CASES
    geometry, all rows in one program or chunks of 3 (border and interior rows of a dilation group mixed)."""
    from vizattn.kernels.na2d.rpb_grad import ROW_TILE, na2d_rpb_grad_rows

    q, k, v, rpb, grad = _inputs(case, seed=8)
    scale = case.head_dim**-0.5
    out, lse = kernels.na2d_fwd(q, k, v, rpb, case.k, case.d, scale)
    delta = (grad.float() * out.float()).sum(-1)
    cols = kernels._tables(case.ww, case.k, case.d, ROW_TILE, q.device)
    drpb = na2d_rpb_grad_rows(grad, q, k, v, rpb, lse, delta, case.k, case.d, scale, cols, rows_per_program=rows)
    ref_rpb = rpb.double().requires_grad_()
    na2d_reference(q.double(), k.double(), v.double(), case.k, case.d, ref_rpb, scale).backward(grad.double())
    assert drpb.dtype == rpb.dtype and torch.isfinite(drpb).all()
    l2_tol, max_tol = ATTN_TOL[q.dtype]
    l2, mx = rel_errors(drpb, ref_rpb.grad)
    assert l2 < l2_tol and mx < max_tol, f"drpb: rel L2 {l2:.2e}, rel max {mx:.2e}"


def test_rpb_grad_rows_programs_follow_the_map_height(monkeypatch):
    """On a GPU the row-tile d(rpb) kernel cuts the map rows into chunks for about 2048 programs, or 8192 on maps of
    at most 8 rows (B64: 56x56 2 heads 14 rows per program, 7x7 16 heads one); the interpreter takes all rows."""
    from vizattn.kernels.na2d import rpb_grad

    # programs per map row: W-axis tiles of ROW_TILE queries x batch x heads
    cases = [(56, 4 * 64 * 2, 14, 4), (28, 2 * 64 * 4, 7, 4), (14, 1 * 64 * 8, 4, 4), (7, 1 * 64 * 16, 1, 7)]
    monkeypatch.setattr(triton.knobs.runtime, "interpret", False)
    for hh, per_row, rows, chunks in cases:
        assert rpb_grad._row_chunks(hh, per_row, None, rpb_grad._rows_target(hh)) == (rows, chunks), hh
    monkeypatch.setattr(triton.knobs.runtime, "interpret", True)
    assert rpb_grad._row_chunks(56, 512, None, rpb_grad._rows_target(56)) == (56, 1)


@pytest.mark.parametrize("choice,fn", [("rows", "na2d_rpb_grad_rows"), ("slots", "na2d_rpb_grad")])
def test_backward_runs_the_chosen_rpb_kernel(monkeypatch, choice, fn):
    """kernels.RPB_GRAD routes the backward's d(rpb) through the chosen kernel (with the reference's result); the
    default, "dq", is tested below."""
    calls = []
    real = getattr(kernels, fn)
    monkeypatch.setattr(kernels, "RPB_GRAD", choice)
    monkeypatch.setattr(kernels, fn, lambda *a, **kw: calls.append(1) or real(*a, **kw))
    case = RPB_CASES[4]  # a small map: this test is about the routing (the geometries are tested above)
    q, k, v, rpb, grad = _inputs(case, seed=9)
    scale = case.head_dim**-0.5
    out, lse = kernels.na2d_fwd(q, k, v, rpb, case.k, case.d, scale)
    drpb = kernels.na2d_bwd(grad, q, k, v, rpb, out, lse, case.k, case.d, scale)[3]
    ref_rpb = rpb.double().requires_grad_()
    na2d_reference(q.double(), k.double(), v.double(), case.k, case.d, ref_rpb, scale).backward(grad.double())
    assert calls == [1]
    l2_tol, max_tol = ATTN_TOL[q.dtype]
    l2, mx = rel_errors(drpb, ref_rpb.grad)
    assert l2 < l2_tol and mx < max_tol, f"drpb: rel L2 {l2:.2e}, rel max {mx:.2e}"


def test_rpb_grad_choice_is_checked(monkeypatch):
    monkeypatch.setattr(kernels, "RPB_GRAD", "atomics")
    q = torch.randn(1, 9, 9, 1, 16, device=DEVICE)
    rpb = torch.zeros(1, 5, 5, device=DEVICE)
    out, lse = kernels.na2d_fwd(q, q, q, rpb, 3, 1, 0.25)
    with pytest.raises(ValueError, match="RPB_GRAD must be one of .*'atomics'"):
        kernels.na2d_bwd(q, q, q, q, rpb, out, lse, 3, 1, 0.25)


# d(rpb) summed by the dq kernel (RPB_GRAD "dq"): three images, two per program (on a GPU a program takes a few
# images; the interpreter's default is all of them), so one program sums two images and one holds one; a map exactly
# k * d (dilated), an even kernel on 17 rows and a 7x9 map (the two take different tiles, and a map of at most 8 rows
# reads the table only in the backward), each with one of the dq kernel's three ways of summing. Split head dims run
# through the same sums in the CPU_CASES.
DQ_RPB_CASES = [(replace(RPB_CASES[0], b=3), "first-store"), (Case(3, 1, 17, 8, 6, 1, "fp16"), "store"),
                (Case(3, 2, 7, 9, 5, 1), "atomic")]


@pytest.mark.parametrize("case,way", DQ_RPB_CASES, ids=[f"{c.id}-{w}" for c, w in DQ_RPB_CASES])
def test_rpb_grad_summed_in_the_dq_kernel(monkeypatch, case, way):
    images, sums = [], []
    monkeypatch.setattr(kernels, "_images_per_program", lambda n, *a: images.append(n) or 2)
    monkeypatch.setattr(kernels, "_rpb_grad_launch", lambda *a: (way, 1024, 8 << 20))
    real_bwd = kernels.halo_bwd
    monkeypatch.setattr(kernels, "halo_bwd", lambda *a, **kw: sums.append(kw["rpb_grad_sum"]) or real_bwd(*a, **kw))
    monkeypatch.setattr(kernels, "na2d_rpb_grad_rows", lambda *a, **kw: pytest.fail("the row-tile kernel ran"))
    q, k, v, rpb, grad = _inputs(case, seed=12)
    scale = case.head_dim**-0.5
    out, lse = kernels.na2d_fwd(q, k, v, rpb, case.k, case.d, scale)
    got = kernels.na2d_bwd(grad, q, k, v, rpb, out, lse, case.k, case.d, scale)
    assert images == [3]  # asked once, for the batch
    assert sums == [way]
    leaves = [t.double().requires_grad_() for t in (q, k, v, rpb)]
    na2d_reference(*leaves[:3], case.k, case.d, leaves[3], scale).backward(grad.double())
    l2_tol, max_tol = ATTN_TOL[q.dtype]
    for name, ours, leaf, x in zip(("dq", "dk", "dv", "drpb"), got, leaves, (q, k, v, rpb)):
        assert ours.dtype == x.dtype and torch.isfinite(ours).all(), name
        l2, mx = rel_errors(ours, leaf.grad)
        assert l2 < l2_tol and mx < max_tol, f"{name}: rel L2 {l2:.2e}, rel max {mx:.2e}"


@pytest.mark.parametrize("split", [(1, 1), (1, 5), (2, 3), (3, 1)], ids=lambda s: f"split{s[0]}-units{s[1]}")
def test_pair_grad_blocks_binned_by_bias_index(monkeypatch, split):
    """d(rpb) from the dq kernel's float32 blocks, however the binning kernel splits them (ranges of image chunks per
    tile, tiles per program): every tile's pair gradients summed over the chunks and added at the pair's bias index
    (from the tables' index lists), against float64 sums on the CPU; stored in rpb's dtype."""
    from vizattn.kernels._halo2d import triton as halo

    monkeypatch.setattr(halo, "_bin_split", lambda *a: split)
    hh, ww, k, d, tile, heads, chunks = 11, 9, 5, 2, (2, 4), 2, 3
    rows, cols = kernels._axes(torch.empty(1, hh, ww, 1, 16, device=DEVICE), k, d, tile)
    g = torch.Generator().manual_seed(21)
    shape = (cols.n_tiles, chunks * heads, rows.n_tiles, rows.tile, rows.halo, cols.tile, cols.halo)
    dtab = torch.randn(shape, generator=g)
    got = halo._pair_grads_to_rpb(dtab.to(DEVICE), heads, rows, cols, 2 * k - 1, torch.float16)
    rel_h, rel_w = halo._rel_idx(rows).cpu(), halo._rel_idx(cols).cpu()
    want = torch.zeros(heads, 2 * k - 1, 2 * k - 1, dtype=torch.float64)
    for th in range(rows.n_tiles):
        for tw in range(cols.n_tiles):
            blk = dtab[tw, :, th].double().view(chunks, heads, *shape[3:]).sum(0)  # (heads, i, y, j, x)
            rh, rw = rel_h[th][:, :, None, None], rel_w[tw][None, None]  # (i, y, 1, 1), (1, 1, j, x)
            inside = ((rh >= 0) & (rw >= 0)).expand(blk.shape[1:])
            for h in range(heads):
                want[h].index_put_((rh.expand(inside.shape)[inside], rw.expand(inside.shape)[inside]),
                                   blk[h][inside], accumulate=True)
    assert got.dtype == torch.float16 and got.shape == want.shape
    torch.testing.assert_close(got.cpu().double(), want.half().double(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("limit", ["table", "blocks"])
def test_rpb_grad_falls_back_to_the_row_tiles(monkeypatch, limit):
    """Where the bias table would be too large (the dq kernel then reads none), or the dq kernel's float32 blocks of
    one image (here: any), the row-tile kernel sums d(rpb)."""
    from vizattn.kernels._halo2d import triton as halo

    if limit == "table":
        monkeypatch.setattr(halo, "_TABLE_MAX", 0)
    else:
        monkeypatch.setattr(kernels, "_RPB_GRAD_IMAGE_BYTES", 0)
    calls = []
    real = kernels.na2d_rpb_grad_rows
    monkeypatch.setattr(kernels, "na2d_rpb_grad_rows", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    case = Case(1, 2, 13, 12, 4, 3)
    q, k, v, rpb, grad = _inputs(case, seed=13)
    out, lse = kernels.na2d_fwd(q, k, v, rpb, case.k, case.d, 0.25)
    drpb = kernels.na2d_bwd(grad, q, k, v, rpb, out, lse, case.k, case.d, 0.25)[3]
    ref_rpb = rpb.double().requires_grad_()
    na2d_reference(q.double(), k.double(), v.double(), case.k, case.d, ref_rpb, 0.25).backward(grad.double())
    assert calls == [1]
    l2, mx = rel_errors(drpb, ref_rpb.grad)
    assert l2 < ATTN_TOL[torch.float32][0] and mx < ATTN_TOL[torch.float32][1], f"rel L2 {l2:.2e}, rel max {mx:.2e}"


def test_images_per_program_of_the_dq_kernel(monkeypatch):
    """On a GPU about the given number of programs, with enough images each to keep their float32 blocks within the
    given bytes; at least one image and at most all of them."""
    from vizattn.kernels._halo2d import triton as halo

    monkeypatch.setattr(triton.knobs.runtime, "interpret", False)
    store, atomic = (4096, 32 << 20), (2048, 16 << 20)
    block = 4 * 16 * 112  # a 2x8 tile's block at k 7
    assert halo._images_per_program(64, 392, block, *store) == 6  # B64 56x56 2 heads: 6.1 by the count, 5.4 by bytes
    assert halo._images_per_program(64, 392, block, *atomic) == 12  # 12.25 / 10.7
    assert halo._images_per_program(64, 56, 4 * 32 * 176, *store) == 3  # B64 14x14 8 heads on 2x16 tiles: 0.9 / 2.4
    assert halo._images_per_program(1, 392, block, *store) == 1
    assert halo._images_per_program(8, 4096, 64, *store) == 8  # the target's programs per image: one program each
    assert halo._images_per_program(64, 8, 64, *store) == 1
    # NA's launches per map: atomic adds at dilation 1 on large and tiny maps; a store in the first image, atomic adds
    # after it, on maps of 9 to 16 rows and dilated maps
    assert kernels._rpb_grad_launch(1, 56) == ("atomic", 2048, 16 << 20)
    assert kernels._rpb_grad_launch(1, 14) == ("first-store", 1024, 8 << 20)
    assert kernels._rpb_grad_launch(1, 7) == ("atomic", 1024, 8 << 20)
    assert kernels._rpb_grad_launch(2, 14) == ("first-store", 4096, 32 << 20)


def test_binning_programs_follow_the_blocks_bytes(monkeypatch):
    """On a GPU about one binning program per 20 KB of blocks, 256 to 1024 of them: a tile's image chunks are split
    where there are fewer tiles x heads than programs, else a program takes several tiles."""
    from vizattn.kernels._halo2d import triton as halo

    monkeypatch.setattr(triton.knobs.runtime, "interpret", False)
    assert halo._bin_split(196, 2, 6, 17 << 20) == (2, 1)  # B64 56x56 2 heads: 870 programs
    assert halo._bin_split(2, 16, 32, 4 << 20) == (8, 1)  # 204 wanted: the floor of 256 programs, 8 per tile and head
    assert halo._bin_split(7, 8, 7, 8 << 20) == (7, 1)  # 14x14: 409 wanted, each tile's chunks split 7 ways at most
    assert halo._bin_split(3000, 2, 4, 64 << 20) == (1, 6)  # tiles x heads past the ceiling: 6 tiles per program
    monkeypatch.setattr(triton.knobs.runtime, "interpret", True)
    assert halo._bin_split(196, 2, 6, 17 << 20) == (1, 196)  # one program per head


def test_halo_backward_refuses_an_unknown_way_of_summing():
    from vizattn.kernels._halo2d.triton import halo_bwd

    q = torch.randn(1, 9, 10, 1, 16, device=DEVICE)
    rows, cols = kernels._axes(q, 3, 1, (8, 8))
    lse = torch.zeros(1, 9, 10, 1, device=DEVICE)
    with pytest.raises(ValueError, match="rpb_grad_sum must be one of .*'shuffle'"):
        halo_bwd(q, q, q, q, q, lse, rows, cols, 0.25, rpb_grad=True, rpb_grad_sum="shuffle")


def test_rpb_grad_by_row_tiles_refuses_key_tile_tables():
    from vizattn.kernels.na2d.rpb_grad import ROW_TILE, na2d_rpb_grad_rows

    q = torch.randn(1, 9, 10, 1, 16, device=DEVICE)
    rpb = torch.zeros(1, 5, 5, device=DEVICE)
    stats = torch.zeros(1, 9, 10, 1, device=DEVICE)
    key_cols = kernels._key_tables(10, 3, 1, ROW_TILE, q.device)
    with pytest.raises(ValueError, match="query-tile tables"):
        na2d_rpb_grad_rows(q, q, q, q, rpb, stats, stats, 3, 1, 0.25, key_cols)


def test_rpb_grad_default_warps_are_a_power_of_two():
    # Triton refuses other counts on a GPU (the interpreter ignores them): 16 queries of head dim 96 once asked for 6.
    from vizattn.kernels.na2d.rpb_grad import _num_warps

    for block in (1, 2, 4, 8, 16, 32, 64):
        for d_qk in range(1, 129):
            for d_v in (d_qk, 96, 128):
                warps = _num_warps(block, d_qk, d_v)
                assert warps in (1, 2, 4, 8), (block, d_qk, d_v, warps)
    assert _num_warps(16, 40, 96) == 4
    assert _num_warps(64, 32, 32) == 8


def test_rpb_grad_runs_only_with_rpb(monkeypatch):
    """Without a bias no d(rpb) kernel runs and the backward returns None for it; with one (and the bias table of a
    dilated map), the halo backward returns it and no d(rpb) kernel runs either."""
    calls = []
    halo_bwd = kernels.halo_bwd

    def spy_halo_bwd(*args, **kwargs):
        calls.append(("halo", kwargs["rpb"] is not None))
        return halo_bwd(*args, **kwargs)

    rpb_grad = kernels.na2d_rpb_grad_rows

    def spy_rpb_grad(*args, **kwargs):
        calls.append(("rpb_grad",))
        return rpb_grad(*args, **kwargs)

    monkeypatch.setattr(kernels, "halo_bwd", spy_halo_bwd)
    monkeypatch.setattr(kernels, "na2d_rpb_grad_rows", spy_rpb_grad)
    g = torch.Generator().manual_seed(8)
    q, k, v, grad = (torch.randn(1, 9, 10, 2, 16, generator=g).to(DEVICE) for _ in range(4))
    rpb = torch.randn(2, 5, 5, generator=g).to(DEVICE)
    out, lse = kernels.na2d_fwd(q, k, v, None, 3, 3, 0.25)
    assert kernels.na2d_bwd(grad, q, k, v, None, out, lse, 3, 3, 0.25)[3] is None
    assert calls == [("halo", False)]
    calls.clear()
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    na2d(*leaves, 3, 3, None, 0.25, backend="triton").backward(grad)
    assert calls == [("halo", False)]
    calls.clear()
    out, lse = kernels.na2d_fwd(q, k, v, rpb, 3, 3, 0.25)
    assert kernels.na2d_bwd(grad, q, k, v, rpb, out, lse, 3, 3, 0.25)[3].shape == rpb.shape
    assert calls == [("halo", True)]


def test_halo_kernels_refuse_tables_of_the_wrong_role():
    """The NA kernels read a query tile's windows as ``off + c`` and a key tile's as ``off - c``: swapped tables would
    give wrong masks and biases silently, so the launchers refuse them."""
    from vizattn.kernels._halo2d.triton import halo_bwd, halo_fwd

    q = torch.randn(1, 9, 10, 1, 16, device=DEVICE)
    rows, cols = kernels._axes(q, 3, 2, (8, 8))
    key_rows, key_cols = kernels._axes(q, 3, 2, (8, 8), kernels._key_tables)
    lse = torch.zeros(1, 9, 10, 1, device=DEVICE)
    with pytest.raises(ValueError, match="query-tile tables"):
        halo_fwd(q, q, q, key_rows, key_cols, 0.25)
    with pytest.raises(ValueError, match="key-tile tables"):
        halo_bwd(q, q, q, q, q, lse, rows, cols, 0.25, key_rows=rows, key_cols=cols)
