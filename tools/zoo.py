"""Build every registered vizattn model and print the zoo: name, parameters, GFLOPs (MACs), output shapes.

python tools/zoo.py                 # all models
python tools/zoo.py 'biformer*'     # a wildcard
python tools/zoo.py --markdown      # the table of docs/models.md
"""

from __future__ import annotations

import argparse
import sys
import time

import vizattn
from vizattn.profile import model_stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("filter", nargs="?", default="", help="wildcard over model names, e.g. 'biformer*'")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args(argv)

    names = vizattn.list_models(args.filter)
    if not names:
        print(
            f"No vizattn model matches {args.filter!r}; available: {', '.join(vizattn.list_models())}", file=sys.stderr
        )
        return 2
    if args.markdown:
        print("| model | params | GFLOPs (MACs) @224 | logits | features (NCHW) |")
        print("|---|---:|---:|---|---|")
    else:
        print(f"{'model':<16}{'params':>14}{'GFLOPs':>9}  {'logits':<12}features (NCHW) at the pretrained input size")
    start = time.perf_counter()
    for name in names:
        s = model_stats(name)
        feats = " ".join("x".join(map(str, f[1:])) for f in s.feature_shapes)
        if args.markdown:
            print(f"| `{name}` | {s.params:,} | {s.gmacs:.2f} | {tuple(s.logits_shape)} | {feats} |")
        else:
            print(f"{name:<16}{s.params:>14,}{s.gmacs:>9.2f}  {str(tuple(s.logits_shape)):<12}{feats}", flush=True)
    print(f"{len(names)} models built in {time.perf_counter() - start:.1f} s (vizattn {vizattn.__version__}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
