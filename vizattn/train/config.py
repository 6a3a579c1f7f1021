"""Training configuration: one dataclass, filled from defaults, then a YAML file, then the command line.

Every field is a key of the YAML file and a ``--dashed-name`` option; the command line wins over the file, the file
over the defaults. Unknown keys, values of the wrong type and missing required keys raise :class:`ConfigError` with
one sentence naming the key (and, for a typo, the closest valid names).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["ConfigError", "TrainConfig", "REQUIRED", "add_config_arguments", "check_unknown_options",
           "config_field", "config_from_args", "load_config", "config_to_dict"]

REQUIRED = ("model", "data_dir")


class ConfigError(ValueError):
    """A mistake in the configuration, the data folder or the model name: the message says what and how to fix it."""


def config_field(default: Any, help: str, kind: str | None = None) -> Any:
    """A dataclass field of a tool's config: its default, its --help text and the kind of value YAML must give
    ('str', 'int', 'float', 'bool', 'list', 'dict'; a trailing '?' also allows null)."""
    kind = kind or type(default).__name__
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=dict(help=help, kind=kind))
    return field(default=default, metadata=dict(help=help, kind=kind))


_f = config_field  # short name for the long table below


@dataclass
class TrainConfig:
    """All settings of a training run. ``kind`` in each field's metadata is what the YAML value must be."""

    # model
    model: str | None = _f(None, "timm or vizattn model name (required)", "str?")
    model_kwargs: dict = _f({}, "extra keyword arguments of the model constructor, e.g. {depths: [1, 1, 2, 1]}")
    pretrained_path: str | None = _f(None, "start from this weight file (official checkpoint or a state dict), "
                                     "loaded through the family's checkpoint_filter_fn", "str?")
    num_classes: int | None = _f(None, "classes; default: the number of class folders in train/", "int?")
    drop_path: float = _f(0.0, "stochastic depth rate")
    drop: float = _f(0.0, "dropout rate before the classifier")
    grad_checkpointing: bool = _f(False, "recompute activations in the backward pass (less memory, slower)")
    channels_last: bool = _f(False, "channels_last memory format for the model and its inputs")
    compile: bool = _f(False, "torch.compile the model")
    # data
    data_dir: str | None = _f(None, "ImageNet-layout folder with train/<class>/* and val/<class>/* "
                              "(or builtin:shapes for the built-in set) (required)", "str?")
    train_split: str = _f("train", "sub-folder of data_dir to train on")
    val_split: str = _f("val", "sub-folder of data_dir to evaluate on")
    input_size: int | None = _f(None, "training and evaluation image side; default: the model's pretrained cfg",
                                "int?")
    crop_pct: float | None = _f(None, "evaluation centre-crop fraction; default: the model's pretrained cfg", "float?")
    interpolation: str | None = _f(None, "evaluation resize interpolation; default: the model's pretrained cfg",
                                   "str?")
    train_interpolation: str = _f("bicubic", "training resize interpolation ('random' picks one per image)")
    mean: list | None = _f(None, "normalisation mean (RGB, 0-1); default: the model's pretrained cfg", "list?")
    std: list | None = _f(None, "normalisation std (RGB, 0-1); default: the model's pretrained cfg", "list?")
    batch_size: int = _f(128, "images per process and step")
    eval_batch_size: int | None = _f(None, "images per process in evaluation; default: batch_size", "int?")
    workers: int = _f(8, "data loading processes per training process (0: load in the main process)")
    pin_memory: bool = _f(True, "pinned host memory for faster copies to the GPU")
    scale: list = _f([0.08, 1.0], "random-resized-crop area range")
    ratio: list = _f([0.75, 1.3333333333], "random-resized-crop aspect ratio range")
    hflip: float = _f(0.5, "horizontal flip probability")
    vflip: float = _f(0.0, "vertical flip probability")
    color_jitter: float = _f(0.4, "colour jitter strength (timm turns it off when aa is set)")
    aa: str | None = _f(None, "timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1", "str?")
    reprob: float = _f(0.0, "random erasing probability")
    remode: str = _f("pixel", "random erasing fill: const, rand or pixel")
    recount: int = _f(1, "random erasing boxes per image")
    aug_repeats: int = _f(0, "repeated augmentation: each image appears this many times per epoch, with "
                          "different augmentations (0 or 1: off)")
    mixup: float = _f(0.0, "mixup alpha (0: off)")
    cutmix: float = _f(0.0, "cutmix alpha (0: off)")
    cutmix_minmax: list | None = _f(None, "cutmix box ratio range (overrides cutmix alpha)", "list?")
    mixup_prob: float = _f(1.0, "probability of applying mixup or cutmix to a batch")
    mixup_switch_prob: float = _f(0.5, "probability of cutmix instead of mixup when both are on")
    mixup_mode: str = _f("batch", "mixup granularity: batch, pair or elem")
    smoothing: float = _f(0.1, "label smoothing")
    # optimisation
    opt: str = _f("adamw", "timm optimizer name")
    lr: float = _f(5e-4, "peak learning rate (at lr_base_batch images per step if that is set)")
    lr_base_batch: int | None = _f(None, "scale lr linearly by (global batch / lr_base_batch); default: no scaling",
                                   "int?")
    weight_decay: float = _f(0.05, "weight decay (not applied to norms, biases and no_weight_decay())")
    opt_eps: float | None = _f(None, "optimizer epsilon; default: the optimizer's", "float?")
    opt_betas: list | None = _f(None, "optimizer betas; default: the optimizer's", "list?")
    momentum: float = _f(0.9, "momentum of SGD-like optimizers")
    layer_decay: float | None = _f(None, "layer-wise lr decay (fine-tuning)", "float?")
    clip_grad: float | None = _f(None, "gradient clipping threshold (off when unset)", "float?")
    clip_mode: str = _f("norm", "gradient clipping: norm, value or agc")
    sched: str = _f("cosine", "timm scheduler name")
    epochs: int = _f(300, "training epochs")
    warmup_epochs: float = _f(5.0, "linear warmup epochs")
    warmup_lr: float = _f(1e-6, "learning rate at the start of warmup")
    min_lr: float = _f(1e-5, "final learning rate of the cosine schedule")
    cooldown_epochs: int = _f(0, "epochs at min_lr after the schedule (they add to epochs)")
    # weight averaging
    model_ema: bool = _f(False, "keep an exponential moving average of the weights, evaluated beside the model")
    model_ema_decay: float = _f(0.9998, "EMA decay per step")
    model_ema_warmup: bool = _f(False, "EMA decay warmup (short runs)")
    # run
    amp: bool = _f(True, "bfloat16 autocast on CUDA (ignored on the CPU, which trains in float32)")
    amp_dtype: str = _f("bfloat16", "autocast dtype on CUDA: bfloat16 or float16 (float16 adds a grad scaler)")
    device: str = _f("auto", "auto, cpu or cuda")
    cpu_threads: int | None = _f(None, "intra-op threads of each training process (torch.set_num_threads); on a "
                                 "busy CPU 1 is often fastest; default: torch's choice", "int?")
    seed: int = _f(0, "random seed: data order, augmentations and initialisation follow from it")
    output: str = _f("output", "parent of the run folder")
    experiment: str | None = _f(None, "run folder name; default: the config file's name, else the model's", "str?")
    resume: str | None = _f(None, "continue the run saved in this checkpoint (last.pth): model, optimizer, "
                            "scheduler, scaler, EMA, epoch and step", "str?")
    max_steps: int | None = _f(None, "stop after this many optimizer steps in total (then evaluate and save)",
                               "int?")
    log_interval: int = _f(50, "steps between progress lines")
    eval_interval: int = _f(1, "epochs between evaluations (the last epoch is always evaluated)")


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _fields(schema: type) -> dict[str, dataclasses.Field]:
    return _FIELDS if schema is TrainConfig else {f.name: f for f in dataclasses.fields(schema)}
