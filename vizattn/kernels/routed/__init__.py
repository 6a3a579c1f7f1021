"""Bi-level routing attention (BiFormer): region routing and routed token attention.

Public functions:

- :func:`region_routing`: which ``topk`` key regions each query region attends to (no gradient, as in the
  official code).
- :func:`routed_attention`: the token attention over the routed regions, differentiable in q, k and v.
- :func:`bi_level_routing_attention`: both, the way a BiFormer block calls them.

All take NHWC maps whose sides are multiples of ``n_win``; padding to such a size is the caller's job (the block's
``auto_pad``), because the official model pads before its projection, not here.

The Triton path of :func:`routed_attention` is the ``torch.library`` custom op ``vizattn::routed_attention_fwd``
(fake implementation, autograd formula whose backward is the op ``vizattn::routed_attention_bwd``) when
``torch.compile`` traces it, so a compiled BiFormer has no graph break there; eager calls skip the op dispatch and
launch the kernels directly (:class:`vizattn.kernels._eager.KernelOp`). The kernels live in
:mod:`vizattn.kernels.routed.triton`, imported on first use: Triton decides when a kernel module is imported whether
it compiles or runs under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch

from vizattn.kernels._dispatch import select_backend
from vizattn.kernels._eager import KernelOp
from vizattn.kernels.routed.reference import region_routing_reference, routed_attention_reference

__all__ = ["region_routing", "routed_attention", "bi_level_routing_attention", "triton_unsupported_reasons"]

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256
_MAX_INDEX = 1 << 21  # the kernels' float32 index division is exact below this (triton.MAX_INDEX)


def _kernels():
    from vizattn.kernels.routed import triton as kernels

    return kernels


def _routed_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    r_idx: torch.Tensor,
    n_win: int,
    num_heads: int,
    scale: float,
    distinct: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels().routed_attention_fwd(q, k, v, r_idx, n_win, num_heads, scale, distinct)


_routed_attention_fwd_op = torch.library.custom_op("vizattn::routed_attention_fwd", _routed_fwd, mutates_args=())


@_routed_attention_fwd_op.register_fake
def _(q, k, v, r_idx, n_win, num_heads, scale, distinct):
    n, hh, ww, _ = q.shape
    return v.new_empty((n, hh, ww, v.shape[-1])), q.new_empty((n, num_heads, hh * ww), dtype=torch.float32)


def _routed_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    r_idx: torch.Tensor,
    n_win: int,
    num_heads: int,
    scale: float,
    distinct: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _kernels().routed_attention_bwd(grad_out, q, k, v, out, lse, r_idx, n_win, num_heads, scale, distinct)


_routed_attention_bwd_op = torch.library.custom_op("vizattn::routed_attention_bwd", _routed_bwd, mutates_args=())


@_routed_attention_bwd_op.register_fake
def _(grad_out, q, k, v, out, lse, r_idx, n_win, num_heads, scale, distinct):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, r_idx, n_win, num_heads, scale, distinct = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, r_idx, out, lse)
    ctx.args = (n_win, num_heads, scale, distinct)


def _backward(ctx, run_backward, grad_out, grad_lse):
    # no gradient to r_idx: the routing is not differentiable
    q, k, v, r_idx, out, lse = ctx.saved_tensors
    dq, dk, dv = run_backward(grad_out, q, k, v, out, lse, r_idx, *ctx.args)
    return dq, dk, dv, None, None, None, None, None


_ROUTED = KernelOp(
    _routed_attention_fwd_op, _routed_fwd, _routed_attention_bwd_op, _routed_bwd, _setup_context, _backward
)


def triton_unsupported_reasons(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_win: int, num_heads: int, topk: int
) -> list[str]:
    """Why the Triton kernel cannot run these (already validated) inputs; empty when it can."""
    reasons = []
    if q.dtype not in _TRITON_DTYPES or not q.dtype == k.dtype == v.dtype:
        reasons.append(
            f"the kernel takes q, k, v of one dtype among float16, bfloat16, float32, got {q.dtype}, {k.dtype}, "
            f"{v.dtype}"
        )
    d_qk, d_v = q.shape[-1] // num_heads, v.shape[-1] // num_heads
    if max(d_qk, d_v) > _MAX_HEAD_DIM:
        reasons.append(f"per-head widths are at most {_MAX_HEAD_DIM}, got q/k {d_qk} and v {d_v}")
    n_tok = (q.shape[1] // n_win) * (q.shape[2] // n_win)
    if max(q.shape[1] * q.shape[2], topk * n_tok) >= _MAX_INDEX:
        reasons.append(f"maps of fewer than {_MAX_INDEX} tokens and topk * region tokens below that")
    return reasons


def _check_maps(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, n_win: int) -> None:
    if not isinstance(n_win, int) or n_win < 1:
        raise ValueError(f"{op}: n_win must be a positive int, got {n_win!r}.")
    if q.dim() != 4:
        raise ValueError(f"{op}: q must be an NHWC map (N, H, W, C), got shape {tuple(q.shape)}.")
    if k.shape != q.shape:
        raise ValueError(f"{op}: k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}.")
    if v is not None and (v.dim() != 4 or v.shape[:3] != q.shape[:3]):
        raise ValueError(
            f"{op}: v must be (N, H, W, C_v) with (N, H, W) = {tuple(q.shape[:3])}, got {tuple(v.shape)}."
        )
    _, hh, ww, _ = q.shape
    if hh % n_win or ww % n_win:
        raise ValueError(
            f"{op}: the map size {hh}x{ww} is not a multiple of n_win={n_win}; pad it first "
            "(the BiFormer blocks do so with auto_pad=True)."
        )


def _check_topk(op: str, topk: int, n_win: int) -> None:
    if not isinstance(topk, int) or not 1 <= topk <= n_win * n_win:
        raise ValueError(f"{op}: topk must be an int in [1, n_win^2 = {n_win * n_win}], got {topk!r}.")


def region_routing(q: torch.Tensor, k: torch.Tensor, n_win: int, topk: int, scale: float | None = None) -> torch.Tensor:
    """Route each region to the ``topk`` key regions of highest mean-query / mean-key affinity.

    Args:
        q, k: (N, H, W, C_qk) projected queries and keys (detached here; routing carries no gradient).
        n_win: regions per side; H and W must be multiples of it.
        topk: routed regions per query region, 1 to n_win^2.
        scale: affinity temperature; default C_qk ** -0.5 (the full q/k width, as the official code).

    Returns:
        (N, n_win^2, topk) int64 region indices (row-major), shared by all heads.
    """
    _check_maps("region_routing", q, k, None, n_win)
    _check_topk("region_routing", topk, n_win)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return region_routing_reference(q, k, n_win, topk, scale)


def routed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    r_idx: torch.Tensor,
    n_win: int,
    num_heads: int,
    scale: float | None = None,
    *,
    backend: str = "auto",
    distinct_routing: bool = False,
) -> torch.Tensor:
    """Softmax attention of each region's tokens over the tokens of its routed regions.

    For query region ``r`` and head ``m``, the keys are the tokens of regions ``r_idx[n, r, 0..topk-1]`` (in that
    order, row-major inside a region); ``out = softmax(scale * q k^T) v`` with no mask and float32 accumulation.

    Args:
        q, k: (N, H, W, C_qk); v: (N, H, W, C_v); H, W multiples of ``n_win``. Heads are contiguous channel chunks.
        r_idx: (N, n_win^2, topk) integer region indices in [0, n_win^2), e.g. from :func:`region_routing`. Not
            differentiated. A region listed twice counts twice, as in the reference. Values are not range-checked
            on the GPU (that would synchronise); out-of-range indices are undefined behaviour there.
        n_win: regions per side.
        num_heads: C_qk and C_v must be multiples of it.
        scale: default C_qk ** -0.5 (the full q/k width, as the official BiFormer; not the per-head width).
        backend: ``'auto'``, ``'triton'`` or ``'torch'`` (see :mod:`vizattn.kernels._dispatch`). The Triton kernel
            takes float16, bfloat16 and float32 (one dtype for q, k, v) and per-head widths up to 256.
        distinct_routing: promise that no row of ``r_idx`` repeats a region (true of :func:`region_routing`'s
            top-k); lets the Triton kernel for small regions use routing bit masks instead of counting repeats.
            A wrong promise gives wrong results for the repeated regions.

    Returns:
        (N, H, W, C_v) in v's dtype (contiguous on the Triton path).
    """
    op = "routed_attention"
    _check_maps(op, q, k, v, n_win)
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"{op}: num_heads must be a positive int, got {num_heads!r}.")
    if q.shape[-1] % num_heads or v.shape[-1] % num_heads:
        raise ValueError(
            f"{op}: C_qk={q.shape[-1]} and C_v={v.shape[-1]} must both be multiples of num_heads={num_heads}."
        )
    n, p2 = q.shape[0], n_win * n_win
    if r_idx.dim() != 3 or r_idx.shape[:2] != (n, p2) or r_idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"{op}: r_idx must be an integer tensor of shape (N, n_win^2, topk) = ({n}, {p2}, topk), "
            f"got {r_idx.dtype} {tuple(r_idx.shape)}."
        )
    _check_topk(op, r_idx.shape[2], n_win)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if r_idx.device != q.device:
        raise ValueError(f"{op}: r_idx is on {r_idx.device} but q is on {q.device}; put them on one device.")
    reasons = triton_unsupported_reasons(q, k, v, n_win, num_heads, r_idx.shape[2])
    if select_backend(op, backend, (q, k, v), unsupported=reasons) == "triton":
        return _ROUTED(q, k, v, r_idx, n_win, num_heads, float(scale), distinct_routing)[0]
    return routed_attention_reference(q, k, v, r_idx, n_win, num_heads, scale)


def bi_level_routing_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_win: int,
    topk: int,
    num_heads: int,
    scale: float | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Region routing then routed attention; shapes as in :func:`routed_attention`. Returns (N, H, W, C_v)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    r_idx = region_routing(q, k, n_win, topk, scale)
    return routed_attention(q, k, v, r_idx, n_win, num_heads, scale, backend=backend, distinct_routing=True)
