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


def _neighborhood_macs(module: torch.nn.Module, x: torch.Tensor) -> float:
    """MACs of the attention core of a NeighborhoodAttention2d call: q.k and attn.v over k*k keys per query."""
    b, h, w, c = x.shape
    h, w = max(h, module.kernel_size * module.dilation), max(w, module.kernel_size * module.dilation)  # padded
    return 2.0 * b * h * w * c * module.kernel_size**2


@torch.no_grad()
def count_gmacs(model: torch.nn.Module, input_size: tuple[int, int, int]) -> float:
    """Multiply-accumulates (in G) of one forward pass on a single image, counted by torch's FlopCounterMode.

    One MAC counts as one "FLOP", the fvcore convention that most papers (BiFormer, NAT included) report as GFLOPs.
    Matrix products and convolutions are counted; norms, activations and softmax are not. Neighborhood attention's
    core is counted as the k*k keys per query it attends to (what NAT's own counter reports), not as whatever the
    CPU implementation happens to multiply.
    """
    from vizattn.blocks.neighborhood import NeighborhoodAttention2d

    x = torch.randn(1, *input_size)
    counter = FlopCounterMode(display=False)
    na_inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=name: na_inputs.__setitem__(name, args[0]))
        for name, m in model.named_modules()
        if isinstance(m, NeighborhoodAttention2d)
    ]
    try:
        with counter:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    counts = counter.get_flop_counts()
    total = counter.get_total_flops() / 2
    root = type(model).__name__
    for name, inp in na_inputs.items():
        module = model.get_submodule(name)
        inner = sum(counts.get(f"{root}.{name}", {}).values())
        projections = sum(sum(counts.get(f"{root}.{name}.{p}", {}).values()) for p in ("qkv", "proj"))
        total += _neighborhood_macs(module, inp) - (inner - projections) / 2
    return total / 1e9


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
