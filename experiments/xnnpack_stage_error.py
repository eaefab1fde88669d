"""Probe: is ExecuTorch's 6.7e-4 (of the output scale) on a random G-Ghost-RegNetX-3.2GF
float32 rounding or an export bug? Each top-level part of the model (and the merge, base and
first inner block of each G-Ghost stage) is lowered to XNNPACK on its own and run on the
input it sees in the whole model; PyTorch's float32 and ExecuTorch's are both compared
with float64. A faithful lowering is within a few times PyTorch's error at every part; a
wrong op is off by O(1) where it sits. First, the whole deploy form on the export check's
three inputs, as ``deploy.verify.float32_errors`` measures them, one image at a time.

    OMP_NUM_THREADS=1 python experiments/xnnpack_stage_error.py [MODEL]
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from ghostnet.deploy import settle_batchnorm
from ghostnet.deploy.api import deploy_form
from ghostnet.deploy.executorch import ExecutorchSession, export_executorch
from ghostnet.models import create_model


class _Fresh(nn.Module):
    """Feeds the part a new tensor: a lone in-place ReLU cannot be exported on its input."""

    def __init__(self, part: nn.Module) -> None:
        super().__init__()
        self.part = part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.part(x * 1.0)


def errors(part: nn.Module, x: torch.Tensor, folder: Path, name: str) -> tuple[float, float]:
    """(PyTorch float32, ExecuTorch) max error against float64, relative to max |output|."""
    with torch.no_grad():
        exact = copy.deepcopy(part).double()(x.double())
        single = part(x).double()
    path = folder / f"{name}.pte"
    export_executorch(_Fresh(part), path, tuple(x.shape[1:]))
    lowered = torch.as_tensor(ExecutorchSession(path, threads=1)(x.contiguous())).double()
    scale = exact.abs().max().item()
    return (
        (single - exact).abs().max().item() / scale,
        (lowered - exact).abs().max().item() / scale,
    )


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "g_ghost_regnetx_032"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    size = (3, 224, 224)
    model = settle_batchnorm(create_model(name), size)
    h = torch.randn(1, *size, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        deploy = deploy_form(model, size, False, 0)
        export_executorch(deploy, Path(tmp) / "deploy.pte", size)
        session = ExecutorchSession(Path(tmp) / "deploy.pte", threads=1)
        print(f"{'check input':<16} {'PyTorch fp32':>12} {'ExecuTorch':>11} {'ratio':>6}")
        wide = copy.deepcopy(deploy).double()
        generator = torch.Generator().manual_seed(0)  # the check's inputs (verify._inputs)
        for image in range(3):
            x = torch.randn(1, *size, generator=generator)
            with torch.no_grad():
                exact = wide(x.double())
                scale = max(1.0, exact.abs().max().item())
                own = (deploy(x).double() - exact).abs().max().item() / scale
            theirs = (torch.as_tensor(session(x)).double() - exact).abs().max().item() / scale
            print(f"{image:<16} {own:12.2e} {theirs:11.2e} {theirs / own:6.1f}")
    print(f"{'part':<16} {'input':<20} {'PyTorch fp32':>12} {'ExecuTorch':>11} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def row(label: str, part: nn.Module, x: torch.Tensor) -> None:
            own, theirs = errors(part, x, folder, label)
            ratio = theirs / own if own else float("nan")
            print(f"{label:<16} {tuple(x.shape)!s:<20} {own:12.2e} {theirs:11.2e} {ratio:6.1f}")

        for label, part in model.named_children():
            if label == "avgpool":  # the head: pooled features and fc, as one part
                row("head", nn.Sequential(part, nn.Flatten(1), model.fc), h)
                break
            row(label, part, h)
            if hasattr(part, "merge"):  # a G-Ghost stage: its pieces, on their own inputs
                with torch.no_grad():
                    first = part.base(h)
                    feats, e = [first], first[:, : part.raw_planes]
                    for block in part.layers:
                        e = block(e)
                        feats.append(e)
                row(f"  {label}.base", part.base, h)
                row(f"  {label}.layers0", part.layers[0], first[:, : part.raw_planes])
                row(f"  {label}.merge", part.merge, torch.cat(feats, 1))
            with torch.no_grad():
                h = part(h)
        row("whole model", model, torch.randn(1, *size, generator=torch.Generator().manual_seed(1)))


if __name__ == "__main__":
    main()
