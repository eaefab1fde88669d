"""``ghostnet ghostify``: which convs of a model become Ghost layers, and what it saves.

With ``--from-report`` the per-layer ratios suggested by ``ghostnet analyze`` are used
instead of one global s.
"""

from __future__ import annotations

import argparse

from ..convert import ghostify_report
from ..files import check_output_file
from ..models import create_model
from ..weights import save_weights
from .common import add_ghostify_args, ghostify_options, parse_kwargs, parse_size, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ghostify", help="convert a model's convs to Ghost layers (report)", description=__doc__
    )
    p.add_argument("model", help="model name, torchvision:NAME or timm:NAME")
    p.add_argument("--input-size", type=parse_size, help="C,H,W for the MACs count")
    p.add_argument("--save", metavar="FILE.safetensors", help="save the converted weights")
    p.add_argument("--json", action="store_true")
    add_ghostify_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..models import default_input_size

    args.ghostify = True
    if args.save:  # before the conversion: a bad path fails first
        check_output_file(args.save, "--save", "model.safetensors")
    options = ghostify_options(args)
    model = create_model(args.model, **parse_kwargs(args.model_kwarg))
    size = args.input_size or default_input_size(args.model)
    converted, report = ghostify_report(model, input_size=size, **options)
    if args.save:
        save_weights(converted, args.save, {"model": args.model})
    if args.json:
        print_json(
            {
                "changes": [vars(c) for c in report.changes],
                "params_before": report.params_before,
                "params_after": report.params_after,
                "macs_before": report.macs_before,
                "macs_after": report.macs_after,
            }
        )
        return 0
    print(report.summary())
    return 0
