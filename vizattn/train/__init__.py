"""Training and evaluation on ImageNet-layout folders, built on timm's library pieces (used by tools/train.py and
tools/validate.py).

- :mod:`~vizattn.train.config`: the settings (YAML file, then command line) and their checks.
- :mod:`~vizattn.train.loaders`: folders, transforms, resumable seeded sampling, device-side batch preparation.
- :mod:`~vizattn.train.engine`: the training loop (AMP, EMA, DDP, checkpoints with exact resume).
- :mod:`~vizattn.train.evaluation`: top-1/top-5 evaluation and :func:`validate`.
"""

from vizattn.train.config import (
    ConfigError,
    TrainConfig,
    add_config_arguments,
    check_unknown_options,
    config_from_args,
    load_config,
)
from vizattn.train.engine import TrainResult, setup_logging, train
from vizattn.train.evaluation import Metrics, ValidateResult, evaluate, validate

__all__ = [
    "ConfigError",
    "TrainConfig",
    "add_config_arguments",
    "check_unknown_options",
    "config_from_args",
    "load_config",
    "TrainResult",
    "setup_logging",
    "train",
    "Metrics",
    "ValidateResult",
    "evaluate",
    "validate",
]
