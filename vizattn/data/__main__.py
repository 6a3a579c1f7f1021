"""Write the built-in datasets.

    python -m vizattn.data                          # the Shapes set (cached), prints its folder
    python -m vizattn.data --synthetic DIR          # a synthetic ImageNet-sized JPEG folder for throughput runs
"""

from __future__ import annotations

import argparse
import time

from vizattn.data import CLASSES, shapes_dir
from vizattn.data.synthetic import write_synthetic_imagenet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", help="parent folder of Shapes (default: $VIZATTN_CACHE/data, else "
                        "~/.cache/vizattn/data)")
    parser.add_argument("--synthetic", metavar="DIR", help="write a synthetic ImageNet-sized folder here instead")
    parser.add_argument("--classes", type=int, default=1000, help="--synthetic: class folders")
    parser.add_argument("--train-per-class", type=int, default=20, help="--synthetic: training images per class")
    parser.add_argument("--val-per-class", type=int, default=5, help="--synthetic: validation images per class")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.synthetic:
        root = write_synthetic_imagenet(args.synthetic, args.classes, args.train_per_class, args.val_per_class)
        print(f"synthetic ImageNet-sized set: {args.classes} classes x ({args.train_per_class} train + "
              f"{args.val_per_class} val) JPEGs in {root} ({time.perf_counter() - start:.1f} s)")
        return
    root = shapes_dir(args.cache_dir)
    n_train = sum(1 for _ in (root / "train").rglob("*.png"))
    n_val = sum(1 for _ in (root / "val").rglob("*.png"))
    print(f"Shapes: {len(CLASSES)} classes, {n_train} train / {n_val} val images in {root} "
          f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
