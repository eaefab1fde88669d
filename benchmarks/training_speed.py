"""Training speed of Ghost CIFAR ResNets against their plain twins, side by side in one
process: images/s of whole SGD steps (forward, loss, backward, optimizer) for each model
under each runtime variant, interleaved step by step so that load from other processes
hits every row alike; medians over the measured steps.

    python benchmarks/training_speed.py --models resnet56_cifar,ghost_resnet56_cifar \
        --variants eager,channels_last,compile,bf16 --json docs/results/speed/training.json

Variants: ``eager`` (fp32, contiguous), ``channels_last``, ``compile`` (torch.compile,
inductor, channels_last; compile time is not counted: the first steps are warm-up) and
``bf16`` (autocast to bfloat16 on a CPU with native bf16, channels_last). The ratio column
divides each Ghost model's img/s by its plain twin's (``ghost_X`` vs ``X``) in the same
variant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from ghostnet.bench import cpu_flags, has_bf16, machine_info
from ghostnet.models import ModelSpec

VARIANTS = ("eager", "channels_last", "compile", "bf16")


def training_step(
    model_name: str, variant: str, batch: int, size: int = 32
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One SGD step of ``model_name`` (10 classes, seed 0) under ``variant``."""
    torch.manual_seed(0)
    model = ModelSpec(model_name, {"num_classes": 10}).build().train()
    if variant != "eager":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    forward = torch.compile(model) if variant == "compile" else model
    autocast = variant == "bf16"

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if variant != "eager":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure(
    models: list[str], variants: list[str], batch: int, steps: int, warmup: int
) -> dict[tuple[str, str], float]:
    """img/s per (model, variant), steps interleaved across all pairs."""
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    steps_of = {(m, v): training_step(m, v, batch) for v in variants for m in models}
    times: dict[tuple[str, str], list[float]] = {k: [] for k in steps_of}
    for i in range(warmup + steps):
        for key, step in steps_of.items():
            start = time.perf_counter()
            step(x, y)
            if i >= warmup:
                times[key].append(time.perf_counter() - start)
    return {k: batch / statistics.median(v) for k, v in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        default="resnet20_cifar,ghost_resnet20_cifar,resnet56_cifar,ghost_resnet56_cifar",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps (compile happens here)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = args.models.split(",")
    variants = [v for v in args.variants.split(",") if v != "bf16" or has_bf16()]
    skipped = sorted(set(args.variants.split(",")) - set(variants))
    rates = measure(models, variants, args.batch, args.steps, args.warmup)
    info = machine_info()
    print(
        f"CPU: {info['processor']}, {info['logical_cpus']} CPUs; flags: {' '.join(cpu_flags())}; "
        f"{args.threads} threads; batch {args.batch}; medians of {args.steps} interleaved steps"
        + (f"; skipped (no native bf16): {','.join(skipped)}" if skipped else "")
    )
    print(f"{'model':<24}" + "".join(f"{v:>15}" for v in variants))
    for model in models:
        print(f"{model:<24}" + "".join(f"{rates[(model, v)]:>11.0f} i/s" for v in variants))
    rows = []
    for model in models:
        twin = model.removeprefix("ghost_")
        if model.startswith("ghost_") and twin in models:
            ratios = {v: rates[(model, v)] / rates[(twin, v)] for v in variants}
            print(f"{model + ' / plain':<24}" + "".join(f"{ratios[v]:>14.2f}x" for v in variants))
            rows.append({"model": model, "plain": twin, "ratio": ratios})
    best = {m: max(variants, key=lambda v: rates[(m, v)]) for m in models}
    print("fastest variant per model: " + ", ".join(f"{m} {v}" for m, v in best.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": info,
                    "batch": args.batch,
                    "steps": args.steps,
                    "images_per_s": {f"{m}/{v}": r for (m, v), r in rates.items()},
                    "ratios": rows,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
