"""Depthwise 2-D convolution ('same', stride 1, odd kernel, dilation) and LKA's spatial op, on NCHW or NHWC maps.

Public functions: :func:`dwconv2d` and :func:`lka_spatial` (VAN's ``conv_spatial(conv0(x))``: a 5x5 depthwise conv
then a 7x7 one with dilation 3). Their definitions are :func:`~vizattn.kernels.dwconv.reference.dwconv2d_reference`
(``torch.nn.functional.conv2d`` with ``groups = C``, float32 inside) and
:func:`~vizattn.kernels.dwconv.reference.lka_spatial_reference` (two of them). Maps are (B, C, H, W) tensors, dense
NCHW or channels_last (NHWC in memory); the result comes back in the input's format (see
:mod:`vizattn.kernels.dwconv.layout`).

Backends:

- ``'torch'``: :func:`dwconv2d` runs the reference; :func:`lka_spatial` runs the two convs in the input's dtype, as
  the ``nn.Conv2d`` modules of an LKA block do (cuDNN / ATen accumulate half types in float32), so that a block on the
  torch path costs what it did before and matches official checkpoints bit for bit.
- ``'triton'``: the kernels of :mod:`vizattn.kernels.dwconv.triton`, as the ops ``torch.ops.vizattn.dwconv2d`` and
  ``torch.ops.vizattn.lka_spatial`` (``torch.library`` custom ops with fake implementations and autograd formulas whose
  backwards are the ops ``vizattn::dwconv2d_backward`` and ``vizattn::lka_spatial_backward``), so ``torch.compile``
  sees one node each; eager calls skip the custom ops' dispatch (:class:`vizattn.kernels._eager.KernelOp`). The
  kernel module is imported on first use: Triton decides at import time whether it runs
  compiled or under ``TRITON_INTERPRET=1``.
- ``'auto'``: on CUDA, Triton for channels_last maps (dilated convolutions, and the kernel sizes of the row-walking
  forward kernel: k <= 9), torch otherwise (the measurements behind this are at :data:`TRITON_BY_DEFAULT`); torch
  on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vizattn.kernels._dispatch import select_backend
from vizattn.kernels._eager import KernelOp
from vizattn.kernels.dwconv.layout import empty_map, is_nhwc, rows_kernel_applies, to_kernel_layout
from vizattn.kernels.dwconv.reference import dwconv2d_reference, lka_spatial_reference

__all__ = [
    "TRITON_BY_DEFAULT",
    "dwconv2d",
    "dwconv2d_module",
    "dwconv2d_reference",
    "lka_spatial",
    "lka_spatial_reference",
    "triton_unsupported_reasons",
]

# Whether backend='auto' takes the Triton kernels on CUDA for every map. Measured on the H200 (2026-11-29, B64 C64
# 56x56 bf16, kernel time, forward / forward+backward in ms):
#   NCHW:             5x5 Triton 0.239 / 1.029 against PyTorch 0.226 / 0.997; 7x7 d3 0.445 / 1.858 against 0.439 / 1.922
#   channels_last, the tile kernel (before the row-walking one): 5x5 0.071 / 0.538 against PyTorch 0.079 / 0.281; 7x7
#                     d3 0.135 / 0.993 against PyTorch 1.266 / 3.087 (and PyTorch's best layout, NCHW, 0.439 / 1.922)
#   channels_last, the row-walking forward (23:10): forward 5x5 0.061 against cuDNN 0.077, 7x7 d3 0.089 against 1.266,
#                     and VAN-B2's MLP 3x3 at B128 56x56 C512 0.398 against 0.884; backward (23:18, the same kernel
#                     for the input gradient, the row-walking weight gradient) 5x5 0.158 against cuDNN's 0.199,
#                     7x7 d3 0.219 against 1.826, 3x3 B128 56x56 C512 0.872 against 1.168 (triton._wgrad_source)
# so 'auto' takes Triton for channels_last maps whose forward the row-walking kernel takes, and for every dilated
# conv of a channels_last map (see _auto_triton). backend='triton' or VIZATTN_BACKEND=triton runs them everywhere.
TRITON_BY_DEFAULT = False

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_IMAGE_NUMEL = 2**31 - 1  # offsets inside one image are int32 in the kernels


def _auto_triton(x: torch.Tensor, k: int, dilation: int) -> bool:
    """Whether ``backend='auto'`` may run a k x k conv of map ``x`` on Triton (see :data:`TRITON_BY_DEFAULT`)."""
    return TRITON_BY_DEFAULT or (is_nhwc(x) and (dilation > 1 or rows_kernel_applies(x, k, dilation)))


def _kernels():
    from vizattn.kernels.dwconv import triton as kernels

    return kernels


def _dwconv2d_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int) -> torch.Tensor:
    return _kernels().dwconv2d_fwd(x, weight, bias, dilation)


_dwconv2d_op = torch.library.custom_op("vizattn::dwconv2d", _dwconv2d_fwd, mutates_args=())


@_dwconv2d_op.register_fake
def _(x, weight, bias, dilation):
    return empty_map(x)


def _dwconv2d_bwd(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, dilation: int, needs_bias: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dweight, dbias = _kernels().dwconv2d_bwd(grad_out, x, weight, dilation, needs_bias)
    return dx, dweight, (dbias if dbias is not None else weight.new_zeros(0))


_dwconv2d_backward_op = torch.library.custom_op("vizattn::dwconv2d_backward", _dwconv2d_bwd, mutates_args=())


@_dwconv2d_backward_op.register_fake
def _(grad_out, x, weight, dilation, needs_bias):
    dbias = weight.new_empty(weight.shape[0]) if needs_bias else weight.new_empty(0)
    return empty_map(x), weight.new_empty(weight.shape), dbias


def _setup_context(ctx, inputs, output):
    x, weight, bias, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.dilation = dilation
    ctx.has_bias = bias is not None


def _backward(ctx, run_backward, grad_out):
    x, weight = ctx.saved_tensors
    dx, dweight, dbias = run_backward(grad_out, x, weight, ctx.dilation, ctx.has_bias)
    return dx, dweight, (dbias if ctx.has_bias else None), None


_DWCONV2D = KernelOp(_dwconv2d_op, _dwconv2d_fwd, _dwconv2d_backward_op, _dwconv2d_bwd, _setup_context, _backward)


def _lka_spatial_fwd(
    x: torch.Tensor,
    w0: torch.Tensor,
    b0: torch.Tensor | None,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    dilation0: int,
    dilation1: int,
) -> torch.Tensor:
    return _kernels().lka_spatial_fwd(x, w0, b0, w1, b1, (dilation0, dilation1))


_lka_spatial_op = torch.library.custom_op("vizattn::lka_spatial", _lka_spatial_fwd, mutates_args=())


@_lka_spatial_op.register_fake
def _(x, w0, b0, w1, b1, dilation0, dilation1):
    return empty_map(x)


def _lka_spatial_bwd(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    w0: torch.Tensor,
    b0: torch.Tensor | None,
    w1: torch.Tensor,
    dilation0: int,
    dilation1: int,
    needs_b0: bool,
    needs_b1: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grads = _kernels().lka_spatial_bwd(grad_out, x, w0, b0, w1, (dilation0, dilation1), needs_b0, needs_b1)
    dx, dw0, db0, dw1, db1 = grads
    # An absent bias's gradient is an empty tensor (custom ops return tensors); two distinct ones, since outputs of a
    # custom op may not alias each other.
    db0 = db0 if db0 is not None else w0.new_zeros(0)
    db1 = db1 if db1 is not None else w1.new_zeros(0)
    return dx, dw0, db0, dw1, db1


_lka_spatial_backward_op = torch.library.custom_op("vizattn::lka_spatial_backward", _lka_spatial_bwd, mutates_args=())


@_lka_spatial_backward_op.register_fake
def _(grad_out, x, w0, b0, w1, dilation0, dilation1, needs_b0, needs_b1):
    c = w0.shape[0]
    db0 = w0.new_empty(c if needs_b0 else 0)
    db1 = w1.new_empty(c if needs_b1 else 0)
    return empty_map(x), w0.new_empty(w0.shape), db0, w1.new_empty(w1.shape), db1


def _lka_setup_context(ctx, inputs, output):
    x, w0, b0, w1, b1, dilation0, dilation1 = inputs
    # b0 is saved because the backward recomputes the intermediate conv0(x) + b0 instead of keeping it.
    ctx.save_for_backward(x, w0, b0, w1)
    ctx.dilations = (dilation0, dilation1)
    ctx.has_biases = (b0 is not None, b1 is not None)


def _lka_backward(ctx, run_backward, grad_out):
    x, w0, b0, w1 = ctx.saved_tensors
    has_b0, has_b1 = ctx.has_biases
    dx, dw0, db0, dw1, db1 = run_backward(grad_out, x, w0, b0, w1, *ctx.dilations, has_b0, has_b1)
    return dx, dw0, (db0 if has_b0 else None), dw1, (db1 if has_b1 else None), None, None


_LKA_SPATIAL = KernelOp(
    _lka_spatial_op, _lka_spatial_fwd, _lka_spatial_backward_op, _lka_spatial_bwd, _lka_setup_context, _lka_backward
)


def triton_unsupported_reasons(x: torch.Tensor, *params: torch.Tensor | None) -> list[str]:
    """Why the Triton kernels cannot run these (already validated) inputs; empty when they can.

    Args:
        x: the (B, C, H, W) map.
        params: the op's weights and biases (None for an absent bias).
    """
    reasons = []
    dtypes = {x.dtype} | {t.dtype for t in params if t is not None}
    if not dtypes <= set(_TRITON_DTYPES):
        reasons.append(f"the kernels take float16, bfloat16 or float32 tensors, got {sorted(str(d) for d in dtypes)}")
    image_numel = x.shape[1] * x.shape[2] * x.shape[3]
    if image_numel > _MAX_IMAGE_NUMEL:
        reasons.append(f"one image has {image_numel} elements, more than the kernels' int32 offsets address")
    return reasons


def _check_conv_args(
    op: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int, names: tuple[str, ...]
) -> None:
    """Validate one depthwise conv's arguments; ``names`` = how the op calls (weight, bias, dilation)."""
    w_name, b_name, d_name = names
    c = x.shape[1]
    if weight.dim() != 4 or weight.shape[:2] != (c, 1) or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"{op}: {w_name} must be (C, 1, k, k) with C = {c}, got {tuple(weight.shape)}.")
    if weight.shape[-1] % 2 == 0:
        raise ValueError(f"{op}: the kernel size of {w_name} must be odd ('same' padding), got {weight.shape[-1]}.")
    if bias is not None and bias.shape != (c,):
        raise ValueError(f"{op}: {b_name} must be (C,) = ({c},), got {tuple(bias.shape)}.")
    for name, t in ((w_name, weight), (b_name, bias)):
        if t is not None and (t.device != x.device or not t.is_floating_point()):
            raise ValueError(
                f"{op}: {name} must be a floating-point tensor on {x.device}, got {t.dtype} on {t.device}."
            )
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"{op}: {d_name} must be a positive int, got {dilation!r}.")


