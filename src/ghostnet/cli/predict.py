"""``ghostnet predict``: top-k classes with probabilities for images or folders of images."""

from __future__ import annotations

import argparse

import torch

from ..checkpoint import checkpoint_preset, model_from_checkpoint
from ..data import build_transform, load_images_for_prediction
from ..errors import GhostnetError
from .common import print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images with a checkpoint", description=__doc__)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--checkpoint", required=True, help="a training checkpoint (last.pt/best.pt)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.topk < 1:
        raise GhostnetError(f"--topk must be >= 1, got {args.topk}")
    model, checkpoint = model_from_checkpoint(args.checkpoint)
    classes = checkpoint["classes"]
    transform = build_transform(checkpoint_preset(checkpoint), train=False)
    paths, images = load_images_for_prediction(args.images)
    k = min(args.topk, len(classes))
    results = []
    with torch.inference_mode():
        for start in range(0, len(images), args.batch_size):
            batch = torch.stack([transform(img) for img in images[start : start + args.batch_size]])
            probs = model(batch).softmax(dim=1)
            top = probs.topk(k, dim=1)
            for i in range(len(batch)):
                results.append(
                    {
                        "image": paths[start + i],
                        "top": [
                            {"class": classes[j], "probability": float(p)}
                            for p, j in zip(top.values[i].tolist(), top.indices[i].tolist())
                        ],
                    }
                )
    if args.json:
        print_json(results)
        return 0
    for r in results:
        guesses = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"])
        print(f"{r['image']}: {guesses}")
    return 0
