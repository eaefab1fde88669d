"""``ghostnet paper-table``: the paper's params/MACs next to ours, with the differences."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import GhostnetError
from ..paper import format_table, paper_rows
from .common import print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "paper-table",
        help="paper's params/MACs vs ours, row by row",
        description=__doc__,
    )
    p.add_argument(
        "--results",
        metavar="DIR",
        help="folder of training runs (DIR/*/summary.json) for our top-1 column",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.results and not Path(args.results).is_dir():
        what = "is a file" if Path(args.results).exists() else "does not exist"
        raise GhostnetError(
            f"--results {args.results} {what}; give the folder that holds the training runs"
        )
    rows = paper_rows(args.results)
    if args.json:
        print_json(
            [
                {
                    "label": c.row.label,
                    "model": c.row.model,
                    "kwargs": c.row.kwargs,
                    "paper_params_m": c.row.params_m,
                    "paper_macs_m": c.row.macs_m,
                    "paper_top1": c.row.top1,
                    "params": c.params,
                    "macs": c.macs,
                    "params_diff": c.params_diff,
                    "macs_diff": c.macs_diff,
                    "agrees": c.params_ok and c.macs_ok,
                    "notes": c.notes,
                    "top1": c.top1,
                }
                for c in rows
            ]
        )
        return 0
    print(format_table(rows))
    return 0
