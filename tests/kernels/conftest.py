"""Fixtures of the kernel tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    """Kernel outputs and gradients are allocated NaN-filled (``vizattn.kernels._alloc``), so an element a kernel
    never writes fails the comparison with the reference."""
    monkeypatch.setenv("VIZATTN_POISON_OUTPUTS", "1")
