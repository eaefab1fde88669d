"""``ghostnet eval``: top-1/top-5/loss and per-class accuracy of a checkpoint (or, with
an exported file: .onnx fp32 or INT8, .pte, ncnn .param, .tflite) on a data set."""

from __future__ import annotations

import argparse

import torch

from ..checkpoint import checkpoint_preset, model_from_checkpoint
from ..data import ImageDataset, Preset, build_transform, open_data
from ..errors import GhostnetError
from ..train import eval_loader, evaluate, pick_device
from .common import checkpoint_task_class, int_at_least, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on a data set", description=__doc__)
    p.add_argument(
        "onnx_file",
        nargs="?",
        metavar="EXPORTED_FILE",
        help="a file from `ghostnet export` (.onnx fp32 or --int8, .pte, .param, .tflite): "
        "its suffix picks the runtime",
    )
    p.add_argument("--checkpoint", help="last.pt or best.pt of a training run")
    p.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnxruntime", "executorch", "ncnn", "litert"],
        help="the runtime of EXPORTED_FILE (default: from its suffix); torch: a checkpoint",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="torch backend: bf16 autocast (CPUs with AVX512-BF16/AMX, or a GPU)",
    )
    p.add_argument(
        "--threads", type=int_at_least(1), help="CPU threads (default: torch's/ORT's own)"
    )
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


def _load(args: argparse.Namespace) -> tuple[torch.nn.Module, dict, Preset, str]:
    """(model, {classes, model_spec}, preset, label) for the chosen backend."""
    if args.onnx_file or args.backend != "torch":
        return _load_exported(args)
    if not args.checkpoint:
        raise GhostnetError(
            "give --checkpoint FILE (or an exported MODEL.onnx/.pte/.param/.tflite)"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    model, checkpoint = model_from_checkpoint(args.checkpoint)
    label = f"{checkpoint['model_spec']['name']}"
    return model, checkpoint, checkpoint_preset(checkpoint), label


def _load_exported(args: argparse.Namespace) -> tuple[torch.nn.Module, dict, Preset, str]:
    """An exported file on its runtime (chosen by suffix; --backend must agree)."""
    from ..deploy import RuntimeClassifier, open_exported

    if not args.onnx_file or args.checkpoint:
        raise GhostnetError(
            "an exported file is evaluated alone: ghostnet eval MODEL.onnx|.pte|.param|.tflite "
            "--data DIR (no --checkpoint)"
        )
    if args.precision != "fp32":
        raise GhostnetError(
            "--precision applies to --backend torch; an exported file runs in the precision "
            "it was exported in (export --int8 for INT8)"
        )
    session = open_exported(args.onnx_file, threads=args.threads, backend=args.backend)
    meta = session.metadata
    if not isinstance(meta.get("preset"), dict) or not isinstance(meta.get("classes"), list):
        raise GhostnetError(
            f"{args.onnx_file} has no ghostnet classes/preset metadata; export it from a "
            "training checkpoint: ghostnet export --checkpoint best.pt"
        )
    kind = "int8" if "int8" in meta else "fp32"
    info = {
        "classes": meta["classes"],
        "model_spec": meta.get("model_spec", {}),
        "onnx_precision": kind,  # what the file computes in, not a torch flag
    }
    label = f"{args.onnx_file} ({session.runtime}, {kind})"
    return RuntimeClassifier(session), info, Preset.from_dict(meta["preset"]), label


def run(args: argparse.Namespace) -> int:
    task = checkpoint_task_class(args.checkpoint)
    if task is not None and task.name != "classification":  # the task evaluates its own
        result = task.evaluate_checkpoint(
            args.checkpoint, args.data, pick_device(args.device), args.batch_size
        )
        if args.json:
            print_json(result)
        else:
            print("\n".join(task.eval_lines(result)))
        return 0
    model, checkpoint, preset, label = _load(args)
    source = open_data(args.data, need_train=False)
    if source.classes != checkpoint["classes"]:
        raise GhostnetError(
            f"{args.data} has classes {source.classes[:5]}... ({len(source.classes)}), the "
            f"model was trained on {checkpoint['classes'][:5]}... "
            f"({len(checkpoint['classes'])}); evaluate on data with the same class folders"
        )
    device = pick_device(args.device) if args.backend == "torch" else torch.device("cpu")
    amp = "none"
    if args.precision == "bf16":
        from ..bench import require_bf16

        if device.type == "cpu":
            require_bf16()
        amp = "bf16"
    dataset = ImageDataset(source.eval, build_transform(preset, train=False))
    loader = eval_loader(dataset, args.batch_size, args.workers)
    with torch.inference_mode():
        result = evaluate(model.to(device), loader, device, len(source.classes), amp=amp)
    if args.json:
        result["classes"] = source.classes
        result["checkpoint"] = str(args.checkpoint or args.onnx_file)
        result["backend"] = args.backend
        result["precision"] = checkpoint.get("onnx_precision", args.precision)
        print_json(result)
        return 0
    print(f"{label} on {source.description}: {result['count']} images")
    print(f"top-1 {result['top1']:.2f}%   top-5 {result['top5']:.2f}%   loss {result['loss']:.4f}")
    print(f"{'class':<20} {'images':>7} {'top-1':>7}")
    for name, acc, count in zip(source.classes, result["per_class"], result["per_class_count"]):
        print(f"{name:<20} {count:>7} {acc:>6.2f}%")
    return 0
