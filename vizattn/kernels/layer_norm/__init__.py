"""Layer normalisation over the last dim, as ``torch.nn.functional.layer_norm(x, (C,), weight, bias, eps)``.

Public function: :func:`layer_norm`; its definition is
:func:`~vizattn.kernels.layer_norm.reference.layer_norm_reference` (float32 inside, one rounding to the output dtype).

Backends:

- ``'torch'``: ``F.layer_norm`` itself (in float32 for 16-bit inputs when ``out_dtype`` is float32, as autocast runs
  it), so modules on this path compute what ``nn.LayerNorm`` does.
- ``'triton'``: the kernels of :mod:`vizattn.kernels.layer_norm.triton`, as the op ``torch.ops.vizattn.layer_norm``
  (a ``torch.library`` custom op with a fake implementation and an autograd formula whose backward is the op
  ``vizattn::layer_norm_backward``): tiles of rows per program, for the narrow rows of vision backbones.
- ``'auto'``: Triton on CUDA for rows of up to :data:`MAX_TRITON_C` channels, torch otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vizattn.kernels._dispatch import select_backend
from vizattn.kernels._eager import KernelOp
from vizattn.kernels.layer_norm.reference import layer_norm_reference

__all__ = ["MAX_TRITON_C", "layer_norm", "layer_norm_reference"]

MAX_TRITON_C = 4096  # a row lives in one program's registers
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _kernels():
    from vizattn.kernels.layer_norm import triton as kernels

    return kernels


def _fwd(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _kernels().layer_norm_fwd(x, weight, bias, eps, out_dtype)


_layer_norm_op = torch.library.custom_op("vizattn::layer_norm", _fwd, mutates_args=())


@_layer_norm_op.register_fake
def _(x, weight, bias, eps, out_dtype):
    stats = x.new_empty(x.shape[:-1], dtype=torch.float32)
    return x.new_empty(x.shape, dtype=out_dtype), stats, torch.empty_like(stats)


def _bwd(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    needs_weight: bool,
    needs_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, d_params)``: d_params is (2, C) float32, the weight's and the bias's gradients (a row not asked for is
    garbage), or empty when neither is asked for."""
    dx, d_params = _kernels().layer_norm_bwd(grad.contiguous(), x, weight, mean, rstd, needs_weight, needs_bias)
    return dx, (d_params if d_params is not None else x.new_zeros(0, dtype=torch.float32))


_layer_norm_backward_op = torch.library.custom_op("vizattn::layer_norm_backward", _bwd, mutates_args=())


@_layer_norm_backward_op.register_fake
def _(grad, x, weight, mean, rstd, needs_weight, needs_bias):
    shape = (2, x.shape[-1]) if needs_weight or needs_bias else (0,)
    return torch.empty_like(x), x.new_empty(shape, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps, out_dtype = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.param_dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)


def _backward(ctx, run_backward, grad, _grad_mean=None, _grad_rstd=None):
    x, weight, mean, rstd = ctx.saved_tensors
    needs_x, needs_w, needs_b = ctx.needs_input_grad[:3]
    dx, d_params = run_backward(grad, x, weight, mean, rstd, needs_w, needs_b)
    w_dtype, b_dtype = ctx.param_dtypes
    return (
        dx if needs_x else None,
        d_params[0].to(w_dtype) if needs_w else None,
        d_params[1].to(b_dtype) if needs_b else None,
        None,
        None,
    )


_LAYER_NORM = KernelOp(_layer_norm_op, _fwd, _layer_norm_backward_op, _bwd, _setup_context, _backward)


def triton_unsupported_reasons(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> list[str]:
    """Why the Triton kernels cannot run this (validated) call; empty when they can."""
    reasons = []
    if x.shape[-1] > MAX_TRITON_C:
        reasons.append(f"rows of {x.shape[-1]} channels (the kernels take up to {MAX_TRITON_C})")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and t.dtype not in _TRITON_DTYPES:
            reasons.append(f"{name} is {t.dtype}; the Triton kernels take float16, bfloat16 or float32")
    return reasons


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    out_dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``F.layer_norm(x, (C,), weight, bias, eps)`` over the last dim of ``x``.

    Args:
        x: (..., C) floating-point tensor (made contiguous once if it is not).
        weight, bias: optional (C,) affine parameters (made contiguous once if they are not).
        eps: added to the variance.
        out_dtype: dtype of the result; default x's. ``nn.LayerNorm`` under autocast gives float32 (see
            :class:`vizattn.blocks.layers.LayerNorm`).
        backend: ``'auto'``, ``'triton'`` or ``'torch'`` (see the module docstring).

    Returns:
        (..., C) in ``out_dtype``.

    Raises:
        ValueError: for a non-floating-point x or parameters whose shape is not (C,), naming the shapes.
    """
    if x.dim() == 0 or not x.is_floating_point():
        raise ValueError(f"layer_norm: x must be a floating-point (..., C) tensor, got {x.dtype} {tuple(x.shape)}.")
    c = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (c,):
            raise ValueError(f"layer_norm: {name} must have shape ({c},) for rows of {c}, got {tuple(t.shape)}.")
    out_dtype = out_dtype or x.dtype
    tensors = [t for t in (x, weight, bias) if t is not None]
    if select_backend("layer_norm", backend, tensors, triton_unsupported_reasons(x, weight, bias)) == "triton":
        weight = weight.contiguous() if weight is not None else None
        bias = bias.contiguous() if bias is not None else None
        return _LAYER_NORM(x.contiguous(), weight, bias, float(eps), out_dtype)[0]
    if x.dtype != out_dtype and out_dtype == torch.float32:
        x = x.float()  # what CUDA autocast does before its float32 layer norm
    return F.layer_norm(x, (c,), weight, bias, eps).to(out_dtype)
