"""``ghostnet models``: the registered models with params, MACs, published top-1 and weights."""

from __future__ import annotations

import argparse

from ..models import get_entry, list_models
from .common import print_json

# published ImageNet top-1 (%) and where it is reported
PUBLISHED_TOP1 = {
    "ghostnet_050": (66.2, "Han et al. 2020, Table 7"),
    "ghostnet_100": (73.9, "Han et al. 2020, Table 7"),
    "ghostnet_130": (75.7, "Han et al. 2020, Table 7"),
    "ghostnetv2_100": (75.3, "Tang et al. 2022, Table 1"),
    "ghostnetv2_130": (76.9, "Tang et al. 2022, Table 1"),
    "ghostnetv2_160": (77.8, "Tang et al. 2022, Table 1"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models", description=__doc__)
    p.add_argument("pattern", nargs="?", help="fnmatch filter, e.g. 'ghost*'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--no-counts", action="store_true", help="skip params/MACs (they build every model)"
    )
    p.set_defaults(run=run)


def _row(name: str, counts: bool) -> dict:
    from ..weights import PRETRAINED

    e = get_entry(name)
    row = {
        "name": e.name,
        "input_size": list(e.input_size),
        "num_classes": e.num_classes,
        "description": e.description,
        "params": None,
        "macs": None,
        "top1": None,
        "top1_source": None,
        "weights": name in PRETRAINED,
    }
    if name in PUBLISHED_TOP1:
        row["top1"], row["top1_source"] = PUBLISHED_TOP1[name]
    if counts:  # computed per model on demand: nothing is cached
        from ..counting import profile
        from ..models import create_model

        p = profile(create_model(name), input_size=e.input_size)
        row["params"], row["macs"] = p.params, p.macs
    return row


def run(args: argparse.Namespace) -> int:
    rows = [_row(n, not args.no_counts) for n in list_models(args.pattern)]
    if args.json:
        print_json(rows)
        return 0
    print(f"{'name':<24} {'input':<10} {'params':>8} {'MACs':>9} {'top-1':>6}  weights  source")
    for r in rows:
        size = "x".join(map(str, r["input_size"]))
        params = f"{r['params'] / 1e6:.2f}M" if r["params"] is not None else "-"
        macs = f"{r['macs'] / 1e6:.1f}M" if r["macs"] is not None else "-"
        top1 = f"{r['top1']:.1f}" if r["top1"] is not None else "-"
        weights = "yes" if r["weights"] else "no"
        print(
            f"{r['name']:<24} {size:<10} {params:>8} {macs:>9} {top1:>6}  {weights:<7}  "
            f"{r['top1_source'] or ''}"
        )
    print("Also: torchvision:NAME and timm:NAME (any model of those libraries).")
    return 0
