"""Regenerate the README speed table: fp32 / bf16 / int8 latency of GhostNet-1.0x,
MobileNetV3-Large, Ghost-ResNet-50 and ResNet-50 at batch 1 and 16, with the ratios, the
CPU model and its flags (lscpu). Random weights: speed does not depend on their values (the
int8 files are calibrated on random inputs; accuracy is measured separately with
`ghostnet export --int8` + `ghostnet eval --backend onnxruntime`).

    python benchmarks/speed_table.py --out docs/results/speed

Every (model, backend) runs interleaved with all others, repeats times; the table reports
medians, so load from other processes on a shared machine hits every row alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from ghostnet.bench import (
    cpu_flags,
    format_records,
    has_bf16,
    machine_info,
    records_as_dicts,
    run_benchmark,
)

MODELS = ("ghostnet_100", "mobilenetv3_large_100", "ghost_resnet50", "resnet50")
PAIRS = (("ghostnet_100", "mobilenetv3_large_100"), ("ghost_resnet50", "resnet50"))


def lscpu_summary() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return machine_info()["processor"]
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"


def table(records, backends: list[str], batches: list[int]) -> str:
    from ghostnet.bench import resolve_model

    names = {m: resolve_model(m) for m in MODELS}
    by = {(r.model, r.backend, r.batch): r for r in records}
    lines = [
        "| model | batch | " + " | ".join(f"{b} ms" for b in backends) + " |",
        "|---|---:|" + "---:|" * len(backends),
    ]
    for model in MODELS:
        for batch in batches:
            cells = [
                f"{by[(names[model], b, batch)].median_ms:.2f}"
                if (names[model], b, batch) in by
                else "-"
                for b in backends
            ]
            lines.append(f"| {model} | {batch} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio (same backend) | batch | " + " | ".join(backends) + " |"]
    lines.append("|---|---:|" + "---:|" * len(backends))
    for ours, peer in PAIRS:
        for batch in batches:
            cells = []
            for b in backends:
                a, p = by.get((names[ours], b, batch)), by.get((names[peer], b, batch))
                cells.append(f"{p.median_ms / a.median_ms:.2f}x" if a and p else "-")
            lines.append(f"| {ours} vs {peer} | {batch} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| int8 / bf16 speed-up over fp32 | batch | backend | speed-up |",
        "|---|---:|---|---:|",
    ]
    for model in MODELS:
        for batch in batches:
            for b in backends:
                if b.endswith(("-int8", "-bf16")):
                    base = by.get((names[model], b.rsplit("-", 1)[0], batch))
                    fast = by.get((names[model], b, batch))
                    if base and fast:
                        lines.append(
                            f"| {model} | {batch} | {b} | {base.median_ms / fast.median_ms:.2f}x |"
                        )
    lines += best_layout_ratios(by, names, backends, batches)
    return "\n".join(lines)


def best_layout_ratios(by, names, backends: list[str], batches: list[int]) -> list[str]:
    """Each model on its fastest graph layout (plain, -split or -pad) of one runtime and
    precision, then the ratios: a runtime is what a user deploys on, the layout is ours to
    choose per model (padding helps GhostNet in ONNX Runtime and slows MobileNetV3)."""
    from ghostnet.bench import _parse_backend

    groups: dict[str, list[str]] = {}
    for b in backends:
        base, _layout, precision = _parse_backend(b)
        groups.setdefault(base if precision == "fp32" else f"{base}-{precision}", []).append(b)
    if all(len(members) == 1 for members in groups.values()):
        return []
    lines = [
        "",
        "| fastest layout per runtime | batch | " + " | ".join(groups) + " |",
        "|---|---:|" + "---:|" * len(groups),
    ]

    def best(model: str, batch: int, members: list[str]):
        found = [by[(names[model], b, batch)] for b in members if (names[model], b, batch) in by]
        return min(found, key=lambda r: r.median_ms) if found else None

    for ours, peer in PAIRS:
        for batch in batches:
            cells = []
            for members in groups.values():
                a, p = best(ours, batch, members), best(peer, batch, members)
                cells.append(
                    f"{p.median_ms / a.median_ms:.2f}x ({a.backend} / {p.backend})"
                    if a and p
                    else "-"
                )
            lines.append(f"| {ours} vs {peer} | {batch} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/results/speed")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument(
        "--backends",
        default="onnxruntime,onnxruntime-pad,onnxruntime-int8,onnxruntime-pad-int8,"
        "openvino,openvino-bf16,openvino-int8",
        help="bench backend names (bf16 ones are dropped on CPUs without bf16)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if has_bf16() or "bf16" not in b]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    header = (
        f"CPU: {lscpu_summary()}; flags: {' '.join(cpu_flags())}; {args.threads} threads; "
        f"medians of {args.repeats} interleaved repeats; load average at start {load}"
    )
    print(header, flush=True)
    records = run_benchmark(
        MODELS,
        batches,
        backends,
        threads=args.threads,
        repeats=args.repeats,
        progress=lambda m: print(m, file=sys.stderr, flush=True),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join([header, "", format_records(records), "", table(records, backends, batches)])
    print(text)
    (out / "speed_table.md").write_text(text + "\n")
    (out / "speed_table.json").write_text(json.dumps(records_as_dicts(records), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
