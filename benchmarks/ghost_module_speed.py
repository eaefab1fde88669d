"""A 1x1 Ghost module (256 -> 256 channels, s=2, 28x28, batch 8) against the plain 1x1
conv + BN + ReLU it replaces, on every deploy backend and precision (same runners as
`ghostnet bench`: BN folded, interleaved repeats, medians; inputs in each backend's own
layout).

    python benchmarks/ghost_module_speed.py --repeats 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ghostnet.bench import build_runner, cpu_flags, has_bf16
from ghostnet.layers.ghost import GhostModule


def native_input(backend: str, x: torch.Tensor) -> torch.Tensor:
    """The input as the backend keeps maps between layers, since a module inside a network
    gets no conversion: channels_last (bf16 for -bf16) for PyTorch's fused and compile, NCHW
    float32 for the ONNX runtimes. (Until run 6 every PyTorch call also converted an NCHW
    float32 input, 1-2 ms of a 4-9 ms module, the same for both sides of each ratio.)"""
    if backend.startswith(("fused", "compile")):
        dtype = torch.bfloat16 if backend.endswith("-bf16") else torch.float32
        return x.to(dtype).contiguous(memory_format=torch.channels_last)
    return x


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--ratio", type=int, default=2)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--backends",
        default="fused,fused-kernel,compile,compile-kernel,onnxruntime,onnxruntime-split,"
        "onnxruntime-int8,openvino,openvino-int8",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    c = args.channels
    plain = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()).eval()
    ghost = GhostModule(c, c, kernel_size=1, ratio=args.ratio).eval()
    backends = args.backends.split(",") + (
        ["fused-bf16", "fused-kernel-bf16", "compile-bf16", "compile-kernel-bf16", "openvino-bf16"]
        if has_bf16()
        else []
    )
    size = (c, args.size, args.size)
    x = torch.randn(args.batch, *size)
    inputs = {backend: native_input(backend, x) for backend in backends}
    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            for label, module in (("plain", plain), ("ghost", ghost)):
                run = build_runner(module, backend, size, args.batch, args.threads, Path(tmp))
                for _ in range(3):
                    run(inputs[backend])
                runners[(backend, label)] = run
        times = {k: [] for k in runners}
        for _ in range(args.repeats):
            for (backend, label), run in runners.items():
                run(inputs[backend])
                start = time.perf_counter()
                run(inputs[backend])
                times[(backend, label)].append(1e3 * (time.perf_counter() - start))
    print(
        f"1x1 Ghost module {c}->{c}, s={args.ratio}, {args.size}x{args.size}, batch "
        f"{args.batch}, {args.threads} threads; CPU flags {' '.join(cpu_flags())}; medians of "
        f"{args.repeats} interleaved repeats; load average at the end "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"{'backend':<20} {'plain ms':>9} {'ghost ms':>9} {'speed-up':>9}")
    for backend in backends:
        p = statistics.median(times[(backend, "plain")])
        g = statistics.median(times[(backend, "ghost")])
        print(f"{backend:<20} {p:>9.3f} {g:>9.3f} {p / g:>8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
