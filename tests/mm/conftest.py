"""Shared setup of the OpenMMLab tests: they run the real mmengine/mmcv/mmdet/mmseg (the `mm` extra).

Without those packages every test here fails with the command that installs them; the rest of the suite still
runs. Test modules import OpenMMLab code inside fixtures and tests, never at module level, so that collection works
without it.
"""

from __future__ import annotations

import importlib

import pytest


def _missing_packages() -> list[str]:
    missing = []
    for name in ("mmengine", "mmcv.ops", "mmdet.models", "mmseg.models"):
        try:
            importlib.import_module(name)
        except ImportError as err:
            missing.append(f"{name} ({err})")
    return missing


_MISSING = None


@pytest.fixture(autouse=True)
def _require_openmmlab() -> None:
    global _MISSING
    if _MISSING is None:
        _MISSING = _missing_packages()
    if _MISSING:
        pytest.fail(
            "tests/mm need the OpenMMLab stack (the `mm` extra): run `make mm` or `tools/install_mm.sh "
            f"<venv>/bin/python`. Missing: {'; '.join(_MISSING)}",
            pytrace=False,
        )

