"""Write the CIFAR detection set (COCO 2017 layout): see ghostnet.detection.synth.

    .venv/bin/python benchmarks/make_cifar_detection.py --out /work/runs/cifar_det \
        --train 2000 --val 300 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ghostnet.detection.synth import make_cifar_detection
from ghostnet.errors import GhostnetError


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cifar",
        default=os.environ.get("GHOSTNET_CIFAR10", "../shared/data/cifar10"),
        help="CIFAR-10 as train/ and test/ class folders",
    )
    args = p.parse_args()
    try:
        counts = make_cifar_detection(args.cifar, args.out, args.train, args.val, args.seed)
    except GhostnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
