"""Data for training and evaluation: ImageNet-layout folders, timm transforms, resumable seeded sampling.

Randomness is made a function of position rather than of history, so a run resumed from a checkpoint in the middle
of an epoch continues exactly as the uninterrupted run would, with any number of loader workers:

- the sampler's order for an epoch comes from ``(seed, epoch)``, and it can start at any position;
- each sample's augmentation (crop, flip, RandAugment) runs under RNGs seeded from ``(seed, epoch, rank, position)``;
- batch-level randomness on the device (random erasing, mixup/cutmix, drop path) runs after :func:`seed_step`
  seeds the RNGs from ``(seed, rank, step)``.

Images leave the workers as uint8 tensors; normalisation, random erasing and mixup run batched on the training
device (:class:`BatchPrep`), which keeps the workers' CPU time for decoding and augmentation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import timm.data.auto_augment as timm_auto_augment
import torch
from PIL import Image
from timm.data import ImageDataset, Mixup, create_transform
from timm.data.random_erasing import RandomErasing
from torch.utils.data import DataLoader, Dataset

from vizattn.data import resolve_data_dir
from vizattn.train.config import ConfigError

__all__ = ["DATA_CFG_KEYS", "seed_hash", "seed_step", "check_image_folder", "image_dataset", "TrainSampler",
           "SeededDataset", "train_loader", "eval_loader", "BatchPrep"]

# The pretrained-cfg keys that describe evaluation preprocessing (what checkpoints store, what validate.py reads).
DATA_CFG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
_MASK64 = (1 << 64) - 1


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize op, also for 0 bits. RandAugment's 'PosterizeIncreasing' keeps 0 bits at magnitude 10, which
    `mstd0.5` reaches (about 2% of draws at m9); Pillow >= 12 raises for 0 bits where the Pillow of the official
    recipes returned a black image, so a worker would crash a few hundred images into an ImageNet run."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size, 0)
    return _timm_posterize(img, bits_to_keep, **kwargs)


_timm_posterize = timm_auto_augment.posterize
for _name, _op in list(timm_auto_augment.NAME_TO_OP.items()):
    if _op is _timm_posterize:
        timm_auto_augment.NAME_TO_OP[_name] = _posterize


def seed_hash(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (splitmix64 steps), the same in every process and Python version."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h >> 1


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def seed_step(seed: int, rank: int, step: int) -> None:
    """Seed python, numpy and torch (all devices) for training step ``step`` on ``rank``."""
    _seed_all(seed_hash(seed, 1, rank, step))


def check_image_folder(data_dir: str, split: str) -> Path:
    """Return ``<data_dir>/<split>`` after checking the ImageNet layout; a ConfigError names what is wrong.

    ``data_dir`` may be ``builtin:<name>`` (see :func:`vizattn.data.resolve_data_dir`).
    """
    try:
        root = resolve_data_dir(data_dir)
    except ValueError as e:
        raise ConfigError(f"--data-dir: {e}") from None
    layout = f"the ImageNet layout {root}/{split}/<class>/<image>"
    if not root.is_dir():
        raise ConfigError(f"--data-dir {root}: no such folder (expected {layout}).")
    folder = root / split
    if not folder.is_dir():
        hint = ""
        if any((root.parent / s).is_dir() for s in ("train", "val")) and root.name in ("train", "val"):
            hint = f" It looks like a split folder itself: pass --data-dir {root.parent}."
        raise ConfigError(f"--data-dir {root} has no {split}/ folder (expected {layout}).{hint}")
    if not any(p.is_dir() for p in folder.iterdir()):
        raise ConfigError(f"{folder} has no class folders (expected {layout}).")
    return folder


def image_dataset(folder: Path, class_to_idx: dict[str, int] | None = None) -> ImageDataset:
    """timm ImageDataset of one split folder; ``class_to_idx`` (from the training split) keeps labels aligned."""
    if class_to_idx is not None:
        extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in class_to_idx)
        if extra:
            raise ConfigError(f"{folder} has class folders the training split lacks: {extra[:5]}.")
    try:
        return ImageDataset(str(folder), class_map=class_to_idx or "")
    except RuntimeError:  # timm's reader found no image
        raise ConfigError(f"{folder} holds no images (.png, .jpg, .jpeg) in its class folders.") from None


class TrainSampler:
    """Shuffled (optionally repeated) sample order for one rank, resumable at any position.

    Each epoch draws a permutation from ``(seed, epoch)``; with ``repeats > 1`` every index appears ``repeats``
    times in a row before the stream is dealt to the ranks in turn (so repeats land on different ranks, or in one
    batch on a single process), and an epoch keeps the length of one pass over the data, as in DeiT's repeated
    augmentation. Each rank gets ``ceil(n / num_replicas)`` positions per epoch. Items are ``(index, sample_seed)``
    pairs for :class:`SeededDataset`.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, repeats: int = 0):
        self.n = num_samples
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.repeats = max(1, repeats)
        self.per_rank = math.ceil(num_samples / num_replicas)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and the first position (samples already consumed on this rank) of the next pass."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.per_rank - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator()
        g.manual_seed(seed_hash(self.seed, 0, self.epoch))
        order = torch.randperm(self.n, generator=g)
        if self.repeats > 1:
            order = order.repeat_interleave(self.repeats)
        total = self.per_rank * self.num_replicas
        order = order[torch.arange(total) % len(order)]  # wraps around only when n does not divide evenly
        mine = order[self.rank : total : self.num_replicas].tolist()
        for pos in range(self.start, self.per_rank):
            yield mine[pos], seed_hash(self.seed, 2, self.epoch, self.rank, pos)


