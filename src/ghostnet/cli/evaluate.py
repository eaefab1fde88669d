"""``ghostnet eval``: top-1/top-5/loss and per-class accuracy of a checkpoint on a data set."""

from __future__ import annotations

import argparse

import torch

from ..checkpoint import checkpoint_preset, model_from_checkpoint
from ..data import ImageDataset, build_transform, open_data
from ..engine import eval_loader, evaluate, pick_device
from ..errors import GhostnetError
from .common import int_at_least, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on a data set", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="last.pt or best.pt of a training run")
    p.add_argument(
        "--data",
        required=True,
        help="folder with test/ or val/, a cifar-10-batches-py folder, or cifar10",
    )
    p.add_argument("--batch-size", type=int_at_least(1), default=256)
    p.add_argument("--workers", type=int_at_least(0), default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model, checkpoint = model_from_checkpoint(args.checkpoint)
    source = open_data(args.data, need_train=False)
    if source.classes != checkpoint["classes"]:
        raise GhostnetError(
            f"{args.data} has classes {source.classes[:5]}... ({len(source.classes)}), the "
            f"checkpoint was trained on {checkpoint['classes'][:5]}... "
            f"({len(checkpoint['classes'])}); evaluate on data with the same class folders"
        )
    device = pick_device(args.device)
    preset = checkpoint_preset(checkpoint)
    dataset = ImageDataset(source.eval, build_transform(preset, train=False))
    loader = eval_loader(dataset, args.batch_size, args.workers)
    with torch.inference_mode():
        result = evaluate(model.to(device), loader, device, len(source.classes))
    if args.json:
        result["classes"] = source.classes
        result["checkpoint"] = str(args.checkpoint)
        print_json(result)
        return 0
    print(f"{checkpoint['model_spec']['name']} on {source.description}: {result['count']} images")
    print(f"top-1 {result['top1']:.2f}%   top-5 {result['top5']:.2f}%   loss {result['loss']:.4f}")
    print(f"{'class':<20} {'images':>7} {'top-1':>7}")
    for name, acc, count in zip(source.classes, result["per_class"], result["per_class_count"]):
        print(f"{name:<20} {count:>7} {acc:>6.2f}%")
    return 0
