"""The two memory formats the depthwise kernels take, NCHW (contiguous) and NHWC (channels_last).

A (B, C, H, W) map keeps its logical shape in both; only the strides differ. Outputs and input gradients come back in
their input's format, as ``torch.nn.functional.conv2d`` returns them. Kept apart from the kernels so that the fake
implementations of the custom ops (which must give the real outputs' strides) do not import Triton.
"""

from __future__ import annotations

import torch

__all__ = ["is_nhwc", "to_kernel_layout", "empty_map", "ROWS_MAX_K", "ROWS_MAX_REACH", "rows_kernel_applies"]

# The row-walking forward kernel (vizattn.kernels.dwconv.triton._dw_rows_fwd_kernel) keeps k accumulators per column
# and the COLS + (k - 1) * dilation pixels of an input row in registers: it takes k <= ROWS_MAX_K and a reach
# (k - 1) * dilation <= ROWS_MAX_REACH, on NHWC maps.
ROWS_MAX_K = 9
ROWS_MAX_REACH = 24


def is_nhwc(x: torch.Tensor) -> bool:
    """Whether the kernels treat a dense (B, C, H, W) map as NHWC; a map dense in both formats counts as NCHW."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def to_kernel_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when dense NCHW or NHWC, else one copy: NHWC when its channels are innermost, NCHW otherwise."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    channels_last = x.stride(1) == 1 and x.shape[1] > 1
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def empty_map(like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised map of ``like``'s shape in the format :func:`is_nhwc` gives ``like`` (for fake kernels)."""
    fmt = torch.channels_last if is_nhwc(like) else torch.contiguous_format
    return torch.empty(like.shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt)


def rows_kernel_applies(x: torch.Tensor, k: int, dilation: int) -> bool:
    """Whether the row-walking forward kernel takes a conv of map ``x`` (NHWC) with a k x k kernel at ``dilation``."""
    return is_nhwc(x) and k <= ROWS_MAX_K and (k - 1) * dilation <= ROWS_MAX_REACH