class SeededDataset(Dataset):
    """Wraps a map-style dataset: item ``(index, seed)`` is ``dataset[index]`` drawn under RNGs seeded by ``seed``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        _seed_all(seed)
        return self.dataset[index]


def _transform_args(data_cfg: dict[str, Any]) -> dict[str, Any]:
    return dict(input_size=data_cfg["input_size"], mean=data_cfg["mean"], std=data_cfg["std"], use_prefetcher=True)


def train_loader(dataset: ImageDataset, cfg: Any, data_cfg: dict[str, Any], world_size: int, rank: int,
                 pin_memory: bool) -> tuple[DataLoader, TrainSampler]:
    """Training loader: timm's ImageNet train transform (uint8 output), seeded per sample, full batches only."""
    dataset.transform = create_transform(
        is_training=True,
        scale=tuple(cfg.scale),
        ratio=tuple(cfg.ratio),
        hflip=cfg.hflip,
        vflip=cfg.vflip,
        color_jitter=cfg.color_jitter,
        auto_augment=cfg.aa,
        interpolation=cfg.train_interpolation,
        **_transform_args(data_cfg),
    )
    sampler = TrainSampler(len(dataset), world_size, rank, cfg.seed, cfg.aug_repeats)
    if sampler.per_rank < cfg.batch_size:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is larger than the {sampler.per_rank} training images each of the "
            f"{world_size} processes gets per epoch; lower --batch-size."
        )
    loader = DataLoader(
        SeededDataset(dataset),
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=cfg.workers > 0,
    )
    return loader, sampler


def eval_loader(dataset: ImageDataset, data_cfg: dict[str, Any], batch_size: int, workers: int, world_size: int,
                rank: int, pin_memory: bool) -> DataLoader:
    """Evaluation loader over this rank's shard (every ``world_size``-th image, no padding, so sums are exact)."""
    dataset.transform = create_transform(
        is_training=False,
        interpolation=data_cfg["interpolation"],
        crop_pct=data_cfg["crop_pct"],
        crop_mode=data_cfg.get("crop_mode"),
        **_transform_args(data_cfg),
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(range(rank, len(dataset), world_size)),
        num_workers=workers,
        pin_memory=pin_memory,
    )


class BatchPrep:
    """Device side of the input pipeline: uint8 batch -> normalised float, then random erasing and mixup/cutmix.

    Args:
        mean, std: normalisation (RGB, 0-1 scale).
        device: training device.
        channels_last: return channels_last inputs.
        reprob, remode, recount: random erasing (off when ``reprob`` is 0).
        mixup: a timm ``Mixup`` (returns soft targets), or None.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device, channels_last: bool = False,
                 reprob: float = 0.0, remode: str = "pixel", recount: int = 1, mixup: Mixup | None = None):
        self.device = device
        self.mean = torch.tensor([255 * m for m in mean], device=device).view(1, -1, 1, 1)
        self.std = torch.tensor([255 * s for s in std], device=device).view(1, -1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.erase = RandomErasing(reprob, mode=remode, max_count=recount, device=device) if reprob > 0 else None
        self.mixup = mixup

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        images = images.float().sub_(self.mean).div_(self.std).contiguous(memory_format=self.memory_format)
        if train:
            if self.erase is not None:
                self.erase(images)
            if self.mixup is not None:
                images, targets = self.mixup(images, targets)
        return images, targets