_KIND_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
               "list": "a list", "dict": "a mapping"}


def _check_value(name: str, value: Any, where: str, schema: type = TrainConfig) -> Any:
    kind = _fields(schema)[name].metadata["kind"]
    base, optional = kind.rstrip("?"), kind.endswith("?")
    if value is None and optional:
        return None
    if base == "float" and isinstance(value, str):
        try:  # YAML 1.1 reads 5e-4 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "list": isinstance(value, (list, tuple)),
        "dict": isinstance(value, dict),
    }[base]
    if not ok:
        none = " or null" if optional else ""
        raise ConfigError(f"{where}: {name} must be {_KIND_WORDS[base]}{none}, got {value!r}.")
    if base == "float":
        return float(value)
    if base == "list":
        return list(value)
    return value


def _unknown_key(key: str, where: str, schema: type = TrainConfig) -> ConfigError:
    close = difflib.get_close_matches(key, list(_fields(schema)), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}.{hint} The tool's --help lists every key.")


def load_config(path: str | os.PathLike, schema: type = TrainConfig) -> dict[str, Any]:
    """Read and check a YAML config file against ``schema`` (a dataclass whose fields carry ``help`` and ``kind``
    metadata, like :class:`TrainConfig`); returns the keys it sets (no defaults filled in)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path}: no such file.")
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, got {type(data).__name__}.")
    out = {}
    for key, value in data.items():
        if key not in _fields(schema):
            raise _unknown_key(str(key), path, schema)
        out[key] = _check_value(key, value, path, schema)
    return out


_TRAIN_GROUPS = {"model": "model", "data_dir": "data", "opt": "optimisation", "model_ema": "weight averaging",
                 "amp": "run"}


def add_config_arguments(parser: argparse.ArgumentParser, schema: type = TrainConfig,
                         groups: dict[str, str] | None = None) -> None:
    """Add ``--config`` and one option per field of ``schema``, all defaulting to 'not given'. ``groups`` maps the
    first field of each help section to the section's title."""
    parser.add_argument("--config", help="YAML file of settings; options given here override it")
    groups = _TRAIN_GROUPS if groups is None else groups
    group = parser
    for name, f in _fields(schema).items():
        if name in groups:
            group = parser.add_argument_group(groups[name])
        kind = f.metadata["kind"].rstrip("?")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = f" (default: {default})" if default not in (None, [], {}) else ""
        kw: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS, help=f"{f.metadata['help']}{shown}")
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif kind in ("list", "dict"):
            kw.update(type=yaml.safe_load, metavar="YAML")
        else:
            kw["type"] = {"str": str, "int": int, "float": float}[kind]
        group.add_argument("--" + name.replace("_", "-"), **kw)


