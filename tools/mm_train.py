"""Train a detector or segmentor from an mmdet/mmseg config with a vizattn backbone (mmengine's Runner).

python tools/mm_train.py configs/det/mask-rcnn_biformer-s_fpn_1x_coco.py                 # one GPU (or the CPU)
torchrun --nproc_per_node 8 tools/mm_train.py CONFIG --launcher pytorch                   # 8 GPUs
python tools/mm_train.py CONFIG --resume                                                  # resume the work dir
python tools/mm_train.py CONFIG --cfg-options train_dataloader.batch_size=4 data_root=/data/coco/

The data go where the config's data_root says (data/coco/, data/ade/ADEChallengeData2016). See docs/dense.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from mmengine.config import DictAction

from vizattn.mm.runner import build_runner, full_checkpoint_loading, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="config file, e.g. configs/det/retinanet_biformer-s_fpn_1x_coco.py")
    parser.add_argument("--work-dir", help="logs and checkpoints (default: work_dirs/<config name>)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        help="resume from this checkpoint, or (no value) from the latest one in the work dir",
    )
    parser.add_argument("--fp32", action="store_true", help="train in float32 where the config asks for fp16")
    parser.add_argument(
        "--auto-scale-lr", action="store_true", help="scale the lr by total batch / the config's base_batch_size"
    )
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="config overrides, key=value")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))

    cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher, args.fp32)
    if args.auto_scale_lr:
        if "base_batch_size" not in cfg.get("auto_scale_lr", {}):
            parser.error(f"{args.config} has no auto_scale_lr.base_batch_size to scale from.")
        cfg.auto_scale_lr.enable = True
    if args.resume is not None:
        cfg.resume = True
        cfg.load_from = None if args.resume == "auto" else args.resume

    start = time.time()
    runner = build_runner(cfg)
    with full_checkpoint_loading():
        runner.train()
    last = os.path.join(cfg.work_dir, "last_checkpoint")
    checkpoint = open(last).read().strip() if os.path.exists(last) else "none saved"
    print(f"mm_train: {args.config} trained in {(time.time() - start) / 60:.1f} min; last checkpoint: {checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
