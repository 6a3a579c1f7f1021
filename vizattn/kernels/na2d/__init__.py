"""2-D neighborhood attention (NAT, DiNAT): every query attends to the k x k keys around it.

Public functions: :func:`na2d`, on heads-last maps ``(B, H, W, heads, head_dim)`` (the layout of a packed ``qkv``
Linear output reshaped to ``(B, H, W, 3, heads, head_dim)``, so no permutes are needed), and :func:`na2d_qkv`, the
same on that packed tensor itself: its gradient is written by the kernels into one packed tensor, where ``q, k, v =
qkv.unbind(3)`` would have autograd copy three gradients into one (a full read and write of the activations, 5% of a
nat_tiny training step). The exact semantics (clamped windows, dilation groups, relative position bias by true
offset) are defined in :mod:`vizattn.kernels.na2d.reference`.

Backends: ``'torch'`` runs :func:`vizattn.kernels.na2d.tiles.na2d_tiled` (the same function as the reference,
computed as dense attention of query tiles over key halos: several times faster on the CPU and without the
reference's ``k * k`` copies of K and V); ``'triton'`` the fused kernels of :mod:`vizattn.kernels.na2d.triton`, as
the op ``torch.ops.vizattn.na2d`` (a ``torch.library`` custom op with a fake implementation and an autograd formula
whose backward is the op ``vizattn::na2d_backward``), so ``torch.compile`` sees one node; eager calls skip the custom
op's dispatch (:class:`vizattn.kernels._eager.KernelOp`). The kernel module is
imported on first use: Triton decides at import time whether it runs compiled or under ``TRITON_INTERPRET=1``.

Maps smaller than ``kernel_size * dilation`` on either side are an error here, as in NATTEN >= 0.17; the official
models were trained with NATTEN <= 0.15, whose module zero-padded its input before the projection. That rule belongs
to the block (:class:`vizattn.blocks.NeighborhoodAttention2d`, ``auto_pad=True``), not to the op.
"""

from __future__ import annotations

import torch

from vizattn.kernels._alloc import new_output
from vizattn.kernels._dispatch import select_backend
from vizattn.kernels._eager import KernelOp
from vizattn.kernels.na2d.reference import neighborhood_indices
from vizattn.kernels.na2d.tiles import na2d_tiled

__all__ = ["na2d", "na2d_qkv", "neighborhood_indices", "triton_unsupported_reasons"]


_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 128


def _kernels():
    from vizattn.kernels.na2d import triton as kernels

    return kernels


def _na2d_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rpb: torch.Tensor | None,
    kernel_size: int,
    dilation: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels().na2d_fwd(q, k, v, rpb, kernel_size, dilation, scale)


_na2d_op = torch.library.custom_op("vizattn::na2d", _na2d_fwd, mutates_args=())


@_na2d_op.register_fake
def _(q, k, v, rpb, kernel_size, dilation, scale):
    return v.new_empty((*q.shape[:4], v.shape[-1])), q.new_empty(q.shape[:4], dtype=torch.float32)


def _na2d_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rpb: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    kernel_size: int,
    dilation: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv, drpb = _kernels().na2d_bwd(grad_out, q, k, v, rpb, out, lse, kernel_size, dilation, scale)
    return dq, dk, dv, (drpb if drpb is not None else q.new_zeros(0))


_na2d_backward_op = torch.library.custom_op("vizattn::na2d_backward", _na2d_bwd, mutates_args=())


@_na2d_backward_op.register_fake
def _(grad_out, q, k, v, rpb, out, lse, kernel_size, dilation, scale):
    drpb = rpb.new_empty(rpb.shape) if rpb is not None else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), drpb


def _setup_context(ctx, inputs, output):
    q, k, v, rpb, kernel_size, dilation, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, rpb, out, lse)
    ctx.args = (kernel_size, dilation, scale)


def _backward(ctx, run_backward, grad_out, grad_lse):
    q, k, v, rpb, out, lse = ctx.saved_tensors
    dq, dk, dv, drpb = run_backward(grad_out, q, k, v, rpb, out, lse, *ctx.args)
    return dq, dk, dv, (drpb if rpb is not None else None), None, None, None


