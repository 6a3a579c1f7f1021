"""Ultra-Lightweight Subspace Attention Module (ULSAM; Saini, Jha, Das, Mittal, Mohan, WACV 2020,
https://arxiv.org/abs/2006.15102).

Written from the definition (spec ``ulsam.md`` §1, official ``Nandan91/ULSAM`` ``ulsam.py`` @ 9a07d68, which is not
imported: it sets the global default tensor type to CUDA at import). Takes and returns NCHW maps ``(B, C, H, W)``.
Parameter names follow the official code (``subspaces.{i}.conv_dws`` ...). No pretrained ULSAM weights exist.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ULSAM", "SubSpace"]


class SubSpace(nn.Module):
    """Attention over one subspace F of G channels: ``F * (1 + A)`` with one (H, W) map A per sample.

    ``A = softmax_HW(ReLU(BN_p(conv_point(MaxPool3(ReLU(BN_d(conv_dws(F))))))))``: ``conv_dws`` is a per-channel scale
    and bias (depthwise 1x1), ``conv_point`` mixes the G channels into one, and the softmax runs over all H * W
    positions (in at least float32), so A sums to 1 per sample. Both BatchNorms use momentum 0.9 as the official
    code does (PyTorch semantics: running statistics move 90% toward each batch).

    Shape: (B, G, H, W) -> (B, G, H, W).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv_dws = nn.Conv2d(channels, channels, kernel_size=1, groups=channels)
        self.bn_dws = nn.BatchNorm2d(channels, momentum=0.9)
        self.relu_dws = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.conv_point = nn.Conv2d(channels, 1, kernel_size=1)
        self.bn_point = nn.BatchNorm2d(1, momentum=0.9)
        self.relu_point = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        logits = self.maxpool(self.relu_dws(self.bn_dws(self.conv_dws(x))))
        logits = self.relu_point(self.bn_point(self.conv_point(logits)))
        # at least float32: the weights are ~1 / (H * W) and half precision would round them coarsely
        acc = torch.promote_types(logits.dtype, torch.float32)
        attn = torch.softmax(logits.view(b, 1, h * w), dim=-1, dtype=acc).view(b, 1, h, w).to(x.dtype)
        return x * attn + x


class ULSAM(nn.Module):
    """ULSAM: split the channels into ``num_splits`` contiguous subspaces, attend within each, concatenate.

    Args:
        channels: channels C (the official ``nin``; ``nout``, ``h``, ``w`` of the official constructor are unused).
        num_splits: number of subspaces g; C must be a multiple of it (the paper's best ImageNet results use 4).

    Shape:
        (B, channels, H, W) -> (B, channels, H, W).
    """

    def __init__(self, channels: int, num_splits: int):
        super().__init__()
        if num_splits < 1 or channels % num_splits:
            raise ValueError(f"ULSAM: channels={channels} must be a positive multiple of num_splits={num_splits}.")
        self.channels = channels
        self.num_splits = num_splits
        self.subspaces = nn.ModuleList(SubSpace(channels // num_splits) for _ in range(num_splits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"ULSAM expects an NCHW map (B, {self.channels}, H, W), got shape {tuple(x.shape)}.")
        chunks = torch.chunk(x, self.num_splits, dim=1)
        return torch.cat([sub(chunk) for sub, chunk in zip(self.subspaces, chunks)], dim=1)