def check_unknown_options(parser: argparse.ArgumentParser, extra: list[str]) -> None:
    """Raise ConfigError for the first leftover of ``parse_known_args``, naming the closest valid options."""
    if not extra:
        return
    option = extra[0].split("=", 1)[0]
    options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(option, options, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    what = "option" if option.startswith("-") else "argument"
    raise ConfigError(f"unknown {what} {option}.{hint} --help lists every option.")


def config_from_args(args: argparse.Namespace, schema: type = TrainConfig, required: tuple[str, ...] = REQUIRED):
    """Merge defaults, the ``--config`` file and the command line into a ``schema`` instance; check types and
    required keys."""
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None)
    if config_path:
        values.update(load_config(config_path, schema))
    for name in _fields(schema):
        if name in vars(args):
            values[name] = _check_value(name, getattr(args, name), "--" + name.replace("_", "-"), schema)
    for name in required:
        if values.get(name) in (None, ""):
            source = f"{config_path} has no `{name}:` key and" if config_path else "no --config was given and"
            raise ConfigError(
                f"Missing required key {name!r}: {source} --{name.replace('_', '-')} is not on the command line."
            )
    if "experiment" in _fields(schema) and values.get("experiment") is None and config_path:
        values["experiment"] = os.path.splitext(os.path.basename(config_path))[0]
    return schema(**values)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of every field (what args.yaml and checkpoints store)."""
    return dataclasses.asdict(cfg)
