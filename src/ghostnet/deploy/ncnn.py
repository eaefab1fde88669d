"""ncnn export (pnnx: TorchScript -> NAME.param + NAME.bin) and its runtime session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import GhostnetError
from ..safe_io import atomic_path
from .runtime import (
    JsonValue,
    missing,
    quiet_native_output,
    read_sidecar,
    require_file,
    write_sidecar,
)

RUNTIME = "ncnn"


def weights_file(param: Path) -> Path:
    return param.with_suffix(".bin")


def export_ncnn(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int],
    batch_size: int = 1,
    metadata: dict[str, JsonValue] | None = None,
) -> list[Path]:
    """``model`` converted by pnnx to ``path`` (NAME.param: the graph) and NAME.bin (the
    weights), with the metadata beside them (NAME.param.json). ncnn runs one image a
    call: the batch size only shapes the trace."""
    try:
        import pnnx
    except ImportError as exc:
        raise missing("ncnn", "--format ncnn", exc) from exc
    path = Path(path)
    example = torch.randn(1, *input_size)
    with tempfile.TemporaryDirectory(prefix="ghostnet-pnnx-") as tmp:
        traced = Path(tmp) / "model.pt"
        param, weights = Path(tmp) / "model.ncnn.param", Path(tmp) / "model.ncnn.bin"
        try:
            with quiet_native_output(Path(tmp) / "pnnx.log"):
                # fp16=False: pnnx stores weights in fp16 by default (~1e-3 off a float32
                # model's outputs); the file is checked against PyTorch in float32
                pnnx.export(model.eval(), str(traced), (example,), fp16=False)
        except Exception as exc:  # pnnx raises RuntimeError / tracer errors
            # pnnx.export ends by importing the Python model it generated, which fails for
            # module names that are not identifiers (torchvision RegNet's `block1-0`); the
            # ncnn files are complete by then, and the runtime check below judges them
            if not (param.is_file() and weights.is_file()):
                raise GhostnetError(
                    f"{type(model).__name__} cannot be converted by pnnx: "
                    f"{str(exc).strip().splitlines()[0][:240]}"
                ) from exc
        if not param.is_file() or not weights.is_file():
            unsupported = [
                line.strip()
                for line in (Path(tmp) / "pnnx.log").read_text(errors="replace").splitlines()
                if "not supported" in line
            ]
            raise GhostnetError(
                f"pnnx could not convert {type(model).__name__} to ncnn"
                + (f": {unsupported[0][:200]}" if unsupported else "")
            )
        _not_lowered(param)
        written: list[Path] = []
        try:
            for source, target in ((weights, weights_file(path)), (param, path)):
                with atomic_path(target) as out:
                    shutil.copyfile(source, out)
                written.append(target)
        except GhostnetError:  # a .bin without its .param (or the reverse) is no model
            for target in written:
                target.unlink(missing_ok=True)
            raise
    return [path, weights_file(path), write_sidecar(path, metadata or {})]


def _not_lowered(param: Path) -> None:
    """pnnx writes ops ncnn has no layer for under their torch names (``aten::...``,
    ``F.``, ``torch.``, ``pnnx.``): the file would not load; name the first such op."""
    for line in param.read_text().splitlines()[2:]:
        kind = line.split(maxsplit=1)[0] if line.strip() else ""
        if kind.startswith(("aten::", "F.", "torch.", "Tensor.", "nn.", "pnnx.")):
            raise GhostnetError(
                f"ncnn has no layer for {kind} (pnnx left it unconverted); rewrite that "
                "op or export to another format"
            )


class NcnnSession:
    """An ncnn Net from NAME.param + NAME.bin; runs a batch one image at a time."""

    runtime = RUNTIME

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        try:
            import ncnn
        except ImportError as exc:
            raise missing("ncnn", "running an ncnn model", exc) from exc
        self.path = require_file(path, "ncnn .param")
        weights = require_file(weights_file(self.path), "ncnn .bin")
        self.metadata = read_sidecar(self.path)
        self.net = ncnn.Net()
        self.net.opt.num_threads = threads or 1  # ncnn's default is every core
        # float32 throughout: ncnn stores and computes in fp16/bf16 where the CPU has it,
        # which a float32 model's check (and its accuracy) would not survive unannounced
        self.net.opt.use_fp16_packed = False
        self.net.opt.use_fp16_storage = False
        self.net.opt.use_fp16_arithmetic = False
        self.net.opt.use_bf16_storage = False
        if self.net.load_param(str(self.path)) != 0 or self.net.load_model(str(weights)) != 0:
            raise GhostnetError(
                f"{self.path}: not a loadable ncnn model (NAME.param with NAME.bin beside "
                "it); export it with ghostnet export --format ncnn"
            )
        self._ncnn = ncnn
        size = self.metadata.get("input_size")
        self._shape: list[int | str] = ["N", *size] if isinstance(size, list) else ["N"]
        self._in, self._out = self.net.input_names()[0], self.net.output_names()[0]

    @property
    def input_shape(self) -> list[int | str]:
        return list(self._shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for image in x.float().numpy():
            pixels = image.copy()  # ncnn.Mat borrows the array: it must outlive the call
            with self.net.create_extractor() as extractor:
                extractor.input(self._in, self._ncnn.Mat(pixels))
                _, out = extractor.extract(self._out)
                outputs.append(torch.from_numpy(np.array(out)).reshape(-1))
        return torch.stack(outputs)
