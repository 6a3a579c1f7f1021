"""Shared pieces of the DiT / diffusion tests: fixture paths, the tiny configuration, random weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from vizattn.diffusion import DiT

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "dit"
RTOL = 1e-5  # max |ours - official| / max |official|, float32


def fixture_config() -> dict:
    return json.loads((FIXTURES / "config.json").read_text())


def fixture_io() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "io.pt", map_location="cpu", weights_only=True)


# The configuration of tests/fixtures/dit (tiny: 183k parameters, a 4x4 token grid at the training size).
TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter but ``pos_embed``: weights N(0, 1/fan_in), biases N(0, 0.01), tables N(0, 1).

    A fresh DiT is an identity with zero output (adaLN-Zero), which would make most comparisons vacuous.
    """
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("pos_embed"):
                continue
            owner = modules[name.rsplit(".", 1)[0]]
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif isinstance(owner, torch.nn.Embedding):
                p.copy_(noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))
    return model


def tiny_dit(seed: int = 0, **overrides) -> DiT:
    """The fixture configuration (with ``overrides``) with random weights, in eval mode."""
    return randomize(DiT(**{**TINY, **overrides}), seed).eval()


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return ((ours - ref).abs().max() / ref.abs().max()).item()
