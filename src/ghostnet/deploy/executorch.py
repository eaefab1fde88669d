"""ExecuTorch export (torch.export -> XNNPACK-delegated .pte) and its runtime session."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import GhostnetError
from ..safe_io import write_bytes
from .runtime import (
    JsonValue,
    check_input,
    missing,
    quiet_native_output,
    read_sidecar,
    require_file,
    write_sidecar,
)

RUNTIME = "ExecuTorch (XNNPACK)"


def _import_lowering():
    """ExecuTorch's lowering entry points (imported late: the extra is optional)."""
    pytree = logging.getLogger("torch.utils._pytree")
    level = pytree.level
    # torchao (imported by ExecuTorch) registers an Enum as a pytree constant, and torch
    # logs a deprecation warning about it: not the user's to act on
    pytree.setLevel(logging.ERROR)
    try:
        with quiet_native_output():  # the CPU probe at import prints ARM-only file names
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
                XnnpackPartitioner,
            )
            from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise missing("executorch", "--format executorch", exc) from exc
    finally:
        pytree.setLevel(level)
    return XnnpackPartitioner, to_edge_transform_and_lower


def _lower(
    model: nn.Module,
    path: Path,
    example: tuple[torch.Tensor],
    metadata: dict[str, JsonValue] | None,
    calibrate: Callable[[nn.Module], nn.Module] | None = None,
) -> list[Path]:
    """torch.export -> (optionally ``calibrate``: a quantized module) -> XNNPACK -> .pte."""
    partitioner, to_edge_transform_and_lower = _import_lowering()
    try:
        with torch.no_grad(), quiet_native_output():
            exported = torch.export.export(model.eval(), example)
            if calibrate is not None:
                exported = torch.export.export(calibrate(exported.module()), example)
            program = to_edge_transform_and_lower(
                exported, partitioner=[partitioner()]
            ).to_executorch()
    except GhostnetError:
        raise
    except Exception as exc:  # torch.export / exir raise many types; one line
        raise GhostnetError(
            f"{type(model).__name__} cannot be lowered to ExecuTorch: "
            f"{str(exc).strip().splitlines()[0][:240]}"
        ) from exc
    write_bytes(path, program.buffer)
    return [path, write_sidecar(path, metadata or {})]


def export_executorch(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int],
    batch_size: int = 1,
    metadata: dict[str, JsonValue] | None = None,
) -> list[Path]:
    """``model`` lowered to XNNPACK through torch.export and written as a .pte program;
    the metadata goes beside it (``.pte.json``: a program holds no free-form strings)."""
    example = (torch.randn(batch_size, *input_size),)
    return _lower(model, Path(path), example, metadata)


def quantize_executorch(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int],
    batches: Sequence[np.ndarray],
    metadata: dict[str, JsonValue] | None = None,
) -> tuple[list[Path], dict[str, JsonValue]]:
    """Static INT8 for XNNPACK with PyTorch 2 export quantization (PT2E): torchao's
    ``prepare_pt2e`` with ExecuTorch's ``XNNPACKQuantizer`` (symmetric int8, per-channel
    weights), activation ranges observed on ``batches`` (real images, the model's eval
    preprocessing), ``convert_pt2e``, then lowered as the fp32 program is. Returns the
    files and a summary (also in the metadata beside the file)."""
    _import_lowering()  # the missing-extra message first
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as exc:
        raise missing("executorch", "--format executorch --int8", exc) from exc
    if not batches:
        raise GhostnetError("--int8 needs calibration images; none were given")
    example = (torch.from_numpy(batches[0]),)
    summary: dict[str, JsonValue] = {
        "quantizer": "XNNPACKQuantizer (PT2E), symmetric int8, per-channel weights",
        "calibration_images": sum(len(b) for b in batches),
        "calibration_batches": len(batches),
    }

    def calibrate(graph: nn.Module) -> nn.Module:
        quantizer = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True)
        )
        prepared = prepare_pt2e(graph, quantizer)
        for batch in batches:  # observers record each activation's range
            prepared(torch.from_numpy(batch))
        converted = convert_pt2e(prepared)
        summary["quantize_ops"] = sum(
            1 for n in converted.graph.nodes if "quantize_per" in str(n.target)
        )
        return converted

    metadata = {**(metadata or {}), "int8": summary}
    files = _lower(model, Path(path), example, metadata, calibrate)
    return files, summary


def set_threads(threads: int) -> None:
    """XNNPACK's thread pool is process-wide in ExecuTorch's Python runtime."""
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)


class ExecutorchSession:
    """A .pte program loaded in ExecuTorch's runtime (XNNPACK kernels for the delegated
    part, portable kernels for the rest)."""

    runtime = RUNTIME

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        try:
            with quiet_native_output():
                from executorch.runtime import Runtime
        except ImportError as exc:
            raise missing("executorch", "running a .pte file", exc) from exc
        self.path = require_file(path, "ExecuTorch program")
        try:
            with quiet_native_output():
                if threads:
                    set_threads(threads)
                program = Runtime.get().load_program(self.path)
                self.method = program.load_method("forward")
        except Exception as exc:  # the runtime raises RuntimeError/ValueError for bad files
            raise GhostnetError(
                f"{self.path}: not a loadable ExecuTorch program ({str(exc)[:160]}); "
                "export it with ghostnet export --format executorch"
            ) from exc
        self.metadata = read_sidecar(self.path)
        self._first_call = True
        meta = self.method.metadata
        self._shape = list(meta.input_tensor_meta(0).sizes())

    @property
    def input_shape(self) -> list[int | str]:
        return list(self._shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        if self._first_call:  # XNNPACK's thread pool starts here: the CPU probe prints
            self._first_call = False
            with quiet_native_output():
                (out,) = self.method.execute([x.float().contiguous()])
            return out.clone()
        (out,) = self.method.execute([x.float().contiguous()])
        return out.clone()
