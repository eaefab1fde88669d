"""``ghostnet models``: list the registered models."""

from __future__ import annotations

import argparse

from ..models import get_entry, list_models
from .common import print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models", description=__doc__)
    p.add_argument("pattern", nargs="?", help="fnmatch filter, e.g. 'ghost*'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    entries = [get_entry(n) for n in names]
    if args.json:
        print_json(
            [
                {
                    "name": e.name,
                    "input_size": list(e.input_size),
                    "num_classes": e.num_classes,
                    "description": e.description,
                }
                for e in entries
            ]
        )
        return 0
    for e in entries:
        size = "x".join(map(str, e.input_size))
        print(f"{e.name:<24} {size:<10} {e.num_classes:>5} classes  {e.description}")
    print("Also: torchvision:NAME and timm:NAME (any model of those libraries).")
    return 0
