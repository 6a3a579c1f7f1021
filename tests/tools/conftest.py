"""Fixtures of the tool tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from vizattn.data import write_shapes


@pytest.fixture(scope="session")
def shapes_tiny(tmp_path_factory) -> Path:
    """The Shapes set at 32 px: 3 training and 2 validation images per class (30 / 20)."""
    return write_shapes(tmp_path_factory.mktemp("shapes"), size=32, train_per_class=3, val_per_class=2)
