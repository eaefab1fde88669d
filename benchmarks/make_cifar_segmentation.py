"""Write the CIFAR segmentation set (Pascal VOC layout): see ghostnet.segmentation.synth.

    .venv/bin/python benchmarks/make_cifar_segmentation.py --out /work/runs/cifar_seg \
        --size 96 --train 3000 --val 500 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ghostnet.errors import GhostnetError
from ghostnet.segmentation.synth import make_cifar_segmentation


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=128, help="canvas side in pixels")
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--val", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--border", type=int, default=1, help="ignore band (px each side of an edge)")
    p.add_argument(
        "--cifar",
        default=os.environ.get("GHOSTNET_CIFAR10", "../shared/data/cifar10"),
        help="CIFAR-10 as train/ and test/ class folders",
    )
    args = p.parse_args()
    try:
        counts = make_cifar_segmentation(
            args.cifar, args.out, args.train, args.val, args.size, args.seed, args.border
        )
    except GhostnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
