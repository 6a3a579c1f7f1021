"""Shapes: a procedurally generated, deterministic 10-class image classification set.

Each image holds one object on a random background. The class is what the object is: six solid shapes (circle,
square, triangle, cross, ring, crescent) and four textures filling a disk or a square (horizontal stripes, vertical
stripes, checkerboard, dots). Everything else varies at random and carries no label: the object's colour, size,
position and rotation, the texture's period and phase, the background colour, its gradient and pixel noise. A
classifier therefore has to look at outline and texture rather than colour or place; a small attention model learns
it to about 90% in a few CPU minutes, which makes it the set of the default training run.

Images are drawn with anti-aliased signed distances in numpy, one random generator per image seeded from
``(seed, split, class, index)``, and written as PNG files, so the same arguments give byte-identical files in any
order or process. The tree is the ImageNet layout (``train/<class>/<image>.png``, ``val/<class>/<image>.png``) and
goes through exactly the loaders a real dataset does.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["CLASSES", "render", "write_shapes", "shapes_dir", "default_cache_dir"]

CLASSES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "crescent",
    "hstripes",
    "vstripes",
    "checker",
    "dots",
)
_logger = logging.getLogger(__name__)
_VERSION = 1  # bump when the drawing changes, so cached trees of the old drawing are not reused
_SPLITS = {"train": 0, "val": 1}


def _rot(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    return c * x + s * y, -s * x + c * y


def _box(x: np.ndarray, y: np.ndarray, hw: float, hh: float) -> np.ndarray:
    # Signed distance (pixels, negative inside) of an axis-aligned box; exact outside, a lower bound inside.
    dx, dy = np.abs(x) - hw, np.abs(y) - hh
    return np.hypot(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0)


def _circle(x, y, r, rng):
    return np.hypot(x, y) - r


def _square(x, y, r, rng):
    return _box(*_rot(x, y, rng.uniform(-0.3, 0.3)), 0.8 * r, 0.8 * r)


def _triangle(x, y, r, rng):
    u, v = _rot(x, y, rng.uniform(0, 2 * np.pi))
    # Equilateral: the largest of the three edge half-plane distances (apothem r/2).
    angles = np.pi / 2 + 2 * np.pi * np.arange(3) / 3
    return np.max([np.cos(a) * u + np.sin(a) * v for a in angles], axis=0) - 0.5 * r


def _cross(x, y, r, rng):
    u, v = _rot(x, y, rng.uniform(-0.3, 0.3))
    arm = rng.uniform(0.22, 0.32) * r
    return np.minimum(_box(u, v, r, arm), _box(u, v, arm, r))


def _ring(x, y, r, rng):
    return np.abs(np.hypot(x, y) - 0.75 * r) - rng.uniform(0.15, 0.25) * r


def _crescent(x, y, r, rng):
    dx, dy = 0.55 * r * np.cos(a := rng.uniform(0, 2 * np.pi)), 0.55 * r * np.sin(a)
    return np.maximum(np.hypot(x, y) - r, 0.85 * r - np.hypot(x - dx, y - dy))


def _texture_region(x, y, r, rng):
    return _circle(x, y, r, rng) if rng.random() < 0.5 else _box(x, y, 0.85 * r, 0.85 * r)


def _stripes(axis: int) -> Callable:
    def pattern(x, y, rng):
        period = rng.uniform(6.0, 9.0)
        t = (y if axis == 0 else x) / period + rng.random()
        return np.sin(2 * np.pi * t)

    return pattern


def _checker(x, y, rng):
    period = rng.uniform(10.0, 14.0)
    ox, oy = rng.random(2)
    return np.sin(2 * np.pi * (x / period + ox)) * np.sin(2 * np.pi * (y / period + oy))


def _dots(x, y, rng):
    period = rng.uniform(11.0, 14.0)
    ox, oy = rng.random(2) * period
    fx = (x + ox) % period - period / 2
    fy = (y + oy) % period - period / 2
    return 0.25 * period - np.hypot(fx, fy)  # positive inside each dot


_SHAPES = {"circle": _circle, "square": _square, "triangle": _triangle, "cross": _cross, "ring": _ring,
           "crescent": _crescent}
_TEXTURES = {"hstripes": _stripes(0), "vstripes": _stripes(1), "checker": _checker, "dots": _dots}


def _colour(rng: np.random.Generator, avoid: np.ndarray | None = None) -> np.ndarray:
    # An object colour keeps a clear distance from the background's, so no object is invisible.
    while True:
        c = rng.uniform(0, 255, 3).astype(np.float32)
        if avoid is None or np.abs(c - avoid).sum() > 180:
            return c


def render(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Draw one image of class ``CLASSES[label]``.

    Args:
        label: class index in ``CLASSES``.
        rng: the image's own random generator (it decides everything but the class).
        size: image side in pixels.

    Returns:
        (size, size, 3) uint8 RGB array.
    """
    name = CLASSES[label]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    bg = _colour(rng)
    ramp = (xx * np.cos(g := rng.uniform(0, 2 * np.pi)) + yy * np.sin(g)) / size
    img = (bg + rng.uniform(-40, 40, 3) * ramp[..., None]).astype(np.float32)
    fg = _colour(rng, avoid=bg)
    r = rng.uniform(0.2, 0.34) * size
    cx, cy = rng.uniform(r + 2, size - r - 2, 2)
    x, y = xx - cx, yy - cy
    if name in _SHAPES:
        dist = _SHAPES[name](x, y, r, rng)
        alpha = np.clip(0.5 - dist, 0, 1)[..., None]
        img = img * (1 - alpha) + fg * alpha
    else:
        dist = _texture_region(x, y, r, rng)
        alpha = np.clip(0.5 - dist, 0, 1)[..., None]
        second = _colour(rng, avoid=fg)
        mix = np.clip(0.5 + _TEXTURES[name](x, y, rng), 0, 1)[..., None]  # anti-aliased two-colour pattern
        img = img * (1 - alpha) + (fg * mix + second * (1 - mix)) * alpha
    img += rng.standard_normal(img.shape, dtype=np.float32) * 6
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_shapes(root: str | os.PathLike, size: int = 64, train_per_class: int = 500, val_per_class: int = 100,
                 seed: int = 0) -> Path:
    """Write the set as an ImageNet-layout tree under ``root`` (created; must not hold another tree).

    Returns:
        ``root`` as a Path, holding ``train/<class>/*.png`` and ``val/<class>/*.png``.
    """
    root = Path(root)
    counts = {"train": train_per_class, "val": val_per_class}
    for split, n in counts.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rng = np.random.default_rng([seed, _SPLITS[split], label, i])
                Image.fromarray(render(label, rng, size)).save(folder / f"{name}_{i:05d}.png", compress_level=0)
    return root


