#!/usr/bin/env python3
"""Distil a DiT into a CLEAR student (local circular attention, linear in the number of tokens).

    python tools/distill_clear.py --config configs/clear/dit_xl_2_256_r8.yaml --teacher-path DiT-XL-2-256x256.pt
    python tools/distill_clear.py --config configs/clear/dit_xl_2_256_r8.yaml --pretrained      # download the weights
    python tools/distill_clear.py --config configs/clear/dit_xl_2_256_r8.yaml --teacher-path DiT-XL-2-256x256.pt \\
        --resume output/dit_xl_2_256_r8/last.pth                                               # continue a run

The run first writes the teacher set (num_samples latents sampled by the teacher, in data_dir; an interrupted
generation resumes), then trains the student's attention projections for `steps` steps, logging the losses and the
held-out noise-prediction error against the teacher. A --config YAML file sets any option below (same names, with
underscores); the command line overrides it. Sample from the result with tools/sample_dit.py --student.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vizattn.diffusion.distill import DistillConfig, distill
from vizattn.train.config import ConfigError, add_config_arguments, check_unknown_options, config_from_args

_GROUPS = {"model": "teacher", "radius": "student", "data_dir": "teacher set", "steps": "distillation",
           "device": "run"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add_config_arguments(parser, DistillConfig, _GROUPS)
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    try:
        check_unknown_options(parser, extra)
        result = distill(config_from_args(args, DistillConfig, required=("data_dir",)))
    except ConfigError as e:
        print(f"distill_clear.py: error: {e}", file=sys.stderr)
        return 2
    print(result.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
