"""2-D neighborhood attention (NAT / DiNAT) in pure PyTorch: the definition of the op.

Semantics are those of NATTEN's unfused kernels (v0.14 CUDA, v0.17 CPU), which every released NAT / DiNAT
checkpoint was trained with. Along one axis of length ``L`` with kernel ``k`` and dilation ``d``:

- token ``i`` belongs to dilation group ``g = i % d`` at in-group position ``p = i // d``; group ``g`` holds
  ``L_g = ceil((L - g) / d)`` tokens and attention never crosses groups;
- its window is ``k`` consecutive in-group positions starting at ``s = clamp(p - k // 2, 0, L_g - k)``: windows are
  shifted inward at the borders, never truncated or zero-padded, so every query sees exactly ``k`` keys per axis
  (``k * k`` in 2-D, the Cartesian product of the two axes). For odd ``k`` this is the window centred on
  ``clamp(p, k // 2, L_g - 1 - k // 2)``; for even ``k`` it has ``k // 2`` keys before the query and ``k // 2 - 1``
  after it away from the borders (NATTEN's convention for even kernels);
- key ``t`` of the window (global index ``(s + t) * d + g``) gets the bias entry ``(s + t - p) + k - 1``: the true
  relative offset in dilated units, so border queries use off-centre entries of the ``(2k - 1)``-wide table.

The score of a (query, key) pair is ``(scale * q) . k + rpb[head, b_h, b_w]``, softmax runs over the ``k * k`` keys.

This file is slow on purpose: it gathers every query's ``k * k`` keys and values into ``(B, H, W, k, k, heads,
head_dim)`` copies, the ``O(N * k * k)`` memory the fused kernel avoids. It computes in float32 (float64 for float64
inputs, so tests can take it as ground truth) and returns the input dtype.
"""

from __future__ import annotations

import torch

__all__ = ["na2d_reference", "neighborhood_indices"]


def neighborhood_indices(
    length: int, kernel_size: int, dilation: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window of every position along one axis.

    Args:
        length: axis length L; requires ``L >= kernel_size * dilation``.
        kernel_size: k.
        dilation: d.
        device: where to build the tables.

    Returns:
        ``keys`` (L, k) int64: global index of key ``t`` of position ``i``'s window;
        ``bias`` (L, k) int64: its relative-position-bias index in ``[0, 2k - 2]``.
    """
    i = torch.arange(length, device=device)
    group, pos = i % dilation, i // dilation
    group_len = (length - group + dilation - 1) // dilation
    start = torch.minimum((pos - kernel_size // 2).clamp(min=0), group_len - kernel_size)
    window = start[:, None] + torch.arange(kernel_size, device=device)
    keys = window * dilation + group[:, None]
    bias = window - pos[:, None] + kernel_size - 1
    return keys, bias


def na2d_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Neighborhood attention on heads-last maps, by gathering every window.

    Args:
        q, k: (B, H, W, heads, head_dim); v: (B, H, W, heads, head_dim_v). ``H, W >= kernel_size * dilation``.
        kernel_size: window side k.
        dilation: dilation d (the same on both axes).
        rpb: optional (heads, 2k - 1, 2k - 1) relative position bias, added to the scaled logits.
        scale: multiplies q before the dot product; default ``head_dim ** -0.5``.

    Returns:
        (B, H, W, heads, head_dim_v) in ``v.dtype``.
    """
    _, hh, ww, heads, head_dim = q.shape
    ct = torch.promote_types(q.dtype, torch.float32)
    scale = head_dim**-0.5 if scale is None else scale
    keys_h, bias_h = neighborhood_indices(hh, kernel_size, dilation, q.device)
    keys_w, bias_w = neighborhood_indices(ww, kernel_size, dilation, q.device)
    # (H, W, k, k) index grids: key (row, column) of window offset (t_h, t_w) of query (i, j)
    rows, cols = keys_h[:, None, :, None], keys_w[None, :, None, :]
    k_win = k.to(ct)[:, rows, cols]  # (B, H, W, k, k, heads, head_dim)
    v_win = v.to(ct)[:, rows, cols]
    logits = torch.einsum("bxynd,bxyijnd->bxynij", q.to(ct) * scale, k_win)
    if rpb is not None:
        bias = rpb.to(ct)[:, bias_h[:, None, :, None], bias_w[None, :, None, :]]  # (heads, H, W, k, k)
        logits = logits + bias.permute(1, 2, 0, 3, 4)
    attn = logits.flatten(-2).softmax(dim=-1).unflatten(-1, (kernel_size, kernel_size))
    out = torch.einsum("bxynij,bxyijnd->bxynd", attn, v_win)
    return out.to(v.dtype)
