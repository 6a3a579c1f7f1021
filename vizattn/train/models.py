"""Model construction for the tools: any timm or vizattn name, clear errors, preprocessing recorded on the model."""

from __future__ import annotations

import difflib
import os
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from torch import nn

import vizattn.backbones  # noqa: F401  (registers the vizattn models with timm)
from vizattn.train.config import ConfigError
from vizattn.train.loaders import DATA_CFG_KEYS

__all__ = ["check_model_name", "build_model", "data_config", "set_data_config", "load_checkpoint_file"]


def check_model_name(name: str) -> None:
    """Raise ConfigError for a name neither timm nor vizattn registers, listing the closest registered names."""
    if timm.is_model(name):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5) or [n for n in names if n.startswith(name[:4])][:5]
    hint = f" Close names: {', '.join(close)}." if close else ""
    raise ConfigError(
        f"Unknown model {name!r}: neither timm nor vizattn registers it.{hint} "
        "vizattn.list_models() and timm.list_models('pattern*') list the valid names."
    )


def build_model(name: str, num_classes: int, model_kwargs: dict[str, Any] | None = None, drop_path: float = 0.0,
                drop: float = 0.0, pretrained_path: str | None = None,
                pretrained_cfg_overlay: dict[str, Any] | None = None) -> nn.Module:
    """``timm.create_model`` with the tools' checks.

    Args:
        name: registered model name.
        num_classes: classifier width.
        model_kwargs: extra constructor arguments.
        drop_path, drop: stochastic depth and classifier dropout (passed only when non-zero, so models without them
            still build).
        pretrained_path: a weight file (an official checkpoint for vizattn models) loaded through timm's pretrained
            path, i.e. the family's ``checkpoint_filter_fn``; a classifier of another width is dropped.
        pretrained_cfg_overlay: pretrained-cfg entries to set (e.g. the preprocessing a checkpoint was trained with).
    """
    check_model_name(name)
    kwargs = dict(model_kwargs or {})
    kwargs["num_classes"] = num_classes
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    if drop:
        kwargs["drop_rate"] = drop
    overlay = dict(pretrained_cfg_overlay or {})
    if pretrained_path:
        if not os.path.isfile(pretrained_path):
            raise ConfigError(f"--pretrained-path {pretrained_path}: no such file.")
        overlay["file"] = os.path.abspath(pretrained_path)
        kwargs["pretrained"] = True
    if overlay:
        kwargs["pretrained_cfg_overlay"] = overlay
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{name} does not accept these arguments ({e}); check model_kwargs.") from None
    except ValueError as e:  # the model's own argument checks, or a checkpoint that does not fit it
        raise ConfigError(f"{name}: {e}") from None


def data_config(model: nn.Module, input_size: int | None = None, crop_pct: float | None = None,
                interpolation: str | None = None, mean: list | None = None, std: list | None = None) -> dict[str, Any]:
    """Preprocessing of ``model``: its pretrained cfg (timm ``resolve_data_config``) with the given overrides."""
    args = dict(crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std)
    if input_size is not None:
        args["input_size"] = (3, input_size, input_size)
    cfg = resolve_data_config(args, model=model)
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in DATA_CFG_KEYS}


def set_data_config(model: nn.Module, data_cfg: dict[str, Any]) -> None:
    """Record ``data_cfg`` in the model's pretrained cfg, so ``resolve_data_config(model=model)`` returns it."""
    cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **data_cfg}
    model.pretrained_cfg = cfg
    if hasattr(model, "default_cfg"):
        model.default_cfg = cfg


def load_checkpoint_file(path: str) -> dict[str, Any]:
    """Read a training checkpoint written by :mod:`vizattn.train` (tensors and plain values only)."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such checkpoint file.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unreadable file gets the same answer)
        raise ConfigError(f"{path} is not a vizattn training checkpoint ({type(e).__name__}).") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "arch" not in ckpt:
        raise ConfigError(f"{path} is not a vizattn training checkpoint (no 'arch' and 'state_dict' entries).")
    return ckpt
