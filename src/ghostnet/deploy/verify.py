"""An exported file checked against PyTorch on its real runtime, with a float64 recheck
that tells an ill-conditioned model (float32 itself unreliable) from an unfaithful export."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import GhostnetError

Runner = Callable[[torch.Tensor], torch.Tensor]

# how many times PyTorch's own float32-vs-float64 error a runtime may differ from PyTorch
# by and still be called faithful (see check_agreement)
FLOAT32_SPREAD = 4.0


@dataclass
class Agreement:
    """How far the runtime's outputs are from PyTorch's, in units of max(1, max |output|)."""

    runtime: str
    max_diff: float
    tolerance: float
    # set when float32 disagreed: what the recheck measured and why the file was kept
    note: str | None = None


def settle_batchnorm(
    model: nn.Module, input_size: Sequence[int], images: int | None = None
) -> nn.Module:
    """Measure every BN's statistics on one batch of random images, then switch to eval.

    With BN's initial statistics (mean 0, var 1) random weights of a deep multi-branch net
    (a GhostNetV3 training form) reach ~1e8 activations: float32 then rounds differently on
    every runtime, and no comparison can tell a faithful export from a broken one. Measured
    statistics keep activations at a trained net's scale; the computation graph is the same.
    ``images`` (default: 4 at 224x224, more for small inputs, up to 64) keeps enough values
    per channel in the last stages (1x1 maps at 32x32) for statistics that mean something.
    """
    if images is None:
        images = min(64, max(4, round(4 * (224 / input_size[-1]) ** 2)))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: exactly this batch's statistics
    if norms:
        model.train()
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            model(torch.randn(images, *input_size, generator=generator))
    return model.eval()


def _inputs(input_size: Sequence[int], batch_size: int, trials: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(batch_size, *input_size, generator=generator) for _ in range(trials)]


def max_relative_diff(
    reference: nn.Module, run: Runner, input_size: Sequence[int], batch_size: int, trials: int = 3
) -> float:
    """max |reference(x) - run(x)| / max(1, max |reference(x)|) over random inputs.

    Relative for large outputs: float32 rounding grows with the outputs, and a faithful
    export of a model whose logits reach 1e7 differs by ~1e-7 of them, not by 1e-4."""
    worst = 0.0
    reference = reference.eval()
    for x in _inputs(input_size, batch_size, trials):
        with torch.no_grad():
            expected = reference(x).float()
        scale = max(1.0, expected.abs().max().item())
        got = torch.as_tensor(run(x)).float()
        if got.shape != expected.shape:
            raise GhostnetError(
                f"the exported model returns shape {tuple(got.shape)}, PyTorch "
                f"{tuple(expected.shape)}; the export is not faithful"
            )
        worst = max(worst, (got - expected).abs().max().item() / scale)
    return worst


def float32_error(
    reference: nn.Module, input_size: Sequence[int], batch_size: int = 1, trials: int = 1
) -> float:
    """How far PyTorch's own float32 outputs are from float64 ones (relative, as above):
    large means the model is ill-conditioned and no float32 runtime can match it closely.
    float64 convolutions have no fast CPU kernels: pass the deploy form (single-branch,
    BN folded) and one image, not a multi-branch training form."""
    wide = copy.deepcopy(reference).double().eval()
    worst = 0.0
    reference = reference.eval()
    for x in _inputs(input_size, batch_size, trials):
        with torch.no_grad():
            exact = wide(x.double())
            single = reference(x).double()
        scale = max(1.0, exact.abs().max().item())
        worst = max(worst, (single - exact).abs().max().item() / scale)
    return worst


def check_agreement(
    runtime: str,
    path: object,
    reference: nn.Module,
    run: Runner,
    input_size: Sequence[int],
    batch_size: int,
    tolerance: float,
    recheck: Callable[[nn.Module], float] | None = None,
    deploy: nn.Module | None = None,
) -> Agreement:
    """The runtime's agreement with PyTorch; one error line naming the runtime when not.

    When float32 disagrees, PyTorch's float32 is compared with float64 first. If PyTorch
    itself is off by more than ``tolerance`` the model is ill-conditioned (random weights
    with initial BN statistics are): ``recheck`` then exports a copy with BN statistics
    measured on random images the same way and returns its difference, which decides.
    ``deploy``: the same function in its deploy form, cheaper to run in float64.
    A deep model can sit just under ``tolerance`` in float32 itself (a random RegNet-3.2GF
    with measured BN: 9e-5): a runtime within FLOAT32_SPREAD times that error is kept, with
    a note; one further off than both is blamed.
    """
    diff = max_relative_diff(reference, run, input_size, batch_size)
    if diff <= tolerance:
        return Agreement(runtime, diff, tolerance)
    single = float32_error(deploy if deploy is not None else reference, input_size)
    if single <= tolerance or recheck is None:
        if diff <= FLOAT32_SPREAD * single:
            # two float32 computations each `single` from the exact answer are up to
            # 2 x single apart; the margin covers a runtime's other kernels (Winograd,
            # other summation orders) and `single` being measured on one image only
            return Agreement(
                runtime,
                diff,
                tolerance,
                f"float32 differs by {diff:.3g} of the output scale, within "
                f"{FLOAT32_SPREAD:g} x PyTorch's own float32 error on this model "
                f"({single:.2g} from float64): float32 rounding, not the export; kept",
            )
        raise GhostnetError(
            f"{path}: {runtime} differs from PyTorch by {diff:.3g} of the output scale "
            f"(> {tolerance}) while PyTorch's float32 agrees with float64 to {single:.2g}; "
            "the export is not faithful"
        )
    settled = settle_batchnorm(copy.deepcopy(reference), input_size)
    again = recheck(settled)
    if again > tolerance:
        raise GhostnetError(
            f"{path}: {runtime} differs from PyTorch by {diff:.3g} of the output scale, and "
            f"by {again:.3g} (> {tolerance}) for a copy with BN statistics measured on "
            "random images; the export is not faithful"
        )
    note = (
        f"float32 differs by {diff:.3g} of the output scale, but PyTorch's own float32 is "
        f"{single:.3g} from float64 on this model (ill-conditioned: random weights with "
        f"initial BN statistics?); a copy with BN statistics measured on random images, "
        f"exported the same way, agrees to {again:.2g}: the export is faithful, kept"
    )
    return Agreement(runtime, diff, tolerance, note)
