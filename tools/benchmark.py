#!/usr/bin/env python3
"""GPU benchmark of vizattn: kernels against their reference and the anchors a user has, and whole models.

Kernels (``--kernels``): routed attention (BiFormer) at the three stage shapes of PERFORMANCE.md, forward and
forward+backward, as median milliseconds of ``triton.testing.do_bench``, next to the HBM floor (each input read once,
each output written once, at 4.3 TB/s) and time/floor. Implementations:

- ``vizattn``: the Triton kernel (``routed_attention(..., backend='triton')``);
- ``reference``: ``routed_attention_reference`` (the float32 definition);
- ``gather+matmul``: the official code's recipe (``torch.gather`` of the routed K/V, then two matmuls and a
  softmax, under bf16 autocast);
- ``gather+sdpa``: the same gather, then ``F.scaled_dot_product_attention``;
- ``flex``: ``flex_attention`` (compiled) over region-major token order with a block mask built from the routing.

Every implementation sees q, k, v as channel slices of one projection output, as in the model. The Triton result is
checked against the reference at each shape (relative L2 error) before it is timed.

CLEAR (``--clear-shapes``; empty skips): circular local attention on DiT-XL/2 token grids (32x32, 64x64 and 128x128
for 256, 512 and 1024 px; radius 8 and 16; 16 heads of 72; bf16; one shape adds the 4x4-pooled tokens), forward and
forward+backward, same columns (floor: q, k, v, out and the extra tokens read or written once). Implementations
(``--clear-impls``):

- ``vizattn``: the Triton kernel (``clear_attention(..., backend='triton')``);
- ``sdpa``: ``F.scaled_dot_product_attention`` over the whole map with the boolean ``(N, N + M)`` mask;
- ``flex``: ``flex_attention`` (compiled) with a block mask of the same ``mask_mod``, as the official CLEAR code.

The Triton result is checked against float32 SDPA with the mask (forward and gradients) before it is timed.

Models (``--models a,b,...``; empty skips): inference img/s (no grad), training img/s (forward, backward, SGD step)
and peak memory, batch 128 at 224 px under bf16 autocast. ``name@torch`` builds a vizattn model with
``kernel_backend='torch'``. ``--hires`` adds BiFormer-S forward+backward on one 1024x1024 image with ``n_win=16``.

Example (on the GPU machine, from the repository root):

    PYTHONPATH=. python3 tools/benchmark.py --models biformer_t,biformer_s,swin_tiny_patch4_window7_224,convnext_tiny \\
        --hires --out bench.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

HBM_BYTES_PER_S = 4.3e12

# (name, batch, H, W, channels, heads, n_win, topk): BiFormer-S stages 0-2 at 224 px, batch 64 (PERFORMANCE.md).
ROUTED_SHAPES = [
    ("stage0", 64, 56, 56, 64, 2, 7, 1),
    ("stage1", 64, 28, 28, 128, 4, 7, 4),
    ("stage2", 64, 14, 14, 256, 8, 7, 16),
]

# (name, batch, H, W, radius, down_factor): DiT-XL/2 token grids (patch 2 on the 8x-downsampled VAE latent) at 256, 512
# and 1024 px; down_factor d > 0 appends the (H/d)(W/d) pooled key/value tokens every query also sees.
CLEAR_SHAPES = [
    ("32x32-r8", 2, 32, 32, 8, 0),
    ("32x32-r16", 2, 32, 32, 16, 0),
    ("64x64-r8", 2, 64, 64, 8, 0),
    ("64x64-r16", 2, 64, 64, 16, 0),
    ("64x64-r8-d4", 2, 64, 64, 8, 4),
    ("128x128-r8", 1, 128, 128, 8, 0),
    ("128x128-r16", 1, 128, 128, 16, 0),
]
CLEAR_HEADS, CLEAR_HEAD_DIM = 16, 72  # DiT-XL/2


def _bench(fn: Callable[[], object], warmup: int = 25, rep: int = 100) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def _kernel_ms(fn: Callable[[], object], n: int = 20) -> float:
    """GPU time of the kernels one call launches (summed from the profiler), i.e. without launch gaps."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    return sum(e.device_time for e in prof.events() if e.device_type == DeviceType.CUDA) / n / 1e3


