"""Backend choice shared by every vizattn operator.

An op asks :func:`select_backend` which implementation to run. ``'auto'`` takes the Triton kernel when the inputs
live on a CUDA device and the kernel supports the case, and the PyTorch reference otherwise. The environment
variable ``VIZATTN_BACKEND`` (``torch`` or ``triton``) overrides ``'auto'`` for every call, which is how tests and
benchmarks force one path.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

import torch

__all__ = ["BACKENDS", "ENV_VAR", "select_backend", "triton_available"]

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "VIZATTN_BACKEND"
# Looked up once: torch.compile refuses to trace importlib's find_spec, and select_backend runs inside compiled models.
_TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it ships with CUDA builds of torch)."""
    return _TRITON_AVAILABLE


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def select_backend(
    op: str,
    backend: str,
    tensors: Sequence[torch.Tensor],
    unsupported: Sequence[str] = (),
    auto_triton: bool = True,
) -> str:
    """Pick the implementation an op runs.

    Args:
        op: name of the op, used in error messages.
        backend: ``'auto'``, ``'triton'`` or ``'torch'`` as the caller asked; ``'auto'`` yields to ``VIZATTN_BACKEND``.
        tensors: the op's tensor inputs; their device decides what ``'auto'`` means.
        unsupported: reasons why the op's Triton kernel cannot run this call (empty if it can, or if the op has
            no Triton kernel the reasons say so).
        auto_triton: whether ``'auto'`` may take the Triton kernel at all; an op passes False while its kernel has
            not yet been measured faster than the PyTorch path on a GPU (forcing ``'triton'`` still runs it).

    Returns:
        ``'triton'`` or ``'torch'``.

    Raises:
        ValueError: for an unknown backend name, or when ``'triton'`` is forced but cannot run; the message lists why.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend={backend!r} is not one of {BACKENDS}.")
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if env not in BACKENDS:
            raise ValueError(f"{op}: environment variable {ENV_VAR}={env!r} is not one of {BACKENDS}.")
        backend = env
    if backend == "torch":
        return "torch"

    reasons = list(unsupported)
    if not triton_available():
        reasons.append("the triton package is not installed")
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":
        # The interpreter is for tests: 'auto' never sends CPU tensors to it.
        return "triton" if auto_triton and on_cuda and not reasons else "torch"
    if not on_cuda and not _interpreting():
        reasons.append("the inputs are not on a CUDA device (set TRITON_INTERPRET=1 to run Triton on the CPU)")
    if reasons:
        raise ValueError(f"{op}: backend='triton' was requested but cannot run: " + "; ".join(reasons) + ".")
    return "triton"
