"""``ghostnet compress``: a trained CNN -> a Ghost model that inherits its weights, then
distillation from the original.

Calibration images from the training split -> for each converted conv, m = ceil(n/s) of its
trained filters kept and the other maps as fitted cheap ops of them -> top-1 before any
training -> --epochs of knowledge distillation from the original -> top-1 again. The
folder gets inherited.pt (a training checkpoint: `ghostnet eval/predict/export` read it),
distill/ (the training run) and summary.json.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..compress import CompressOptions, compress
from ..config import default_of
from .common import add_option_flags, given_options, parse_kwargs, print_json


def _default_text(f: dataclasses.Field) -> str:
    default = default_of(f)  # None: the trainer's or the recipe's value, said in the help
    if default is None:
        return ""
    return "default: on" if default is True else f"default: {default}"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="Ghost model inheriting a trained model's weights, then distillation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        help="a training run's best.pt; with --model, any weights file of that model",
    )
    p.add_argument(
        "--model",
        help="registry name, torchvision:NAME or timm:NAME (weights: --checkpoint, else the "
        "published ones)",
    )
    p.add_argument(
        "--model-kwarg", action="append", metavar="KEY=VALUE", help="e.g. num_classes=10"
    )
    p.add_argument("--data", required=True, help="folder with train/ and test/ (or val/)")
    p.add_argument("--out", required=True, help="output folder")
    # the rest is generated from CompressOptions' fields: they cannot drift apart
    add_option_flags(p, CompressOptions, _default_text)
    p.add_argument("--json", action="store_true", help="print summary.json")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    options = CompressOptions(
        data=args.data,
        out=args.out,
        checkpoint=args.checkpoint,
        model=args.model,
        model_kwargs=parse_kwargs(args.model_kwarg),
        # not quiet off a terminal either: the trainer then logs a progress line every
        # --log-every steps instead of a progress bar (minutes of silence look like a hang)
        quiet=False,
        **given_options(args, CompressOptions),
    )
    summary = compress(options)
    if args.json:
        print_json(summary)
        return 0
    o, i, d = summary["original"], summary["inherited"], summary["distilled"]
    ghost = f"s={options.ratio}, d={options.dw_size}"
    print(f"{summary['converted_layers']} convs -> Ghost layers ({ghost})")
    print(f"{'layer':<32} {'maps':>5} {'kept':>5} {'mean err':>8} {'median':>8}")
    for layer in summary["layers"]:
        print(
            f"{layer['name']:<32} {layer['channels']:>5} {layer['intrinsic']:>5} "
            f"{layer['mean_error']:>8.3f} {layer['median_error']:>8.3f}"
        )
    print(f"{'model':<34} {'top-1':>7} {'params':>10} {'MACs':>13}")
    print(f"{'original':<34} {o['top1']:>7.2f} {o['params']:>10,} {o['macs']:>13,}")
    print(f"{'inherited, 0 epochs':<34} {i['top1']:>7.2f} {i['params']:>10,} {i['macs']:>13,}")
    if i["top1_bn_reestimated"] is not None:
        kept = "kept" if i.get("bn_reestimate_kept") else "not kept: higher KL to the original"
        label = "  + BN statistics re-estimated"
        print(f"{label:<34} {i['top1_bn_reestimated']:>7.2f}   ({kept})")
    if d is not None:
        label = f"distilled, {d['epochs']} epochs"
        print(f"{label:<34} {d['top1']:>7.2f} {i['params']:>10,} {i['macs']:>13,}")
    wall = summary["wall_s"]
    print(
        f"wall: inherit {wall['inherit']:.1f}s, distil {wall['distill']:.1f}s, "
        f"total {wall['total']:.1f}s; {args.out}/summary.json"
    )
    return 0