def default_cache_dir() -> Path:
    """``$VIZATTN_CACHE`` if set, else ``$XDG_CACHE_HOME/vizattn`` (``~/.cache/vizattn``), plus ``/data``."""
    base = os.environ.get("VIZATTN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vizattn"
    )
    return Path(base) / "data"


def shapes_dir(cache_dir: str | os.PathLike | None = None, size: int = 64, train_per_class: int = 500,
               val_per_class: int = 100, seed: int = 0) -> Path:
    """The cached Shapes tree for these arguments, written on first use (a few seconds).

    The tree is built in a temporary folder beside its final place and renamed into it, so concurrent callers
    (every rank of a distributed run) never see half a tree; a loser of the race discards its copy.

    Args:
        cache_dir: parent folder (default :func:`default_cache_dir`).
        size, train_per_class, val_per_class, seed: as :func:`write_shapes`; they name the folder.

    Returns:
        The dataset root, to pass as ``--data-dir``.
    """
    parent = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = parent / f"shapes-v{_VERSION}-{size}px-{train_per_class}x{val_per_class}-seed{seed}"
    if (final / "val").is_dir():
        return final
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=parent))
    _logger.info("writing the Shapes set (%d images) to %s, once", (train_per_class + val_per_class) * len(CLASSES),
                 final)
    try:
        write_shapes(tmp, size, train_per_class, val_per_class, seed)
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "val").is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
