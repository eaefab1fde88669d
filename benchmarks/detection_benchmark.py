"""GhostNet vs MobileNetV3-Large as the backbone of the same FPN detector, trained the same
way (same data, steps, optimizer, seed; from scratch or from a backbone trained first) on
the CIFAR detection set; reports mAP@0.5, mAP, params, MACs (backbone + FPN + dense head,
torch.utils.flop_counter) and CPU latency of the whole detector at 256x256.
``--init-weights`` starts the backbone from a classifier trained first (on CIFAR-10 at
32x32: the pasted objects are CIFAR images). A run interrupted at any point continues with
--resume (the run's last.pt).

    .venv/bin/python benchmarks/make_cifar_detection.py --out /work/runs/cifar_det \
        --train 400 --val 100 --seed 0
    .venv/bin/python benchmarks/detection_benchmark.py --data /work/runs/cifar_det \
        --out /work/runs/det_bench --steps 150 --json docs/results/detection/benchmark.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ghostnet.config import TrainConfig
from ghostnet.detection import DenseCore
from ghostnet.detection.data import open_split
from ghostnet.detection.evaluate import detector_from_checkpoint, evaluate_detector
from ghostnet.errors import GhostnetError
from ghostnet.train import fit

BACKBONES = ("ghostnet_100", "torchvision:mobilenet_v3_large")


def measure(model: torch.nn.Module, size: int, repeats: int) -> dict[str, float]:
    core = DenseCore(model).eval()
    x = torch.rand(1, 3, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        core(x)
    times = []
    with torch.inference_mode():
        model.eval()([x[0]])  # untimed warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model([x[0]])
            times.append(time.perf_counter() - start)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "macs_dense": counter.get_total_flops() // 2,
        "latency_ms_median": 1000 * statistics.median(times),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--detector", default="fcos")
    p.add_argument("--fpn-channels", type=int, default=128, help="FPN and head width")
    p.add_argument(
        "--head-convs", type=int, default=4, help="FCOS: 3x3 convs per head branch (paper: 4)"
    )
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per backbone")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--backbones",
        default=",".join(BACKBONES),
        help="comma-separated; run one per process to train them side by side",
    )
    p.add_argument(
        "--init-weights",
        default=None,
        help="start the backbone from a classifier's checkpoint (e.g. the backbone trained "
        "on CIFAR-10 at 32x32); one backbone per call",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument(
        "--measure-only", action="store_true", help="params/MACs/latency of untrained detectors"
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    chosen = tuple(b for b in args.backbones.split(",") if b)
    if args.init_weights and len(chosen) != 1:
        raise SystemExit("--init-weights is for one backbone: pass --backbones NAME")
    results = []
    head = {"fpn_channels": args.fpn_channels, "head_convs": args.head_convs}
    if args.measure_only:
        from ghostnet.detection import create_detector

        for backbone in chosen:
            model = create_detector(
                args.detector,
                backbone,
                num_classes=10,
                image_size=256,
                fpn_channels=args.fpn_channels,
                head_convs=args.head_convs,
            )
            row = {"backbone": backbone, "detector": args.detector, "trained": False, **head}
            row.update(measure(model, 256, args.repeats))
            results.append(row)
            print(json.dumps(row), flush=True)
        backbones: tuple[str, ...] = ()
    else:
        backbones = chosen
    for backbone in backbones:
        out = Path(args.out) / backbone.replace(":", "_")
        train_images = len(open_split(args.data, "train").image_ids)
        epochs = max(1, -(-args.steps * args.batch_size // train_images))
        config = TrainConfig(
            model=backbone,
            data=args.data,
            out=str(out),
            task="detection",
            detector=args.detector,
            fpn_channels=args.fpn_channels,
            head_convs=args.head_convs,
            epochs=epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            opt="adamw",
            weight_decay=1e-4,
            warmup_epochs=0.5,
            clip_grad=10.0,
            device="cpu",
            input_size=256,
            init_weights=args.init_weights,
            quiet=False,
        )
        start = time.perf_counter()
        last = out / "last.pt"
        summary_file = out / "summary.json"
        done = last.exists() and torch.load(last, weights_only=True)["global_step"] >= args.steps
        if not summary_file.exists() and not done:
            if last.exists() and not args.resume:
                raise SystemExit(f"{out} holds a run: pass --resume to continue it")
            fit(config, resume=last if last.exists() else None, max_steps=args.steps)
        wall = time.perf_counter() - start
        model, checkpoint = detector_from_checkpoint(last)
        scores = evaluate_detector(model, open_split(args.data, "val"), torch.device("cpu"))
        row = {
            "backbone": backbone,
            "detector": args.detector,
            **head,
            "init_weights": args.init_weights,
            "steps": checkpoint["global_step"],
            "batch_size": args.batch_size,
            "train_wall_s_this_call": round(wall, 1),
            "mAP": scores["mAP"],
            "mAP50": scores["mAP50"],
            "agnostic_mAP": scores["agnostic_mAP"],
            "agnostic_mAP50": scores["agnostic_mAP50"],
            "per_class_AP": scores["per_class_AP"],
            **measure(model, 256, args.repeats),
        }
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "per_class_AP"}), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except GhostnetError as exc:  # bad data, model or head options: one line, as the CLI
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