def _check_map(op: str, x: torch.Tensor) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{op}: x must be a floating-point (B, C, H, W) map, got {x.dtype} {tuple(x.shape)}.")


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
        x: (B, C, H, W), NCHW or channels_last in memory (the Triton kernels read either directly); any other strides
            are made dense once (channels_last if the channels are innermost, else NCHW).
        weight: (C, 1, k, k), k odd.
        bias: optional (C,).
        dilation: d >= 1.
        backend: ``'auto'``, ``'triton'`` or ``'torch'`` (see :mod:`vizattn.kernels._dispatch`; ``'auto'`` runs
            Triton for channels_last maps on CUDA (dilated, or k <= 9), torch otherwise).

    Returns:
        (B, C, H, W) in x's dtype and memory format (float32 accumulation).

    Raises:
        ValueError: for a bad shape, kernel size, dilation or backend, naming the value.
    """
    _check_map("dwconv2d", x)
    _check_conv_args("dwconv2d", x, weight, bias, dilation, ("weight", "bias", "dilation"))
    if _on_triton("dwconv2d", backend, x, weight, bias, dilation):
        return _DWCONV2D(to_kernel_layout(x), weight, bias, dilation)
    return dwconv2d_reference(x, weight, bias, dilation)


def _on_triton(
    op: str, backend: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int
) -> bool:
    """Whether one (validated) depthwise conv runs on the Triton kernels (``backend`` resolved as in ``'auto'``)."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    reasons = triton_unsupported_reasons(x, weight, bias)
    auto = _auto_triton(x, weight.shape[-1], dilation)
    return select_backend(op, backend, tensors, reasons, auto_triton=auto) == "triton"


