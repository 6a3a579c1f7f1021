"""Channel-scaled residual add ``x + scale[c] * y`` of (B, C, H, W) maps: the layer-scale residual of VAN's blocks.

Public function: :func:`scaled_add`; its definition is
:func:`~vizattn.kernels.scaled_add.reference.scaled_add_reference` (float32 inside, one rounding to the promoted
dtype).

Backends:

- ``'torch'``: the reference.
- ``'triton'``: the kernels of :mod:`vizattn.kernels.scaled_add.triton` for channels_last maps, as the op
  ``torch.ops.vizattn.scaled_add`` (a ``torch.library`` custom op with a fake implementation and an autograd formula
  whose backward is the op ``vizattn::scaled_add_backward``). One pass forward; one pass backward for y's gradient
  and the scale's (x's gradient is the output gradient). H200, 2026-11-30: see docs/benchmarks.md.
- ``'auto'``: Triton for channels_last CUDA maps, the reference otherwise.
"""

from __future__ import annotations

import torch

from vizattn.kernels._dispatch import select_backend
from vizattn.kernels._eager import KernelOp
from vizattn.kernels.scaled_add.reference import result_dtype, scaled_add_reference

__all__ = ["scaled_add", "scaled_add_reference"]

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _kernels():
    from vizattn.kernels.scaled_add import triton as kernels

    return kernels


def _channels_last_like(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(t.shape, dtype=dtype, device=t.device, memory_format=torch.channels_last)


def _nhwc(t: torch.Tensor) -> bool:
    """Whether a (B, C, H, W) map is dense with its channels innermost (NHWC in memory, as channels_last maps are)."""
    return t.permute(0, 2, 3, 1).is_contiguous()


def _fwd(x: torch.Tensor, scale: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _kernels().scaled_add_fwd(x, scale, y)


_scaled_add_op = torch.library.custom_op("vizattn::scaled_add", _fwd, mutates_args=())


@_scaled_add_op.register_fake
def _(x, scale, y):
    return _channels_last_like(x, result_dtype(x, scale, y))


def _bwd(
    grad: torch.Tensor, scale: torch.Tensor, y: torch.Tensor, needs_scale: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    grad = grad.contiguous(memory_format=torch.channels_last)
    dy, dscale = _kernels().scaled_add_bwd(grad, scale, y, needs_scale)
    return dy, (dscale if dscale is not None else scale.new_zeros(0))


_scaled_add_backward_op = torch.library.custom_op("vizattn::scaled_add_backward", _bwd, mutates_args=())


@_scaled_add_backward_op.register_fake
def _(grad, scale, y, needs_scale):
    return _channels_last_like(y, y.dtype), scale.new_empty(scale.shape if needs_scale else (0,))


def _setup_context(ctx, inputs, output):
    x, scale, y = inputs
    ctx.save_for_backward(scale, y)
    ctx.x_dtype = x.dtype


def _backward(ctx, run_backward, grad):
    scale, y = ctx.saved_tensors
    needs_x, needs_scale, needs_y = ctx.needs_input_grad
    dy, dscale = run_backward(grad, scale, y, needs_scale) if (needs_scale or needs_y) else (None, None)
    return (
        grad.to(ctx.x_dtype) if needs_x else None,
        dscale if needs_scale else None,
        dy if needs_y else None,
    )


_SCALED_ADD = KernelOp(_scaled_add_op, _fwd, _scaled_add_backward_op, _bwd, _setup_context, _backward)


def triton_unsupported_reasons(x: torch.Tensor, scale: torch.Tensor, y: torch.Tensor) -> list[str]:
    """Why the Triton kernels cannot run this (validated) call; empty when they can."""
    reasons = []
    if not (_nhwc(x) and _nhwc(y)):
        reasons.append("the Triton kernels take channels_last maps (x and y)")
    for name, t in (("x", x), ("scale", scale), ("y", y)):
        if t.dtype not in _TRITON_DTYPES:
            reasons.append(f"{name} is {t.dtype}; the Triton kernels take float16, bfloat16 or float32")
    if not scale.is_contiguous():
        reasons.append("scale is not contiguous")
    return reasons


def scaled_add(x: torch.Tensor, scale: torch.Tensor, y: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``x + scale[:, None, None] * y``: a residual ``x`` plus a branch ``y`` scaled per channel (layer scale).

    Args:
        x: (B, C, H, W) map, NCHW or channels_last.
        scale: (C,) per-channel factors.
        y: (B, C, H, W) map, same shape as x.
        backend: ``'auto'`` (Triton for channels_last CUDA maps, else the reference), ``'triton'`` or ``'torch'``.

    Returns:
        (B, C, H, W) in the promoted dtype of the three (a float32 scale makes a float32 sum of 16-bit maps, as
        ``x + scale[:, None, None] * y`` does); channels_last on the Triton path, x's format on the reference's.

    Raises:
        ValueError: for maps that are not (B, C, H, W) of one shape, or a scale that is not (C,), naming the shapes.
    """
    if x.dim() != 4 or y.shape != x.shape or not x.is_floating_point() or not y.is_floating_point():
        raise ValueError(
            f"scaled_add: x and y must be floating-point (B, C, H, W) maps of one shape, got x {x.dtype} "
            f"{tuple(x.shape)} and y {y.dtype} {tuple(y.shape)}."
        )
    if scale.shape != (x.shape[1],) or not scale.is_floating_point():
        raise ValueError(
            f"scaled_add: scale must be a floating-point ({x.shape[1]},) tensor (one factor per channel), got "
            f"{scale.dtype} {tuple(scale.shape)}."
        )
    reasons = triton_unsupported_reasons(x, scale, y)
    if select_backend("scaled_add", backend, (x, scale, y), reasons) == "triton":
        return _SCALED_ADD(x, scale, y)
    return scaled_add_reference(x, scale, y)
