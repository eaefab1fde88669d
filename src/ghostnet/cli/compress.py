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
import math

from ..compress import CompressOptions, compress
from ..config import AUGMENTS, RECIPES
from ..inherit import FIT_ON, MIN_CALIBRATION_IMAGES
from .common import float_above, float_between, int_at_least, parse_kwargs, print_json


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
    p.add_argument("--ratio", type=int_at_least(2), default=2, help="ratio s (default 2)")
    p.add_argument(
        "--dw-size", type=int_at_least(1), default=3, help="cheap-op kernel d (default 3)"
    )
    p.add_argument("--include", action="append", help="only convs matching this name pattern")
    p.add_argument("--exclude", action="append", help="keep convs matching this name pattern")
    p.add_argument("--no-skip-first", action="store_true", help="convert the stem conv too")
    p.add_argument(
        "--calibration-images",
        type=int_at_least(MIN_CALIBRATION_IMAGES),
        default=256,
        help="training images the cheap ops are fitted on (default 256)",
    )
    p.add_argument(
        "--bn-images",
        type=int_at_least(0),
        default=2048,
        help="re-estimate BN statistics on N training images after inheriting (0: off)",
    )
    p.add_argument(
        "--fit-on",
        choices=FIT_ON,
        default="converted",
        help="fit each layer on the partially converted network (default) or the original",
    )
    p.add_argument(
        "--refine-steps",
        type=int_at_least(0),
        default=0,
        metavar="N",
        help="after the least-squares fits, N Adam steps per layer matching the original "
        "conv's output on the calibration images (layer-wise reconstruction; 0: off)",
    )
    p.add_argument(
        "--epochs",
        type=int_at_least(0),
        default=3,
        help="distillation epochs (0: inherit and evaluate only)",
    )
    p.add_argument("--recipe", default="cifar-fast", choices=sorted(RECIPES))
    p.add_argument(
        "--lr", type=float_above(0), default=0.01, help="peak LR of the distillation (0.01)"
    )
    p.add_argument("--batch-size", type=int_at_least(1))
    p.add_argument("--kd-alpha", type=float_between(0, 1), help="weight of the distillation term")
    p.add_argument("--kd-temperature", type=float_above(0))
    p.add_argument(
        "--kd-features",
        metavar="PATTERNS|blocks",
        help="also distil feature maps: 'blocks' (the outputs of the blocks that hold "
        "converted convs) or comma-separated module-name patterns",
    )
    p.add_argument(
        "--kd-feature-weight",
        type=float_between(0, math.inf),
        help="weight of the feature term (1)",
    )
    p.add_argument(
        "--augment",
        choices=AUGMENTS,
        help="augmentation of the distillation's training images (default crop-flip; "
        "'flip' distils better in 3 epochs, see the README)",
    )
    p.add_argument("--train-subset", type=int_at_least(1), help="distil on N class-balanced images")
    p.add_argument(
        "--eval-subset", type=int_at_least(1), help="evaluate on N class-balanced images"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int_at_least(0), default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print summary.json")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import GhostnetError

    if args.epochs < 0:
        raise GhostnetError(f"--epochs must be >= 0, got {args.epochs}")
    options = CompressOptions(
        data=args.data,
        out=args.out,
        checkpoint=args.checkpoint,
        model=args.model,
        model_kwargs=parse_kwargs(args.model_kwarg),
        ratio=args.ratio,
        dw_size=args.dw_size,
        include=args.include,
        exclude=args.exclude,
        skip_first=not args.no_skip_first,
        calibration_images=args.calibration_images,
        bn_images=args.bn_images,
        fit_on=args.fit_on,
        refine_steps=args.refine_steps,
        epochs=args.epochs,
        recipe=args.recipe,
        lr=args.lr,
        batch_size=args.batch_size,
        kd_alpha=args.kd_alpha,
        kd_temperature=args.kd_temperature,
        kd_features=args.kd_features,
        kd_feature_weight=args.kd_feature_weight,
        augment=args.augment,
        train_subset=args.train_subset,
        eval_subset=args.eval_subset,
        seed=args.seed,
        workers=args.workers,
        device=args.device,
        # not quiet off a terminal either: the trainer then logs a progress line every
        # --log-every steps instead of a progress bar (minutes of silence look like a hang)
        quiet=False,
    )
    summary = compress(options)
    if args.json:
        print_json(summary)
        return 0
    o, i, d = summary["original"], summary["inherited"], summary["distilled"]
    print(f"{summary['converted_layers']} convs -> Ghost layers (s={args.ratio}, d={args.dw_size})")
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
