"""``ghostnet export``: the deploy form (reparameterized, BN folded) as ONNX, ExecuTorch
(.pte), ncnn (.param + .bin) or LiteRT (.tflite), checked against PyTorch on that runtime;
with ``--int8`` (ONNX: QDQ in ONNX Runtime; ExecuTorch: PT2E with XNNPACKQuantizer), statically
quantized (per-channel weights) on calibration images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoint import model_from_checkpoint
from ..data import Preset, choose_preset
from ..deploy import (
    FLOAT_LAYER_GROUPS,
    FORMATS,
    INT8_FORMATS,
    Int8Options,
    calibration_batches,
    check_export_output,
    export,
)
from ..errors import GhostnetError
from .common import (
    add_model_args,
    checkpoint_task_class,
    input_size_for,
    int_at_least,
    parse_size,
    spec_from_args,
)

if TYPE_CHECKING:
    from ..train import Task


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the deploy form (ONNX, ExecuTorch, ncnn, LiteRT)",
        description=__doc__,
    )
    add_model_args(p, required=False)
    p.add_argument("--checkpoint", help="a training checkpoint (model, classes, preset)")
    p.add_argument("--pretrained", help="weights file for --model (or 'true': published)")
    p.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a --pretrained file with raw and EMA weights: --ema (the default when it has "
        "both) loads the EMA copy, --no-ema the raw weights",
    )
    p.add_argument(
        "--format",
        default="onnx",
        choices=list(FORMATS),
        help="onnx (ONNX Runtime), executorch (.pte, XNNPACK), ncnn (.param + .bin, pnnx), "
        "litert (.tflite); each needs its extra: pip install 'ghostnet[FORMAT]'",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output file: .onnx, .pte, .param (ncnn: NAME.bin beside it) or .tflite; "
        "formats without embedded metadata get FILE.json beside the file",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--batch-size", type=int, default=1, help="fixed batch size (default 1)")
    group.add_argument("--dynamic-batch", action="store_true", help="any batch size")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--input-size", type=parse_size, help="C,H,W (default: the model's own)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="max |PyTorch - runtime| accepted (of max(1, |output|))",
    )
    p.add_argument(
        "--split",
        action="store_true",
        help="keep the halves of Ghost concatenations apart (faster in ONNX "
        "Runtime at larger batches; see README performance)",
    )
    p.add_argument(
        "--pad-channels",
        type=int_at_least(2),
        metavar="B",
        help="with --split: pad every part to a multiple of B channels with zero weights "
        "(ONNX Runtime's block: 16 on AVX-512 CPUs, 8 on AVX2; same outputs)",
    )
    q = p.add_argument_group(
        "INT8 (static: ONNX Runtime for onnx, PT2E XNNPACKQuantizer for executorch)"
    )
    q.add_argument("--int8", action="store_true", help="write an INT8 (QDQ) model")
    q.add_argument(
        "--calibration",
        metavar="DIR",
        help="images to calibrate activation ranges on (a data root: its test/ or val/ split)",
    )
    q.add_argument(
        "--calibration-images",
        type=int_at_least(1),
        default=256,
        help="how many images, spread over the classes (default 256)",
    )
    q.add_argument(
        "--calibration-method",
        default="minmax",
        choices=["minmax", "percentile", "entropy"],
        help="activation range estimate (default minmax)",
    )
    q.add_argument(
        "--float-layers",
        default="",
        help="comma-separated layer groups kept in float: "
        + "; ".join(f"{k}: {v}" for k, v in FLOAT_LAYER_GROUPS.items()),
    )
    p.set_defaults(run=run)


def _recorded_preset(preset: dict, size: tuple[int, int, int]) -> dict:
    """The preset as exported: a square --input-size replaces the trained size, so
    `predict --backend onnxruntime` prepares images at the size the file expects."""
    if size[1] == size[2]:
        return {**preset, "input_size": size[1]}
    return preset


def _export_task_checkpoint(args: argparse.Namespace, task: type[Task]) -> int:
    """A detection/segmentation checkpoint: the task exports its own model (ONNX)."""
    given = {
        "--format": args.format != "onnx",
        "--int8": args.int8,
        "--split": args.split,
        "--pad-channels": bool(args.pad_channels),
        "--dynamic-batch": args.dynamic_batch,
        "--batch-size": args.batch_size != 1,
        "--model": bool(args.model),
    }
    refused = [flag for flag, present in given.items() if present]
    if refused:
        raise GhostnetError(
            f"{args.checkpoint} is a {task.name} checkpoint: its export is ONNX at batch 1; "
            f"drop {', '.join(refused)}"
        )
    size = None
    if args.input_size:
        channels, height, width = args.input_size
        if channels != 3 or height != width:
            raise GhostnetError(
                f"--input-size {channels},{height},{width}: a {task.name} export takes square "
                "RGB inputs (3,S,S)"
            )
        size = height
    lines = task.export_checkpoint(
        args.checkpoint, args.out, input_size=size, opset=args.opset, tolerance=args.tolerance
    )
    print("\n".join(lines))
    return 0


def run(args: argparse.Namespace) -> int:
    task = checkpoint_task_class(args.checkpoint)
    if task is not None and task.name != "classification":
        return _export_task_checkpoint(args, task)
    float_layers = [g.strip() for g in args.float_layers.split(",") if g.strip()]
    if args.int8 and not args.calibration:
        raise GhostnetError("--int8 needs --calibration DIR (real images to calibrate on)")
    if not args.int8 and (args.calibration or float_layers):
        raise GhostnetError("--calibration and --float-layers apply to --int8 exports only")
    unknown = [g for g in float_layers if g not in FLOAT_LAYER_GROUPS]
    if unknown:
        raise GhostnetError(
            f"unknown --float-layers {', '.join(unknown)}: choose from "
            f"{', '.join(FLOAT_LAYER_GROUPS)}"
        )
    if args.pad_channels and not args.split:
        raise GhostnetError("--pad-channels pads the parts of a --split export; add --split")
    out = check_export_output(args.out, args.format)
    if args.int8 and args.format not in INT8_FORMATS:
        raise GhostnetError(
            f"--int8 is built for --format {' or '.join(INT8_FORMATS)}; not {args.format}"
        )
    if args.int8 and not Path(args.calibration).is_dir():
        raise GhostnetError(f"--calibration {args.calibration}: not a folder of images")
    model, size, preset, metadata = _model(args)
    int8 = None
    if args.int8:
        batches = calibration_batches(
            args.calibration,
            Preset.from_dict(preset),
            args.calibration_images,
            16 if args.dynamic_batch else args.batch_size,
        )
        int8 = Int8Options(batches, float_layers, args.calibration_method)
    result = export(
        model,
        args.format,
        out,
        size,
        metadata=metadata,
        batch_size=args.batch_size,
        dynamic_batch=args.dynamic_batch,
        opset=args.opset,
        split=args.split,
        pad_channels=args.pad_channels or 0,
        tolerance=args.tolerance,
        int8=int8,
    )
    path, agreement = result.path, result.agreement
    size_mb = sum(f.stat().st_size for f in result.files if f.suffix != ".json") / 1e6
    ops = result.ops
    line = (
        f"wrote {path} ({size_mb:.1f} MB): input "
        f"{'N' if args.dynamic_batch else args.batch_size}x{'x'.join(map(str, size))}"
    )
    if ops:
        line += (
            f", {sum(ops.values())} ops ({', '.join(f'{k} {v}' for k, v in sorted(ops.items()))})"
        )
    others = [str(f) for f in result.files if f != path]
    if others:
        line += f"; also {', '.join(others)}"
    print(line)
    before, after = result.batchnorm
    print(
        f"BN folded: {before} -> {after} BatchNorm layers; {agreement.runtime} vs PyTorch "
        f"max abs diff {agreement.max_diff:.2e} (of max(1, |output|); limit {args.tolerance:g})"
    )
    if agreement.note:
        print(f"check: {agreement.note}")
    if args.int8:
        summary = result.int8 or {}
        images = sum(len(b) for b in int8.batches)
        if args.format == "onnx":
            kept = f" ({', '.join(float_layers)})" if float_layers else ""
            how = (
                f"{summary['int8_layers']} Conv/Gemm layers quantized (per-channel weights), "
                f"{summary['float_nodes']} nodes kept float{kept}; "
                f"{args.calibration_method} ranges from {images} images"
            )
        else:
            how = (
                f"{summary['quantizer']}, {summary['quantize_ops']} quantize ops; ranges "
                f"from {images} images"
            )
        print(
            f"int8: {how}; top-1 agrees with fp32 on {result.int8_top1_agreement:.1f}% of them "
            f"(measure accuracy: ghostnet eval {path} --data DIR)"
        )
    return 0


def _model(args: argparse.Namespace) -> tuple[torch.nn.Module, tuple[int, int, int], dict, dict]:
    """(model, input size, preset, metadata) from --checkpoint or --model."""
    if args.checkpoint:
        model, checkpoint = model_from_checkpoint(args.checkpoint)
        recorded = checkpoint["model_spec"]
        if args.model and args.model != recorded["name"]:
            raise GhostnetError(
                f"--model {args.model} disagrees with {args.checkpoint}, which holds "
                f"{recorded['name']}; drop --model (the checkpoint records its model)"
            )
        side = checkpoint["preset"]["input_size"]
        size = args.input_size or (3, side, side)
        preset = _recorded_preset(checkpoint["preset"], size)
        metadata = {"classes": checkpoint["classes"], "preset": preset, "model_spec": recorded}
        return model, size, preset, metadata
    if args.model:
        spec = spec_from_args(args)
        pretrained = {"true": True, None: False}.get(args.pretrained, args.pretrained)
        model = spec.build(pretrained=pretrained, ema=args.ema)
        size = input_size_for(args, spec)
        preset = choose_preset("auto", size[1:], size[1]).to_dict()
        return model, size, preset, {"preset": preset, "model_spec": spec.to_dict()}
    raise GhostnetError("give --model NAME or --checkpoint FILE")
