"""CLEAR's circular local attention: every image query attends to the keys within Euclidean distance < r of it
(truncated at the borders), plus optional extra tokens that every query sees.

Public function: :func:`clear_attention`, on heads-last maps ``(B, H, W, heads, head_dim)`` (the layout of a packed
``qkv`` Linear output reshaped to ``(B, H, W, 3, heads, head_dim)``, so no permutes are needed), with the extra
tokens as ``(B, M, heads, head_dim)``. The exact semantics are defined in :mod:`vizattn.kernels.clear.reference`
(with :func:`~vizattn.kernels.clear.reference.circle_mask`, the boolean ``(N, N)`` mask, for tests, benchmarks and
FlexAttention masks).

Backends: ``'torch'`` runs :func:`vizattn.kernels.clear.tiles.clear_tiled` (the reference's function computed as
dense attention of 8x8 query tiles over their key halos, far lighter than the reference's ``N x N`` logits; the
reference itself when the halos would cover most of the map anyway);
``'triton'`` the fused kernels of :mod:`vizattn.kernels.clear.triton` (the tiled halo kernels neighborhood attention
uses, in their circle mode), as the op ``torch.ops.vizattn.clear_attention`` (a ``torch.library`` custom op with a
fake implementation and an autograd formula whose backward is the op ``vizattn::clear_attention_backward``), so
``torch.compile`` sees one node; eager calls skip the custom op's dispatch (:class:`vizattn.kernels._eager.KernelOp`).
The kernel module is imported on first use: Triton decides at import time whether it
runs compiled or under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch

from vizattn.kernels._dispatch import select_backend
from vizattn.kernels._eager import KernelOp
from vizattn.kernels.clear.reference import circle_mask, clear_attention_reference
from vizattn.kernels.clear.tiles import DEFAULT_TILE, clear_tiled

__all__ = [
    "TRITON_BY_DEFAULT",
    "circle_mask",
    "clear_attention",
    "clear_attention_reference",
    "triton_unsupported_reasons",
]

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 128

# Whether backend='auto' takes the Triton kernels on CUDA tensors (backend='torch' or VIZATTN_BACKEND=torch still
# runs the PyTorch path). True since their backward beats flex_attention's too: on the H200 (2026-11-29, kernel time
# in tools/benchmark.py, DiT-XL/2's 128x128 grid, r 8, batch 2, 16 heads of 72, bf16) forward 1.03 ms and
# forward+backward 4.26 ms, against flex_attention with the same mask 1.64 / 6.08 and SDPA with a dense mask 15.0 /
# 52.1; they pass the kernel tests on the GPU. The PyTorch path computes the same tiles densely in float32 from
# gathered copies of the key halos (about 1 GB of logits at that shape).
TRITON_BY_DEFAULT = True


def _kernels():
    from vizattn.kernels.clear import triton as kernels

    return kernels


def _clear_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    extra_k: torch.Tensor | None,
    extra_v: torch.Tensor | None,
    radius: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels().clear_fwd(q, k, v, extra_k, extra_v, radius, scale)


_clear_op = torch.library.custom_op("vizattn::clear_attention", _clear_fwd, mutates_args=())


@_clear_op.register_fake
def _(q, k, v, extra_k, extra_v, radius, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:4], dtype=torch.float32)


def _clear_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    extra_k: torch.Tensor | None,
    extra_v: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    radius: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv, dek, dev = _kernels().clear_bwd(grad_out, q, k, v, extra_k, extra_v, out, lse, radius, scale)
    # A custom op returns tensors, not None: empty ones stand for the absent extra tokens' gradients.
    return dq, dk, dv, (dek if dek is not None else q.new_zeros(0)), (dev if dev is not None else q.new_zeros(0))


_clear_backward_op = torch.library.custom_op("vizattn::clear_attention_backward", _clear_bwd, mutates_args=())


@_clear_backward_op.register_fake
def _(grad_out, q, k, v, extra_k, extra_v, out, lse, radius, scale):
    dek = extra_k.new_empty(extra_k.shape) if extra_k is not None else q.new_empty(0)
    dev = extra_v.new_empty(extra_v.shape) if extra_v is not None else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dek, dev


def _setup_context(ctx, inputs, output):
    q, k, v, extra_k, extra_v, radius, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, extra_k, extra_v, out, lse)
    ctx.args = (radius, scale)


def _backward(ctx, run_backward, grad_out, grad_lse):
    q, k, v, extra_k, extra_v, out, lse = ctx.saved_tensors
    dq, dk, dv, dek, dev = run_backward(grad_out, q, k, v, extra_k, extra_v, out, lse, *ctx.args)
    has_extra = extra_k is not None
    return dq, dk, dv, (dek if has_extra else None), (dev if has_extra else None), None, None


_CLEAR = KernelOp(_clear_op, _clear_fwd, _clear_backward_op, _clear_bwd, _setup_context, _backward)


def triton_unsupported_reasons(q: torch.Tensor) -> list[str]:
    """Why the Triton kernel cannot run these (already validated, so of one dtype) inputs; empty when it can."""
    reasons = []
    if q.dtype not in _TRITON_DTYPES:
        reasons.append(f"the kernel takes float16, bfloat16 or float32 tensors, got {q.dtype}")
    if q.shape[-1] > _MAX_HEAD_DIM:
        reasons.append(f"head_dim is at most {_MAX_HEAD_DIM}, got {q.shape[-1]}")
    if q.shape[0] == 0:
        reasons.append("the batch is empty")
    return reasons


def _check_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    radius: int,
    extra_k: torch.Tensor | None,
    extra_v: torch.Tensor | None,
    scale: float | None,
) -> None:
    op = "clear_attention"
    if q.dim() != 5 or min(q.shape[1:]) < 1:
        raise ValueError(
            f"{op}: q must be a heads-last map (B, H, W, heads, head_dim) with H, W, heads, head_dim >= 1, got shape "
            f"{tuple(q.shape)}."
        )
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{op}: {name} must have the shape of q {tuple(q.shape)}, got {tuple(t.shape)}.")
    if (extra_k is None) != (extra_v is None):
        given, missing = ("extra_k", "extra_v") if extra_v is None else ("extra_v", "extra_k")
        raise ValueError(f"{op}: {given} was given without {missing}; pass both extra_k and extra_v, or neither.")
    tensors = [("q", q), ("k", k), ("v", v)]
    if extra_k is not None:
        b, _, _, heads, head_dim = q.shape
        if extra_k.dim() != 4 or extra_k.shape[0] != b or extra_k.shape[2:] != (heads, head_dim):
            raise ValueError(
                f"{op}: extra_k must be (B, M, heads, head_dim) = ({b}, M, {heads}, {head_dim}), got "
                f"{tuple(extra_k.shape)}."
            )
        if extra_v.shape != extra_k.shape:
            raise ValueError(
                f"{op}: extra_v must have the shape of extra_k {tuple(extra_k.shape)}, got {tuple(extra_v.shape)}."
            )
        tensors += [("extra_k", extra_k), ("extra_v", extra_v)]
    for name, t in tensors:
        if not t.is_floating_point():
            raise ValueError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}.")
        if t.dtype != q.dtype:
            raise ValueError(f"{op}: {name} is {t.dtype} but q is {q.dtype}; pass every tensor in one dtype.")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device} but q is on {q.device}; put them on one device.")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ValueError(
            f"{op}: radius must be an int >= 1 (key (i', j') is seen iff (i - i')^2 + (j - j')^2 < radius^2), got "
            f"{radius!r}."
        )
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise ValueError(f"{op}: scale must be a float or None, got {scale!r}.")


def clear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    radius: int,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """CLEAR attention: a disc of radius r around each query on the token map, plus extra tokens, one softmax.

    Query ``(i, j)`` attends to key ``(i', j')`` iff ``(i - i')^2 + (j - j')^2 < r^2``, truncated at the borders
    (fewer keys there, no inward shift), and to every extra token; logits ``(scale * q) . k``, float32 accumulation.

    Args:
        q, k, v: (B, H, W, heads, head_dim). Views (e.g. slices of a packed qkv projection) are fine.
        radius: r >= 1; r = 1 is attention to the query's own key (and the extra tokens), r above the map's diagonal
            is full attention.
        extra_k, extra_v: (B, M, heads, head_dim) keys and values every query attends to (CLEAR's pooled tokens,
            prefix or text tokens), or both None. M = 0 is allowed.
        scale: multiplies q before the dot product; default ``head_dim ** -0.5``.
        backend: ``'auto'``, ``'triton'`` or ``'torch'`` (see :mod:`vizattn.kernels._dispatch`).

    Returns:
        (B, H, W, heads, head_dim) in q's dtype.

    Raises:
        ValueError: for a bad shape, dtype, device, radius, scale, half-given extra tokens or backend, naming the
            value.
    """
    _check_args(q, k, v, radius, extra_k, extra_v, scale)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    tensors = (q, k, v) if extra_k is None else (q, k, v, extra_k, extra_v)
    reasons = triton_unsupported_reasons(q)
    if select_backend("clear_attention", backend, tensors, reasons, auto_triton=TRITON_BY_DEFAULT) == "triton":
        return _CLEAR(q, k, v, extra_k, extra_v, radius, scale)[0]
    halo = [min(DEFAULT_TILE + 2 * radius - 2, side) for side in q.shape[1:3]]
    if 2 * halo[0] * halo[1] >= q.shape[1] * q.shape[2]:
        # The halos cover most of the map: tiling would only add gathers to the dense computation.
        return clear_attention_reference(q, k, v, radius, extra_k, extra_v, scale)
    return clear_tiled(q, k, v, radius, extra_k, extra_v, scale)
