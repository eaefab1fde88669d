"""LiteRT export (litert-torch: torch.export -> .tflite) and its interpreter session
(XNNPACK delegate). Its converter is a large install: ``ghostnet[litert]`` is kept out of
``ghostnet[all]``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import GhostnetError
from ..safe_io import atomic_path
from .runtime import JsonValue, check_input, missing, read_sidecar, require_file, write_sidecar

RUNTIME = "LiteRT (XNNPACK)"


def export_litert(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int],
    batch_size: int = 1,
    metadata: dict[str, JsonValue] | None = None,
) -> list[Path]:
    """``model`` converted by litert-torch to a .tflite flatbuffer (NCHW input kept), with
    the metadata beside it (``.tflite.json``)."""
    try:
        import litert_torch
    except ImportError as exc:
        raise missing("litert", "--format litert", exc) from exc
    path = Path(path)
    example = (torch.randn(batch_size, *input_size),)
    try:
        converted = litert_torch.convert(model.eval(), example)
    except Exception as exc:  # the converter raises many types; one line
        raise GhostnetError(
            f"{type(model).__name__} cannot be converted to LiteRT: "
            f"{str(exc).strip().splitlines()[0][:240]}"
        ) from exc
    with atomic_path(path) as tmp:
        converted.export(str(tmp))
    return [path, write_sidecar(path, metadata or {})]


class LiteRTSession:
    """A .tflite file in LiteRT's interpreter (its default XNNPACK delegate)."""

    runtime = RUNTIME

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise missing("litert", "running a .tflite file", exc) from exc
        self.path = require_file(path, "LiteRT .tflite")
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads or 1)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise GhostnetError(
                f"{self.path}: not a loadable .tflite model ({str(exc)[:160]}); export it "
                "with ghostnet export --format litert"
            ) from exc
        self.metadata = read_sidecar(self.path)
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]

    @property
    def input_shape(self) -> list[int | str]:
        return [int(s) for s in self._input["shape"]]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        self.interpreter.set_tensor(self._input["index"], x.float().numpy())
        self.interpreter.invoke()
        return torch.from_numpy(self.interpreter.get_tensor(self._output["index"]).copy())
