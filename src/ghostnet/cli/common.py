"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import GhostnetError
from ..files import check_output_folder as check_out_folder  # noqa: F401
from ..models import ModelSpec, default_input_size

if TYPE_CHECKING:
    from ..train import Task


def checkpoint_task_class(path: str | None) -> type[Task] | None:
    """The task class (``ghostnet.train.Task``) of the checkpoint at ``path``; ``None``
    when there is none or it is unreadable (the caller's own path then says why)."""
    from pathlib import Path

    if not path or not Path(path).is_file():
        return None
    from ..checkpoint import read_checkpoint
    from ..train import task_of_checkpoint

    try:
        checkpoint = read_checkpoint(path)
    except GhostnetError:
        return None
    return task_of_checkpoint(checkpoint)


def parse_size(text: str) -> tuple[int, int, int]:
    """``"3,224,224"`` or ``"224"`` (3 channels, square) -> (C, H, W)."""
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = [3, parts[0], parts[0]]
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(
            f"expected C,H,W like 3,224,224 (or one size), got {text!r}"
        )
    return parts[0], parts[1], parts[2]


def int_at_least(low: int):
    """An argparse type: an int >= ``low`` (the message names the range)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def float_between(low: float, high: float):
    """An argparse type: a finite float in [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or not low <= value <= high:  # nan fails both
            bound = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        return value

    parse.__name__ = f"number in [{low:g}, {high:g}]"
    return parse


def float_above(low: float):
    """An argparse type: a finite float > ``low``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value > low and value < float("inf")):  # also false for nan
            raise argparse.ArgumentTypeError(f"must be a finite number > {low:g}, got {text}")
        return value

    parse.__name__ = f"number > {low:g}"
    return parse


def parse_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``["width=0.75", "num_classes=10"]`` -> dict, values parsed as JSON where possible."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GhostnetError(f"--model-kwarg expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_model_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--model and the ghostify options, shared by profile/train/export/bench/analyze."""
    parser.add_argument(
        "--model",
        required=required,
        help="registered name (ghostnet list: `ghostnet models`), torchvision:NAME or timm:NAME",
    )
    add_ghostify_args(parser)


def add_ghostify_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("ghostify (convert the model's convs to Ghost layers)")
    g.add_argument("--ghostify", action="store_true", help="replace eligible convs by GhostConv2d")
    g.add_argument("--ratio", type=int, default=2, help="ratio s (default 2)")
    g.add_argument("--dw-size", type=int, default=3, help="cheap-op kernel d (default 3)")
    g.add_argument("--include", action="append", help="only convs matching this name pattern")
    g.add_argument("--exclude", action="append", help="keep convs matching this name pattern")
    g.add_argument("--no-skip-first", action="store_true", help="convert the stem conv too")
    g.add_argument("--inner-bn", action="store_true", help="BN between primary and cheap op")
    g.add_argument(
        "--attention",
        choices=["dfc"],
        help="gate each Ghost layer with GhostNetV2's DFC attention",
    )
    g.add_argument(
        "--from-report",
        metavar="REPORT_JSON",
        help="per-layer ratios suggested by `ghostnet analyze` (implies --ghostify)",
    )
    g.add_argument(
        "--model-kwarg",
        action="append",
        metavar="KEY=VALUE",
        help="extra model argument, e.g. width=0.75 (repeatable)",
    )


def ghostify_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ghostify kwargs the flags ask for, or None."""
    if not (args.ghostify or args.from_report):
        return None
    ratio: Any = args.ratio
    if args.from_report:
        from ..analysis.report import suggested_ratios

        ratio = suggested_ratios(args.from_report)
    return {
        "ratio": ratio,
        "dw_size": args.dw_size,
        "skip_first": not args.no_skip_first,
        "include": args.include,
        "exclude": args.exclude,
        "inner_bn": args.inner_bn,
    } | ({"attention": args.attention} if getattr(args, "attention", None) else {})


def spec_from_args(args: argparse.Namespace, **extra_kwargs: Any) -> ModelSpec:
    kwargs = parse_kwargs(getattr(args, "model_kwarg", None))
    kwargs.update({k: v for k, v in extra_kwargs.items() if v is not None})
    return ModelSpec(args.model, kwargs, ghostify_options(args))


def input_size_for(args: argparse.Namespace, spec: ModelSpec) -> tuple[int, int, int]:
    return args.input_size or default_input_size(spec.name)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _parse_int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def option_flag_fields(options_class: type) -> list[dataclasses.Field]:
    """The fields of an options dataclass (made by ``config.option``) that are flags."""
    return [f for f in dataclasses.fields(options_class) if f.metadata.get("flag", True)]


def option_flag_type(options_class: type, name: str) -> Any:
    """The flag type of field ``name``: ``int | None`` -> int, ``list[int]`` stays."""
    kind = typing.get_type_hints(options_class)[name]
    if type(None) in typing.get_args(kind):  # X | None -> X
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def add_option_flags(
    parser: argparse.ArgumentParser,
    options_class: type,
    default_text: Callable[[dataclasses.Field], str],
    group_title: str = "{group}",
) -> None:
    """One flag per field of ``options_class`` (``TrainConfig``, ``CompressOptions``): the
    name, type, choices and help text come from the field, so the flags cannot drift from
    the options. Every flag's default is ``None`` ("not given"): the options' own default
    (or a recipe's) applies, and their ``check`` gives the one-line range errors."""
    groups: dict[str, Any] = {}
    for f in option_flag_fields(options_class):
        group_name = f.metadata.get("group", "options")
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_title.format(group=group_name))
        group = groups[group_name]
        kind = option_flag_type(options_class, f.name)
        shown = default_text(f)
        help_text = f"{f.metadata['help']} ({shown})" if shown else f.metadata["help"]
        name = "--" + f.name.replace("_", "-")
        if kind is bool:
            group.add_argument(
                name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif typing.get_origin(kind) is list and typing.get_args(kind) == (str,):
            group.add_argument(name, action="append", default=None, help=help_text)
        elif typing.get_origin(kind) is list:
            group.add_argument(name, type=_parse_int_list, default=None, help=help_text)
        elif f.metadata.get("choices"):
            group.add_argument(name, choices=f.metadata["choices"], default=None, help=help_text)
        else:
            metavar = {int: "N", float: "X", str: "VALUE"}.get(kind, "VALUE")
            group.add_argument(name, type=kind, default=None, metavar=metavar, help=help_text)


def given_options(args: argparse.Namespace, options_class: type) -> dict[str, Any]:
    """The option values given on the command line (flags left out are not here)."""
    values = {f.name: getattr(args, f.name) for f in option_flag_fields(options_class)}
    return {k: v for k, v in values.items() if v is not None}
