#!/usr/bin/env python3
"""Top-1/top-5 accuracy of a model on an ImageNet-layout split, with the preprocessing of its pretrained cfg.

    python tools/validate.py --checkpoint output/demo/best.pth --data-dir builtin:shapes   # a training checkpoint
    python tools/validate.py --model biformer_s --checkpoint biformer_small_in1k.pth --data-dir /data/imagenet
    torchrun --nproc_per_node 8 tools/validate.py --model biformer_s --checkpoint ... --data-dir /data/imagenet

A training checkpoint (from tools/train.py) carries its model name, arguments, class names and preprocessing; any
other file needs --model and is loaded as that model's pretrained weights (official checkpoints go through the
family's checkpoint_filter_fn). The last line printed is the result.
"""

from __future__ import annotations

import argparse
import os
import sys

from vizattn.train import ConfigError, setup_logging, validate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder with <split>/<class>/<image>, or builtin:shapes")
    p.add_argument("--split", default="val", help="sub-folder to evaluate (val)")
    p.add_argument("--checkpoint", help="training checkpoint, or a weight file for --model")
    p.add_argument("--model", help="model name (not needed for a training checkpoint)")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="loader processes")
    p.add_argument("--cpu-threads", type=int, help="intra-op CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="bfloat16 autocast on CUDA")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--input-size", type=int, help="override the pretrained cfg's image side")
    p.add_argument("--crop-pct", type=float, help="override the pretrained cfg's centre-crop fraction")
    p.add_argument("--interpolation", help="override the pretrained cfg's resize interpolation")
    args = p.parse_args(argv)
    if args.checkpoint is None and args.model is None:
        p.error("give --checkpoint, --model, or both")
    setup_logging(int(os.environ.get("RANK", "0")))
    try:
        result = validate(args.data_dir, args.checkpoint, args.model, args.split, args.ema, args.batch_size,
                          args.workers, args.device, args.amp, args.input_size, args.crop_pct, args.interpolation,
                          args.channels_last, args.cpu_threads)
    except ConfigError as e:
        print(f"validate.py: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(result.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
