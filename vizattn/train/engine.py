"""The training loop behind ``tools/train.py``, assembled from timm's pieces.

timm provides the transforms (RandAugment included), Mixup/CutMix, random erasing, the optimizer and scheduler
factories, EMA, gradient clipping and BatchNorm synchronisation; this module wires them into one loop with
exact resume (see :mod:`vizattn.train.loaders` for how randomness is keyed), DDP under torchrun, per-step cosine
scheduling, periodic progress lines, ``args.yaml``, ``summary.csv`` and ``last.pth``/``best.pth`` checkpoints.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from timm.data import ImageDataset, Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, dispatch_clip_grad, distribute_bn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vizattn.train.config import ConfigError, TrainConfig, config_to_dict
from vizattn.train.distributed import DistInfo, all_reduce_sum, init_distributed, weights_digest
from vizattn.train.evaluation import Metrics, evaluate
from vizattn.train.loaders import BatchPrep, check_image_folder, eval_loader, image_dataset, seed_step, train_loader
from vizattn.train.models import build_model, data_config, load_checkpoint_file, set_data_config

__all__ = ["TrainResult", "train", "setup_logging", "check_config", "format_duration", "run_dir"]
_logger = logging.getLogger("vizattn.train")
CHECKPOINT_VERSION = 1
SUMMARY_FIELDS = ("epoch", "step", "train_loss", "lr", "eval_loss", "top1", "top5", "ema_eval_loss", "ema_top1",
                  "ema_top5", "epoch_seconds", "train_img_per_s")


@dataclass
class TrainResult:
    """What a run ended with. ``best``/``last`` hold top1, top5 (percent), loss, epoch and step."""

    model: str
    is_main: bool
    output_dir: Path | None
    best: dict[str, Any] | None
    last: dict[str, Any] | None
    global_step: int
    seconds: float
    data_dir: str
    loader_args: list[str] = field(default_factory=list)  # --workers/--cpu-threads of the run, for validate.py
    losses: dict[int, float] = field(default_factory=dict)  # mean training loss of each logged interval, by step
    digest: str | None = None  # SHA-256 of the final weights (see weights_digest)

    @property
    def best_checkpoint(self) -> Path | None:
        return self.output_dir / "best.pth" if self.output_dir is not None else None

    def line(self) -> str:
        """The one-line result the tool prints last."""
        took = f"{int(self.seconds // 60)}m{self.seconds % 60:04.1f}s"
        if not self.best:
            return f"{self.model}: {self.global_step} steps in {took}, no evaluation ran."
        b = self.best
        return (f"best top-1 {b['top1']:.2f}% (top-5 {b['top5']:.2f}%) at epoch {b['epoch']} step {b['step']}, "
                f"{self.model}, {self.global_step} steps in {took}; {self.output_dir}")


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of each record (tests and notebooks swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(rank: int = 0) -> None:
    """Progress lines of the ``vizattn`` loggers on stdout, timestamped: INFO from rank 0, warnings from the others."""
    logger = logging.getLogger("vizattn")
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)


_CHOICES = dict(remode=("const", "rand", "pixel"), mixup_mode=("batch", "pair", "elem"),
                clip_mode=("norm", "value", "agc"), amp_dtype=("bfloat16", "float16"))


def check_config(cfg: TrainConfig) -> None:
    """Value checks that no single key's type can express; each failure is one ConfigError sentence."""
    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {getattr(cfg, key)!r}.")
    for key in ("epochs", "batch_size", "log_interval", "eval_interval"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(cfg, key)}.")
    for key in ("workers", "aug_repeats", "cooldown_epochs"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must not be negative, got {getattr(cfg, key)}.")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ConfigError(f"max_steps must be at least 1 (or unset), got {cfg.max_steps}.")
    if (cfg.mixup > 0 or cfg.cutmix > 0 or cfg.cutmix_minmax) and cfg.batch_size % 2:
        raise ConfigError(f"mixup/cutmix pair each batch with its mirror: batch_size must be even, got "
                          f"{cfg.batch_size}.")
    for key in ("scale", "ratio"):
        if len(getattr(cfg, key)) != 2:
            raise ConfigError(f"{key} must be a [low, high] pair, got {getattr(cfg, key)}.")


def run_dir(output: str, name: str, resume: str | None = None) -> Path:
    """The folder of a run: the resumed checkpoint's folder, else ``output/name``, or ``output/name-2``, ``-3`` ...
    when that one already holds a run (a new run never overwrites an earlier one)."""
    if resume:
        return Path(resume).resolve().parent
    base = Path(output) / name
    out, n = base, 1
    while out.exists() and any(out.iterdir()):
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (what the progress lines print as ETA)."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _Run:
    def __init__(self, cfg: TrainConfig, info: DistInfo):
        self.cfg, self.info = cfg, info
        self.device = info.device
        self.losses: dict[int, float] = {}
        self.best: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None

    # -- setup ------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        check_config(cfg)
        if cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        train_set, val_set = self._datasets()
        self.ckpt = load_checkpoint_file(cfg.resume) if cfg.resume else None
        if self.ckpt is not None and self.ckpt["arch"] != cfg.model:
            raise ConfigError(f"--resume {cfg.resume} holds a {self.ckpt['arch']} run, not {cfg.model}.")
        self._model()
        self._loaders(train_set, val_set)
        self._optimisation()
        self.epoch, self.epoch_step, self.global_step = 0, 0, 0
        if self.ckpt is not None:
            self._load_state(self.ckpt)
            self.ckpt = None  # its tensors are copied into the model and optimizer
        if self.scheduler is not None:
            self.scheduler.step_update(self.global_step)
        self._wrap()
        self.out = None
        if self.info.is_main:
            self.out = run_dir(cfg.output, cfg.experiment or cfg.model, cfg.resume)
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "args.yaml", "w") as f:
                yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
        self.total_steps = self.num_epochs * self.steps_per_epoch
        self.target_steps = min(self.total_steps, cfg.max_steps) if cfg.max_steps else self.total_steps
        self._log_setup()

    def _datasets(self) -> tuple[ImageDataset, ImageDataset]:
        cfg = self.cfg
        train_dir = check_image_folder(cfg.data_dir, cfg.train_split)
        val_dir = check_image_folder(cfg.data_dir, cfg.val_split)
        train_set = image_dataset(train_dir)
        self.class_names = list(train_set.reader.class_to_idx)
        val_set = image_dataset(val_dir, train_set.reader.class_to_idx)
        num_classes = cfg.num_classes or len(self.class_names)
        if num_classes < len(self.class_names):
            raise ConfigError(f"num_classes {num_classes} is smaller than the {len(self.class_names)} class folders "
                              f"of {train_dir}.")
        self.num_classes = num_classes
        self.data_root = train_dir.parent
        return train_set, val_set

    def _model(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = build_model(cfg.model, self.num_classes, cfg.model_kwargs, cfg.drop_path, cfg.drop,
                            cfg.pretrained_path)
        self.data_cfg = data_config(model, cfg.input_size, cfg.crop_pct, cfg.interpolation, cfg.mean, cfg.std)
        set_data_config(model, self.data_cfg)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.n_params = sum(p.numel() for p in model.parameters())
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def _loaders(self, train_set: ImageDataset, val_set: ImageDataset) -> None:
        cfg, info = self.cfg, self.info
        pin = self.device.type == "cuda" and cfg.pin_memory
        self.loader, self.sampler = train_loader(train_set, cfg, self.data_cfg, info.world_size, info.rank, pin)
        self.val_loader = eval_loader(val_set, self.data_cfg, cfg.eval_batch_size or cfg.batch_size, cfg.workers,
                                      info.world_size, info.rank, pin)
        self.steps_per_epoch = self.sampler.per_rank // cfg.batch_size

        mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0 or cfg.cutmix_minmax:
            mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, cutmix_minmax=cfg.cutmix_minmax,
                          prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                          label_smoothing=cfg.smoothing, num_classes=self.num_classes)
            self.criterion: nn.Module = SoftTargetCrossEntropy()  # Mixup already smooths the targets
        else:
            self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)
        self.prep = BatchPrep(self.data_cfg["mean"], self.data_cfg["std"], self.device, cfg.channels_last,
                              cfg.reprob, cfg.remode, cfg.recount, mixup)

    def _optimisation(self) -> None:
        cfg, model = self.cfg, self.model
        self.ema = ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup) \
            if cfg.model_ema else None
        self.global_batch = cfg.batch_size * self.info.world_size
        self.lr = cfg.lr * self.global_batch / cfg.lr_base_batch if cfg.lr_base_batch else cfg.lr
        opt_kwargs: dict[str, Any] = {}
        if cfg.opt_eps is not None:
            opt_kwargs["eps"] = cfg.opt_eps
        if cfg.opt_betas is not None:
            opt_kwargs["betas"] = tuple(cfg.opt_betas)
        try:
            self.optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=self.lr, weight_decay=cfg.weight_decay,
                                                 momentum=cfg.momentum, layer_decay=cfg.layer_decay, **opt_kwargs)
        except (ValueError, AssertionError) as e:
            raise ConfigError(f"opt {cfg.opt!r}: {e}") from None
        self.scheduler, num_epochs = create_scheduler_v2(
            self.optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
            warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, cooldown_epochs=cfg.cooldown_epochs, step_on_epochs=False,
            updates_per_epoch=self.steps_per_epoch)
        self.num_epochs = num_epochs if self.scheduler is not None else cfg.epochs + cfg.cooldown_epochs
        self.use_amp = cfg.amp and self.device.type == "cuda"
        amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and amp_dtype == torch.float16)
        self.autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        if self.use_amp:
            def autocast() -> contextlib.AbstractContextManager:
                return torch.autocast("cuda", dtype=amp_dtype)
            self.autocast = autocast

    def _wrap(self) -> None:
        """DDP, then torch.compile (compiling the DDP module lets dynamo split graphs at gradient buckets)."""
        self.train_model: nn.Module = self.model
        if self.info.distributed:
            # Depthwise conv weights (C, 1, k, k) get gradients whose size-1 dim has another stride than the
            # parameter's; the layouts are the same, DDP only compares strides. The warning is noise.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
        if self.cfg.compile:
            self.train_model = torch.compile(self.train_model)

    def _log_setup(self) -> None:
        cfg, info = self.cfg, self.info
        precision = f"{cfg.amp_dtype} autocast" if self.use_amp else "float32"
        _logger.info(
            "%s: %.2fM params, %d classes; %d train / %d val images from %s; input %s, eval crop %.3f %s",
            cfg.model, self.n_params / 1e6, self.num_classes, len(self.loader.dataset), len(self.val_loader.dataset),
            self.data_root,
            "x".join(map(str, self.data_cfg["input_size"][1:])), self.data_cfg["crop_pct"],
            self.data_cfg["interpolation"])
        _logger.info(
            "%d process(es) on %s, %s; global batch %d, lr %.3g, %d steps/epoch x %d epochs%s; output %s",
            info.world_size, self.device.type, precision, self.global_batch, self.lr, self.steps_per_epoch,
            self.num_epochs, f", stopping at step {self.target_steps}" if self.target_steps < self.total_steps else "",
            self.out)
        if cfg.resume:
            _logger.info("resumed %s at epoch %d step %d (global step %d)", cfg.resume, self.epoch + 1,
                         self.epoch_step, self.global_step)

    def _load_state(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("steps_per_epoch") != self.steps_per_epoch:
            raise ConfigError(
                f"--resume: the checkpoint ran {ckpt.get('steps_per_epoch')} steps per epoch, this run would run "
                f"{self.steps_per_epoch}; keep batch_size, the number of processes and the data the same.")
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler"):
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            if ckpt.get("state_dict_ema") is None:
                raise ConfigError(f"--resume {self.cfg.resume} has no EMA weights but model_ema is on.")
            self.ema.module.load_state_dict(ckpt["state_dict_ema"])
        self.epoch, self.epoch_step, self.global_step = ckpt["epoch"], ckpt["epoch_step"], ckpt["global_step"]
        self.best = ckpt.get("best")

    # -- loop -------------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.cfg
        self.t_start = time.perf_counter()
        self.step_start = self.global_step
        while self.epoch < self.num_epochs and self.global_step < self.target_steps:
            self._train_epoch()
        if self.global_step == self.step_start:
            _logger.info("nothing to train: the checkpoint is at step %d, the run ends at step %d",
                         self.global_step, self.target_steps)
        digest = self._check_replicas()
        loader_args = ["--workers", str(cfg.workers)] + (["--cpu-threads", str(cfg.cpu_threads)] if cfg.cpu_threads
                                                          else [])
        return TrainResult(cfg.model, self.info.is_main, self.out, self.best, self.last, self.global_step,
                           time.perf_counter() - self.t_start, cfg.data_dir, loader_args, self.losses, digest)

    def _train_epoch(self) -> None:
        cfg = self.cfg
        self.sampler.set_epoch(self.epoch, self.epoch_step * cfg.batch_size)
        self.train_model.train()
        t_epoch = self.t_log = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        self.interval_sum = torch.zeros((), device=self.device)
        steps_run = self.interval_steps = 0
        for images, targets in self.loader:
            loss = self._step(images, targets)
            steps_run += 1
            self.interval_steps += 1
            loss_sum += loss
            self.interval_sum += loss
            last_step = self.epoch_step == self.steps_per_epoch or self.global_step >= self.target_steps
            if self.global_step % cfg.log_interval == 0 or last_step:
                self._log_progress()
            if self.global_step >= self.target_steps:
                break
        self._end_epoch(loss_sum, steps_run, time.perf_counter() - t_epoch)

    def _step(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One optimizer step; returns the detached loss (no host sync)."""
        cfg = self.cfg
        seed_step(cfg.seed, self.info.rank, self.global_step)
        x, y = self.prep(images, targets, train=True)
        with self.autocast():
            loss = self.criterion(self.train_model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            dispatch_clip_grad(self.model.parameters(), cfg.clip_grad, mode=cfg.clip_mode)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.global_step += 1
        self.epoch_step += 1
        if self.scheduler is not None:
            self.scheduler.step_update(self.global_step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)
        return loss.detach().float()

    def _log_progress(self) -> None:
        mean_loss = self.interval_sum.item() / self.interval_steps  # the only host sync of the loop
        now = time.perf_counter()
        self.losses[self.global_step] = mean_loss
        rate = self.interval_steps * self.global_batch / (now - self.t_log)
        per_step = (now - self.t_start) / (self.global_step - self.step_start)
        _logger.info("epoch %d/%d  %d/%d  step %d  loss %.4f  lr %.3e  %.0f img/s  eta %s", self.epoch + 1,
                     self.num_epochs, self.epoch_step, self.steps_per_epoch, self.global_step, mean_loss, self._lr(),
                     rate, format_duration(per_step * (self.target_steps - self.global_step)))
        self.interval_sum.zero_()
        self.interval_steps, self.t_log = 0, now

    def _lr(self) -> float:
        return max(g["lr"] for g in self.optimizer.param_groups)

    def _end_epoch(self, loss_sum: torch.Tensor, steps_run: int, seconds: float) -> None:
        """Evaluate when due, then write the summary row and the checkpoint (a partial epoch when max_steps hit)."""
        cfg, info = self.cfg, self.info
        train_loss = all_reduce_sum(loss_sum.reshape(1), info).item() / info.world_size / max(steps_run, 1)
        epoch_done = self.epoch_step == self.steps_per_epoch
        finished = self.global_step >= self.target_steps or (epoch_done and self.epoch + 1 == self.num_epochs)
        metrics = ema_metrics = None
        if finished or (epoch_done and (self.epoch + 1) % cfg.eval_interval == 0):
            metrics, ema_metrics = self._evaluate()
        epoch = self.epoch + 1 if epoch_done else round(self.epoch + self.epoch_step / self.steps_per_epoch, 3)
        row = dict(epoch=epoch, step=self.global_step, train_loss=round(train_loss, 6), lr=self._lr(),
                   epoch_seconds=round(seconds, 2), train_img_per_s=round(steps_run * self.global_batch / seconds, 1))
        improved = False
        if metrics is not None:
            row.update(eval_loss=metrics.loss, top1=metrics.top1, top5=metrics.top5)
            self.last = dict(top1=metrics.top1, top5=metrics.top5, loss=metrics.loss, epoch=epoch,
                             step=self.global_step)
            improved = self.best is None or metrics.top1 > self.best["top1"]
            if improved:
                self.best = dict(self.last)
        if ema_metrics is not None:
            row.update(ema_eval_loss=ema_metrics.loss, ema_top1=ema_metrics.top1, ema_top5=ema_metrics.top5)
        if epoch_done:
            self.epoch += 1
            self.epoch_step = 0
        if info.is_main:
            self._write_summary(row)
            self._save(metrics, ema_metrics, improved)

    def _evaluate(self) -> tuple[Metrics, Metrics | None]:
        info = self.info
        if info.distributed:  # every rank's BatchNorm statistics saw only its own batches
            distribute_bn(self.model, info.world_size, reduce=True)
            if self.ema is not None:
                distribute_bn(self.ema.module, info.world_size, reduce=True)
        t = time.perf_counter()
        metrics = evaluate(self.model, self.val_loader, self.prep, info, self.autocast)
        ema_metrics = evaluate(self.ema.module, self.val_loader, self.prep, info, self.autocast) \
            if self.ema is not None else None
        best = max(metrics.top1, self.best["top1"]) if self.best else metrics.top1
        ema = f"  EMA top-1 {ema_metrics.top1:.2f}% top-5 {ema_metrics.top5:.2f}%" if ema_metrics else ""
        _logger.info("eval at step %d: top-1 %.2f%%  top-5 %.2f%%  loss %.4f%s  (best top-1 %.2f%%, %d images, "
                     "%.1f s)", self.global_step, metrics.top1, metrics.top5, metrics.loss, ema, best, metrics.count,
                     time.perf_counter() - t)
        return metrics, ema_metrics

    def _write_summary(self, row: dict[str, Any]) -> None:
        path = self.out / "summary.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _save(self, metrics: Metrics | None, ema_metrics: Metrics | None, improved: bool) -> None:
        state = dict(
            version=CHECKPOINT_VERSION,
            arch=self.cfg.model,
            model_kwargs=self.cfg.model_kwargs,
            num_classes=self.num_classes,
            class_names=self.class_names,
            pretrained_cfg=self.data_cfg,
            state_dict=self.model.state_dict(),
            state_dict_ema=self.ema.module.state_dict() if self.ema is not None else None,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            scaler=self.scaler.state_dict(),
            epoch=self.epoch,
            epoch_step=self.epoch_step,
            global_step=self.global_step,
            steps_per_epoch=self.steps_per_epoch,
            metrics=metrics.as_dict() if metrics else None,
            ema_metrics=ema_metrics.as_dict() if ema_metrics else None,
            best=self.best,
            config=config_to_dict(self.cfg),
        )
        last = self.out / "last.pth"
        tmp = last.with_suffix(".pth.tmp")
        torch.save(state, tmp)
        os.replace(tmp, last)
        if improved:
            shutil.copyfile(last, self.out / "best.pth")

    def _check_replicas(self) -> str:
        info = self.info
        if info.distributed:
            distribute_bn(self.model, info.world_size, reduce=True)
        digest = weights_digest(self.model)
        if info.distributed:
            sys.stdout.write(f"rank {info.rank}/{info.world_size}: weights sha256 {digest}\n")  # one write per line
            sys.stdout.flush()
            digests: list[str | None] = [None] * info.world_size
            dist.all_gather_object(digests, digest)
            if len(set(digests)) != 1:
                _logger.error("the ranks hold different weights: %s", digests)
        return digest


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; see :class:`~vizattn.train.config.TrainConfig`.

    Under torchrun every rank calls this; rank 0 writes the output folder. Returns the best and last evaluation.
    """
    info = init_distributed(cfg.device)
    try:
        run = _Run(cfg, info)
        run.setup()
        return run.run()
    finally:
        if info.distributed and dist.is_initialized():
            dist.destroy_process_group()

