"""Where does inference time go? Per-operator time of a model in ONNX Runtime (its own
profiler) and in PyTorch eager (torch.profiler), for a given batch size and thread count.

    python benchmarks/where_time_goes.py --models ghostnet_100,mobilenetv3_large_100 --batch 16
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch

from ghostnet.bench import resolve_model, settle_batchnorm
from ghostnet.deploy import export_onnx, fuse
from ghostnet.models import create_model, default_input_size
from ghostnet.split import split_concats


def ort_profile(path: Path, x: torch.Tensor, threads: int, runs: int) -> dict[str, float]:
    """Mean microseconds per run, by ONNX op type, from ORT's own profiler."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    for _ in range(3):
        session.run(None, feed)
    for _ in range(runs):
        session.run(None, feed)
    trace = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = collections.defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[_op_kind(event["args"])] += event["dur"]
    return {op: total / (runs + 3) for op, total in per_op.items()}


def _op_kind(args: dict) -> str:
    """The op type; convs told apart by weight shape (depthwise / 1x1 / k x k), because
    GhostNet's cost question is how much of the time the cheap depthwise ops take."""
    op = args["op_name"]
    if op != "Conv":
        return op
    shapes = [next(iter(s.values())) for s in args.get("input_type_shape", []) if s]
    if len(shapes) < 2 or len(shapes[1]) != 4:
        return op
    out_ch, in_per_group, kh, kw = shapes[1]
    if in_per_group == 1 and out_ch > 1:
        return f"Conv depthwise {kh}x{kw}"
    return f"Conv {kh}x{kw}"


def torch_profile(model: torch.nn.Module, x: torch.Tensor, runs: int) -> dict[str, float]:
    """Mean microseconds per run, by aten op, from torch.profiler (self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for _ in range(3):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model(x)
    return {e.key: e.self_cpu_time_total / runs for e in prof.key_averages()}


def show(title: str, per_op: dict[str, float], top: int = 14) -> None:
    total = sum(per_op.values())
    print(f"\n{title}: {total / 1e3:.2f} ms per run in operators")
    for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {op:<40} {us / 1e3:8.2f} ms  {100 * us / total:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ghostnet_100,mobilenetv3_large_100")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--split", action="store_true", help="profile the split deploy form")
    parser.add_argument(
        "--pad", type=int, default=0, help="with --split: pad parts to this many channels"
    )
    parser.add_argument("--ort-only", action="store_true", help="skip the PyTorch profile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            name = resolve_model(name)
            torch.manual_seed(0)
            size = default_input_size(name)
            # BN statistics measured on random images, as `bench` does: with initial
            # statistics a random net's activations can grow into slow denormal/huge values
            model = settle_batchnorm(create_model(name), size)
            x = torch.randn(args.batch, *size)
            deploy = fuse(model)
            if args.split:
                deploy = split_concats(deploy, size, pad_to=args.pad)
            path, _ = export_onnx(
                deploy, Path(tmp) / "m.onnx", size, batch_size=args.batch, reference=model
            )
            show(
                f"{name} / onnxruntime / batch {args.batch}",
                ort_profile(path, x, args.threads, args.runs),
            )
            if not args.ort_only:
                show(f"{name} / torch eager", torch_profile(model, x, args.runs))


if __name__ == "__main__":
    main()