# ---------------------------------------------------------------------------------------------------------------------
# Routed attention: the anchors


def _to_regions(x: torch.Tensor, n_win: int) -> torch.Tensor:
    n, hh, ww, c = x.shape
    h, w = hh // n_win, ww // n_win
    return x.reshape(n, n_win, h, n_win, w, c).permute(0, 1, 3, 2, 4, 5).reshape(n, n_win * n_win, h * w, c)


def _from_regions(x: torch.Tensor, n_win: int, h: int, w: int) -> torch.Tensor:
    n, _, _, c = x.shape
    return x.reshape(n, n_win, n_win, h, w, c).permute(0, 1, 3, 2, 4, 5).reshape(n, n_win * h, n_win * w, c)


def _gather_kv(k, v, r_idx, n_win):
    # The official KVGather: expand the (N, S^2, hw, C) key/value regions over the query regions and gather the
    # routed ones, a real (N, S^2, topk, hw, C) copy.
    kv = _to_regions(torch.cat([k, v], dim=-1), n_win)
    n, p2, hw, c = kv.shape
    topk = r_idx.shape[-1]
    idx = r_idx.reshape(n, p2, topk, 1, 1).expand(-1, -1, -1, hw, c)
    sel = torch.gather(kv.unsqueeze(1).expand(-1, p2, -1, -1, -1), 2, idx)
    return sel.split([k.shape[-1], v.shape[-1]], dim=-1)


def official_gather_matmul(q, k, v, r_idx, n_win, num_heads, scale):
    """The official bra_legacy recipe: gather, then (q*scale) @ k^T, softmax, @ v, per (image, region, head)."""
    n, hh, ww, _ = q.shape
    h, w = hh // n_win, ww // n_win
    p2, topk = n_win * n_win, r_idx.shape[-1]
    k_sel, v_sel = _gather_kv(k, v, r_idx, n_win)
    qr = _to_regions(q, n_win).reshape(n * p2, h * w, num_heads, -1).transpose(1, 2)
    k_sel = k_sel.reshape(n * p2, topk * h * w, num_heads, -1).permute(0, 2, 3, 1)
    v_sel = v_sel.reshape(n * p2, topk * h * w, num_heads, -1).transpose(1, 2)
    attn = ((qr * scale) @ k_sel).softmax(dim=-1)
    out = (attn @ v_sel).transpose(1, 2).reshape(n, p2, h * w, -1)
    return _from_regions(out, n_win, h, w)