_NA2D = KernelOp(_na2d_op, _na2d_fwd, _na2d_backward_op, _na2d_bwd, _setup_context, _backward)


def _na2d_qkv_fwd(
    qkv: torch.Tensor, rpb: torch.Tensor | None, kernel_size: int, dilation: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels().na2d_fwd(*qkv.unbind(3), rpb, kernel_size, dilation, scale)


_na2d_qkv_op = torch.library.custom_op("vizattn::na2d_qkv", _na2d_qkv_fwd, mutates_args=())


@_na2d_qkv_op.register_fake
def _(qkv, rpb, kernel_size, dilation, scale):
    shape = (*qkv.shape[:3], *qkv.shape[4:])
    return qkv.new_empty(shape), qkv.new_empty(shape[:4], dtype=torch.float32)


def _na2d_qkv_bwd(
    grad_out: torch.Tensor,
    qkv: torch.Tensor,
    rpb: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    kernel_size: int,
    dilation: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    dqkv = new_output(tuple(qkv.shape), qkv.dtype, qkv.device)
    *_, drpb = _kernels().na2d_bwd(grad_out, *qkv.unbind(3), rpb, out, lse, kernel_size, dilation, scale,
                                   grads=dqkv.unbind(3))
    return dqkv, (drpb if drpb is not None else qkv.new_zeros(0))


_na2d_qkv_backward_op = torch.library.custom_op("vizattn::na2d_qkv_backward", _na2d_qkv_bwd, mutates_args=())


@_na2d_qkv_backward_op.register_fake
def _(grad_out, qkv, rpb, out, lse, kernel_size, dilation, scale):
    return qkv.new_empty(qkv.shape), (rpb.new_empty(rpb.shape) if rpb is not None else qkv.new_empty(0))


def _qkv_setup_context(ctx, inputs, output):
    qkv, rpb, kernel_size, dilation, scale = inputs
    out, lse = output
    ctx.save_for_backward(qkv, rpb, out, lse)
    ctx.args = (kernel_size, dilation, scale)


def _qkv_backward(ctx, run_backward, grad_out, grad_lse):
    qkv, rpb, out, lse = ctx.saved_tensors
    dqkv, drpb = run_backward(grad_out, qkv, rpb, out, lse, *ctx.args)
    return dqkv, (drpb if rpb is not None else None), None, None, None


_NA2D_QKV = KernelOp(_na2d_qkv_op, _na2d_qkv_fwd, _na2d_qkv_backward_op, _na2d_qkv_bwd, _qkv_setup_context,
                     _qkv_backward)


def triton_unsupported_reasons(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> list[str]:
    """Why the Triton kernel cannot run these (already validated) inputs; empty when it can."""
    reasons = []
    if q.dtype not in _TRITON_DTYPES or not q.dtype == k.dtype == v.dtype:
        reasons.append(
            f"the kernel takes q, k, v of one dtype among float16, bfloat16, float32, got {q.dtype}, {k.dtype}, "
            f"{v.dtype}"
        )
    if max(q.shape[-1], v.shape[-1]) > _MAX_HEAD_DIM:
        reasons.append(f"head_dim is at most {_MAX_HEAD_DIM}, got q/k {q.shape[-1]} and v {v.shape[-1]}")
    return reasons


def _check_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int,
    rpb: torch.Tensor | None,
    scale: float | None,
) -> None:
    op = "na2d"
    if q.dim() != 5:
        raise ValueError(f"{op}: q must be a heads-last map (B, H, W, heads, head_dim), got shape {tuple(q.shape)}.")
    if k.shape != q.shape:
        raise ValueError(f"{op}: k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}.")
    if v.dim() != 5 or v.shape[:4] != q.shape[:4]:
        raise ValueError(
            f"{op}: v must be (B, H, W, heads, head_dim_v) with (B, H, W, heads) = {tuple(q.shape[:4])}, "
            f"got {tuple(v.shape)}."
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not t.is_floating_point():
            raise ValueError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}.")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device} but q is on {q.device}; put them on one device.")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 2:
        raise ValueError(f"{op}: kernel_size must be an int >= 2 (odd in every NAT/DiNAT model), got {kernel_size!r}.")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"{op}: dilation must be a positive int, got {dilation!r}.")
    _, hh, ww, heads, _ = q.shape
    window = kernel_size * dilation
    if hh < window or ww < window:
        raise ValueError(
            f"{op}: the map is {hh}x{ww} but kernel_size * dilation = {kernel_size} * {dilation} = {window} needs "
            f"both sides >= {window}; pad the input (NeighborhoodAttention2d does so with auto_pad=True) or use a "
            "smaller kernel or dilation."
        )
    if rpb is not None:
        side = 2 * kernel_size - 1
        if rpb.shape != (heads, side, side):
            raise ValueError(
                f"{op}: rpb must have shape (heads, 2k - 1, 2k - 1) = ({heads}, {side}, {side}), got "
                f"{tuple(rpb.shape)}."
            )
        if rpb.device != q.device or not rpb.is_floating_point():
            raise ValueError(
                f"{op}: rpb must be a floating-point tensor on {q.device}, got {rpb.dtype} on {rpb.device}."
            )
    if scale is not None and not isinstance(scale, (int, float)):
        raise ValueError(f"{op}: scale must be a float or None, got {scale!r}.")


