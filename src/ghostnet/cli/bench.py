"""``ghostnet bench``: inference latency and throughput across models and backends."""

from __future__ import annotations

import argparse
import json
import sys

from ..bench import (
    _BF16_BACKENDS,
    _INT8_BACKENDS,
    BACKENDS,
    cpu_flags,
    fastest,
    format_records,
    machine_info,
    records_as_dicts,
    resolve_model,
    run_benchmark,
)
from ..safe_io import atomic_open
from .common import int_at_least


def _positive_ints(text: str) -> list[int]:
    values = [int_at_least(1)(part) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected sizes like 1,16, got {text!r}")
    return values


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="latency/throughput per model and backend", description=__doc__
    )
    p.add_argument(
        "--models",
        default="ghostnet_100,timm:ghostnet_100,mobilenetv3_large_100,resnet50,ghost_resnet50",
        help="comma-separated model names",
    )
    p.add_argument(
        "--batch-sizes", type=_positive_ints, default=[1, 16], help="comma-separated, e.g. 1,16"
    )
    p.add_argument(
        "--backends",
        default="eager,onnxruntime",
        help=f"comma-separated, from {', '.join(BACKENDS)}; a non-eager one may end in "
        "-split (Ghost concats kept apart) or -pad (split, parts padded to the CPU's channel "
        "block: fastest for Ghost models in onnxruntime); fused and compile may end in "
        "-kernel (Ghost cheap op + concat as one C++ kernel; fp32 or bf16); executorch, ncnn "
        "and litert run the file `ghostnet export --format` writes (extras of those names)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        help="comma-separated from fp32, bf16 (eager/fused/compile/openvino; CPUs with "
        "avx512_bf16 or amx_bf16), int8 (onnxruntime/openvino: ONNX Runtime static INT8)",
    )
    p.add_argument(
        "--threads",
        type=int_at_least(1),
        default=2,
        help="torch threads; ONNX Runtime intra-op threads (not spinning); ExecuTorch's "
        "XNNPACK pool; ncnn and LiteRT num_threads (default 2)",
    )
    p.add_argument("--repeats", type=int_at_least(1), default=20)
    p.add_argument("--warmup", type=int_at_least(0), default=3)
    p.add_argument("--json", metavar="FILE", help="write one record per model/backend/batch")
    p.set_defaults(run=run)


def with_precisions(backends: list[str], precisions: list[str]) -> list[str]:
    """``eager,onnxruntime`` x ``fp32,int8`` -> the backend names that support each precision
    (``eager, onnxruntime, onnxruntime-int8``); a precision no backend supports is an error."""
    from ..errors import GhostnetError

    supported = {"fp32": BACKENDS, "bf16": _BF16_BACKENDS, "int8": _INT8_BACKENDS}
    out = []
    for precision in precisions:
        if precision not in supported:
            raise GhostnetError(f"--precision {precision}: choose from fp32, bf16, int8")
        if precision == "bf16":
            from ..bench import require_bf16

            require_bf16()
        chosen = [
            b if precision == "fp32" else f"{b}-{precision}"
            for b in backends
            if precision == "fp32"
            or (
                b.split("-")[0] in supported[precision]
                and not (precision == "int8" and b.endswith("-kernel"))
            )
        ]
        if not chosen:
            raise GhostnetError(
                f"--precision {precision} needs one of the backends "
                f"{', '.join(supported[precision])}"
            )
        out += chosen
    return out


def ratio_lines(records: list, models: list[str], batch_sizes: list[int]) -> list[str]:
    """The issue's comparisons, when the models involved were benchmarked."""
    lines = []
    for batch in batch_sizes:
        ours = fastest(records, "ghostnet_100", batch)
        timm_eager = fastest(records, "timm:ghostnet_100", batch, ["eager"])
        if ours and timm_eager:
            lines.append(
                f"batch {batch}: ghostnet_100 {ours.backend} vs timm ghostnet_100 "
                f"eager: {timm_eager.median_ms / ours.median_ms:.2f}x faster"
            )
        mobilenet = next((m for m in models if "mobilenet" in m), None)
        if ours and mobilenet:
            peer = fastest(records, mobilenet, batch, [ours.backend])
            if peer:
                lines.append(
                    f"batch {batch}: ghostnet_100 vs {mobilenet} on {ours.backend}: "
                    f"{peer.median_ms / ours.median_ms:.2f}x faster "
                    f"(MACs ratio {peer.macs / ours.macs:.2f}x)"
                )
        ghost = fastest(records, "ghost_resnet50", batch)
        if ghost:
            base = fastest(records, "torchvision:resnet50", batch, [ghost.backend])
            if base:
                lines.append(
                    f"batch {batch}: ghost_resnet50 vs resnet50 on {ghost.backend}: "
                    f"{base.median_ms / ghost.median_ms:.2f}x faster "
                    f"(MACs ratio {base.macs / ghost.macs:.2f}x)"
                )
    return lines


def run(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    batch_sizes = args.batch_sizes
    backends = with_precisions(
        [b.strip() for b in args.backends.split(",") if b.strip()],
        [x.strip() for x in args.precision.split(",") if x.strip()],
    )
    records = run_benchmark(
        models,
        batch_sizes,
        backends,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        progress=lambda msg: print(msg, file=sys.stderr),
    )
    info = machine_info()
    print(
        f"{info['processor']} ({info['logical_cpus']} logical CPUs), {args.threads} threads; "
        f"torch {info['torch']}, onnxruntime {info['onnxruntime']}, "
        f"openvino {info['openvino']}; {args.repeats} interleaved repeats, medians"
    )
    print(f"CPU flags: {' '.join(cpu_flags()) or 'none of the avx512/amx/vnni family'}")
    print(format_records(records))
    for line in ratio_lines(records, [resolve_model(m) for m in models], batch_sizes):
        print(line)
    if args.json:
        with atomic_open(args.json, "w") as f:
            json.dump(records_as_dicts(records), f, indent=2)
    return 0
