"""Config preparation shared by ``tools/mm_train.py`` and ``tools/mm_test.py`` (mmengine's Runner does the rest)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

__all__ = ["load_config", "build_runner", "full_checkpoint_loading"]


def load_config(
    path: str,
    work_dir: str | None = None,
    cfg_options: dict[str, Any] | None = None,
    launcher: str = "none",
    fp32: bool = False,
) -> Config:
    """Read an mmdet/mmseg config and apply the command line on top of it.

    Args:
        path: config file (``configs/det/*.py``, ``configs/seg/*.py``).
        work_dir: where logs and checkpoints go; default: the config's ``work_dir``, else ``work_dirs/<config name>``.
        cfg_options: ``--cfg-options`` key=value overrides (dotted keys), merged last.
        launcher: ``'none'`` (one process) or the distributed launcher (``'pytorch'`` under torchrun, ``'slurm'``,
            ``'mpi'``).
        fp32: train in float32 even where the config asks for mixed precision. Mixed precision (AmpOptimWrapper) needs
            a GPU, so this is also applied, with a warning, when CUDA is not available.
    """
    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = os.path.join("work_dirs", os.path.splitext(os.path.basename(path))[0])
    optim_wrapper = cfg.get("optim_wrapper")
    if optim_wrapper is not None and optim_wrapper.get("type") == "AmpOptimWrapper":
        if not fp32 and not torch.cuda.is_available():
            print_log("CUDA is not available: training in float32 instead of mixed precision.", level=logging.WARNING)
            fp32 = True
        if fp32:
            optim_wrapper.type = "OptimWrapper"
            for key in ("loss_scale", "dtype", "use_fsdp"):
                optim_wrapper.pop(key, None)
    return cfg


def build_runner(cfg: Config) -> Runner:
    """mmengine's Runner for ``cfg``, or the registered runner its ``runner_type`` names."""
    return RUNNERS.build(cfg) if "runner_type" in cfg else Runner.from_cfg(cfg)


@contextlib.contextmanager
def full_checkpoint_loading() -> Iterator[None]:
    """Let mmengine load the Runner's own checkpoints (``load_from``, ``resume``) under torch >= 2.6.

    mmengine 0.10.7 calls ``torch.load`` without ``weights_only``, which torch >= 2.6 turns into a tensors-only load;
    a Runner checkpoint also holds its message hub (mmengine ``HistoryBuffer`` objects, numpy arrays rebuilt through
    ``getattr``), which that refuses. Inside this block such calls unpickle fully, as under older torch, which is
    only right for files the user names (the tools' checkpoint arguments and ``load_from``). Calls that choose
    ``weights_only`` themselves, vizattn's checkpoint reader among them, are unaffected.
    """
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
