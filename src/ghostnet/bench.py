"""Inference latency/throughput harness: same weights across backends, warm-up, interleaved
repeats, medians, and the machine/library versions (CPU flags included) with every record.

Backends: ``eager`` (the model as built, PyTorch), ``fused`` (BN folded, channels_last,
PyTorch), ``compile`` (the fused model through torch.compile with frozen weights),
``onnxruntime`` and ``openvino`` (both run the ONNX export of the fused model; ONNX Runtime
with its idle threads not spinning, so interleaved sessions do not steal each other's
cores), ``executorch`` (XNNPACK-delegated .pte), ``ncnn`` (pnnx) and ``litert`` (.tflite,
XNNPACK delegate): each runs the file ``ghostnet export --format`` writes, with the bench's
thread count as the runtime's own thread setting. Suffixes:
``-split`` (Ghost concatenations kept apart, ghostnet.split), ``-pad`` (split, and every
part padded to the CPU's blocked-layout width: 16 channels with AVX-512, else 8),
``-kernel`` (``fused``/``compile`` only: each Ghost module's cheap op and concat run as one
hand-written CPU kernel, ghostnet.kernels), ``-bf16`` (bfloat16 weights and activations:
torch backends and OpenVINO, on CPUs with AVX512-BF16/AMX) and ``-int8`` (ONNX Runtime
static INT8 of the export, run by ``onnxruntime`` or ``openvino``).
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

from .deploy import (
    FORMATS,
    OnnxSession,
    export,
    export_onnx,
    fuse,
    open_exported,
    quantize_onnx,
    settle_batchnorm,
)
from .errors import GhostnetError
from .kernels import fuse_cheap_ops
from .models import create_model, default_input_size, list_models
from .reparam import reparameterize
from .split import split_concats

BACKENDS = ("eager", "fused", "compile", "onnxruntime", "openvino", "executorch", "ncnn", "litert")
# backends that run a file written by deploy.export in another format than ONNX
_FILE_BACKENDS = {"executorch": "executorch", "ncnn": "ncnn", "litert": "litert"}
# "-split" variants run the deploy form with Ghost concatenations kept apart (ghostnet.split)
SPLIT_SUFFIX = "-split"
# "-pad" variants split and also pad every part to a multiple of the runtime's channel block
PAD_SUFFIX = "-pad"
# "-kernel" variants (fused/compile, fp32 or bf16) run Ghost cheap op + concat as one C++ kernel
KERNEL_SUFFIX = "-kernel"
PRECISION_SUFFIXES = ("-bf16", "-int8")
_BF16_BACKENDS = ("eager", "fused", "compile", "openvino")
_INT8_BACKENDS = ("onnxruntime", "openvino")
# the CPU features that decide which reduced-precision kernels run
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")

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
        "cpu_flags": cpu_flags(),
    }
    for module in ("onnxruntime", "openvino", "timm", "torchvision"):
        try:
            info[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            info[module] = None
    return info


def cpu_flags() -> list[str]:
    """The reduced-precision-relevant flags of this CPU (from /proc/cpuinfo, as lscpu)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [f for f in CPU_FEATURES if f in present]
    except OSError:
        pass
    return []


def has_bf16() -> bool:
    """Native bf16 matmul/conv on this CPU (AVX512-BF16 or AMX-BF16)."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def require_bf16() -> None:
    """One clear line where bf16 would only be emulated (slower than fp32, not faster)."""
    if not has_bf16():
        raise GhostnetError(
            f"bf16 needs a CPU with avx512_bf16 or amx_bf16 (this {_cpu_name()} has "
            f"{', '.join(cpu_flags()) or 'neither'}); use --precision fp32 here"
        )


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


def _openvino_runner(
    onnx_path: Path, threads: int, precision: str = "fp32"
) -> Callable[[torch.Tensor], Any]:
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
            # an INT8 (QDQ) file runs its int8 kernels under either hint
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        },
    )
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        (out,) = request.infer({0: x.numpy()}).values()
        return torch.from_numpy(out)

    return run


def compile_for_inference(module: nn.Module) -> nn.Module:
    """torch.compile (inductor) with frozen weights: constants folded, conv weights
    pre-packed into oneDNN's blocked layout once instead of at every call."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(module, dynamic=False)


