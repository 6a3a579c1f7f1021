"""Evaluate a trained detector or segmentor checkpoint on its config's test set (mmengine's Runner).

python tools/mm_test.py configs/det/mask-rcnn_biformer-s_fpn_1x_coco.py work_dirs/.../epoch_12.pth
torchrun --nproc_per_node 8 tools/mm_test.py CONFIG CHECKPOINT --launcher pytorch

Prints the metrics (COCO box/mask AP, ADE20K mIoU) on one line at the end. See docs/dense.md.
"""

from __future__ import annotations

import argparse
import os
import sys

from mmengine.config import DictAction

from vizattn.mm.runner import build_runner, full_checkpoint_loading, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the config the checkpoint was trained with")
    parser.add_argument("checkpoint", help="checkpoint file written by mm_train.py")
    parser.add_argument("--work-dir", help="logs (default: work_dirs/<config name>)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="config overrides, key=value")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if not os.path.isfile(args.checkpoint):
        parser.error(f"checkpoint {args.checkpoint!r} is not a file.")

    cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    runner = build_runner(cfg)
    with full_checkpoint_loading():
        metrics = runner.test()
    print(f"mm_test: {args.checkpoint}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
