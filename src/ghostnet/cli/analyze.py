"""``ghostnet analyze``: find the ghosts in a (trained) model's feature maps.

For each layer: cheap-op fits between all pairs of its maps, the ghost fraction, the greedy
set of intrinsic maps and the ratio s it suggests; a report.json, a table and figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..analysis.report import analyze_model, write_report
from ..checkpoint import checkpoint_preset, model_from_checkpoint
from ..data import build_transform, choose_preset, read_image, sample_image_files
from ..errors import GhostnetError
from ..models import ModelSpec
from .common import check_out_folder, float_between, int_at_least


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="feature-map redundancy: ghost pairs, suggested ratios",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="model name (not needed with --checkpoint)")
    p.add_argument("--checkpoint", help="a training checkpoint to analyse")
    p.add_argument("--images", required=True, help="image folder (its test/ split if present)")
    p.add_argument(
        "--layers", default="all-convs", help="comma-separated module names, or all-convs (default)"
    )
    p.add_argument("--num-images", type=int_at_least(2), default=64)
    p.add_argument(
        "--threshold",
        type=float_between(0.0, 1.0),
        default=0.1,
        help="relative error (1 - R^2) below which a map counts as a ghost",
    )
    p.add_argument("--dw-size", type=int, default=3, help="cheap-op kernel d of the fits")
    p.add_argument(
        "--max-positions",
        type=int_at_least(16),
        default=16384,
        help="pixels sampled per layer for the fits",
    )
    p.add_argument(
        "--compare-untrained",
        action="store_true",
        help="also analyse the same architecture freshly initialised",
    )
    p.add_argument("--figure-layer", help="layer for the map figures (default: most ghosts)")
    p.add_argument("--out", required=True, help="folder for report.json and figures")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.set_defaults(run=run)


def _model_and_preset(args: argparse.Namespace):
    if args.checkpoint:
        model, checkpoint = model_from_checkpoint(args.checkpoint)
        spec = ModelSpec.from_dict(checkpoint["model_spec"])
        if args.model and args.model != spec.name:
            raise GhostnetError(
                f"--checkpoint {args.checkpoint} holds a {spec.name}, not {args.model}; "
                "drop --model or pass the matching checkpoint"
            )
        return model, spec, checkpoint_preset(checkpoint), checkpoint["classes"]
    if not args.model:
        raise GhostnetError("give --model NAME or --checkpoint FILE")
    spec = ModelSpec(args.model)
    torch.manual_seed(args.seed)
    model = spec.build().eval()
    return model, spec, None, None


def run(args: argparse.Namespace) -> int:
    check_out_folder(args.out)
    model, spec, preset, _classes = _model_and_preset(args)
    files = sample_image_files(args.images, args.num_images, args.seed)
    decoded = [read_image(f) for f in files]
    if preset is None:  # no checkpoint: the model's own input size decides
        size = spec.input_size
        preset = choose_preset("auto", size[1:], size[1])
    transform = build_transform(preset, train=False)
    images = torch.stack([transform(img) for img in decoded])
    out = Path(args.out)
    report, details = analyze_model(
        model,
        images,
        args.layers,
        threshold=args.threshold,
        dw_size=args.dw_size,
        max_positions=args.max_positions,
    )
    report["model"] = spec.to_dict()
    report["checkpoint"] = args.checkpoint
    reports = [("trained" if args.checkpoint else "this model", report)]
    if args.compare_untrained:
        torch.manual_seed(args.seed)
        fresh = spec.build().eval()
        untrained, _ = analyze_model(
            fresh,
            images,
            [layer["name"] for layer in report["layers"]],
            threshold=args.threshold,
            dw_size=args.dw_size,
            max_positions=args.max_positions,
        )
        report["untrained"] = untrained
        reports.append(("untrained (same architecture)", untrained))
    path = write_report(report, out / "report.json")
    _print_table(report)
    try:
        from ..analysis import figures
    except ImportError:
        print("matplotlib not installed: no figures (pip install 'ghostnet[viz]')")
        return 0
    layer = (
        args.figure_layer
        or max(report["layers"], key=lambda entry: (entry["ghost_fraction"], -entry["depth"]))[
            "name"
        ]
    )
    if layer not in details:
        raise GhostnetError(f"--figure-layer {layer!r} is not among the analysed layers")
    maps, fits = details[layer]
    written = [
        figures.feature_grid(maps, fits, layer, out / "feature_maps.png"),
        figures.pair_details(maps, fits, layer, out / "ghost_pairs.png"),
        figures.ratios_by_depth(reports, out / "ratios.png"),
    ]
    print(f"report: {path}; figures: {', '.join(str(p) for p in written)}")
    return 0


def _print_table(report: dict) -> None:
    """Per layer: ghost fraction, median best-fit error, intrinsic set and suggested s."""
    untrained = {e["name"]: e for e in report.get("untrained", {}).get("layers", [])}
    header = (
        f"{'layer':<24} {'kind':<12} {'C':>4} {'HxW':>7} {'ghosts':>6} {'med.err':>7} "
        f"{'dead':>4} {'intr.':>5} {'C/intr':>6} {'s':>2}"
    )
    if untrained:
        header += f" | {'untrained: ghosts':>17} {'med.err':>7} {'C/intr':>6}"
    print(
        f"{report['num_images']} images; a map is a ghost when a {report['dw_size']}x"
        f"{report['dw_size']} depthwise filter of another map reproduces it with relative error "
        f"(1 - R^2) below {report['threshold']}"
    )
    print(header)
    print("-" * len(header))
    for e in report["layers"]:
        hw = "x".join(map(str, e["spatial"]))
        line = (
            f"{e['name']:<24} {e['kind']:<12} {e['channels']:>4} {hw:>7} "
            f"{e['ghost_fraction']:>6.0%} {e['median_best_error']:>7.3f} {e['dead_maps']:>4} "
            f"{len(e['intrinsic']):>5} {e['ratio_exact']:>6.2f} {e['suggested_ratio']:>2}"
        )
        if e["name"] in untrained:
            u = untrained[e["name"]]
            line += (
                f" | {u['ghost_fraction']:>17.0%} {u['median_best_error']:>7.3f} "
                f"{u['ratio_exact']:>6.2f}"
            )
        print(line)
