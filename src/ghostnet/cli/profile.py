"""``ghostnet profile``: params and MACs (paper convention) of any model, per stage."""

from __future__ import annotations

import argparse

from ..counting import compare_module, profile
from ..errors import GhostnetError
from .common import (
    add_ghostify_args,
    input_size_for,
    int_at_least,
    parse_size,
    print_json,
    spec_from_args,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="count params and MACs (paper convention)",
        description=__doc__,
    )
    p.add_argument(
        "model", nargs="?", help="model name (see `ghostnet models`), torchvision:NAME or timm:NAME"
    )
    p.add_argument("--input-size", type=parse_size, help="C,H,W (default: the model's own)")
    p.add_argument(
        "--depth",
        type=int_at_least(0),
        default=2,
        help="group layers by this many name components (0: every layer)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--module-compare",
        action="store_true",
        help="ordinary conv vs Ghost module (paper Sec. 3.1) instead of a model",
    )
    p.add_argument("--channels", type=int_at_least(1), default=256, help="with --module-compare")
    p.add_argument(
        "--spatial", type=int_at_least(1), default=28, help="with --module-compare: H = W"
    )
    add_ghostify_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.module_compare:
        return _module_compare(args)
    if not args.model:
        raise GhostnetError(
            "give a MODEL (e.g. ghostnet_100; see `ghostnet models`) or --module-compare"
        )
    spec = spec_from_args(args)
    model = spec.build()
    size = input_size_for(args, spec)
    result = profile(model, size)
    if args.json:
        data = result.to_dict()
        data["model"] = spec.to_dict()
        if args.depth:
            data["groups"] = [vars(g) for g in result.grouped(args.depth)]
        print_json(data)
        return 0
    print(f"{spec.label()} at {'x'.join(map(str, size))}")
    print(result.table(args.depth or None))
    print(
        f"params: {result.params:,} ({result.params / 1e6:.2f}M)   "
        f"MACs: {result.macs:,} ({result.macs / 1e6:.1f}M)"
    )
    if result.params_used != result.params:
        print(f"params used in the forward pass: {result.params_used:,}")
    return 0


def _module_compare(args: argparse.Namespace) -> int:
    rows = [
        compare_module(args.channels, k, s, args.dw_size, args.spatial)
        for k in (1, 3)
        for s in (2, 4)
    ]
    if args.json:
        print_json(
            [
                {
                    **vars(r),
                    "measured_speedup": r.measured_speedup,
                    "measured_compression": r.measured_compression,
                    "time_ratio": r.time_ratio,
                }
                for r in rows
            ]
        )
        return 0
    print(
        f"Conv2d+BN vs GhostModule, {args.channels} -> {args.channels} channels, "
        f"{args.spatial}x{args.spatial}, batch 8, CPU eval (medians of 21 interleaved runs)"
    )
    print(
        f"{'k':>2} {'s':>2} {'d':>2} | {'r_s theory':>10} {'MACs ratio':>10} | "
        f"{'r_c theory':>10} {'params ratio':>12} | "
        f"{'conv ms':>8} {'ghost ms':>8} {'time ratio':>10}"
    )
    for r in rows:
        print(
            f"{r.kernel_size:>2} {r.ratio:>2} {r.dw_size:>2} | {r.theoretical_speedup:>10.2f} "
            f"{r.measured_speedup:>10.2f} | {r.theoretical_compression:>10.2f} "
            f"{r.measured_compression:>12.2f} | {r.conv_ms:>8.2f} {r.ghost_ms:>8.2f} "
            f"{r.time_ratio:>10.2f}"
        )
    print(
        "MACs count convs (BN folds away); params include BN's 2 per channel; "
        "theory uses m = n/s exactly."
    )
    return 0
