"""Model statistics for the zoo table: parameters, multiply-accumulates and output shapes."""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["ModelStats", "count_params", "count_gmacs", "model_stats"]


@dataclass
class ModelStats:
    name: str
    params: int
    gmacs: float
    logits_shape: tuple[int, ...]
    feature_shapes: list[tuple[int, ...]]


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gmacs(model: torch.nn.Module, input_size: tuple[int, int, int]) -> float:
    """Multiply-accumulates (in G) of one forward pass on a single image, counted by torch's FlopCounterMode.

    One MAC counts as one "FLOP", the fvcore convention that most papers (BiFormer included) report as GFLOPs.
    Matrix products and convolutions are counted; norms, activations and softmax are not.
    """
    x = torch.randn(1, *input_size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    return counter.get_total_flops() / 2e9


@torch.no_grad()
def model_stats(name: str, **kwargs) -> ModelStats:
    """Build ``name`` with timm (random weights, eval mode) and measure it at its pretrained input size."""
    model = timm.create_model(name, **kwargs).eval()
    input_size = tuple(model.pretrained_cfg["input_size"])
    logits = model(torch.randn(1, *input_size))
    feats = model.forward_intermediates(torch.randn(1, *input_size), intermediates_only=True)
    return ModelStats(
        name=name,
        params=count_params(model),
        gmacs=count_gmacs(model, input_size),
        logits_shape=tuple(logits.shape),
        feature_shapes=[tuple(f.shape) for f in feats],
    )
