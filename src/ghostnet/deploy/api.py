"""One export pipeline for every format: the deploy form (reparameterized, BN folded,
optionally rewritten), written for a runtime, checked against PyTorch on that runtime;
and ``open_exported``: any exported file back as a session, chosen by its suffix."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import GhostnetError
from ..files import check_output_file
from ..split import split_concats
from .executorch import ExecutorchSession, export_executorch, quantize_executorch
from .fusion import count_batchnorm, fuse
from .int8 import quantize_onnx
from .litert import LiteRTSession, export_litert
from .ncnn import NcnnSession, export_ncnn
from .onnx_export import OnnxSession, export_onnx, onnx_op_counts
from .runtime import JsonValue, RuntimeSession, sidecar
from .verify import Agreement, Runner, check_agreement

# format -> (file suffix, example name)
FORMATS = {
    "onnx": (".onnx", "model.onnx"),
    "executorch": (".pte", "model.pte"),
    "ncnn": (".param", "model.param"),
    "litert": (".tflite", "model.tflite"),
}
_SESSIONS: dict[str, Callable[..., RuntimeSession]] = {
    ".onnx": OnnxSession,
    ".pte": ExecutorchSession,
    ".param": NcnnSession,
    ".tflite": LiteRTSession,
}
# backend names (predict/eval/bench) -> format
BACKEND_FORMATS = {
    "onnxruntime": "onnx",
    "executorch": "executorch",
    "ncnn": "ncnn",
    "litert": "litert",
}


INT8_FORMATS = ("onnx", "executorch")  # the runtimes whose INT8 toolchain is on PyPI


@dataclass
class Int8Options:
    """Static INT8 (ONNX Runtime, or ExecuTorch's PT2E for XNNPACK): real images prepared
    by the model's eval transform. ``float_layers`` and ``method`` are ONNX Runtime's."""

    batches: Sequence[np.ndarray]
    float_layers: Sequence[str] = ()
    method: str = "minmax"


@dataclass
class ExportResult:
    """What ``export`` wrote and how well it agrees with PyTorch."""

    path: Path
    format: str
    files: list[Path]
    agreement: Agreement
    batchnorm: tuple[int, int]  # BatchNorm layers before / after folding
    ops: dict[str, int] = field(default_factory=dict)  # ONNX files: op type -> count
    int8: dict[str, JsonValue] | None = None
    int8_top1_agreement: float | None = None  # % of calibration images, INT8 vs fp32


def check_export_output(path: str | os.PathLike, fmt: str) -> Path:
    """``path`` as a writable target for ``fmt``, checked before any work: another
    format's suffix is refused (the suffix is how predict/eval pick the runtime)."""
    if fmt not in FORMATS:
        raise GhostnetError(f"unknown --format {fmt!r}: choose from {', '.join(FORMATS)}")
    suffix, example = FORMATS[fmt]
    path = check_output_file(path, "--out", example)
    other = next((f for f, (s, _) in FORMATS.items() if s == path.suffix and f != fmt), None)
    if other is not None or (fmt != "onnx" and path.suffix != suffix):
        hint = f" or add --format {other}" if other else ""
        raise GhostnetError(
            f"--out {path}: a --format {fmt} file ends in {suffix} (e.g. {example}){hint}"
        )
    return path


def deploy_form(
    model: nn.Module, input_size: Sequence[int], split: bool = False, pad_channels: int = 0
) -> nn.Module:
    """The inference graph every format is written from: V3 blocks reparameterized, BN
    folded, optionally Ghost concatenations kept apart (``split.split_concats``)."""
    deploy = fuse(model)
    if split:
        deploy = split_concats(deploy, input_size, pad_to=pad_channels)
    return deploy


def _write(
    fmt: str,
    deploy: nn.Module,
    path: Path,
    input_size: Sequence[int],
    batch_size: int,
    dynamic_batch: bool,
    opset: int | None,
    metadata: dict[str, JsonValue],
) -> list[Path]:
    if fmt == "onnx":
        export_onnx(
            deploy,
            path,
            input_size,
            batch_size=batch_size,
            dynamic_batch=dynamic_batch,
            opset=opset,
            metadata=metadata,
            verify=False,
        )
        return [path]
    if dynamic_batch:
        raise GhostnetError(f"--dynamic-batch is for --format onnx; {fmt} files have one shape")
    writer = {"executorch": export_executorch, "ncnn": export_ncnn, "litert": export_litert}
    return writer[fmt](deploy, path, input_size, batch_size, metadata)


def export(
    model: nn.Module,
    fmt: str,
    out: str | os.PathLike,
    input_size: Sequence[int],
    *,
    metadata: dict[str, JsonValue] | None = None,
    batch_size: int = 1,
    dynamic_batch: bool = False,
    opset: int | None = None,
    split: bool = False,
    pad_channels: int = 0,
    tolerance: float = 1e-4,
    int8: Int8Options | None = None,
) -> ExportResult:
    """Write ``model``'s deploy form as ``fmt`` to ``out`` and check it on its runtime.

    The check runs random inputs through the runtime and PyTorch (``verify``); a file that
    disagrees is removed and the error names the runtime and the difference. INT8 (ONNX:
    ONNX Runtime's static quantization of the checked fp32 file; ExecuTorch: PT2E with
    XNNPACKQuantizer) reports top-1 agreement with the checked fp32 file.
    """
    path = check_export_output(out, fmt)
    if int8 is not None and fmt not in INT8_FORMATS:
        raise GhostnetError(f"--int8 is built for --format {' or '.join(INT8_FORMATS)}; not {fmt}")
    if int8 is not None and fmt == "executorch" and (int8.float_layers or int8.method != "minmax"):
        raise GhostnetError(
            "--float-layers and --calibration-method are ONNX Runtime's; ExecuTorch INT8 "
            "quantizes every op XNNPACKQuantizer supports with its own observers"
        )
    if batch_size < 1:
        raise GhostnetError(f"--batch-size must be >= 1, got {batch_size}")
    model = model.eval()
    metadata = {**(metadata or {}), "input_size": list(input_size), "format": fmt}
    deploy = deploy_form(model, input_size, split, pad_channels)
    check_batch = 2 if dynamic_batch else batch_size
    opener = _SESSIONS[FORMATS[fmt][0]]

    with tempfile.TemporaryDirectory(prefix="ghostnet-export-") as tmp:
        target = Path(tmp) / f"fp32{path.suffix}" if int8 else path
        try:
            files = _write(
                fmt, deploy, target, input_size, batch_size, dynamic_batch, opset, metadata
            )
        except GhostnetError:  # a full disk mid-way: no model file without its partners
            partners = [target] if fmt == "onnx" else [target, sidecar(target)]
            if fmt == "ncnn":
                partners.append(target.with_suffix(".bin"))
            for partner in partners:
                partner.unlink(missing_ok=True)
            raise

        def recheck(settled: nn.Module) -> tuple[Runner, nn.Module]:
            """The same pipeline for a well-conditioned copy (measured BN statistics)."""
            again = Path(tmp) / f"settled{path.suffix}"
            form = deploy_form(settled, input_size, split, pad_channels)
            _write(fmt, form, again, input_size, batch_size, dynamic_batch, opset, metadata)
            return opener(again), form

        try:
            session = opener(target)
            agreement = check_agreement(
                session.runtime,
                path,
                model,
                session,
                input_size,
                check_batch,
                tolerance,
                recheck,
                deploy,
            )
        except GhostnetError:
            for file in files:
                file.unlink(missing_ok=True)
            raise
        result = ExportResult(path, fmt, files, agreement, _batchnorm(model, deploy))
        if int8 is not None and fmt == "onnx":
            result.int8 = quantize_onnx(
                target, path, int8.batches, float_layers=int8.float_layers, method=int8.method
            )
            result.int8_top1_agreement = _top1_agreement(session, OnnxSession(path), int8)
            result.files = [path]
        elif int8 is not None:
            result.files, result.int8 = quantize_executorch(
                deploy, path, input_size, int8.batches, metadata
            )
            quantized = ExecutorchSession(path)
            result.int8_top1_agreement = _top1_agreement(session, quantized, int8)
    if fmt == "onnx":
        result.ops = onnx_op_counts(path)
    return result


def _batchnorm(model: nn.Module, deploy: nn.Module) -> tuple[int, int]:
    return count_batchnorm(model), count_batchnorm(deploy)


def _top1_agreement(fp32: RuntimeSession, quantized: RuntimeSession, int8: Int8Options) -> float:
    """Percent of the calibration images whose top-1 class is the same in both files."""
    same = total = 0
    for batch in int8.batches:
        x = torch.from_numpy(batch)
        same += int((fp32(x).argmax(1) == quantized(x).argmax(1)).sum())
        total += len(batch)
    return 100.0 * same / total


def open_exported(
    path: str | os.PathLike, threads: int | None = None, backend: str | None = None
) -> RuntimeSession:
    """An exported file as a session on its runtime, chosen by suffix (.onnx: ONNX Runtime,
    .pte: ExecuTorch, .param/.bin: ncnn, .tflite: LiteRT). ``backend`` (a predict/eval
    ``--backend``) must agree with the suffix: one line when it does not."""
    path = Path(path)
    if path.suffix == ".bin":  # ncnn's weights: the graph file beside it is the model
        path = path.with_suffix(".param")
    opener = _SESSIONS.get(path.suffix)
    if opener is None:
        known = ", ".join(f"{s} ({f})" for f, (s, _) in FORMATS.items())
        raise GhostnetError(f"{path}: not an exported model file; known suffixes: {known}")
    fmt = next(f for f, (s, _) in FORMATS.items() if s == path.suffix)
    if backend is not None and backend != "torch" and BACKEND_FORMATS.get(backend) != fmt:
        wanted = BACKEND_FORMATS.get(backend, backend)
        raise GhostnetError(
            f"{path} is a --format {fmt} file; --backend {backend} runs "
            f"{FORMATS[wanted][0]} files (drop --backend: the suffix picks the runtime)"
        )
    return opener(path, threads=threads)


def metadata_file(path: str | os.PathLike) -> Path | None:
    """Where ghostnet's metadata for an exported file lives (None: inside the file)."""
    return None if Path(path).suffix == ".onnx" else sidecar(path)
