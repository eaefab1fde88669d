"""``ghostnet export``: the deploy form (BN folded) as ONNX, checked against ONNX Runtime."""

from __future__ import annotations

import argparse

from ..checkpoint import model_from_checkpoint
from ..data import choose_preset
from ..deploy import count_batchnorm, export_onnx, fuse, onnx_op_counts
from ..errors import GhostnetError
from ..split import split_concats
from .common import add_model_args, input_size_for, parse_size, spec_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the deploy form to ONNX", description=__doc__)
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
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", required=True, help="output .onnx file")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--batch-size", type=int, default=1, help="fixed batch size (default 1)")
    group.add_argument("--dynamic-batch", action="store_true", help="any batch size")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--input-size", type=parse_size, help="C,H,W (default: the model's own)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |torch - ORT| accepted")
    p.add_argument(
        "--split",
        action="store_true",
        help="keep the halves of Ghost concatenations apart (faster in ONNX "
        "Runtime at larger batches; see README performance)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    metadata: dict = {}
    if args.checkpoint:
        model, checkpoint = model_from_checkpoint(args.checkpoint)
        preset = checkpoint["preset"]
        size = args.input_size or (3, preset["input_size"], preset["input_size"])
        metadata = {
            "classes": checkpoint["classes"],
            "preset": preset,
            "model_spec": checkpoint["model_spec"],
        }
    elif args.model:
        spec = spec_from_args(args)
        pretrained = {"true": True, None: False}.get(args.pretrained, args.pretrained)
        model = spec.build(pretrained=pretrained, ema=args.ema)
        size = input_size_for(args, spec)
        preset = choose_preset("auto", size[1:], size[1]).to_dict()
        metadata = {"preset": preset, "model_spec": spec.to_dict()}
    else:
        raise GhostnetError("give --model NAME or --checkpoint FILE")
    model.eval()
    deploy = fuse(model)
    if args.split:
        deploy = split_concats(deploy, size)
    path, diff = export_onnx(
        deploy,
        args.out,
        size,
        batch_size=args.batch_size,
        dynamic_batch=args.dynamic_batch,
        opset=args.opset,
        metadata=metadata,
        reference=model,
        tolerance=args.tolerance,
    )
    ops = onnx_op_counts(path)
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): input "
        f"{'N' if args.dynamic_batch else args.batch_size}x{'x'.join(map(str, size))}, "
        f"{sum(ops.values())} ops ({', '.join(f'{k} {v}' for k, v in sorted(ops.items()))})"
    )
    print(
        f"BN folded: {count_batchnorm(model)} -> {count_batchnorm(deploy)} BatchNorm layers; "
        f"ONNX Runtime vs PyTorch max abs diff {diff:.2e} (limit {args.tolerance:g})"
    )
    return 0
