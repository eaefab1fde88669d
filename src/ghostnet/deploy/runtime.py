"""What every exported-file runtime shares: the session protocol, metadata beside a file
whose format has no place for it, the missing-extra line, and a batch adapter for eval."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..errors import GhostnetError
from ..safe_io import write_text

JsonValue = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]


class RuntimeSession(Protocol):
    """A loaded exported file: ``session(batch) -> logits`` on its runtime."""

    path: Path
    runtime: str
    metadata: dict[str, JsonValue]

    @property
    def input_shape(self) -> list[int | str]: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@contextlib.contextmanager
def quiet_native_output(into: Path | None = None) -> Iterator[None]:
    """Silence what native converters and runtimes print straight to the process's
    stdout/stderr (pnnx's pass log, ExecuTorch's CPU probe about ARM-only files on x86):
    progress chatter, not errors, and a CLI's output should not carry it. ``into``: a file
    that keeps it (to find the reason when a conversion fails). Python's own streams are
    swapped too: ExecuTorch's bindings write their log through sys.stderr, which is not
    file descriptor 2 when the caller has replaced it (a test's capture, a notebook)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(into or os.devnull, "wb") as null, open(os.devnull, "w") as text:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def missing(extra: str, what: str, exc: ImportError) -> GhostnetError:
    """The one line for a runtime that is not installed, naming the extra to install."""
    return GhostnetError(
        f"{what} needs the {extra} runtime ({exc.name or extra} is not importable): "
        f"pip install 'ghostnet[{extra}]'"
    )


def sidecar(path: str | os.PathLike) -> Path:
    """The metadata file beside ``path`` (``model.pte`` -> ``model.pte.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_sidecar(path: str | os.PathLike, metadata: dict[str, JsonValue]) -> Path:
    return write_text(sidecar(path), json.dumps(metadata, indent=1) + "\n")


def read_sidecar(path: str | os.PathLike) -> dict[str, JsonValue]:
    """The metadata written beside ``path`` by ``ghostnet export`` ({} when there is none)."""
    side = sidecar(path)
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GhostnetError(f"{side}: unreadable metadata ({exc}); export the model again") from exc
    if not isinstance(data, dict):
        raise GhostnetError(f"{side}: not ghostnet metadata; export the model again")
    return data


def require_file(path: str | os.PathLike, kind: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise GhostnetError(f"{kind} file not found: {path}")
    return path


class RuntimeClassifier(nn.Module):
    """An exported file as a module for ``engine.evaluate``: batches of any size, padded
    (then trimmed) or chunked to a fixed-batch export's size."""

    def __init__(self, session: RuntimeSession) -> None:
        super().__init__()
        self.session = session
        fixed = session.input_shape[0]
        self.fixed_batch = fixed if isinstance(fixed, int) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_batch is None:
            return self.session(x.float())
        step, outputs = self.fixed_batch, []
        for start in range(0, len(x), step):
            chunk = x[start : start + step].float()
            count = len(chunk)
            if count < step:  # repeat the last image to fill the fixed batch
                chunk = torch.cat([chunk, chunk[-1:].expand(step - count, -1, -1, -1)])
            outputs.append(self.session(chunk)[:count])
        return torch.cat(outputs)


def check_input(session: RuntimeSession, x: torch.Tensor) -> None:
    """One line when a batch does not fit the shape the file was exported for."""
    expected = session.input_shape
    ok = len(expected) == x.ndim and all(
        not isinstance(e, int) or e == s for e, s in zip(expected, x.shape)
    )
    if not ok:
        hint = ""
        if len(expected) == x.ndim and expected[1:] == list(x.shape[1:]):
            hint = f"; re-export with --batch-size {x.shape[0]}"
        raise GhostnetError(
            f"{session.path.name} expects input {expected}, got {list(x.shape)}{hint}"
        )
