"""``ghostnet train``: train any registered, torchvision/timm or ghostified model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..engine import RECIPES, config_from, fit
from ..errors import GhostnetError
from .common import add_model_args, ghostify_options, parse_kwargs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on a data set (CPU, GPU, torchrun/DDP)",
        description=__doc__,
        epilog="Flags override the --recipe's values. Multi-GPU: torchrun "
        "--nproc_per_node=N -m ghostnet train ...; multi-node: add --nnodes, --node_rank, "
        "--rdzv_backend=c10d --rdzv_endpoint=HOST:PORT (see README).",
    )
    add_model_args(p)
    p.add_argument(
        "--data",
        required=True,
        help="folder with train/ and test/ (or val/), a cifar-10-batches-py "
        "folder, or 'cifar10' (download)",
    )
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics, summary")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="named preset of the flags below")
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="CHECKPOINT",
        help="continue from CHECKPOINT (default: OUT/last.pt), exactly",
    )
    g = p.add_argument_group("optimisation (default: the recipe's, else built-in)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="per process")
    g.add_argument("--lr", type=float)
    g.add_argument("--opt", choices=["sgd", "adamw"])
    g.add_argument("--momentum", type=float)
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--sched", choices=["cosine", "step"])
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument(
        "--milestones",
        type=lambda t: [int(x) for x in t.split(",")],
        help="epochs for --sched step, e.g. 82,123",
    )
    g.add_argument("--gamma", type=float, help="step decay factor")
    g.add_argument("--min-lr", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--clip-grad", type=float, help="max gradient norm (0 = off)")
    g.add_argument("--ema", type=float, help="EMA decay per step, e.g. 0.9999 (0 = off)")
    r = p.add_argument_group("runtime")
    r.add_argument("--amp", choices=["none", "bf16", "fp16"])
    r.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    r.add_argument(
        "--sync-bn",
        action="store_true",
        default=None,
        help="torchrun on CUDA: BatchNorm statistics over all processes",
    )
    r.add_argument("--seed", type=int)
    r.add_argument("--workers", type=int, help="data loader processes (default 0)")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"])
    r.add_argument("--checkpoint-every", type=int, help="also save last.pt every N steps")
    r.add_argument("--quiet", action="store_true", default=None, help="no progress bar")
    d = p.add_argument_group("data")
    d.add_argument("--preset", choices=["auto", "cifar", "imagenet"])
    d.add_argument("--input-size", type=int, help="imagenet preset crop (default 224)")
    d.add_argument("--train-subset", type=int, help="class-balanced subset of N images")
    d.add_argument("--eval-subset", type=int, help="class-balanced subset of N eval images")
    d.add_argument(
        "--strict-data",
        action="store_true",
        default=None,
        help="unreadable images are an error instead of skipped",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = config_from(
        args.recipe,
        model=args.model,
        data=args.data,
        out=args.out,
        model_kwargs=parse_kwargs(args.model_kwarg),
        ghostify=ghostify_options(args),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        opt=args.opt,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        sched=args.sched,
        warmup_epochs=args.warmup_epochs,
        milestones=args.milestones,
        gamma=args.gamma,
        min_lr=args.min_lr,
        label_smoothing=args.label_smoothing,
        clip_grad=args.clip_grad,
        ema=args.ema,
        amp=args.amp,
        channels_last=args.channels_last,
        sync_bn=args.sync_bn,
        seed=args.seed,
        workers=args.workers,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
        quiet=args.quiet,
        preset=args.preset,
        input_size=args.input_size,
        train_subset=args.train_subset,
        eval_subset=args.eval_subset,
        strict_data=args.strict_data,
    )
    resume = None
    if args.resume is not None:
        resume = Path(args.resume) if args.resume else Path(args.out) / "last.pt"
        if not resume.is_file():
            raise GhostnetError(f"--resume: no checkpoint at {resume}; start without --resume")
    summary = fit(config, resume=resume)
    if summary:
        print(
            f"{summary['model']}: top-1 {summary['top1']:.2f}%  top-5 {summary['top5']:.2f}%  "
            f"({summary['params']:,} params, {summary['macs']:,} MACs, "
            f"{summary['train_images_per_s']:.0f} train img/s, {summary['wall_s']:.0f} s) "
            f"-> {args.out}"
        )
    return 0
