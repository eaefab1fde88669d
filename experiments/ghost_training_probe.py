"""Probe (run 10, #13): why Ghost-ResNet-56 trains at ~1.2x, not 1.5x, the speed of ResNet-56.

Each stage of a CIFAR ResNet-56 has 18 3x3 convs of the same shape (16 channels at 32x32,
32 at 16x16, 64 at 8x8; batch 128). A Ghost layer (s=2) replaces each with a primary conv
of half the outputs plus a 3x3 depthwise cheap op and a concat. This times, per stage, the
forward + backward of (a) the plain conv, (b) the primary conv alone and (c) the cheap op +
concat alone, all channels_last float32 with the gradients of input and weights, 1 thread,
interleaved repeats, medians. (a) / (b) is what the halved MACs buy the conv; (c) is what a
Ghost layer adds back. The memory-bound rest of a training step (BN, ReLU, residual adds,
their backward) is the same in both networks and dilutes whatever the convs save.

    python experiments/ghost_training_probe.py
    python experiments/ghost_training_probe.py --nchw    # the same in NCHW (run 11)
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ghostnet.bench import cpu_flags, machine_info

torch.set_num_threads(1)
torch.manual_seed(0)
BATCH, REPEATS = 128, 15
STAGES = [(16, 32), (32, 16), (64, 8)]
CL = torch.channels_last  # the memory format of every tensor; main() sets NCHW for --nchw


def conv_step(channels: int, outputs: int, size: int):
    x = torch.randn(BATCH, channels, size, size).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(outputs, channels, 3, 3).contiguous(memory_format=CL).requires_grad_()
    grad = torch.randn(BATCH, outputs, size, size).contiguous(memory_format=CL)

    def step() -> None:
        torch.autograd.grad(F.conv2d(x, w, padding=1), (x, w), grad)

    return step


def cheap_step(half: int, size: int):
    y = torch.randn(BATCH, half, size, size).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(half, 1, 3, 3).requires_grad_()
    grad = torch.randn(BATCH, 2 * half, size, size).contiguous(memory_format=CL)

    def step() -> None:
        out = torch.cat([y, F.conv2d(y, w, padding=1, groups=half)], 1)
        torch.autograd.grad(out, (y, w), grad)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nchw", action="store_true", help="NCHW tensors, not channels_last")
    global CL
    CL = torch.contiguous_format if parser.parse_args().nchw else torch.channels_last
    steps = {}
    for channels, size in STAGES:
        steps[(channels, "plain")] = conv_step(channels, channels, size)
        steps[(channels, "primary")] = conv_step(channels, channels // 2, size)
        steps[(channels, "cheap")] = cheap_step(channels // 2, size)
    times: dict = {k: [] for k in steps}
    for i in range(REPEATS + 2):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            if i >= 2:
                times[key].append(time.perf_counter() - start)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    info = machine_info()
    print(
        f"CPU: {info['processor']}, {info['logical_cpus']} CPUs; flags: {' '.join(cpu_flags())}; "
        f"torch {torch.__version__}; 1 thread; batch {BATCH}; "
        f"{'NCHW' if CL is torch.contiguous_format else 'channels_last'}; "
        "forward + backward, medians of "
        f"{REPEATS} interleaved repeats"
    )
    print(
        f"{'stage':<16}{'plain conv ms':>15}{'primary ms':>12}{'plain/primary':>15}"
        f"{'cheap+cat ms':>14}{'plain/(primary+cheap)':>23}"
    )
    total = {"plain": 0.0, "primary": 0.0, "cheap": 0.0}
    for channels, size in STAGES:
        p, q, c = (ms[(channels, k)] for k in ("plain", "primary", "cheap"))
        for k, v in zip(("plain", "primary", "cheap"), (p, q, c)):
            total[k] += v
        name = f"{channels} ch {size}x{size}"
        print(f"{name:<16}{p:>15.2f}{q:>12.2f}{p / q:>14.2f}x{c:>14.2f}{p / (q + c):>22.2f}x")
    p, q, c = total["plain"], total["primary"], total["cheap"]
    print(f"{'all three':<16}{p:>15.2f}{q:>12.2f}{p / q:>14.2f}x{c:>14.2f}{p / (q + c):>22.2f}x")


if __name__ == "__main__":
    main()
