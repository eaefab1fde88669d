"""Inference latency/throughput harness: same weights across backends, warm-up, interleaved
repeats, medians, and the machine/library versions with every record.

Backends: ``eager`` (the model as built, PyTorch), ``fused`` (BN folded, channels_last,
PyTorch), ``onnxruntime`` and ``openvino`` (both run the ONNX export of the fused model).
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .deploy import OnnxSession, export_onnx, fuse
from .errors import GhostnetError
from .models import create_model, default_input_size, list_models
from .split import split_concats

BACKENDS = ("eager", "fused", "onnxruntime", "openvino")
# "-split" variants run the deploy form with Ghost concatenations kept apart (ghostnet.split)
SPLIT_SUFFIX = "-split"

# Bare peer names resolve to these (timm's when installed, else torchvision's).
ALIASES = {
    "mobilenetv3_large_100": ("timm:mobilenetv3_large_100", "torchvision:mobilenet_v3_large"),
    "mobilenet_v3_large": ("torchvision:mobilenet_v3_large",),
    "resnet50": ("torchvision:resnet50",),
}


@dataclass
class BenchRecord:
    """One (model, backend, batch) measurement."""

    model: str
    backend: str
    batch: int
    median_ms: float
    min_ms: float
    max_ms: float
    images_per_s: float
    threads: int
    repeats: int
    macs: int | None = None


def resolve_model(name: str) -> str:
    """Registered names stay; bare peer names become ``timm:``/``torchvision:`` names."""
    if ":" in name or name in list_models():
        return name
    for candidate in ALIASES.get(name, ()):
        if candidate.startswith("timm:"):
            try:
                import timm  # noqa: F401
            except ImportError:
                continue
        return candidate
    import torchvision

    if name in torchvision.models.list_models():
        return f"torchvision:{name}"
    create_model(name)  # raises the usual unknown-model error with close matches
    return name


def machine_info() -> dict[str, Any]:
    """Versions and hardware, stored with every benchmark."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "logical_cpus": _cpu_count(),
    }
    for module in ("onnxruntime", "openvino", "timm", "torchvision"):
        try:
            info[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            info[module] = None
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


def _openvino_runner(onnx_path: Path, threads: int) -> Callable[[torch.Tensor], Any]:
    try:
        import openvino as ov
    except ImportError as exc:
        raise GhostnetError("the openvino backend needs: pip install openvino") from exc
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(onnx_path)),
        "CPU",
        {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        },
    )
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        (out,) = request.infer({0: x.numpy()}).values()
        return torch.from_numpy(out)

    return run


def build_runner(
    model: nn.Module,
    backend: str,
    input_size: Sequence[int],
    batch: int,
    threads: int,
    workdir: Path,
) -> Callable[[torch.Tensor], Any]:
    """A callable that runs one batch on ``backend`` (models built once, weights shared)."""
    base, split = _parse_backend(backend)
    if base == "eager":
        model = model.eval()

        def run_eager(x: torch.Tensor) -> Any:
            with torch.inference_mode():
                return model(x)

        return run_eager
    deploy = fuse(model)
    if split:
        deploy = split_concats(deploy, input_size)
    if base == "fused":
        deploy = deploy.to(memory_format=torch.channels_last)

        def run_fused(x: torch.Tensor) -> Any:
            with torch.inference_mode():
                return deploy(x.contiguous(memory_format=torch.channels_last))

        return run_fused
    path = workdir / f"{id(model)}_b{batch}{'_split' if split else ''}.onnx"
    if not path.exists():
        export_onnx(deploy, path, input_size, batch_size=batch, reference=model)
    if base == "onnxruntime":
        return OnnxSession(path, threads=threads)
    return _openvino_runner(path, threads)


def _parse_backend(backend: str) -> tuple[str, bool]:
    split = backend.endswith(SPLIT_SUFFIX)
    base = backend[: -len(SPLIT_SUFFIX)] if split else backend
    if base not in BACKENDS or (split and base == "eager"):
        choices = ", ".join([*BACKENDS, *(b + SPLIT_SUFFIX for b in BACKENDS[1:])])
        raise GhostnetError(f"unknown backend {backend!r}: choose from {choices}")
    return base, split


