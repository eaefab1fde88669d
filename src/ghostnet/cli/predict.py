"""``ghostnet predict``: top-k classes with probabilities for images or folders of images."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from ..checkpoint import checkpoint_preset, model_from_checkpoint
from ..data import Preset, build_transform, load_images_for_prediction
from ..deploy import OnnxSession
from ..errors import GhostnetError
from .common import checkpoint_task_class, int_at_least, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images with a checkpoint", description=__doc__)
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help="images or folders (with --backend onnxruntime: FILE.onnx first)",
    )
    p.add_argument("--checkpoint", help="a training checkpoint (last.pt/best.pt)")
    p.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnxruntime"],
        help="onnxruntime: run an exported FILE.onnx (from `ghostnet export`)",
    )
    p.add_argument("--topk", type=int_at_least(1), default=5)
    p.add_argument("--batch-size", type=int_at_least(1), default=64)
    p.add_argument(
        "--out", help="detection: folder for the images with their boxes (default predictions)"
    )
    p.add_argument(
        "--threshold", type=float, default=0.3, help="detection: lowest score drawn (0.3)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def _load(args: argparse.Namespace) -> tuple[Callable, list[str], Preset, list[str]]:
    """(model callable, class names, preset, remaining inputs) for the chosen backend."""
    if args.backend == "onnxruntime":
        onnx_file, *inputs = args.images
        if not inputs:
            raise GhostnetError("give the ONNX file first, then images or folders")
        session = OnnxSession(onnx_file)
        preset = session.metadata.get("preset")
        if preset is None:
            raise GhostnetError(
                f"{onnx_file} has no ghostnet preset metadata; export it with `ghostnet export`"
            )
        classes = session.metadata.get("classes")
        classes = classes or [str(i) for i in range(session.session.get_outputs()[0].shape[1])]
        return session, classes, Preset.from_dict(preset), inputs
    if not args.checkpoint:
        raise GhostnetError("give --checkpoint FILE (or --backend onnxruntime FILE.onnx)")
    model, checkpoint = model_from_checkpoint(args.checkpoint)
    return model, checkpoint["classes"], checkpoint_preset(checkpoint), args.images


def run(args: argparse.Namespace) -> int:
    task = checkpoint_task_class(args.checkpoint)
    if task is not None and task.name != "classification":  # the task predicts its own
        results = task.predict(args.checkpoint, args.images, args.out, args.threshold)
        if args.json:
            print_json(results)
        else:
            print("\n".join(task.predict_lines(results)))
        return 0
    if args.topk < 1:
        raise GhostnetError(f"--topk must be >= 1, got {args.topk}")
    model, classes, preset, inputs = _load(args)
    transform = build_transform(preset, train=False)
    paths, images = load_images_for_prediction(inputs)
    k = min(args.topk, len(classes))
    fixed = getattr(model, "input_shape", [None])[0]
    batch_size = fixed if isinstance(fixed, int) else args.batch_size
    results = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(img) for img in images[start : start + batch_size]])
            count = len(batch)
            if isinstance(fixed, int) and count < fixed:  # pad a fixed-batch ONNX model
                batch = torch.cat([batch, batch[-1:].expand(fixed - count, -1, -1, -1)])
            probs = model(batch)[:count].softmax(dim=1)
            top = probs.topk(k, dim=1)
            for i in range(count):
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
