"""GhostNet against MobileNetV3-Large on the mobile runtimes, side by side: ONNX Runtime
(intra-op spinning off, so interleaved sessions do not steal each other's cores),
ExecuTorch + XNNPACK, ncnn (pnnx) and LiteRT (when importable), fp32 and INT8 where the
runtime has it (ONNX Runtime's static INT8), 1 and 2 threads, batch 1, 224x224.

Models: GhostNet-1.0x, GhostNetV2-1.0x, MobileNetV3-Large from timm and from torchvision
(the faster of the two on each runtime is the reference), Ghost-ResNet-50 and ResNet-50.
Random weights with BN statistics measured on random images (speed does not depend on the
values; the INT8 files are calibrated on random inputs, for speed only). Every file is
written by `ghostnet export`'s pipeline (deploy.export) and checked against PyTorch.

    python benchmarks/mobile_table.py                 # full table (<= 8 min on a quiet CPU)
    python benchmarks/mobile_table.py --quick         # 2 models, 1 thread, few repeats
    python benchmarks/mobile_table.py --rewrite pool  # with a PyTorch-level rewrite
    python benchmarks/mobile_table.py --quick --models ghostnet_100,ghostnet_100+pool,\
        torchvision:mobilenet_v3_large               # a rewrite next to the plain model

Within one thread count every (model, runtime) runs interleaved with all others, and the
table reports medians: load from other processes hits every row alike.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ghostnet.bench import build_runner, machine_info, resolve_model
from ghostnet.deploy import settle_batchnorm
from ghostnet.models import create_model
from ghostnet.reparam import reparameterize
from ghostnet.rewrites import REWRITES, apply_rewrites

MODELS = (
    "ghostnet_100",
    "ghostnetv2_100",
    "timm:mobilenetv3_large_100",
    "torchvision:mobilenet_v3_large",
    "ghost_resnet50",
    "torchvision:resnet50",
)
QUICK_MODELS = ("ghostnet_100", "torchvision:mobilenet_v3_large")
MOBILENETS = ("timm:mobilenetv3_large_100", "torchvision:mobilenet_v3_large")
# runtime label -> (bench backend, python packages it needs)
RUNTIMES = {
    "onnxruntime": ("onnxruntime", ("onnxruntime",)),
    "onnxruntime int8": ("onnxruntime-int8", ("onnxruntime",)),
    "executorch-xnnpack": ("executorch", ("executorch",)),
    "ncnn": ("ncnn", ("ncnn", "pnnx")),
    "litert": ("litert", ("ai_edge_litert", "litert_torch")),
}
SIZE = (3, 224, 224)


def lscpu() -> tuple[str, str]:
    """(model name, flags) as lscpu prints them."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        info = machine_info()
        return info["processor"], " ".join(info["cpu_flags"])
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return fields.get("Model name", "?").strip(), fields.get("Flags", "?").strip()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    packages = ("torch", "timm", "onnxruntime", "executorch", "ncnn", "pnnx")
    for package in (*packages, "litert-torch", "ai-edge-litert"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


def available(packages: tuple[str, ...]) -> bool:
    return all(importlib.util.find_spec(p) is not None for p in packages)


def measure(models, runtimes, threads, repeats, rewrites, workdir, log):
    """{(model, runtime, threads): median ms}."""
    built = {}
    for name in models:
        # NAME+REWRITE: the same model with a rewrite, timed next to the plain one
        base, *extra = name.split("+")
        torch.manual_seed(0)
        model = reparameterize(settle_batchnorm(create_model(resolve_model(base)), SIZE))
        chosen = [*rewrites, *extra] if base.startswith("ghost") else extra
        built[name] = apply_rewrites(model, chosen, SIZE)
    results = {}
    for count in threads:
        torch.set_num_threads(count)
        runners = []
        for name, model in built.items():
            for label in runtimes:
                backend = RUNTIMES[label][0]
                start = time.perf_counter()
                runner = build_runner(model, backend, SIZE, 1, count, workdir)
                took = time.perf_counter() - start
                log(f"{count} thread(s): {name} / {label} ready ({took:.0f} s)")
                runners.append((name, label, runner))
        x = torch.randn(1, *SIZE, generator=torch.Generator().manual_seed(0))
        for _name, _label, runner in runners:  # warm-up
            for _ in range(3):
                runner(x)
        times = {(n, lbl): [] for n, lbl, _ in runners}
        for _ in range(repeats):
            for name, label, runner in runners:
                runner(x)  # untimed: the previous runtime's threads settle
                start = time.perf_counter()
                runner(x)
                times[(name, label)].append((time.perf_counter() - start) * 1e3)
        for key, values in times.items():
            results[(*key, count)] = statistics.median(values)
    return results


def markdown(results, models, runtimes, threads) -> str:
    lines = []
    head = "| runtime | model | " + " | ".join(f"{t} thr ms | ratio" for t in threads) + " |"
    lines += [head, "|---|---|" + "---:|---:|" * len(threads)]
    for label in runtimes:
        for name in models:
            cells = []
            for t in threads:
                ms = results.get((name, label, t))
                peers = [results[(m, label, t)] for m in MOBILENETS if (m, label, t) in results]
                if name.endswith("resnet50"):
                    peers = [
                        results[(m, label, t)]
                        for m in ("torchvision:resnet50",)
                        if (m, label, t) in results
                    ]
                ref = min(peers) if peers else None
                cells.append("-" if ms is None else f"{ms:.2f}")
                cells.append("-" if ms is None or ref is None else f"{ref / ms:.2f}x")
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 models, 1 thread, 5 repeats")
    parser.add_argument("--repeats", type=int, help="timed calls per runner (default 25)")
    parser.add_argument("--threads", default=None, help="comma-separated (default 1,2)")
    parser.add_argument(
        "--runtimes", default=None, help=f"comma-separated from {', '.join(RUNTIMES)}"
    )
    parser.add_argument("--models", default=None, help="comma-separated (default: all six)")
    parser.add_argument(
        "--rewrite",
        action="append",
        default=[],
        choices=sorted(REWRITES),
        help="PyTorch-level rewrite of the Ghost models before export (repeatable)",
    )
    parser.add_argument("--json", help="write the medians here")
    args = parser.parse_args()
    models = args.models.split(",") if args.models else list(QUICK_MODELS if args.quick else MODELS)
    threads = [int(t) for t in (args.threads or ("1" if args.quick else "1,2")).split(",")]
    repeats = args.repeats or (5 if args.quick else 25)
    wanted = args.runtimes.split(",") if args.runtimes else list(RUNTIMES)
    runtimes = [r for r in wanted if available(RUNTIMES[r][1])]
    skipped = [r for r in wanted if r not in runtimes]
    cpu, flags = lscpu()
    print(f"# mobile runtimes, batch 1, {SIZE[1]}x{SIZE[2]}, {repeats} repeats (medians)")
    print(f"CPU: {cpu}\nflags: {flags}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print(f"rewrites: {', '.join(args.rewrite) or 'none'}")
    if skipped:
        print(f"not installed, skipped: {', '.join(skipped)}")
    with tempfile.TemporaryDirectory(prefix="ghostnet-mobile-") as tmp:
        results = measure(
            models,
            runtimes,
            threads,
            repeats,
            args.rewrite,
            Path(tmp),
            lambda s: print(s, file=sys.stderr, flush=True),
        )
    print()
    print(
        "ratio: the faster MobileNetV3-Large (timm or torchvision) on that runtime and thread "
        "count divided by this row (> 1: faster than it); ResNet-50 rows against ResNet-50"
    )
    print()
    print(markdown(results, models, runtimes, threads))
    if args.json:
        rows = [
            {"model": m, "runtime": r, "threads": t, "median_ms": v}
            for (m, r, t), v in results.items()
        ]
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
