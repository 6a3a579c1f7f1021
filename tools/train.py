#!/usr/bin/env python3
"""Train a timm or vizattn model on an ImageNet-layout folder (train/<class>/*, val/<class>/*).

    python tools/train.py --config configs/cls/demo.yaml                      # the built-in set, CPU, minutes
    python tools/train.py --config configs/cls/biformer_s_in1k.yaml --data-dir /data/imagenet
    torchrun --nproc_per_node 8 tools/train.py --config configs/cls/biformer_s_in1k.yaml --data-dir /data/imagenet
    python tools/train.py --config configs/cls/biformer_s_in1k.yaml --data-dir /data/imagenet \\
        --resume output/biformer_s_in1k/last.pth                              # continue a run where it stopped

A --config YAML file sets any of the options below (same names, with underscores); the command line overrides it.
The run folder (output/<config name>) receives args.yaml, summary.csv, last.pth and best.pth.
"""

from __future__ import annotations

import argparse
import os
import sys

from vizattn.train import (
    ConfigError,
    add_config_arguments,
    check_unknown_options,
    config_from_args,
    setup_logging,
    train,
)


def _python() -> str:
    """This interpreter as a user would type it: relative when it lives under the current folder (.venv)."""
    path = os.path.relpath(sys.executable)
    return sys.executable if path.startswith("..") else path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add_config_arguments(parser)
    args, extra = parser.parse_known_args(argv)
    setup_logging(int(os.environ.get("RANK", "0")))
    try:
        check_unknown_options(parser, extra)
        result = train(config_from_args(args))
    except ConfigError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    if result.is_main:
        if result.best_checkpoint is not None and result.best_checkpoint.exists():
            print(f"checkpoint: {result.best_checkpoint}")
            print(f"evaluate it: {_python()} tools/validate.py --checkpoint {result.best_checkpoint} "
                  f"--data-dir {result.data_dir} {' '.join(result.loader_args)}")
        print(result.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
