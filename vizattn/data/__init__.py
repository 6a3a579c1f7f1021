"""Built-in datasets: procedurally generated image sets, written once as ImageNet-layout folders.

A training or validation tool given ``--data-dir builtin:shapes`` reads the folder :func:`resolve_data_dir` returns
(written on first use under :func:`default_cache_dir`), so the built-in set goes through exactly the loaders a real
dataset does.
"""

from __future__ import annotations

from pathlib import Path

from vizattn.data.shapes import CLASSES, default_cache_dir, render, shapes_dir, write_shapes

__all__ = ["BUILTIN", "CLASSES", "render", "write_shapes", "shapes_dir", "default_cache_dir", "resolve_data_dir"]

BUILTIN = {"shapes": shapes_dir}
PREFIX = "builtin:"


def resolve_data_dir(spec: str) -> Path:
    """A data folder for ``spec``: ``builtin:<name>`` gives the cached built-in set, anything else is a path.

    Raises:
        ValueError: for an unknown built-in name; the message lists the known ones.
    """
    if spec.startswith(PREFIX):
        name = spec[len(PREFIX):]
        if name not in BUILTIN:
            raise ValueError(
                f"Unknown built-in dataset {spec!r}; built-in sets: {', '.join(PREFIX + n for n in BUILTIN)}."
            )
        return BUILTIN[name]()
    return Path(spec).expanduser()
