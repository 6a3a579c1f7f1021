"""A synthetic ImageNet-sized folder for throughput runs: JPEG photos-in-size-only, with no learnable content.

ImageNet's training images average about 400x350 pixels and 110 KB of JPEG; decoding and resizing them is what a
training run's loader workers spend their time on. These images have that size and a comparable decode cost (smooth
random colour fields plus pixel noise of random strength, JPEG quality 90), so a training run on them loads data as
it would from ImageNet. Labels are random: use the folder to measure img/s, not accuracy.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_synthetic_imagenet"]


def _image(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    coarse = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    img += rng.integers(-1, 2, img.shape, dtype=np.int16) * int(rng.integers(0, 56))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _write_class(args: tuple[Path, str, int, int, int, int]) -> None:
    folder, split, label, count, seed, split_id = args
    out = folder / split / f"n{label:08d}"
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng([seed, split_id, label, i])
        height, width = int(rng.integers(300, 450)), int(rng.integers(400, 550))
        _image(rng, height, width).save(out / f"{label:04d}_{i:05d}.JPEG", quality=90)


def write_synthetic_imagenet(root: str | os.PathLike, classes: int = 1000, train_per_class: int = 20,
                             val_per_class: int = 5, seed: int = 0, processes: int | None = None) -> Path:
    """Write ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG`` (deterministic, in parallel).

    Args:
        root: output folder.
        classes: class folders (1000 as ImageNet).
        train_per_class, val_per_class: images per class folder.
        seed: the images follow from it.
        processes: writer processes (default: all cores).
    """
    root = Path(root)
    jobs = [(root, split, label, n, seed, split_id)
            for split_id, (split, n) in enumerate((("train", train_per_class), ("val", val_per_class)))
            for label in range(classes)]
    with ProcessPoolExecutor(processes or os.cpu_count()) as pool:
        list(pool.map(_write_class, jobs, chunksize=8))
    return root
