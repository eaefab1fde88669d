"""GhostNet-1.0x LR-ASPP vs torchvision's MobileNetV3-Large LR-ASPP, trained the same way
(from scratch, same data, recipe and seed) on a VOC-layout folder such as the CIFAR
segmentation set (benchmarks/make_cifar_segmentation.py).

Train each model (one at a time; 1 thread), then compare in one process:

    OMP_NUM_THREADS=1 python benchmarks/segmentation_benchmark.py train ghostnet \
        --data /work/runs/cifar_seg96 --out /work/runs/segbench --size 96 --epochs 4
    OMP_NUM_THREADS=1 python benchmarks/segmentation_benchmark.py train mobilenetv3 ...
    OMP_NUM_THREADS=1 python benchmarks/segmentation_benchmark.py compare \
        --data /work/runs/cifar_seg96 --out /work/runs/segbench --size 96

``train`` writes OUT/NAME/{weights.pt, summary.json}; ``compare`` reloads both weights,
evaluates them on val, counts params and MACs (ghostnet.counting) and times 1-thread
latency with torch.utils.benchmark, the two models interleaved round by round, and prints
a Markdown table (also OUT/compare.json).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.optim.swa_utils import update_bn
from torch.utils.benchmark import Timer
from torch.utils.data import DataLoader

from ghostnet.counting import profile
from ghostnet.safe_io import save_torch, write_text
from ghostnet.segmentation import LogitsOnly, create_segmenter
from ghostnet.segmentation.data import (
    IGNORE_INDEX,
    SegmentationDataset,
    collate_skipping,
    open_split,
    train_transform,
)
from ghostnet.segmentation.tools import evaluate_split

MODELS = {
    "ghostnet": ("lraspp", "ghostnet_100"),
    "mobilenetv3": ("torchvision:lraspp_mobilenet_v3_large", ""),
}


def build(name: str, num_classes: int) -> torch.nn.Module:
    kind, backbone = MODELS[name]
    return create_segmenter(kind, backbone or "ghostnet_100", num_classes)


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    train_split = open_split(args.data, "train")
    val_split = open_split(args.data, "val")
    if args.limit:
        train_split.images, train_split.masks = (
            train_split.images[: args.limit],
            train_split.masks[: args.limit],
        )
    model = build(args.model, len(train_split.classes))
    dataset = SegmentationDataset(
        train_split, train_transform(args.size, scale=(0.75, 1.5)), seed=args.seed
    )
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate_skipping,
        generator=torch.Generator().manual_seed(args.seed),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
    steps = args.epochs * len(loader)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
        ),
    )
    out = Path(args.out) / args.model
    history = []
    start = time.process_time()
    wall = time.perf_counter()
    for epoch in range(args.epochs):
        dataset.set_epoch(epoch)
        model.train()
        total, count = 0.0, 0
        for images, masks in loader:
            logits = model(images)["out"]
            loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.detach().item()
            count += 1
        metrics = evaluate_split(model, val_split, args.size, batch_size=32).compute(
            val_split.classes
        )
        row = {
            "epoch": epoch + 1,
            "train_loss": total / max(1, count),
            "miou": metrics["miou"],
            "pixel_acc": metrics["pixel_acc"],
            "cpu_s": time.process_time() - start,
        }
        history.append(row)
        print(json.dumps(row), flush=True)
    save_torch(model.state_dict(), out / "weights.pt")
    summary = {
        "model": args.model,
        "segmenter": MODELS[args.model],
        "epochs": args.epochs,
        "train_images": len(train_split),
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.wd,
        "size": args.size,
        "seed": args.seed,
        "cpu_s": time.process_time() - start,
        "wall_s": time.perf_counter() - wall,
        "threads": torch.get_num_threads(),
        "history": history,
        "final": metrics,
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2))


def latency_ms(models: dict[str, torch.nn.Module], size: int, rounds: int) -> dict[str, float]:
    """Median 1-thread latency (ms) per model, the models interleaved round by round so
    that machine load drifts hit both alike."""
    x = torch.randn(1, 3, size, size)
    samples: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            timer = Timer("m(x)", globals={"m": model, "x": x}, num_threads=1)
            samples[name].append(timer.timeit(10).median * 1000)
    return {name: statistics.median(v) for name, v in samples.items()}


@torch.no_grad()
def compare(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    val_split = open_split(args.data, "val")
    train_split = open_split(args.data, "train")
    rows = {}
    models = {}
    for name in MODELS:
        summary = json.loads((Path(args.out) / name / "summary.json").read_text())
        model = build(name, len(val_split.classes))
        model.load_state_dict(torch.load(Path(args.out) / name / "weights.pt", weights_only=True))
        model.eval()
        metrics = evaluate_split(model, val_split, args.size, batch_size=32).compute(
            val_split.classes
        )
        # BN statistics re-estimated on train crops (torch's update_bn), the same for both:
        # torchvision's MobileNetV3 uses BN momentum 0.01, whose running averages still
        # lean on their initial values after a few hundred steps
        loader = DataLoader(
            SegmentationDataset(train_split, train_transform(args.size, scale=(0.75, 1.5))),
            batch_size=16,
            collate_fn=collate_skipping,
        )
        batches = [b.images for _, b in zip(range(args.update_bn // 16), loader)]
        update_bn(batches, model)
        model.eval()
        after = evaluate_split(model, val_split, args.size, batch_size=32).compute(
            val_split.classes
        )
        counts = profile(LogitsOnly(model), (3, args.size, args.size))
        models[name] = LogitsOnly(model).eval()
        rows[name] = {
            "miou": metrics["miou"],
            "pixel_acc": metrics["pixel_acc"],
            "per_class_iou": metrics["per_class_iou"],
            "miou_bn": after["miou"],
            "pixel_acc_bn": after["pixel_acc"],
            "per_class_iou_bn": after["per_class_iou"],
            "params": counts.params,
            "macs": counts.macs,
            "train_cpu_s": summary["cpu_s"],
            "epochs": summary["epochs"],
        }
    for name, ms in latency_ms(models, args.size, args.rounds).items():
        rows[name]["latency_ms"] = ms
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "size": args.size,
        "val_images": len(val_split),
        "rows": rows,
    }
    write_text(Path(args.out) / "compare.json", json.dumps(record, indent=2))
    print(
        f"| model (LR-ASPP, {args.size}x{args.size}) | mIoU | pixel acc | mIoU, BN re-estimated "
        "| pixel acc, BN re-estimated | params | MMACs | 1-thread ms | train CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['miou']:.4f} | {r['pixel_acc']:.4f} | {r['miou_bn']:.4f} "
            f"| {r['pixel_acc_bn']:.4f} | {r['params'] / 1e6:.2f} M | {r['macs'] / 1e6:.1f} "
            f"| {r['latency_ms']:.2f} | {r['train_cpu_s']:.0f} |"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("action", choices=["train", "compare"])
    p.add_argument("model", nargs="?", choices=list(MODELS))
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--wd", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="use the first N train images")
    p.add_argument("--rounds", type=int, default=7, help="latency rounds (compare)")
    p.add_argument("--update-bn", type=int, default=320, help="train crops for update_bn (compare)")
    args = p.parse_args()
    if args.action == "train":
        if args.model is None:
            p.error("train needs a model: " + ", ".join(MODELS))
        train(args)
    else:
        compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
