"""Bi-level routing attention (BiFormer, CVPR 2023) in pure PyTorch: the definition of the op.

Semantics are those of the official ``ops/bra_legacy.py`` (rayleizhu/BiFormer), which every released checkpoint
uses. Inputs are NHWC maps whose sides are multiples of ``n_win``; the map is cut into ``n_win x n_win`` regions in
row-major order (region index ``j * n_win + i`` for region row ``j``). Heads are contiguous channel chunks.

This file is slow on purpose: it gathers the routed keys and values into a ``(N, S^2, topk * h * w, C)`` copy, the
memory the fused kernel avoids. It computes in float32 and returns the input dtype.
"""

from __future__ import annotations

import torch

__all__ = ["region_routing_reference", "routed_attention_reference", "to_regions", "from_regions"]


def to_regions(x: torch.Tensor, n_win: int) -> torch.Tensor:
    """(N, H, W, C) -> (N, n_win^2, h * w, C) with h = H / n_win, w = W / n_win, regions row-major."""
    n, hh, ww, c = x.shape
    h, w = hh // n_win, ww // n_win
    x = x.reshape(n, n_win, h, n_win, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, n_win * n_win, h * w, c)


def from_regions(x: torch.Tensor, n_win: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`to_regions`: (N, n_win^2, h * w, C) -> (N, n_win * h, n_win * w, C)."""
    n, _, _, c = x.shape
    x = x.reshape(n, n_win, n_win, h, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, n_win * h, n_win * w, c)


def _region_means(x: torch.Tensor, n_win: int) -> torch.Tensor:
    """(N, H, W, C) -> (N, n_win^2, C): each region's mean token, reduced in place (:func:`to_regions` would copy the
    map into region order first)."""
    n, hh, ww, c = x.shape
    return x.reshape(n, n_win, hh // n_win, n_win, ww // n_win, c).mean(dim=(2, 4)).reshape(n, n_win * n_win, c)


def region_routing_reference(q: torch.Tensor, k: torch.Tensor, n_win: int, topk: int, scale: float) -> torch.Tensor:
    """Top-k region routing on detached region means.

    Args:
        q, k: (N, H, W, C_qk) projected queries and keys.
        n_win: regions per side.
        topk: regions each region attends to.
        scale: multiplies the query means before the affinity (the official code uses C_qk ** -0.5).

    Returns:
        (N, n_win^2, topk) int64 indices of the routed key regions, best first; one set shared by all heads.
    """
    q_win, k_win = (_region_means(t.detach(), n_win) for t in (q, k))
    logits = (q_win * scale) @ k_win.transpose(-2, -1)
    return torch.topk(logits, k=topk, dim=-1).indices


def routed_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_idx: torch.Tensor, n_win: int, num_heads: int, scale: float
) -> torch.Tensor:
    """Token attention of every region over the tokens of its routed regions.

    Args:
        q, k: (N, H, W, C_qk); v: (N, H, W, C_v); H and W multiples of ``n_win``.
        r_idx: (N, n_win^2, topk) integer indices of key regions per query region.
        n_win: regions per side.
        num_heads: heads; C_qk and C_v must be multiples of it.
        scale: softmax temperature applied to q.

    Returns:
        (N, H, W, C_v) in ``v.dtype``. Keys are ordered by routing rank, then row-major inside each region.
    """
    n, hh, ww, c_qk = q.shape
    c_v = v.shape[-1]
    h, w = hh // n_win, ww // n_win
    p2, topk = r_idx.shape[1], r_idx.shape[2]
    qr, kr, vr = (to_regions(t.float(), n_win) for t in (q, k, v))

    def gather(t: torch.Tensor) -> torch.Tensor:
        # (N, S^2, h*w, C) -> (N, S^2, topk*h*w, C): the k-times redundant copy of the official code.
        c = t.shape[-1]
        idx = r_idx.long().reshape(n, p2, topk, 1, 1).expand(-1, -1, -1, h * w, c)
        sel = torch.gather(t.unsqueeze(1).expand(-1, p2, -1, -1, -1), 2, idx)
        return sel.reshape(n, p2, topk * h * w, c)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(*t.shape[:3], num_heads, -1).transpose(2, 3)  # (N, S^2, m, L, d)

    qh, kh, vh = heads(qr), heads(gather(kr)), heads(gather(vr))
    attn = ((qh * scale) @ kh.transpose(-2, -1)).softmax(dim=-1)
    out = (attn @ vh).transpose(2, 3).reshape(n, p2, h * w, c_v)
    return from_regions(out, n_win, h, w).to(v.dtype)
