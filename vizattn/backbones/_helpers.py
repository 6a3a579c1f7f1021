"""Checkpoint loading shared by the model files."""

from __future__ import annotations

import argparse
import logging
import pickle
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d, resize_rel_pos_bias_table_simple
from timm.models._manipulate import adapt_input_conv
from torch import nn

__all__ = [
    "ClassifierMixin",
    "unwrap_state_dict",
    "check_state_dict_keys",
    "load_official_checkpoint",
    "read_checkpoint",
    "resize_rel_pos_bias_tables",
    "keep_official_loader",
]

_logger = logging.getLogger(__name__)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap_state_dict(checkpoint: Mapping[str, Any], keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """Return the state dict inside a training checkpoint.

    Args:
        checkpoint: a raw state dict, or a container holding one under one of ``keys``.
        keys: container keys to try, in order (the family's official loader order).

    Returns:
        The state dict with DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes removed.
    """
    for key in keys:
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            checkpoint = checkpoint[key]
            break
    out = {}
    for name, value in checkpoint.items():
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        out[name] = value
    return out


class ClassifierMixin:
    """timm's classifier API for the vizattn model classes (nn.Module subclasses with ``in_chans``,
    ``num_features``, a ``global_pool`` SelectAdaptivePool2d, a ``head`` and their own ``forward_features`` /
    ``forward_head``)."""

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        device = next(self.parameters()).device
        self.head = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"{type(self).__name__} expects an NCHW image batch with {self.in_chans} channels, got shape "
                f"{tuple(x.shape)}."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def resize_rel_pos_bias_tables(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, suffix: str
) -> dict[str, torch.Tensor]:
    """Resize (heads, 2k - 1, 2k - 1) relative position bias tables to the model's window size.

    Every key ending in ``suffix`` whose table has another size than the model's is resampled by bicubic
    interpolation (``align_corners=False``, the Swin/timm convention for changing window sizes); other keys pass
    through. Tables with another number of heads are left alone for :func:`check_state_dict_keys` to report.
    """
    model_sd = model.state_dict()
    out = dict(state_dict)
    for key, table in state_dict.items():
        want = model_sd.get(key)
        if not key.endswith(suffix) or want is None or table.dim() != 3 or want.dim() != 3:
            continue
        if table.shape[0] == want.shape[0] and table.shape != want.shape:
            window = ((want.shape[1] + 1) // 2, (want.shape[2] + 1) // 2)
            out[key] = resize_rel_pos_bias_table_simple(table.float(), window, tuple(want.shape)).to(table.dtype)
    return out


def keep_official_loader(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Make ``pretrained_cfg_overlay=dict(file=...)`` go through the model's official loader.

    timm resets ``custom_load`` when a file overrides the URL, and its generic loader would then skip the family's
    ``checkpoint_filter_fn`` container handling (and prefer an EMA copy over the official weights); local copies of
    official files must load like the downloaded ones. Returns the (updated) create kwargs.
    """
    overlay = kwargs.get("pretrained_cfg_overlay")
    if overlay and overlay.get("file"):
        kwargs["pretrained_cfg_overlay"] = {"custom_load": True, **overlay}
    return kwargs


def check_state_dict_keys(
    state_dict: Mapping[str, Any], model: nn.Module, family: str, ignore: tuple[str, ...] = ("head.",)
) -> None:
    """Raise a ValueError naming the family when a checkpoint's keys do not fit the model.

    Keys starting with one of ``ignore`` (the classifier, which timm drops when ``num_classes`` differs) are not
    compared, nor the input-channel size of the first convolution (adapted to ``in_chans`` on load).
    """
    expected = {k for k in model.state_dict() if not k.startswith(ignore)}
    got = {k for k in state_dict if not k.startswith(ignore)}
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        raise ValueError(
            f"This checkpoint does not fit {type(model).__name__} ({family}): {len(missing)} missing keys "
            f"(e.g. {missing[:3]}) and {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). Check that it "
            f"is a {family} checkpoint of the same variant (depths and widths)."
        )
    first_conv = f"{(getattr(model, 'pretrained_cfg', None) or {}).get('first_conv')}.weight"
    model_sd = model.state_dict()
    for k in expected:
        got_shape, want_shape = list(state_dict[k].shape), list(model_sd[k].shape)
        if k == first_conv and len(got_shape) > 1:  # in_chans may differ: the loader adapts the first conv
            got_shape[1] = want_shape[1]
        if got_shape != want_shape:
            raise ValueError(
                f"This checkpoint does not fit {type(model).__name__} ({family}): {k} has shape "
                f"{tuple(state_dict[k].shape)}, the model expects {tuple(model_sd[k].shape)}. Is it "
                f"another variant?"
            )


def read_checkpoint(path: str) -> Any:
    """torch.load a checkpoint on the CPU, tensors-only first.

    Official training checkpoints may pickle their argparse ``args``; those are allowed. Anything else needs full
    unpickling, which only a trusted file should get, so it is done with a warning.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        _logger.warning("%s holds pickled Python objects beyond tensors; loading it fully (trust its source).", path)
        return torch.load(path, map_location="cpu", weights_only=False)


def load_official_checkpoint(
    model: nn.Module, path: str, filter_fn: Callable[[Mapping[str, Any], nn.Module], dict[str, torch.Tensor]]
) -> None:
    """Load an official checkpoint file into ``model`` (timm's ``custom_load`` hook).

    The family's ``filter_fn`` unwraps and renames; this adapts the classifier (dropped when the model's
    ``num_classes`` differs from the checkpoint's) and the first convolution (when ``in_chans`` differs), then loads
    strictly.
    """
    state_dict = filter_fn(read_checkpoint(path), model)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    first_conv = cfg.get("first_conv")
    if first_conv and f"{first_conv}.weight" in state_dict:
        weight = state_dict[f"{first_conv}.weight"]
        in_chans = model.get_submodule(first_conv).in_channels
        if weight.shape[1] != in_chans:
            state_dict[f"{first_conv}.weight"] = adapt_input_conv(in_chans, weight)
    classifier = cfg.get("classifier", "head")
    head_keys = [k for k in state_dict if k.startswith(f"{classifier}.")]
    model_head = {k: v.shape for k, v in model.state_dict().items() if k.startswith(f"{classifier}.")}
    if any(k not in model_head or model_head[k] != state_dict[k].shape for k in head_keys):
        for k in head_keys:
            state_dict.pop(k)
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if unexpected or any(not k.startswith(f"{classifier}.") for k in missing):
            raise ValueError(f"Unexpected keys {unexpected} / missing keys {missing} loading {path}.")
    else:
        model.load_state_dict(state_dict, strict=True)
