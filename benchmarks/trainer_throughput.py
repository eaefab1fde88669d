"""Trainer throughput before vs after a change, side by side in one process.

    git worktree add /tmp/ghostnet-before fd1365b      # the engine to compare against
    python benchmarks/trainer_throughput.py --before /tmp/ghostnet-before/src \
        --data ../shared/data/cifar10 --train-subset 3840 --rounds 3

The "before" package is imported under another name (its imports are all relative), so
both engines run in this one process. Each round runs one short ``fit`` per (engine,
model) pair, in turn (1 epoch on a class-balanced subset, cifar-fast settings, no
evaluation cost counted: img/s is the engine's own training-time figure), and the table
reports the median over rounds, so that a busy machine hits both engines alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

MODELS = ["resnet20_cifar", "ghost_resnet20_cifar"]


def load_package(src: Path, alias: str):
    """Import the ``ghostnet`` package found in ``src`` under the name ``alias``."""
    init = src / "ghostnet" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        alias, init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return module


def one_run(pkg_name: str, model: str, args: argparse.Namespace, out: Path) -> float:
    engine = importlib.import_module(f"{pkg_name}.engine")
    config = engine.config_from(
        "cifar-fast",
        model=model,
        data=args.data,
        out=str(out),
        epochs=1,
        train_subset=args.train_subset,
        eval_subset=200,
        quiet=True,
    )
    shutil.rmtree(out, ignore_errors=True)
    summary = engine.fit(config)
    return float(summary["train_images_per_s"])


def cpu_line() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor()
    info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = [f for f in info.get("Flags", "").split() if f.startswith(("avx512", "amx"))]
    return f"{info.get('Model name', '?').strip()}; {', '.join(flags) or 'no AVX-512/AMX'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="src/ folder of the engine to compare")
    parser.add_argument("--data", required=True)
    parser.add_argument("--train-subset", type=int, default=3840)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    load_package(Path(args.before), "ghostnet_before")
    engines = {"before": "ghostnet_before", "after": "ghostnet"}
    speeds: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for model in MODELS:
                for label, pkg in engines.items():
                    ips = one_run(pkg, model, args, Path(tmp) / f"{label}-{model}")
                    speeds.setdefault((label, model), []).append(ips)
                    print(f"round {round_ + 1}: {label:<6} {model:<22} {ips:7.0f} img/s")
    print(f"\nCPU: {cpu_line()}; torch {torch.__version__}, 2 threads")
    print(f"{'model':<22} {'before img/s':>12} {'after img/s':>12} {'after/before':>13}")
    table = {}
    for model in MODELS:
        before = statistics.median(speeds[("before", model)])
        after = statistics.median(speeds[("after", model)])
        table[model] = {"before": before, "after": after, "ratio": after / before}
        print(f"{model:<22} {before:12.0f} {after:12.0f} {after / before:12.2f}x")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "cpu": cpu_line(),
                    "runs": {f"{k[0]}/{k[1]}": v for k, v in speeds.items()},
                    "median": table,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