def _check_same_outputs(model: nn.Module, x: torch.Tensor, out: Any, label: str) -> None:
    """Every backend must compute the same function as the eager model (same weights)."""
    with torch.inference_mode():
        expected = model.eval()(x)
    diff = (torch.as_tensor(out).float() - expected).abs().max().item()
    if diff > 1e-3 * max(1.0, expected.abs().max().item()):
        raise GhostnetError(f"{label}: output differs from eager PyTorch by {diff:.3g}")


def run_benchmark(
    models: Sequence[str],
    batch_sizes: Sequence[int] = (1, 16),
    backends: Sequence[str] = ("eager", "onnxruntime"),
    threads: int = 2,
    repeats: int = 20,
    warmup: int = 3,
    input_size: Sequence[int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[BenchRecord]:
    """Measure every (model, backend) per batch size, interleaving the runs."""
    from .profile import profile

    for backend in backends:
        _parse_backend(backend)
    torch.set_num_threads(threads)
    names = [resolve_model(m) for m in models]
    built: dict[str, tuple[nn.Module, tuple[int, ...], int]] = {}
    for name in names:
        torch.manual_seed(0)
        model = create_model(name).eval()
        size = tuple(input_size or default_input_size(name))
        built[name] = (model, size, profile(model, size).macs)
    records: list[BenchRecord] = []
    with tempfile.TemporaryDirectory(prefix="ghostnet-bench-") as tmp:
        for batch in batch_sizes:
            runners = []
            for name in names:
                model, size, macs = built[name]
                for backend in backends:
                    if progress:
                        progress(f"preparing {name} / {backend} / batch {batch}")
                    runner = build_runner(model, backend, size, batch, threads, Path(tmp))
                    x = torch.randn(batch, *size, generator=torch.Generator().manual_seed(batch))
                    for _ in range(warmup):
                        out = runner(x)
                    _check_same_outputs(model, x, out, f"{name} / {backend}")
                    runners.append((name, backend, runner, x, macs))
            times: dict[tuple[str, str], list[float]] = {(n, b): [] for n, b, *_ in runners}
            for _ in range(repeats):  # interleaved: drift and noise hit every runner alike
                for name, backend, runner, x, _macs in runners:
                    # one untimed call first: the previous runtime's thread pool may still be
                    # spinning for a moment and would otherwise be charged to this runner
                    runner(x)
                    start = time.perf_counter()
                    runner(x)
                    times[(name, backend)].append((time.perf_counter() - start) * 1e3)
            for name, backend, _runner, _x, macs in runners:
                t = times[(name, backend)]
                median = statistics.median(t)
                records.append(
                    BenchRecord(
                        name,
                        backend,
                        batch,
                        median,
                        min(t),
                        max(t),
                        1e3 * batch / median,
                        threads,
                        repeats,
                        macs,
                    )
                )
    return records


def format_records(records: list[BenchRecord]) -> str:
    """The bench table: ms and img/s per (model, backend, batch)."""
    header = (
        f"{'model':<32} {'backend':<12} {'batch':>5} {'median ms':>10} {'min ms':>8} "
        f"{'img/s':>8} {'GMACs':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in records:
        gmacs = f"{r.macs / 1e9:.2f}" if r.macs else "-"
        lines.append(
            f"{r.model:<32} {r.backend:<12} {r.batch:>5} {r.median_ms:>10.2f} "
            f"{r.min_ms:>8.2f} {r.images_per_s:>8.1f} {gmacs:>6}"
        )
    return "\n".join(lines)


def fastest(
    records: list[BenchRecord], model: str, batch: int, backends: Sequence[str] | None = None
) -> BenchRecord | None:
    rows = [
        r
        for r in records
        if r.model == model and r.batch == batch and (backends is None or r.backend in backends)
    ]
    return min(rows, key=lambda r: r.median_ms) if rows else None


def records_as_dicts(records: list[BenchRecord]) -> list[dict[str, Any]]:
    info = machine_info()
    return [{**asdict(r), "machine": info} for r in records]