def gather_sdpa(q, k, v, r_idx, n_win, num_heads, scale):
    n, hh, ww, _ = q.shape
    h, w = hh // n_win, ww // n_win
    p2, topk = n_win * n_win, r_idx.shape[-1]
    k_sel, v_sel = _gather_kv(k, v, r_idx, n_win)
    qr = _to_regions(q, n_win).reshape(n * p2, h * w, num_heads, -1).transpose(1, 2)
    k_sel = k_sel.reshape(n * p2, topk * h * w, num_heads, -1).transpose(1, 2)
    v_sel = v_sel.reshape(n * p2, topk * h * w, num_heads, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(qr, k_sel, v_sel, scale=scale)
    return _from_regions(out.transpose(1, 2).reshape(n, p2, h * w, -1), n_win, h, w)


def make_flex(r_idx, n_win, h, w, num_heads):
    """flex_attention over region-major tokens; the block mask allows (query region, key region) pairs routed."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n, p2, _ = r_idx.shape
    hw = h * w
    allowed = torch.zeros(n, p2, p2, dtype=torch.bool, device=r_idx.device)
    allowed.scatter_(2, r_idx, True)

    def mask_mod(b, hd, q_idx, kv_idx):
        return allowed[b, q_idx // hw, kv_idx // hw]

    block_mask = create_block_mask(mask_mod, n, None, p2 * hw, p2 * hw, device=r_idx.device)
    flex = torch.compile(flex_attention, dynamic=False)

    def run(q, k, v, r_idx_unused, n_win_, num_heads_, scale):
        def seq(t):
            return _to_regions(t, n_win).reshape(n, p2 * hw, num_heads, -1).transpose(1, 2)

        out = flex(seq(q), seq(k), seq(v), block_mask=block_mask, scale=scale)
        return _from_regions(out.transpose(1, 2).reshape(n, p2, hw, -1), n_win, h, w)

    return run


def _triton_fn(q, k, v, r_idx, n_win, heads, scale):
    from vizattn.kernels.routed import routed_attention

    return routed_attention(q, k, v, r_idx, n_win, heads, scale, backend="triton", distinct_routing=True)


def _reference_fn(q, k, v, r_idx, n_win, heads, scale):
    from vizattn.kernels.routed.reference import routed_attention_reference

    return routed_attention_reference(q, k, v, r_idx, n_win, heads, scale)


def _official_autocast(q, k, v, r_idx, n_win, heads, scale):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return official_gather_matmul(q, k, v, r_idx, n_win, heads, scale)


def _check_triton(q, k, v, r_idx, n_win, heads, scale, grad) -> dict:
    from vizattn.kernels.routed.reference import routed_attention_reference

    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = routed_attention_reference(*leaves, r_idx, n_win, heads, scale)
    ref_grads = torch.autograd.grad(ref, leaves, grad.float())
    out = _triton_fn(q, k, v, r_idx, n_win, heads, scale)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    err = ((out.float() - ref).norm() / ref.norm()).item()
    gerr = max(((g.float() - r).norm() / r.norm()).item() for g, r in zip(grads, ref_grads))
    finite = all(torch.isfinite(t).all().item() for t in (out, *grads))
    return dict(check_out_rel_err=err, check_grad_rel_err=gerr, check_finite=finite)


def _bench_routed_shape(name, b, hh, ww, c, heads, n_win, topk, check: bool, impls: list[str]) -> list[dict]:
    from vizattn.kernels.routed import region_routing

    dev = torch.device("cuda")
    torch.manual_seed(0)
    qkv = torch.randn(b, hh, ww, 3 * c, device=dev, dtype=torch.bfloat16, requires_grad=True)
    q, k, v = qkv.split([c, c, c], dim=-1)
    scale = c**-0.5
    r_idx = region_routing(q, k, n_win, topk, scale)
    grad = torch.randn(b, hh, ww, c, device=dev, dtype=torch.bfloat16)
    el = b * hh * ww * c
    fwd_bytes = 4 * el * 2  # read q, k, v, write out (bf16)
    fwdbwd_bytes = fwd_bytes + 8 * el * 2  # then read q, k, v, out, dout, write dq, dk, dv
    base = dict(shape=name, batch=b, map=f"{hh}x{ww}", channels=c, heads=heads, n_win=n_win, topk=topk,
                floor_fwd_ms=fwd_bytes / HBM_BYTES_PER_S * 1e3, floor_fwdbwd_ms=fwdbwd_bytes / HBM_BYTES_PER_S * 1e3)
    if check:
        base.update(_check_triton(q, k, v, r_idx, n_win, heads, scale, grad))
        print(f"[{name}] vizattn vs float32 reference: out rel err {base['check_out_rel_err']:.2e}, grads max rel "
              f"err {base['check_grad_rel_err']:.2e}, finite={base['check_finite']}")

    candidates = {"vizattn": _triton_fn, "reference": _reference_fn, "gather+matmul": _official_autocast,
                  "gather+sdpa": gather_sdpa}
    if "flex" in impls:
        try:
            candidates["flex"] = make_flex(r_idx, n_win, hh // n_win, ww // n_win, heads)
        except Exception as e:  # noqa: BLE001 - report and go on: flex is an anchor, not ours
            print(f"[{name}] flex_attention unavailable: {type(e).__name__}: {e}", file=sys.stderr)

    rows = []
    for impl, fn in candidates.items():
        if impl not in impls:
            continue
        row = dict(base, impl=impl)

        def fwd(fn=fn):
            with torch.no_grad():
                return fn(q, k, v, r_idx, n_win, heads, scale)

        def fwdbwd(fn=fn):
            return torch.autograd.grad(fn(q, k, v, r_idx, n_win, heads, scale), (q, k, v), grad)

        try:
            row["fwd_ms"] = _bench(fwd)
            row["fwdbwd_ms"] = _bench(fwdbwd)
            row["fwd_kernel_ms"] = _kernel_ms(fwd)
            row["fwdbwd_kernel_ms"] = _kernel_ms(fwdbwd)
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            print(f"[{name}] {impl} failed: {row['error']}", file=sys.stderr)
        rows.append(row)
        torch.cuda.empty_cache()
    return rows


def bench_routed(shapes, check: bool, impls: list[str]) -> list[dict]:
    rows = []
    for shape in shapes:
        rows += _bench_routed_shape(*shape, check=check, impls=impls)
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# CLEAR circular local attention: the anchors


def _to_seq(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, heads, D) -> (B, heads, H * W, D), a view."""
    b, hh, ww, heads, d = x.shape
    return x.reshape(b, hh * ww, heads, d).transpose(1, 2)


def _with_extra(ks: torch.Tensor, vs: torch.Tensor, ek, ev):
    if ek is None:
        return ks, vs
    return torch.cat([ks, ek.transpose(1, 2)], 2), torch.cat([vs, ev.transpose(1, 2)], 2)


def make_clear_sdpa(hh: int, ww: int, radius: int, m: int, device: torch.device):
    """Dense SDPA over the whole map (plus the extra tokens) with the boolean (N, N + M) mask of the definition."""
    from vizattn.kernels.clear import circle_mask

    n = hh * ww
    mask = circle_mask(hh, ww, radius, device)
    if m:
        mask = torch.cat([mask, mask.new_ones(n, m)], 1)

    def run(q, k, v, ek, ev, scale):
        ks, vs = _with_extra(_to_seq(k), _to_seq(v), ek, ev)
        out = F.scaled_dot_product_attention(_to_seq(q), ks, vs, attn_mask=mask, scale=scale)
        return out.transpose(1, 2).reshape(q.shape)

    return run


def make_clear_flex(hh: int, ww: int, radius: int, m: int, device: torch.device):
    """flex_attention (compiled) with the block mask of CLEAR's mask_mod, extra tokens after the map's keys."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n = hh * ww
    r2 = radius * radius

    def mask_mod(b, h, q_idx, kv_idx):
        dy = q_idx // ww - kv_idx // ww
        dx = q_idx % ww - kv_idx % ww
        return (kv_idx >= n) | (dy * dy + dx * dx < r2)

    block_mask = create_block_mask(mask_mod, None, None, n, n + m, device=device)
    flex = torch.compile(flex_attention, dynamic=False)

    def run(q, k, v, ek, ev, scale):
        ks, vs = _with_extra(_to_seq(k), _to_seq(v), ek, ev)
        out = flex(_to_seq(q), ks, vs, block_mask=block_mask, scale=scale)
        return out.transpose(1, 2).reshape(q.shape)

    return run


def _clear_triton_fn(radius: int):
    from vizattn.kernels.clear import clear_attention

    def run(q, k, v, ek, ev, scale):
        return clear_attention(q, k, v, radius, ek, ev, scale, backend="triton")

    return run


def _check_clear(fn, sdpa, q, k, v, ek, ev, scale, grad) -> dict:
    """The Triton kernel against float32 SDPA with the boolean mask, forward and every gradient."""
    inputs = [t for t in (q, k, v, ek, ev) if t is not None]
    leaves = [t.detach().float().requires_grad_() for t in inputs]
    ref = sdpa(*leaves, *([None, None] if ek is None else []), scale)
    ref_grads = torch.autograd.grad(ref, leaves, grad.float())
    out = fn(q, k, v, ek, ev, scale)
    grads = torch.autograd.grad(out, inputs, grad)
    err = ((out.float() - ref).norm() / ref.norm()).item()
    gerr = max(((g.float() - r).norm() / r.norm()).item() for g, r in zip(grads, ref_grads))
    finite = all(torch.isfinite(t).all().item() for t in (out, *grads))
    return dict(check_out_rel_err=err, check_grad_rel_err=gerr, check_finite=finite)


def _bench_clear_shape(name, b, hh, ww, radius, down, check: bool, impls: list[str]) -> list[dict]:
    dev = torch.device("cuda")
    heads, d = CLEAR_HEADS, CLEAR_HEAD_DIM
    m = (hh // down) * (ww // down) if down else 0
    torch.manual_seed(0)
    qkv = torch.randn(b, hh, ww, 3, heads, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    q, k, v = qkv.unbind(3)  # views of one projection output, as in the model
    ek, ev = (torch.randn(b, m, heads, d, device=dev, dtype=torch.bfloat16, requires_grad=True) if m else None
              for _ in range(2))
    leaves = (q, k, v) + ((ek, ev) if m else ())
    scale = d**-0.5
    grad = torch.randn(b, hh, ww, heads, d, device=dev, dtype=torch.bfloat16)
    el = b * hh * ww * heads * d
    ex = b * m * heads * d
    fwd_bytes = (4 * el + 2 * ex) * 2  # read q, k, v and the extra K/V, write out (bf16)
    fwdbwd_bytes = fwd_bytes + (8 * el + 4 * ex) * 2  # then read q, k, v, out, dout, extras; write their gradients
    base = dict(shape=name, batch=b, map=f"{hh}x{ww}", radius=radius, extra_tokens=m, heads=heads, head_dim=d,
                floor_fwd_ms=fwd_bytes / HBM_BYTES_PER_S * 1e3, floor_fwdbwd_ms=fwdbwd_bytes / HBM_BYTES_PER_S * 1e3)

    candidates = {"vizattn": lambda: _clear_triton_fn(radius), "sdpa": lambda: make_clear_sdpa(hh, ww, radius, m, dev),
                  "flex": lambda: make_clear_flex(hh, ww, radius, m, dev)}
    if check:
        try:
            base.update(_check_clear(_clear_triton_fn(radius), make_clear_sdpa(hh, ww, radius, m, dev), q, k, v, ek,
                                     ev, scale, grad))
            print(f"[{name}] vizattn vs float32 SDPA with the mask: out rel err {base['check_out_rel_err']:.2e}, grads "
                  f"max rel err {base['check_grad_rel_err']:.2e}, finite={base['check_finite']}")
        except Exception as e:  # noqa: BLE001 - the check must not lose the timings
            print(f"[{name}] check failed: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
        torch.cuda.empty_cache()

    rows = []
    for impl, make in candidates.items():
        if impl not in impls:
            continue
        row = dict(base, impl=impl)
        try:
            fn = make()

            def fwd(fn=fn):
                with torch.no_grad():
                    return fn(q, k, v, ek, ev, scale)

            def fwdbwd(fn=fn):
                return torch.autograd.grad(fn(q, k, v, ek, ev, scale), leaves, grad)

            row["fwd_ms"] = _bench(fwd)
            row["fwdbwd_ms"] = _bench(fwdbwd)
            row["fwd_kernel_ms"] = _kernel_ms(fwd)
            row["fwdbwd_kernel_ms"] = _kernel_ms(fwdbwd)
        except Exception as e:  # noqa: BLE001 - report and go on: an anchor may not support a shape
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            print(f"[{name}] {impl} failed: {row['error']}", file=sys.stderr)
        rows.append(row)
        torch.cuda.empty_cache()
    return rows


def bench_clear(shapes, check: bool, impls: list[str]) -> list[dict]:
    rows = []
    for shape in shapes:
        rows += _bench_clear_shape(*shape, check=check, impls=impls)
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Whole models


def _build_model(spec: str):
    import timm

    import vizattn  # noqa: F401  (registers the vizattn models with timm)

    name, _, backend = spec.partition("@")
    kwargs = dict(kernel_backend=backend) if backend else {}
    return timm.create_model(name, **kwargs)


def bench_model(spec: str, batch: int, size: int, iters: int, compile_model: bool) -> dict:
    dev = torch.device("cuda")
    model = _build_model(spec).to(dev)
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)
    runner = torch.compile(model) if compile_model else model
    row = dict(model=spec, params_m=params / 1e6, batch=batch, img_size=size, compiled=compile_model)

    def timed(step, n):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            step()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3

    model.eval()

    def infer():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            runner(x)

    torch.cuda.reset_peak_memory_stats()
    timed(infer, 3)
    secs = timed(infer, iters)
    row["infer_img_s"] = batch * iters / secs
    row["infer_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(runner(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    timed(train, 3)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    secs = timed(train, iters)
    row["train_img_s"] = batch * iters / secs
    row["train_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def bench_hires(spec: str, size: int, n_win: int) -> dict:
    """Forward + backward of one large image (dense-prediction regime: auto_pad, n_win regions per side)."""
    import timm

    import vizattn  # noqa: F401

    name, _, backend = spec.partition("@")
    kwargs = dict(kernel_backend=backend) if backend else {}
    dev = torch.device("cuda")
    model = timm.create_model(name, n_win=n_win, **kwargs).to(dev).train()
    x = torch.randn(1, 3, size, size, device=dev)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model.forward_features(x)
        out.float().mean().backward()
        model.zero_grad(set_to_none=True)

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    row = dict(model=spec, img_size=size, n_win=n_win, batch=1, fwdbwd_s=time.perf_counter() - t0,
               peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    return row


# ---------------------------------------------------------------------------------------------------------------------


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def print_kernel_table(rows: list[dict]) -> None:
    print("\nrouted attention (bf16, median ms of do_bench; floor = HBM bytes / 4.3 TB/s; kern = summed GPU time of "
          "the launched kernels from the profiler, no launch gaps)")
    head = f"{'shape':7} {'impl':14} {'fwd':>8} {'floor':>7} {'x':>6} {'fwd+bwd':>8} {'floor':>7} {'x':>6} " \
           f"{'fb/f':>5} {'kern f':>7} {'kern fb':>7}"
    print(head)
    for r in rows:
        f, fb = r.get("fwd_ms"), r.get("fwdbwd_ms")
        print(
            f"{r['shape']:7} {r['impl']:14} {_fmt(f):>8} {_fmt(r['floor_fwd_ms']):>7} "
            f"{_fmt(f and f / r['floor_fwd_ms'], '.1f'):>6} {_fmt(fb):>8} {_fmt(r['floor_fwdbwd_ms']):>7} "
            f"{_fmt(fb and fb / r['floor_fwdbwd_ms'], '.1f'):>6} {_fmt(fb and f and fb / f, '.2f'):>5} "
            f"{_fmt(r.get('fwd_kernel_ms')):>7} {_fmt(r.get('fwdbwd_kernel_ms')):>7}"
            + (f"  {r['error']}" if "error" in r else "")
        )


def print_clear_table(rows: list[dict]) -> None:
    print(f"\nCLEAR attention ({CLEAR_HEADS} heads of {CLEAR_HEAD_DIM}, bf16, median ms of do_bench; floor = HBM "
          "bytes / 4.3 TB/s; kern = summed GPU time of the launched kernels)")
    print(f"{'shape':12} {'B':>2} {'impl':8} {'fwd':>8} {'floor':>7} {'x':>6} {'fwd+bwd':>8} {'floor':>7} {'x':>6} "
          f"{'fb/f':>5} {'kern f':>7} {'kern fb':>7}")
    for r in rows:
        f, fb = r.get("fwd_ms"), r.get("fwdbwd_ms")
        print(
            f"{r['shape']:12} {r['batch']:2d} {r['impl']:8} {_fmt(f):>8} {_fmt(r['floor_fwd_ms']):>7} "
            f"{_fmt(f and f / r['floor_fwd_ms'], '.1f'):>6} {_fmt(fb):>8} {_fmt(r['floor_fwdbwd_ms']):>7} "
            f"{_fmt(fb and fb / r['floor_fwdbwd_ms'], '.1f'):>6} {_fmt(fb and f and fb / f, '.2f'):>5} "
            f"{_fmt(r.get('fwd_kernel_ms')):>7} {_fmt(r.get('fwdbwd_kernel_ms')):>7}"
            + (f"  {r['error']}" if "error" in r else "")
        )


def print_model_table(rows: list[dict], hires: list[dict]) -> None:
    if rows:
        print("\nmodels (bf16 autocast; train = forward + backward + SGD step)")
        print(f"{'model':34} {'params':>7} {'batch':>5} {'infer img/s':>11} {'train img/s':>11} {'train GiB':>9} "
              f"{'infer GiB':>9}")
        for r in rows:
            if "error" in r:
                print(f"{r['model']:34} error: {r['error']}")
                continue
            print(f"{r['model']:34} {r['params_m']:6.1f}M {r['batch']:5d} {r['infer_img_s']:11.0f} "
                  f"{r['train_img_s']:11.0f} {r['train_peak_gib']:9.2f} {r['infer_peak_gib']:9.2f}")
    for r in hires:
        if "error" in r:
            print(f"hires {r['model']}: error: {r['error']}")
        else:
            print(f"hires {r['model']} {r['img_size']}x{r['img_size']} n_win {r['n_win']}: forward+backward "
                  f"{r['fwdbwd_s']:.3f} s, peak {r['peak_gib']:.2f} GiB")


def environment() -> dict:
    import timm
    import triton

    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        gpu=torch.cuda.get_device_name(0),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        triton=triton.__version__,
        timm=timm.__version__,
        python=platform.python_version(),
        command=" ".join(sys.argv),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kernels", action=argparse.BooleanOptionalAction, default=True, help="time the kernels")
    p.add_argument("--impls", default="vizattn,reference,gather+matmul,gather+sdpa,flex",
                   help="kernel implementations to time (comma-separated)")
    p.add_argument("--shapes", default=",".join(s[0] for s in ROUTED_SHAPES), help="routed-attention shapes")
    p.add_argument("--clear-shapes", default=",".join(s[0] for s in CLEAR_SHAPES),
                   help="CLEAR attention shapes (comma-separated; empty skips)")
    p.add_argument("--clear-impls", default="vizattn,sdpa,flex", help="CLEAR implementations to time (comma-separated)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="compare the Triton kernel with the reference before timing")
    p.add_argument("--models", default="", help="comma-separated timm names (after import vizattn); empty skips")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--iters", type=int, default=20, help="timed steps per model measurement")
    p.add_argument("--compile", action="store_true", help="torch.compile the models")
    p.add_argument("--hires", action="store_true", help="BiFormer-S forward+backward on one 1024x1024 image")
    p.add_argument("--hires-model", default="biformer_s")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args(argv)

    if not torch.cuda.is_available():
        print("tools/benchmark.py needs a CUDA GPU.", file=sys.stderr)
        return 2
    env = environment()
    print(" ".join(f"{k}={v}" for k, v in env.items() if k != "command"))
    result: dict = dict(environment=env, kernels=[], clear=[], models=[], hires=[])

    if args.kernels:
        names = args.shapes.split(",")
        shapes = [s for s in ROUTED_SHAPES if s[0] in names]
        result["kernels"] = bench_routed(shapes, args.check, args.impls.split(","))
        names = args.clear_shapes.split(",")
        shapes = [s for s in CLEAR_SHAPES if s[0] in names]
        result["clear"] = bench_clear(shapes, args.check, args.clear_impls.split(","))
    for spec in filter(None, args.models.split(",")):
        try:
            row = bench_model(spec, args.batch, args.img_size, args.iters, args.compile)
        except Exception as e:  # noqa: BLE001 - one failing model must not lose the others' numbers
            row = dict(model=spec, error=f"{type(e).__name__}: {str(e)[:300]}")
        torch.cuda.empty_cache()
        print(row, flush=True)
        result["models"].append(row)
    if args.hires:
        try:
            result["hires"].append(bench_hires(args.hires_model, 1024, 16))
        except Exception as e:  # noqa: BLE001
            result["hires"].append(dict(model=args.hires_model, error=f"{type(e).__name__}: {str(e)[:300]}"))

    if result["kernels"]:
        print_kernel_table(result["kernels"])
    if result["clear"]:
        print_clear_table(result["clear"])
    print_model_table(result["models"], result["hires"])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else o)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
