"""Drop-in layers for the backbones' hot paths: same parameters, keys, initialisation and math as PyTorch's.

- :class:`LayerNorm`: ``nn.LayerNorm`` over the last dim on vizattn's Triton kernels (CUDA), for the narrow rows
  (64-320 channels in the early stages) of NAT/DiNAT and BiFormer, which PyTorch's kernels run far from the memory
  bandwidth (:mod:`vizattn.kernels.layer_norm`).
- :class:`Linear`: ``nn.Linear`` whose bias gradient is a GEMV instead of autograd's column reduction.
- :func:`pointwise_conv`: a 1x1 ``nn.Conv2d`` of a channels_last map as one GEMM with the bias fused.
- :func:`use_fast_layers`: switch a model's plain ``nn.Linear`` / ``nn.LayerNorm`` modules to these, in place.
- :func:`norms_feed_linears`: mark LayerNorms whose output only a linear layer reads (see below).

Under CUDA autocast :class:`LayerNorm` returns float32, as ``nn.LayerNorm`` does, unless it is marked as feeding a
linear layer: it then returns autocast's dtype, the float32 result rounded as the linear layer's autocast cast would
round it (the same values; one write of 16-bit values instead of a float32 write, a read and a 16-bit write, and no
cast of the gradient back). Under another device's autocast it runs ``nn.LayerNorm.forward`` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vizattn.kernels.layer_norm import layer_norm

__all__ = ["LayerNorm", "Linear", "norms_feed_linears", "pointwise_conv", "use_fast_layers"]

_HALF = (torch.float16, torch.bfloat16)
_AUTOCAST_DEVICES = ("cuda", "cpu", "xpu", "mps")  # others (meta: shape-only runs) have no autocast state to ask


def _autocast_enabled(device_type: str) -> bool:
    return device_type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device_type)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (one normalised dim) through :func:`vizattn.kernels.layer_norm.layer_norm`.

    Args:
        normalized_shape, eps, elementwise_affine, bias: as for ``nn.LayerNorm``; ``normalized_shape`` is one int.
        backend: ``'auto'`` (Triton on CUDA), ``'triton'`` or ``'torch'`` (``F.layer_norm``, exactly what
            ``nn.LayerNorm`` computes).

    Shape: (..., C) -> (..., C).

    Attributes:
        autocast_output: under CUDA autocast, return autocast's dtype instead of float32: for a norm whose output
            only a linear layer (which casts it so) reads. Set by :func:`norms_feed_linears`; False by default.
    """

    autocast_output = False  # a class attribute: modules switched in place by use_fast_layers have it too

    def __init__(
        self,
        normalized_shape: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device=device, dtype=dtype)
        if len(self.normalized_shape) != 1:
            raise ValueError(f"LayerNorm normalises one (the last) dim; got normalized_shape={normalized_shape}.")
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1:] != self.normalized_shape:
            raise ValueError(
                f"LayerNorm({self.normalized_shape[0]}) expects (..., {self.normalized_shape[0]}) inputs, got shape "
                f"{tuple(x.shape)}."
            )
        out_dtype = x.dtype
        if _autocast_enabled(x.device.type):
            if x.device.type != "cuda":
                return super().forward(x)  # other devices' autocast policies: nn.LayerNorm's own
            if self.autocast_output:
                out_dtype = torch.get_autocast_dtype("cuda")  # what the linear layer reading it casts it to
            elif x.dtype in _HALF:
                out_dtype = torch.float32  # CUDA autocast runs layer_norm in float32
        return layer_norm(x, self.weight, self.bias, self.eps, out_dtype=out_dtype, backend=self.backend)


class _ChannelLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` over x's last dim, whose bias gradient is a matrix-vector product.

    Autograd's own bias gradient of a linear layer is a column sum, which PyTorch's reduction kernel runs at 2-8x the
    time of cuBLAS's GEMV on the same rows (H200, bf16, 6k-400k rows of 64-2048 channels), 6 of the 66 ms of a
    van_b2 training step at batch 128.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            dx = (g @ weight).view(x.shape)
        if ctx.needs_input_grad[1]:
            dweight = g.t() @ x.reshape(-1, x.shape[-1])
        if ctx.needs_input_grad[2]:
            dbias = torch.mv(g.t(), g.new_ones(g.shape[0]))
        return dx, dweight, dbias


def pointwise_conv(conv: nn.Conv2d, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Run a 1x1 ``nn.Conv2d`` (stride 1, no padding, one group) on an NCHW map.

    A channels_last map is a (B * H * W, C) matrix in memory, so the conv runs as a linear layer on its NHWC view with
    the module's weight and bias: one GEMM with the bias added in its epilogue, where PyTorch's conv path on CUDA
    runs the GEMM and then adds the bias in a separate, slow broadcast kernel (H200, van_b2 at batch 128: 6 of the
    24.5 ms of an inference step); the bias gradient is a GEMV (see :class:`_ChannelLinear`). Under autocast the
    inputs are cast as ``F.linear`` casts them. The output is channels_last and equals the conv's. Other maps, and
    ``backend='torch'`` (the PyTorch baseline), run the module.
    """
    if backend == "torch" or x.dim() != 4 or not x.permute(0, 2, 3, 1).is_contiguous():
        return conv(x)
    return _channel_linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias).permute(0, 3, 1, 2)


class Linear(nn.Linear):
    """``nn.Linear`` whose bias gradient is a GEMV (:class:`_ChannelLinear`); the same parameters, keys and outputs.
    Under autocast the inputs are cast as ``F.linear`` casts them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None or x.dim() < 2:
            return F.linear(x, self.weight, self.bias)
        return _channel_linear(x, self.weight, self.bias)


def _channel_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """:class:`_ChannelLinear` with autocast's casts applied first (its backward then sees the 16-bit tensors)."""
    if _autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    return _ChannelLinear.apply(x, weight, bias)


def use_fast_layers(module: nn.Module, backend: str = "auto") -> nn.Module:
    """Switch every plain ``nn.Linear`` and one-dim ``nn.LayerNorm`` inside ``module`` to :class:`Linear` and
    :class:`LayerNorm`, in place (the same parameter tensors, so state dicts, initialisation and optimisers are
    unaffected). ``backend='torch'`` leaves the model as it is (the PyTorch baseline); others set the LayerNorms'
    backend. Returns ``module``."""
    if backend == "torch":
        return module
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = Linear
        elif type(m) is nn.LayerNorm and len(m.normalized_shape) == 1:
            m.__class__ = LayerNorm
            m.backend = backend
    return module


def norms_feed_linears(*norms: nn.Module) -> None:
    """Mark these norms as read only by a linear layer (``nn.Linear`` or :class:`Linear`, under autocast): those that
    are :class:`LayerNorm` then return autocast's dtype under CUDA autocast (:attr:`LayerNorm.autocast_output`);
    others (``nn.LayerNorm`` of the torch backend) are left as they are."""
    for norm in norms:
        if isinstance(norm, LayerNorm):
            norm.autocast_output = True