def dwconv2d_module(conv: torch.nn.Conv2d, x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Run a depthwise ``nn.Conv2d`` ('same' padding, stride 1, ``groups = C``) through :func:`dwconv2d`'s backends.

    The Triton path takes the module's weight and bias; the torch path is the module itself, so it computes what it
    always did (in x's dtype, as under autocast), bit for bit.

    Raises:
        ValueError: for a module that is not such a conv, naming what differs.
    """
    k = conv.kernel_size[0]
    d = conv.dilation[0]
    square = conv.kernel_size == (k, k) and conv.dilation == (d, d)
    same = square and conv.padding == (d * (k - 1) // 2,) * 2 and conv.padding_mode == "zeros"
    if conv.groups != conv.in_channels or conv.out_channels != conv.in_channels or conv.stride != (1, 1) or not same:
        raise ValueError(
            f"dwconv2d_module: the conv must be depthwise, stride 1, square, 'same' zero padding; got {conv}."
        )
    _check_map("dwconv2d_module", x)
    _check_conv_args("dwconv2d_module", x, conv.weight, conv.bias, d, ("weight", "bias", "dilation"))
    if _on_triton("dwconv2d_module", backend, x, conv.weight, conv.bias, d):
        return _DWCONV2D(to_kernel_layout(x), conv.weight, conv.bias, d)
    return conv(x)


def _conv_in_dtype(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, d: int) -> torch.Tensor:
    """One depthwise conv in x's dtype, exactly what an ``nn.Conv2d(groups=C)`` module computes."""
    b = None if b is None else b.to(x.dtype)
    return F.conv2d(x, w.to(x.dtype), b, padding=d * (w.shape[-1] - 1) // 2, dilation=d, groups=x.shape[1])


def lka_spatial(
    x: torch.Tensor,
    w0: torch.Tensor,
    b0: torch.Tensor | None,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    *,
    dilations: tuple[int, int] = (1, 3),
    backend: str = "auto",
    fused: bool = False,
) -> torch.Tensor:
    """LKA's spatial op: ``dwconv2d(dwconv2d(x, w0, b0, d0), w1, b1, d1)``, each conv zero-padded on its own.

    VAN's LKA uses ``w0`` 5x5 and ``w1`` 7x7 with ``dilations=(1, 3)`` (a 23-pixel receptive field); beyond the border
    the second conv sees zeros, not the first conv evaluated outside the image. On the Triton backend the two convs
    run as two :func:`dwconv2d` kernels; ``fused=True`` runs the fused forward instead, which computes both in one
    kernel with the intermediate kept on chip (see :mod:`vizattn.kernels.dwconv.triton`) but measured slower on the
    H200 (B64 C64 56x56 bf16 channels_last: 0.367 ms against 0.204 for the two kernels; 28x28 C128: 0.153 against
    0.132), so it is not the default.

    Args:
        x: (B, C, H, W), NCHW or channels_last in memory; any other strides are made dense once.
        w0: (C, 1, k0, k0), k0 odd.
        b0: (C,) or None.
        w1: (C, 1, k1, k1), k1 odd.
        b1: (C,) or None.
        dilations: (d0, d1), each >= 1.
        backend: ``'auto'``, ``'triton'`` or ``'torch'``, chosen per conv (``'auto'`` runs Triton for a
            channels_last map on CUDA (dilated, or k <= 9), torch otherwise).
        fused: the one-kernel forward (see above) when both convs run on Triton; ignored otherwise.

    Returns:
        (B, C, H, W) in x's dtype and memory format; the intermediate is rounded to x's dtype (as two convs round it),
        and each conv accumulates in float32.

    Raises:
        ValueError: for a bad shape, kernel size, dilation or backend, naming the value.
    """
    op = "lka_spatial"
    _check_map(op, x)
    if not isinstance(dilations, (tuple, list)) or len(dilations) != 2:
        raise ValueError(f"{op}: dilations must be a pair (d0, d1), got {dilations!r}.")
    d0, d1 = dilations
    _check_conv_args(op, x, w0, b0, d0, ("w0", "b0", "dilations[0]"))
    _check_conv_args(op, x, w1, b1, d1, ("w1", "b1", "dilations[1]"))
    tensors = [t for t in (x, w0, b0, w1, b1) if t is not None]
    reasons = triton_unsupported_reasons(x, w0, b0, w1, b1)
    choice = [
        select_backend(op, backend, tensors, reasons, auto_triton=_auto_triton(x, w.shape[-1], d))
        for w, d in ((w0, d0), (w1, d1))
    ]
    if fused and choice == ["triton", "triton"]:
        return _LKA_SPATIAL(to_kernel_layout(x), w0, b0, w1, b1, d0, d1)
    for w, b, d, use in ((w0, b0, d0, choice[0]), (w1, b1, d1, choice[1])):
        x = _DWCONV2D(to_kernel_layout(x), w, b, d) if use == "triton" else _conv_in_dtype(x, w, b, d)
    return x
