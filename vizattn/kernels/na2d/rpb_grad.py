"""Gradient of neighborhood attention's relative position bias, ``d(rpb)``, from the score gradients the dq kernel
stores.

``d(rpb)[head, b_h, b_w]`` is the sum of the score gradients ``ds = p * (dp - delta)`` over every (image, query, key)
pair whose per-axis bias indices are ``(b_h, b_w)``. The halo backward's dq kernel computes every pair's ``ds`` anyway;
with a bias it also stores those of each query's ``k x k`` window (``STORE_DS`` in
:mod:`vizattn.kernels._halo2d.triton`) into a float32 buffer ``DS`` of shape ``(B, heads, H, W, k * k)``, slot
``jy * k + jx`` holding the pair of window row ``jy`` and column ``jx`` (the reference's order, see
:func:`vizattn.kernels.na2d.reference.neighborhood_indices`). Every (query, slot) is written once, so the buffer needs
no zero-fill. This module reduces it with PyTorch, in a fixed order and without atomics, so ``d(rpb)`` is
deterministic like every other gradient.

Along one axis the bias index of window slot ``j`` of position ``i`` is ``base(i) + j``: ``base(i) = ws - p + k - 1``
(window start ``ws`` and in-group position ``p``, in ``[0, k - 1]``; ``k - 1 - k // 2`` away from the borders) depends
only on the position, i.e. on the map row for ``b_h`` and on the map column for ``b_w``. So:

1. ``S = DS.sum(0)``: (heads, H, W, k * k), accumulated in float64, the only pass over the big buffer;
2. rows grouped by ``base_h`` and columns by ``base_w`` with one-hot ``(k, H)`` and ``(k, W)`` matrices (``base`` read
   off :func:`~vizattn.kernels.na2d.reference.neighborhood_indices`, cached per axis length, kernel, dilation and
   device): (heads, k, k, k * k), one small matmul each;
3. each class's ``k x k`` block added at its offset into the ``(2k - 1, 2k - 1)`` table by a one-hot matmul on each
   side.

Steps 2 and 3 are matmuls on about ``heads * H * W * k^2`` numbers, in float64 like ``S``: the one-hot operands are
exact, and in float32 a TF32 setting (``torch.backends.cuda.matmul``) would round the sums.
"""

from __future__ import annotations

import functools

import torch

from vizattn.kernels.na2d.reference import neighborhood_indices

__all__ = ["na2d_rpb_grad"]


@functools.lru_cache(maxsize=256)
def _classes(length: int, kernel_size: int, dilation: int, device: torch.device) -> torch.Tensor:
    """(k, L) float64 one-hot: entry ``[c, i]`` is 1 where position ``i``'s window slot ``j`` has bias index ``c + j``
    along this axis."""
    # Built on the CPU explicitly: a cached table must not capture tensors of a default-device context (e.g. "meta").
    _, bias = neighborhood_indices(length, kernel_size, dilation, torch.device("cpu"))
    base = bias[:, 0]
    slots = torch.arange(kernel_size, device="cpu")
    if not torch.equal(bias, base[:, None] + slots):
        raise AssertionError("na2d_rpb_grad: bias indices that do not step by one along a window")
    return (slots[:, None] == base[None, :]).to(device=device, dtype=torch.float64)


@functools.lru_cache(maxsize=64)
def _offsets(kernel_size: int, device: torch.device) -> torch.Tensor:
    """(k * k, 2k - 1) float64 one-hot: entry ``[c * k + j, t]`` is 1 where ``c + j = t`` (class ``c``'s window slot
    ``j`` lands on table index ``t``)."""
    c = torch.arange(kernel_size, device="cpu")[:, None, None]
    j = torch.arange(kernel_size, device="cpu")[None, :, None]
    t = torch.arange(2 * kernel_size - 1, device="cpu")[None, None, :]
    return (c + j == t).reshape(kernel_size * kernel_size, -1).to(device=device, dtype=torch.float64)


def na2d_rpb_grad(ds: torch.Tensor, kernel_size: int, dilation: int, rpb_dtype: torch.dtype) -> torch.Tensor:
    """d(rpb) of :func:`vizattn.kernels.na2d.na2d` from the stored score gradients.

    Args:
        ds: (B, heads, H, W, k * k) float32, the score gradient of each query's window slot ``jy * k + jx`` (what the
            halo dq kernel writes with ``ds_out``).
        kernel_size, dilation: the forward's.
        rpb_dtype: the bias's dtype.

    Returns:
        (heads, 2k - 1, 2k - 1) in ``rpb_dtype``; deterministic (fixed-order reductions, no atomics).
    """
    _, heads, hh, ww, kk = ds.shape
    k = kernel_size
    if kk != k * k:
        raise ValueError(f"na2d_rpb_grad: ds holds {kk} window slots per query, expected {k * k}.")
    s = ds.sum(0, dtype=torch.float64)  # (heads, H, W, k * k)
    by_row = torch.matmul(_classes(hh, k, dilation, ds.device), s.view(heads, hh, ww * kk))  # (heads, k, W * k * k)
    by_class = torch.matmul(_classes(ww, k, dilation, ds.device), by_row.view(heads, k, ww, kk))  # (heads, k, k, kk)
    # [(class_h, jy), (class_w, jx)] blocks, then each axis's pair (class, slot) onto its table index
    blocks = by_class.view(heads, k, k, k, k).permute(0, 1, 3, 2, 4).reshape(heads, kk, kk)
    offsets = _offsets(k, ds.device)
    return (offsets.T @ blocks @ offsets).to(rpb_dtype)