def na2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """2-D neighborhood attention with the semantics of the official NAT / DiNAT checkpoints.

    Query ``(i, j)`` attends to the ``k x k`` keys of its dilation group nearest to it, its window shifted inward at
    the borders (never truncated); the logit of each key is ``(scale * q) . k + rpb[head, b_h, b_w]`` with ``b`` the
    true relative offset in dilated units plus ``k - 1``; softmax over the ``k * k`` keys, float32 accumulation.

    Args:
        q, k: (B, H, W, heads, head_dim). Views (e.g. slices of a packed qkv projection) are fine.
        v: (B, H, W, heads, head_dim_v).
        kernel_size: window side k, >= 2 (odd for NAT/DiNAT; even k puts k/2 keys before the query and k/2 - 1
            after it, as NATTEN does).
        dilation: d >= 1, on both axes. Requires ``H >= k * d`` and ``W >= k * d``.
        rpb: optional (heads, 2k - 1, 2k - 1) relative position bias (independent of the dilation).
        scale: multiplies q before the dot product; default ``head_dim ** -0.5``.
        backend: ``'auto'``, ``'triton'`` or ``'torch'`` (see :mod:`vizattn.kernels._dispatch`).

    Returns:
        (B, H, W, heads, head_dim_v) in v's dtype.

    Raises:
        ValueError: for a bad shape, kernel size, dilation, bias table or backend, naming the value.
    """
    return _run(q, k, v, kernel_size, dilation, rpb, scale, backend)


def _run(q, k, v, kernel_size, dilation, rpb, scale, backend, qkv: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`na2d` after its arguments' checks; with ``qkv`` (q, k, v its slices) the Triton path runs the packed
    op."""
    _check_args(q, k, v, kernel_size, dilation, rpb, scale)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    tensors = (q, k, v) if rpb is None else (q, k, v, rpb)
    if select_backend("na2d", backend, tensors, unsupported=triton_unsupported_reasons(q, k, v)) == "triton":
        if qkv is not None:
            return _NA2D_QKV(qkv, rpb, kernel_size, dilation, scale)[0]
        return _NA2D(q, k, v, rpb, kernel_size, dilation, scale)[0]
    return na2d_tiled(q, k, v, kernel_size, dilation, rpb, scale)


def na2d_qkv(
    qkv: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`na2d` of ``qkv.unbind(3)`` on a packed ``(B, H, W, 3, heads, head_dim)`` tensor (a qkv Linear's
    output reshaped, component ``s`` of channel ``s * C + h * head_dim + c``): the same result, and on the Triton
    path a gradient the kernels write straight into one packed tensor (no copy of three gradients into one).

    Returns:
        (B, H, W, heads, head_dim) in qkv's dtype.

    Raises:
        ValueError: for a qkv that is not of that shape, and as :func:`na2d` for the rest.
    """
    if qkv.dim() != 6 or qkv.shape[3] != 3:
        raise ValueError(
            f"na2d_qkv: qkv must be a packed (B, H, W, 3, heads, head_dim) tensor, got shape {tuple(qkv.shape)}."
        )
    return _run(*qkv.unbind(3), kernel_size, dilation, rpb, scale, backend, qkv=qkv)
