"""The ``ghostnet`` command line: one small module per subcommand (parsing and printing)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ..errors import GhostnetError

# subcommand -> module in this package (each defines add_parser(subparsers) and run(args))
COMMANDS = {
    "train": "train",
    "eval": "evaluate",
    "predict": "predict",
    "profile": "profile",
    "paper-table": "paper_table",
    "analyze": "analyze",
    "ghostify": "ghostify",
    "compress": "compress",
    "export": "export",
    "bench": "bench",
    "models": "models",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghostnet",
        description="GhostNet end to end: build, count, ghostify, train, analyse and deploy.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        module = importlib.import_module(f".{module_name}", __name__)
        module.add_parser(sub)
    return parser


def _version() -> str:
    from .. import __version__

    return f"ghostnet {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ghostnet`` console script; returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("ghostnet").setLevel(logging.INFO)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        result = args.run(args)
    except GhostnetError as exc:
        print(f"ghostnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ghostnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(result or 0)
