"""Probe (run 6, #13): can torch.compile fuse the Ghost module's cheap op and concat?

The 1x1 Ghost module (256 -> 256, s=2, 28x28, batch 8) as oneDNN sees it runs three passes
over memory: the primary conv, the depthwise conv, the concat. Written as nine shifted
products instead of a depthwise conv, the cheap op is plain elementwise code that inductor
could fuse with the ReLU and the concat into one loop. This times plain conv, Ghost module
(depthwise conv) and Ghost module (stencil), eager and compiled (frozen weights), 1 thread,
interleaved, medians. Outputs are checked against each other first.

    python experiments/stencil_compile_probe.py [--nchw]
"""

import statistics
import sys
import time

import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F
from torch import nn

inductor_config.freezing = True
torch.set_num_threads(1)
torch.manual_seed(0)
C, M, N, S = 256, 128, 8, 28
REPEATS = 20
CHANNELS_LAST = "--nchw" not in sys.argv


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, C, 1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class GhostDepthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.primary = nn.Conv2d(C, M, 1)
        self.cheap = nn.Conv2d(M, M, 3, padding=1, groups=M)

    def forward(self, x):
        a = torch.relu(self.primary(x))
        return torch.cat([a, torch.relu(self.cheap(a))], 1)


class GhostStencil(GhostDepthwise):
    def forward(self, x):
        a = torch.relu(self.primary(x))
        h, w = a.shape[-2:]
        padded = F.pad(a, (1, 1, 1, 1))
        acc = self.cheap.bias.view(1, M, 1, 1)
        for i in range(3):
            for j in range(3):
                tap = self.cheap.weight[:, 0, i, j].view(1, M, 1, 1)
                acc = acc + padded[:, :, i : i + h, j : j + w] * tap
        return torch.cat([a, torch.relu(acc)], 1)


def main() -> None:
    fmt = torch.channels_last if CHANNELS_LAST else torch.contiguous_format
    x = torch.randn(N, C, S, S).contiguous(memory_format=fmt)
    ghost = GhostDepthwise().eval()
    stencil = GhostStencil().eval()
    stencil.load_state_dict(ghost.state_dict())
    runs = {}
    with torch.no_grad():
        reference = ghost(x)
        for name, model in (("plain", Plain().eval()), ("ghost", ghost), ("stencil", stencil)):
            model = model.to(memory_format=fmt)
            compiled = torch.compile(model, dynamic=False)
            assert model(x).shape == compiled(x).shape
            if name != "plain":
                assert torch.allclose(compiled(x), reference, atol=1e-4)
            runs[f"{name} eager"], runs[f"{name} compile"] = model, compiled
        times = {k: [] for k in runs}
        for _ in range(REPEATS):
            for key, run in runs.items():
                run(x)
                start = time.perf_counter()
                run(x)
                times[key].append(1e3 * (time.perf_counter() - start))
    print(f"layout {'channels_last' if CHANNELS_LAST else 'NCHW'}; medians of {REPEATS}")
    for key, values in times.items():
        print(f"{key:16s} {statistics.median(values):7.3f} ms")
    plain = statistics.median(times["plain compile"])
    for key in ("ghost compile", "stencil compile"):
        print(f"{key} vs plain compile: {plain / statistics.median(times[key]):.2f}x")


if __name__ == "__main__":
    main()
