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

# how many times PyTorch's own float32 error (against float64) a runtime's may be and still
# be called faithful. float32 runtimes sum in other orders and with other kernels: on a
# random G-Ghost-RegNetX-3.2GF, XNNPACK is 1.3-3.5x PyTorch's error stage by stage (most
# in the merge: pooling, then a 1x1 conv over 3,240 channels), 10x at the logits
# (6.7e-4 vs 6.5e-5, 1 thread); an export bug (a wrong op, a dropped bias) is off by O(1)
FLOAT32_SPREAD = 16.0
# PyTorch's own float32 error beyond this many times the tolerance: float32 says nothing
# about the export (two float32 runtimes of a random GhostNetV3 with initial BN statistics
# are 0.5 apart), so no spread is granted
ILL_CONDITIONED = 10.0


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


def float32_errors(
    reference: nn.Module,
    run: Runner,
    input_size: Sequence[int],
    batch_size: int = 1,
    trials: int = 3,
) -> tuple[float, float]:
    """How far PyTorch's float32 outputs and the runtime's are from float64 ones (relative,
    as above; the worst first image over ``trials`` batches, the ones max_relative_diff uses).

    PyTorch's error says how ill-conditioned the model is: large, and no float32 runtime can
    match it closely. float64 convolutions have no fast CPU kernels: pass the deploy form
    (single-branch, BN folded); only each batch's first image runs in float64."""
    wide = copy.deepcopy(reference).double().eval()
    reference = reference.eval()
    own = theirs = 0.0
    for x in _inputs(input_size, batch_size, trials):
        with torch.no_grad():
            exact = wide(x[:1].double())
            single = reference(x[:1]).double()
        got = torch.as_tensor(run(x))[:1].double()
        scale = max(1.0, exact.abs().max().item())
        own = max(own, (single - exact).abs().max().item() / scale)
        theirs = max(theirs, (got - exact).abs().max().item() / scale)
    return own, theirs


def check_agreement(
    runtime: str,
    path: object,
    reference: nn.Module,
    run: Runner,
    input_size: Sequence[int],
    batch_size: int,
    tolerance: float,
    recheck: Callable[[nn.Module], tuple[Runner, nn.Module]] | None = None,
    deploy: nn.Module | None = None,
) -> Agreement:
    """The runtime's agreement with PyTorch; one error line naming the runtime when not.

    When float32 disagrees, PyTorch's float32 and the runtime's are both compared with
    float64. If PyTorch is off by more than ``tolerance`` the model may be ill-conditioned
    (random weights with initial BN statistics are): ``recheck`` then exports a copy with BN
    statistics measured on random images the same way and returns its runner and deploy
    form; that copy's check, by the rules here, decides. A deep model can be near
    ``tolerance`` in float32 even so (a random G-Ghost-RegNetX-3.2GF with measured BN: 1e-4,
    and XNNPACK's other summation orders land 10x further off): a runtime within FLOAT32_SPREAD
    times PyTorch's own error of the exact answer is as accurate as float32 allows and is
    kept, with a note; one further off is blamed. ``deploy``: the same function in its
    deploy form, cheaper to run in float64.
    """
    diff = max_relative_diff(reference, run, input_size, batch_size)
    if diff <= tolerance:
        return Agreement(runtime, diff, tolerance)
    own, theirs = float32_errors(
        deploy if deploy is not None else reference, run, input_size, batch_size
    )
    if own <= tolerance or recheck is None:
        if theirs <= FLOAT32_SPREAD * own and own <= ILL_CONDITIONED * tolerance:
            return Agreement(
                runtime,
                diff,
                tolerance,
                f"float32 differs by {diff:.3g} of the output scale; {runtime} is "
                f"{theirs:.2g} from float64, within {FLOAT32_SPREAD:g} x PyTorch's own "
                f"float32 error on this model ({own:.2g}): float32 rounding, not the "
                "export; kept",
            )
        if own > ILL_CONDITIONED * tolerance:
            raise GhostnetError(
                f"{path}: {runtime} differs from PyTorch by {diff:.3g} of the output scale "
                f"(> {tolerance}), and PyTorch's own float32 is {own:.2g} from float64: the "
                "model is too ill-conditioned to check; export trained weights (or BN "
                "statistics measured with ghostnet.deploy.settle_batchnorm)"
            )
        raise GhostnetError(
            f"{path}: {runtime} differs from PyTorch by {diff:.3g} of the output scale "
            f"(> {tolerance}) and from float64 by {theirs:.2g}, while PyTorch's float32 "
            f"agrees with float64 to {own:.2g}; the export is not faithful"
        )
    settled = settle_batchnorm(copy.deepcopy(reference), input_size)
    run_settled, settled_deploy = recheck(settled)
    try:
        again = check_agreement(
            runtime,
            path,
            settled,
            run_settled,
            input_size,
            batch_size,
            tolerance,
            deploy=settled_deploy,
        )
    except GhostnetError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise GhostnetError(
            f"{path}: {runtime} differs from PyTorch by {diff:.3g} of the output scale; a "
            f"copy with BN statistics measured on random images: {reason}"
        ) from exc
    note = (
        f"float32 differs by {diff:.3g} of the output scale, but PyTorch's own float32 is "
        f"{own:.3g} from float64 on this model (ill-conditioned: random weights with "
        f"initial BN statistics?); a copy with BN statistics measured on random images, "
        f"exported the same way, agrees to {again.max_diff:.2g}: the export is faithful, kept"
    )
    return Agreement(runtime, diff, tolerance, note)
