"""Output allocation shared by the Triton launchers."""

from __future__ import annotations

import os

import torch

__all__ = ["POISON_ENV", "new_output"]

POISON_ENV = "VIZATTN_POISON_OUTPUTS"


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor a kernel fills.

    Tests set ``VIZATTN_POISON_OUTPUTS=1`` to get it filled with NaN (or a large negative integer) instead, so that an
    element a kernel forgets to write fails the comparison with the reference.
    """
    if os.environ.get(POISON_ENV, "0") == "1":
        if dtype.is_floating_point:
            return torch.full(shape, float("nan"), dtype=dtype, device=device)
        return torch.full(shape, -(2**30), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
