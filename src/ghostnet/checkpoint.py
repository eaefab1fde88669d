"""Training checkpoints: atomic writes, safe reads, and rebuilding the model they record.

A checkpoint is a dict of tensors and plain data (no pickled classes), so it loads with
``torch.load(weights_only=True)``. It records the model (``ModelSpec``), the class names
and the data preset, so evaluation and prediction need no other flag.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import Preset
from .errors import GhostnetError
from .models import ModelSpec
from .safe_io import save_torch
from .weights import load_into, safe_torch_load

FORMAT = "ghostnet-checkpoint/1"


def atomic_save(obj: Any, path: str | os.PathLike, survived: str | None = None) -> Path:
    """torch.save to a temp file in the same folder, fsync, then rename (safe_io.save_torch).

    A kill at any moment leaves either the previous file or the new one, never a torn file;
    disk full, read-only or permission errors become one line naming the path and
    ``survived`` (what is still intact).
    """
    return save_torch(obj, path, survived)


def remove_stale_temp_files(folder: str | os.PathLike) -> None:
    """Delete temp files a killed writer left behind (never the checkpoints themselves)."""
    for tmp in Path(folder).glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a ghostnet training checkpoint safely; other files get a clear error."""
    data = safe_torch_load(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise GhostnetError(
            f"{path}: not a ghostnet training checkpoint (no '{FORMAT}' record); a file of bare "
            "weights needs its architecture: `ghostnet export --model NAME --pretrained PATH`, "
            "or ghostnet.create_model(NAME, pretrained=PATH) in Python"
        )
    return data


def evaluation_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights that were evaluated: the EMA average when the run kept one."""
    ema = checkpoint.get("ema")
    if ema:
        prefix = "module."
        return {k[len(prefix) :]: v for k, v in ema.items() if k.startswith(prefix)}
    return checkpoint["model"]


def model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the recorded model, load its evaluation weights, return (model, checkpoint)."""
    checkpoint = read_checkpoint(path)
    spec = ModelSpec.from_dict(checkpoint["model_spec"])
    model = spec.build()
    load_into(model, evaluation_weights(checkpoint), source=str(path))
    return model.eval(), checkpoint


def checkpoint_preset(checkpoint: dict[str, Any]) -> Preset:
    return Preset.from_dict(checkpoint["preset"])


def checkpoint_task(checkpoint: dict[str, Any]) -> str:
    """The task a checkpoint was trained for; files written before the field existed are
    classification checkpoints."""
    return str(checkpoint.get("task") or "classification")


def read_init_weights(source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``--init-weights``: (the weights, the training checkpoint they came from or None for
    a plain weights file). A checkpoint gives the weights it was evaluated with (EMA)."""
    from .weights import load_state_dict_file

    path = Path(source).expanduser()
    if not path.is_file():
        raise GhostnetError(f"--init-weights: file not found: {path}")
    data = safe_torch_load(path) if path.suffix != ".safetensors" else None
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return evaluation_weights(data), data
    return load_state_dict_file(path), None
