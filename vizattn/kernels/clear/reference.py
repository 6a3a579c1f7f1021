"""CLEAR's circular local attention in pure PyTorch: the definition of the op.

On an ``H x W`` token map (row-major flattening, token ``i * W + j`` at row i, column j), query ``(i, j)`` attends to
key ``(i', j')`` iff ``(i - i')^2 + (j - j')^2 < r^2`` (Euclidean, strict): a disc of radius r centred on the query,
truncated at the borders (border queries simply have fewer keys; the disc is not shifted inward as neighborhood
attention's window is). Optionally ``M`` extra key/value tokens (CLEAR's pooled tokens, or prefix/text tokens) are
seen by every query. There is one softmax over the disc and the extra tokens together, with logits
``(scale * q) . k``.

This file is slow on purpose: dense attention over all ``H * W`` keys with a boolean ``(N, N)`` mask, ``O(N^2)``
memory. It computes in float32 (float64 for float64 inputs, so tests can take it as ground truth) and returns q's
dtype.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["circle_mask", "clear_attention_reference"]


@functools.lru_cache(maxsize=8)
def _circle_mask_cpu(h: int, w: int, radius: int) -> torch.Tensor:
    # Explicitly on the CPU: the cache must not capture tensors of a default-device context (e.g. torch.device("meta")).
    rows = torch.arange(h, device="cpu").repeat_interleave(w)
    cols = torch.arange(w, device="cpu").repeat(h)
    d2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    return d2 < radius * radius


@functools.lru_cache(maxsize=8)
def _circle_mask_on(h: int, w: int, radius: int, device: torch.device) -> torch.Tensor:
    return _circle_mask_cpu(h, w, radius).to(device)


def circle_mask(h: int, w: int, radius: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Which image keys each image query sees, for an ``h x w`` map in row-major order.

    Args:
        h, w: map size.
        radius: r >= 1; query ``(i, j)`` sees key ``(i', j')`` iff ``(i - i')^2 + (j - j')^2 < r^2``.
        device: where the mask lives (cached per size, radius and device; treat it as read-only).

    Returns:
        (h * w, h * w) bool, ``[query, key]``.
    """
    if device is None or torch.device(device).type == "cpu":
        return _circle_mask_cpu(h, w, radius)
    return _circle_mask_on(h, w, radius, torch.device(device))


def clear_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    radius: int,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Circular local attention plus extra tokens, by dense masked attention.

    Args:
        q, k, v: (B, H, W, heads, head_dim).
        radius: r >= 1.
        extra_k, extra_v: (B, M, heads, head_dim) keys and values every query attends to, or both None.
        scale: multiplies q before the dot product; default ``head_dim ** -0.5``.

    Returns:
        (B, H, W, heads, head_dim) in q's dtype.
    """
    b, hh, ww, heads, head_dim = q.shape
    ct = torch.promote_types(q.dtype, torch.float32)
    scale = head_dim**-0.5 if scale is None else scale
    qs, ks, vs = (t.to(ct).reshape(b, hh * ww, heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, heads, N, D)
    logits = (qs * scale) @ ks.transpose(-1, -2)
    logits = logits.masked_fill(~circle_mask(hh, ww, radius, q.device), float("-inf"))
    if extra_k is not None:
        ek, ev = (t.to(ct).transpose(1, 2) for t in (extra_k, extra_v))  # (B, heads, M, D)
        logits = torch.cat([logits, (qs * scale) @ ek.transpose(-1, -2)], dim=-1)
        vs = torch.cat([vs, ev], dim=2)
    out = logits.softmax(dim=-1) @ vs
    return out.transpose(1, 2).reshape(b, hh, ww, heads, -1).to(q.dtype)
