"""Ghost vs baseline on the real CIFAR-10: train each model with the same recipe and print
top-1, params, MACs, training throughput and wall time side by side.

    python benchmarks/cifar_ghost_vs_baseline.py --data ../shared/data/cifar10 --epochs 15

Default runs: resnet20_cifar, ghost_resnet20_cifar (s=2, d=3, the linear drop-in
GhostConv2d) and ghost_resnet20_cifar with ``inner_bn`` (BN between primary and cheap op),
all with the ``cifar-fast`` recipe on the full 50k/10k split. Finished runs are reused and
interrupted ones resumed, so the script can be re-run after a stop. Throughput is also
measured side by side (interleaved training steps, medians) so that a busy machine during
one run does not bias the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from ghostnet.engine import config_from, fit
from ghostnet.models import ModelSpec

RUNS = {
    "resnet20": ("resnet20_cifar", {}),
    "ghost_resnet20_s2": ("ghost_resnet20_cifar", {"ratio": 2, "dw_size": 3}),
    "ghost_resnet20_s2_innerbn": (
        "ghost_resnet20_cifar",
        {"ratio": 2, "dw_size": 3, "inner_bn": True},
    ),
}


def step_throughput(names: list[str], batch: int = 128, steps: int = 12) -> dict[str, float]:
    """Training images/s per run, measured by interleaving single SGD steps (median)."""
    models, optimizers = {}, {}
    for key in names:
        torch.manual_seed(0)
        model_name, kwargs = RUNS[key]
        model = ModelSpec(model_name, kwargs).build().to(memory_format=torch.channels_last)
        models[key] = model.train()
        optimizers[key] = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times: dict[str, list[float]] = {k: [] for k in names}
    for i in range(steps + 2):
        for key in names:
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(models[key](x), y)
            optimizers[key].zero_grad()
            loss.backward()
            optimizers[key].step()
            if i >= 2:  # warm-up
                times[key].append(time.perf_counter() - start)
    return {k: batch / statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("GHOSTNET_CIFAR10", "../shared/data/cifar10")
    parser.add_argument("--data", default=default_data)
    parser.add_argument("--out", default="runs/cifar_bench")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"subset of {', '.join(RUNS)}")
    parser.add_argument("--train-subset", type=int, help="quick check on fewer images")
    args = parser.parse_args()
    names = args.runs.split(",")
    out = Path(args.out)

    results = {}
    for key in names:
        model_name, kwargs = RUNS[key]
        run_dir = out / key
        summary_path = run_dir / "summary.json"
        if summary_path.exists():
            results[key] = json.loads(summary_path.read_text())
            print(f"{key}: reusing finished run in {run_dir}")
            continue
        config = config_from(
            "cifar-fast", model=model_name, model_kwargs=dict(kwargs), data=args.data,
            out=str(run_dir), epochs=args.epochs, train_subset=args.train_subset,
            checkpoint_every=100, quiet=True,
        )  # fmt: skip
        last = run_dir / "last.pt"
        results[key] = fit(config, resume=last if last.exists() else None)

    print("\nmeasuring training throughput side by side (interleaved steps, batch 128) ...")
    throughput = step_throughput(names)
    base = results[names[0]]
    header = (
        f"{'run':<28} {'top-1':>6} {'best':>6} {'params':>9} {'MACs':>9} {'MACs ratio':>10} "
        f"{'img/s (run)':>11} {'img/s (side by side)':>20} {'wall':>7}"
    )
    lines = [header, "-" * len(header)]
    for key in names:
        r = results[key]
        lines.append(
            f"{key:<28} {r['top1']:>6.2f} {r['best_top1']:>6.2f} {r['params'] / 1e6:>8.3f}M "
            f"{r['macs'] / 1e6:>8.1f}M {base['macs'] / r['macs']:>9.2f}x "
            f"{r['train_images_per_s']:>11.0f} {throughput[key]:>20.0f} {r['wall_s'] / 60:>6.1f}m"
        )
    recipe = base["config"]
    lines.append(
        f"\nrecipe: cifar-fast, {recipe['epochs']} epochs, batch {recipe['batch_size']}, SGD "
        f"lr {recipe['lr']} nesterov, wd {recipe['weight_decay']}, cosine with "
        f"{recipe['warmup_epochs']} warm-up epoch, channels_last; {base['train_images']} train "
        f"/ {base['eval_images']} test images; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(
        json.dumps({"runs": results, "side_by_side_images_per_s": throughput}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
