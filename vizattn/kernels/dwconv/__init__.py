"""Depthwise 2-D convolution ('same', stride 1, odd kernel, dilation) on NCHW maps.

Public function: :func:`dwconv2d`. The definition is :func:`vizattn.kernels.dwconv.reference.dwconv2d_reference`
(``torch.nn.functional.conv2d`` with ``groups = C``). Backends: ``'torch'`` runs the reference; ``'triton'`` the
kernels of :mod:`vizattn.kernels.dwconv.triton` as the op ``torch.ops.vizattn.dwconv2d`` (a ``torch.library`` custom
op with a fake implementation and an autograd formula whose backward is the op ``vizattn::dwconv2d_backward``), so
``torch.compile`` sees one node. The kernel module is imported on first use: Triton decides at import time whether it
runs compiled or under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch

from vizattn.kernels._dispatch import select_backend
from vizattn.kernels.dwconv.reference import dwconv2d_reference

__all__ = ["dwconv2d", "dwconv2d_reference", "triton_unsupported_reasons"]

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _kernels():
    from vizattn.kernels.dwconv import triton as kernels

    return kernels


@torch.library.custom_op("vizattn::dwconv2d", mutates_args=())
def _dwconv2d_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int) -> torch.Tensor:
    return _kernels().dwconv2d_fwd(x, weight, bias, dilation)


@_dwconv2d_op.register_fake
def _(x, weight, bias, dilation):
    return x.new_empty(x.shape)


@torch.library.custom_op("vizattn::dwconv2d_backward", mutates_args=())
def _dwconv2d_backward_op(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, dilation: int, needs_bias: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dweight, dbias = _kernels().dwconv2d_bwd(grad_out, x, weight, dilation, needs_bias)
    return dx, dweight, (dbias if dbias is not None else weight.new_zeros(0))


@_dwconv2d_backward_op.register_fake
def _(grad_out, x, weight, dilation, needs_bias):
    dbias = weight.new_empty(weight.shape[0]) if needs_bias else weight.new_empty(0)
    return x.new_empty(x.shape), weight.new_empty(weight.shape), dbias


def _setup_context(ctx, inputs, output):
    x, weight, bias, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.dilation = dilation
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    dx, dweight, dbias = _dwconv2d_backward_op(grad_out, x, weight, ctx.dilation, ctx.has_bias)
    return dx, dweight, (dbias if ctx.has_bias else None), None


_dwconv2d_op.register_autograd(_backward, setup_context=_setup_context)


def triton_unsupported_reasons(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> list[str]:
    """Why the Triton kernels cannot run these (already validated) inputs; empty when they can."""
    dtypes = {x.dtype, weight.dtype} | ({bias.dtype} if bias is not None else set())
    if not dtypes <= set(_TRITON_DTYPES):
        return [f"the kernels take float16, bfloat16 or float32 tensors, got {sorted(str(d) for d in dtypes)}"]
    return []


def _check_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int) -> None:
    op = "dwconv2d"
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{op}: x must be a floating-point NCHW map (B, C, H, W), got {x.dtype} {tuple(x.shape)}.")
    c = x.shape[1]
    if weight.dim() != 4 or weight.shape[:2] != (c, 1) or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"{op}: weight must be (C, 1, k, k) with C = {c}, got {tuple(weight.shape)}.")
    if weight.shape[-1] % 2 == 0:
        raise ValueError(f"{op}: the kernel size must be odd ('same' padding), got {weight.shape[-1]}.")
    if bias is not None and bias.shape != (c,):
        raise ValueError(f"{op}: bias must be (C,) = ({c},), got {tuple(bias.shape)}.")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.device != x.device or not t.is_floating_point()):
            raise ValueError(
                f"{op}: {name} must be a floating-point tensor on {x.device}, got {t.dtype} on {t.device}."
            )
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"{op}: dilation must be a positive int, got {dilation!r}.")


def dwconv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dilation: int = 1,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Depthwise 'same' convolution: ``F.conv2d(x, weight, bias, padding=d * (k - 1) // 2, dilation=d, groups=C)``.

    Args:
        x: (B, C, H, W); made contiguous once if it is not.
        weight: (C, 1, k, k), k odd.
        bias: optional (C,).
        dilation: d >= 1.
        backend: ``'auto'``, ``'triton'`` or ``'torch'`` (see :mod:`vizattn.kernels._dispatch`).

    Returns:
        (B, C, H, W) in x's dtype (float32 accumulation).

    Raises:
        ValueError: for a bad shape, kernel size, dilation or backend, naming the value.
    """
    _check_args(x, weight, bias, dilation)
    tensors = (x, weight) if bias is None else (x, weight, bias)
    reasons = triton_unsupported_reasons(x, weight, bias)
    if select_backend("dwconv2d", backend, tensors, unsupported=reasons) == "triton":
        return _dwconv2d_op(x.contiguous(), weight, bias, dilation)
    return dwconv2d_reference(x, weight, bias, dilation)
