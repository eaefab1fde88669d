"""``ghostnet train``: train any registered, torchvision/timm or ghostified model.

The flags below are made from ``TrainConfig``'s fields (one source of truth: name, type,
help text, range, default), and their help shows each recipe's value.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..config import RECIPES, TrainConfig, config_from, default_of
from ..errors import GhostnetError
from .common import add_model_args, add_option_flags, ghostify_options, given_options, parse_kwargs


def _default_text(f: dataclasses.Field) -> str:
    default = default_of(f)
    shown = ",".join(map(str, default)) if isinstance(default, list) else default
    recipes = [f"{r}={RECIPES[r][f.name]}" for r in RECIPES if f.name in RECIPES[r]]
    return f"default: {shown}" + (f"; recipes: {', '.join(recipes)}" if recipes else "")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``TrainConfig`` field, grouped as the config groups them."""
    add_option_flags(
        parser,
        TrainConfig,
        _default_text,
        "{group} (default: the --recipe's value, else the built-in one)",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on a data set (CPU, GPU, torchrun/DDP)",
        description=__doc__,
        epilog="Multi-GPU: torchrun --nproc_per_node=N -m ghostnet train ...; multi-node: add "
        "--nnodes, --node_rank, --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT (see README).",
    )
    add_model_args(p)
    p.add_argument(
        "--data",
        required=True,
        help="folder with train/ and test/ (or val/), a cifar-10-batches-py "
        "folder, or 'cifar10' (download); COCO 2017 layout for --task detection",
    )
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics, summary")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="named preset of the flags below")
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="CHECKPOINT",
        help="continue from CHECKPOINT (default: OUT/last.pt) exactly; new --epochs/--lr/"
        "schedule values re-plan the LR schedule from the current step, other changes are "
        "refused",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="allow an --out that already holds a run (its files are replaced)",
    )
    add_config_flags(p)
    p.set_defaults(run=run)


def explicit_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config values given on the command line (flags left out are not here)."""
    values = given_options(args, TrainConfig)
    values["model"] = args.model
    values["data"] = args.data
    values["out"] = args.out
    kwargs = parse_kwargs(args.model_kwarg)
    if kwargs:
        values["model_kwargs"] = kwargs
    ghostify = ghostify_options(args)
    if ghostify is not None:
        values["ghostify"] = ghostify
    return values


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import read_checkpoint
    from ..train import fit

    explicit = explicit_values(args)
    resume = None
    if args.resume is not None:
        resume = Path(args.resume) if args.resume else Path(args.out) / "last.pt"
        if not resume.is_file():
            raise GhostnetError(f"--resume: no checkpoint at {resume}; start without --resume")
        saved = read_checkpoint(resume)["config"]
        if args.recipe is not None and args.recipe != saved.get("recipe"):
            raise GhostnetError(
                f"cannot resume with --recipe {args.recipe}: the run used "
                f"{'--recipe ' + saved['recipe'] if saved.get('recipe') else 'no recipe'}; "
                "drop --recipe when resuming"
            )
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        values = {k: v for k, v in saved.items() if k in known}
        values.update(explicit)  # the run as saved, with what this command changes
        config = TrainConfig(**values)
    else:
        config = config_from(args.recipe, **explicit)
    summary = fit(config, resume=resume, overwrite=args.overwrite)  # the task of --task
    if summary:
        print(result_line(summary, args.out))
    return 0


def result_line(summary: dict[str, Any], out: str) -> str:
    """One line: the run's final value of its best-picking metric (and top-5 when there)."""
    metric = summary["best_metric"]
    value = summary.get(metric)
    shown = f"{value:.2f}%" if metric == "top1" and value is not None else f"{value or 0:.4f}"
    extra = f"  top-5 {summary['top5']:.2f}%" if summary.get("top5") is not None else ""
    extra += f"  mAP@0.5 {summary['mAP50']:.4f}" if summary.get("mAP50") is not None else ""
    macs = f", {summary['macs']:,} MACs" if summary.get("macs") else ""
    name = {"top1": "top-1"}.get(metric, metric)
    return (
        f"{summary['model']}: {name} {shown}{extra}  ({summary['params']:,} params{macs}, "
        f"{summary['train_images_per_s'] or 0:.0f} train img/s, {summary['wall_s']:.0f} s) "
        f"-> {out}"
    )
