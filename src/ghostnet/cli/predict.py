"""``ghostnet predict``: top-k classes with probabilities for images or folders of images."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from ..checkpoint import checkpoint_preset, model_from_checkpoint
from ..data import Preset, build_transform, load_images_for_prediction
from ..deploy import open_exported
from ..errors import GhostnetError
from .common import checkpoint_task_class, int_at_least, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images with a checkpoint", description=__doc__)
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help="images or folders; or an exported file first (.onnx, .pte, .param, .tflite)",
    )
    p.add_argument("--checkpoint", help="a training checkpoint (last.pt/best.pt)")
    p.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnxruntime", "executorch", "ncnn", "litert"],
        help="run an exported file (from `ghostnet export`) on this runtime; an exported "
        "file given first picks its runtime by suffix without this flag",
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
    exported = _exported_file(args)
    if exported is not None:
        return _load_exported(exported, args)
    if not args.checkpoint:
        raise GhostnetError(
            "give --checkpoint FILE (or an exported FILE.onnx/.pte/.param/.tflite first)"
        )
    model, checkpoint = model_from_checkpoint(args.checkpoint)
    return model, checkpoint["classes"], checkpoint_preset(checkpoint), args.images


_EXPORTED_SUFFIXES = (".onnx", ".pte", ".param", ".bin", ".tflite")


def _exported_file(args: argparse.Namespace) -> str | None:
    """The exported model file given first (or any first input with --backend X)."""
    first = args.images[0]
    if args.backend != "torch" or first.endswith(_EXPORTED_SUFFIXES):
        return first
    return None


def _load_exported(
    path: str, args: argparse.Namespace
) -> tuple[Callable, list[str], Preset, list[str]]:
    inputs = args.images[1:]
    if not inputs:
        raise GhostnetError(f"give the exported file first ({path}), then images or folders")
    session = open_exported(path, backend=args.backend)
    preset = session.metadata.get("preset")
    if not isinstance(preset, dict):
        raise GhostnetError(
            f"{path} has no ghostnet preset metadata; export it with `ghostnet export`"
        )
    classes = session.metadata.get("classes")
    if not isinstance(classes, list):  # exported from --model: classes are indices
        fixed = session.input_shape[0]
        side = preset["input_size"]
        size = session.metadata.get("input_size") or [3, side, side]
        probe = torch.zeros(fixed if isinstance(fixed, int) else 1, *size)
        classes = [str(i) for i in range(session(probe).shape[1])]
    return session, classes, Preset.from_dict(preset), inputs


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