def build_runner(
    model: nn.Module,
    backend: str,
    input_size: Sequence[int],
    batch: int,
    threads: int,
    workdir: Path,
) -> Callable[[torch.Tensor], Any]:
    """A callable that runs one batch on ``backend`` (models built once, weights shared)."""
    base, layout, precision = _parse_backend(backend)
    if precision == "bf16":
        require_bf16()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if base == "eager":
        model = model.eval()
        eager = model if dtype == torch.float32 else copy_to(model, dtype)

        def run_eager(x: torch.Tensor) -> Any:
            with torch.inference_mode():
                return eager(x.to(dtype))

        return run_eager
    if base in _FILE_BACKENDS:
        fmt = _FILE_BACKENDS[base]
        suffix = FORMATS[fmt][0]
        path = workdir / f"{id(model)}_b{batch}{'_' + layout if layout else ''}{suffix}"
        if not path.exists():
            pad_to = channel_block() if layout == "pad" else 0
            export(
                model,
                fmt,
                path,
                input_size,
                batch_size=batch,
                split=bool(layout),
                pad_channels=pad_to,
            )
        return open_exported(path, threads=threads)
    deploy = fuse(model)
    if layout == "kernel":
        deploy = fuse_cheap_ops(deploy)
    elif layout:
        pad_to = channel_block() if layout == "pad" else 0
        deploy = split_concats(deploy, input_size, pad_to=pad_to)
    if base in ("fused", "compile"):
        deploy = deploy.to(dtype=dtype, memory_format=torch.channels_last)
        if base == "compile":
            deploy = compile_for_inference(deploy)

        def run_fused(x: torch.Tensor) -> Any:
            with torch.inference_mode():
                return deploy(x.to(dtype).contiguous(memory_format=torch.channels_last))

        return run_fused
    path = workdir / f"{id(model)}_b{batch}{'_' + layout if layout else ''}.onnx"
    if not path.exists():
        export_onnx(deploy, path, input_size, batch_size=batch, reference=model)
    if precision == "int8":
        int8_path = path.with_suffix(".int8.onnx")
        if not int8_path.exists():
            # speed only: random calibration sets the scales, not the kernels that run; for
            # accuracy, export --int8 with real images and measure with eval
            generator = torch.Generator().manual_seed(0)
            batches = [torch.randn(batch, *input_size, generator=generator).numpy()]
            quantize_onnx(path, int8_path, batches)
        path = int8_path
    if base == "onnxruntime":
        return OnnxSession(path, threads=threads, spinning=False)
    return _openvino_runner(path, threads, precision)


def copy_to(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(dtype)


def channel_block() -> int:
    """Channels per block of ONNX Runtime's NCHWc layout on this CPU (MLAS: 16 with
    AVX-512, 8 with AVX2): what ``-pad`` pads every part to."""
    return 16 if "avx512f" in cpu_flags() else 8


def _parse_backend(backend: str) -> tuple[str, str, str]:
    """``base[-split|-pad|-kernel][-bf16|-int8]`` -> (base, layout: "", "split", "pad" or
    "kernel", precision)."""
    rest, precision = backend, "fp32"
    for suffix in PRECISION_SUFFIXES:
        if rest.endswith(suffix):
            rest, precision = rest[: -len(suffix)], suffix[1:]
    layout = ""
    for suffix in (SPLIT_SUFFIX, PAD_SUFFIX, KERNEL_SUFFIX):
        if rest.endswith(suffix):
            rest, layout = rest[: -len(suffix)], suffix[1:]
            break  # one layout at most: "-pad" already splits
    base = rest
    ok = base in BACKENDS and not (layout and base == "eager")
    ok = ok and (layout != "kernel" or (base in ("fused", "compile") and precision != "int8"))
    ok = ok and (
        precision == "fp32"
        or (precision == "bf16" and base in _BF16_BACKENDS)
        or (precision == "int8" and base in _INT8_BACKENDS)
    )
    if not ok:
        raise GhostnetError(
            f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}, with "
            f"{SPLIT_SUFFIX} or {PAD_SUFFIX} (not eager), {KERNEL_SUFFIX} (fused and compile), "
            f"-bf16 ({', '.join(_BF16_BACKENDS)}) or -int8 "
            f"({', '.join(_INT8_BACKENDS)}), e.g. compile-bf16, onnxruntime-int8, fused-kernel"
        )
    return base, layout, precision


def _check_same_outputs(
    model: nn.Module, x: torch.Tensor, out: Any, label: str, precision: str = "fp32"
) -> None:
    """Every backend must compute the same function as the eager model (same weights);
    reduced precision within a looser bound (bf16 keeps 8 bits of mantissa; int8 with
    random calibration data is checked for shape and finiteness only)."""
    with torch.inference_mode():
        expected = model.eval()(x)
    out = torch.as_tensor(out).float()
    if out.shape != expected.shape or not torch.isfinite(out).all():
        raise GhostnetError(f"{label}: output shape {tuple(out.shape)} or values are wrong")
    if precision == "int8":
        return
    diff = (out - expected).abs().max().item()
    limit = {"fp32": 1e-3, "bf16": 0.25}[precision]
    if diff > limit * max(1.0, expected.abs().max().item()):
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
    from .counting import profile

    for backend in backends:
        _parse_backend(backend)
    torch.set_num_threads(threads)
    names = [resolve_model(m) for m in models]
    built: dict[str, tuple[nn.Module, tuple[int, ...], int]] = {}
    for name in names:
        torch.manual_seed(0)
        size = tuple(input_size or default_input_size(name))
        # an inference benchmark times the deploy architecture: a re-parameterizable net
        # (GhostNetV3) runs, and has its MACs counted, folded on every backend, eager too
        model = reparameterize(settle_batchnorm(create_model(name), size))
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
                    precision = _parse_backend(backend)[2]
                    _check_same_outputs(model, x, out, f"{name} / {backend}", precision)
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
