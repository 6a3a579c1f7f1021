"""Diffusion models: the DiT teacher (official layout and weights), its Gaussian diffusion and samplers, and CLEAR
distillation of a DiT into a local-attention student (:mod:`vizattn.diffusion.distill`)."""

from vizattn.diffusion.distill import DistillConfig, build_student, distill, load_student, sample_latents
from vizattn.diffusion.dit import DiT, DiTAttention, create_dit, dit_checkpoint_filter_fn, list_dit_models
from vizattn.diffusion.gaussian_diffusion import create_diffusion

__all__ = [
    "DiT",
    "DiTAttention",
    "DistillConfig",
    "build_student",
    "create_diffusion",
    "create_dit",
    "distill",
    "dit_checkpoint_filter_fn",
    "list_dit_models",
    "load_student",
    "sample_latents",
]
