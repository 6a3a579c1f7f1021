"""Top-1/top-5 evaluation, shared by the training loop and ``tools/validate.py``."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vizattn.train.config import ConfigError
from vizattn.train.distributed import DistInfo, all_reduce_sum, init_distributed
from vizattn.train.loaders import BatchPrep, check_image_folder, eval_loader, image_dataset
from vizattn.train.models import build_model, data_config, load_checkpoint_file, set_data_config

__all__ = ["Metrics", "evaluate", "ValidateResult", "validate"]
_logger = logging.getLogger("vizattn.train")


@dataclass
class Metrics:
    loss: float
    top1: float
    top5: float
    count: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}loss": self.loss, f"{prefix}top1": self.top1, f"{prefix}top5": self.top5}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, prep: BatchPrep, info: DistInfo,
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Metrics:
    """Cross-entropy, top-1 and top-5 accuracy (percent) over every rank's shard of ``loader``, summed exactly."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=info.device)  # loss, correct@1, correct@5, count
    for images, targets in loader:
        images, targets = prep(images, targets, train=False)
        with autocast():
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(targets[:, None])
        sums += torch.stack([
            F.cross_entropy(logits, targets, reduction="sum").double(),
            hit[:, :1].sum().double(),
            hit.sum().double(),
            torch.tensor(float(len(targets)), dtype=torch.float64, device=info.device),
        ])
    loss, c1, c5, n = all_reduce_sum(sums, info).tolist()
    model.train(was_training)
    n = max(n, 1.0)
    return Metrics(loss / n, 100.0 * c1 / n, 100.0 * c5 / n, int(n))


@dataclass
class ValidateResult:
    model: str
    metrics: Metrics
    source: str
    split_dir: str
    data_cfg: dict[str, Any]
    seconds: float

    def line(self) -> str:
        m = self.metrics
        return (f"top-1 {m.top1:.2f}%  top-5 {m.top5:.2f}%  loss {m.loss:.4f}  on {m.count} images of {self.split_dir}"
                f"  ({self.model}, {self.source}, {self.seconds:.1f} s)")


def validate(data_dir: str, checkpoint: str | None = None, model: str | None = None, split: str = "val",
             ema: bool = False, batch_size: int = 128, workers: int = 4, device: str = "auto", amp: bool = True,
             input_size: int | None = None, crop_pct: float | None = None, interpolation: str | None = None,
             channels_last: bool = False, cpu_threads: int | None = None) -> ValidateResult:
    """Evaluate a model on an ImageNet-layout split with the preprocessing of its pretrained cfg.

    Args:
        data_dir: folder holding ``<split>/<class>/<image>`` (or ``builtin:shapes``).
        checkpoint: a vizattn training checkpoint (model name, its arguments and the preprocessing it was trained
            with are read from it), or, with ``model``, any weight file the model's family loads (an official
            checkpoint goes through its ``checkpoint_filter_fn``).
        model: model name; required unless ``checkpoint`` is a training checkpoint.
        split: sub-folder to evaluate.
        ema: evaluate the EMA weights of a training checkpoint.
        batch_size, workers: loader settings.
        device: ``auto``, ``cpu`` or ``cuda``; under torchrun each rank evaluates a shard.
        amp: bfloat16 autocast on CUDA.
        input_size, crop_pct, interpolation: override the pretrained cfg's preprocessing.
        channels_last: channels_last model and inputs.
        cpu_threads: intra-op threads (torch.set_num_threads); default: torch's choice.
    """
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    info = init_distributed(device)
    try:
        return _validate(info, data_dir, checkpoint, model, split, ema, batch_size, workers, amp, input_size,
                         crop_pct, interpolation, channels_last)
    finally:
        if info.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _validate(info: DistInfo, data_dir: str, checkpoint: str | None, model: str | None, split: str, ema: bool,
              batch_size: int, workers: int, amp: bool, input_size: int | None, crop_pct: float | None,
              interpolation: str | None, channels_last: bool) -> ValidateResult:
    start = time.perf_counter()
    folder = check_image_folder(data_dir, split)
    ckpt = None
    if checkpoint is not None:
        try:
            ckpt = load_checkpoint_file(checkpoint)
        except ConfigError:
            if model is None:
                raise
    if ckpt is not None:
        if model is not None and model != ckpt["arch"]:
            raise ConfigError(f"--model {model} differs from the checkpoint's model {ckpt['arch']}.")
        name = ckpt["arch"]
        net = build_model(name, ckpt["num_classes"], ckpt.get("model_kwargs"),
                          pretrained_cfg_overlay=ckpt.get("pretrained_cfg"))
        key = "state_dict_ema" if ema else "state_dict"
        if ckpt.get(key) is None:
            raise ConfigError(f"{checkpoint} holds no EMA weights (the run had model_ema off).")
        net.load_state_dict(ckpt[key])
        source = f"{checkpoint}{' (EMA)' if ema else ''}"
        class_to_idx = {c: i for i, c in enumerate(ckpt["class_names"])} if ckpt.get("class_names") else None
    else:
        if model is None:
            raise ConfigError("Give --model (and optionally --checkpoint with its weights).")
        num_classes = len([p for p in folder.iterdir() if p.is_dir()])
        net = build_model(model, num_classes, pretrained_path=checkpoint)
        name, source, class_to_idx = model, checkpoint or "random init", None
    dataset = image_dataset(folder, class_to_idx)
    data_cfg = data_config(net, input_size, crop_pct, interpolation)
    set_data_config(net, data_cfg)
    net = net.to(info.device).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    loader = eval_loader(dataset, data_cfg, batch_size, workers, info.world_size, info.rank,
                         pin_memory=info.device.type == "cuda")
    prep = BatchPrep(data_cfg["mean"], data_cfg["std"], info.device, channels_last)
    autocast = contextlib.nullcontext
    if amp and info.device.type == "cuda":
        def autocast():
            return torch.autocast("cuda", dtype=torch.bfloat16)
    _logger.info("evaluating %s (%s) on %d images of %s; preprocessing %s", name, source, len(dataset), folder,
                 data_cfg)
    metrics = evaluate(net, loader, prep, info, autocast)
    return ValidateResult(name, metrics, source, str(folder), data_cfg, time.perf_counter() - start)
