"""Diffusion models: the DiT teacher (official layout and weights) and its Gaussian diffusion and samplers."""

from vizattn.diffusion.dit import DiT, DiTAttention, create_dit, dit_checkpoint_filter_fn, list_dit_models
from vizattn.diffusion.gaussian_diffusion import create_diffusion

__all__ = ["DiT", "DiTAttention", "create_diffusion", "create_dit", "dit_checkpoint_filter_fn", "list_dit_models"]
