"""Safe weight files: load/save, pretrained sources with hashes, and clear mismatch reports.

Loading never unpickles arbitrary objects: ``.safetensors`` files are read with safetensors,
anything else with ``torch.load(weights_only=True)``, which refuses pickles that would
construct or call arbitrary Python objects.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import urllib.error
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import GhostnetError

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class WeightSource:
    """Where a pretrained checkpoint lives and how to recognise the right bytes."""

    url: str
    filename: str
    sha256_prefix: str  # torch.hub convention: leading hex digits of the SHA-256
    md5: str | None = None
    top1: float | None = None  # ImageNet top-1 reported by the authors
    note: str = ""


# The official GhostNet-1.0x ImageNet weights (Huawei Noah's Ark, 73.98% top-1); the
# official key layout is also timm's, so the same file loads into timm's ghostnet_100.
# Hashes as published alongside the file: the SHA-256 prefix used with torch.hub's
# check_hash and the MD5 listed in the Ascend model zoo's GhostNet guide.
PRETRAINED: dict[str, WeightSource] = {
    "ghostnet_100": WeightSource(
        url="https://github.com/huawei-noah/ghostnet/raw/master/"
        "ghostnet_pytorch/models/state_dict_73.98.pth",
        filename="ghostnet_1x_state_dict_73.98-965143b0.pth",
        sha256_prefix="965143b0",
        md5="f7241350b4486bf00accbf9c3a192331",
        top1=73.98,
    ),
}


def cache_dir() -> Path:
    """``$GHOSTNET_CACHE/weights``, else ``<torch hub dir>/checkpoints``.

    ``$GHOSTNET_CACHE`` is the root of every ghostnet cache: weights go in its ``weights/``,
    downloaded data sets in its ``data/`` (see ``ghostnet.data.data_cache_dir``)."""
    env = os.environ.get("GHOSTNET_CACHE")
    return Path(env) / "weights" if env else Path(torch.hub.get_dir()) / "checkpoints"


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, source: WeightSource) -> None:
    """Raise unless ``path`` has the SHA-256 prefix (and MD5, when known) of ``source``."""
    sha = _digest(path, "sha256")
    if not sha.startswith(source.sha256_prefix):
        raise GhostnetError(
            f"{path}: SHA-256 {sha[:16]}... does not start with {source.sha256_prefix} "
            "(corrupt or different file); delete it and download again"
        )
    if source.md5 and _digest(path, "md5") != source.md5:
        raise GhostnetError(f"{path}: MD5 differs from {source.md5}; delete it and download again")


def fetch_pretrained(name: str) -> Path:
    """Path to the verified pretrained file of model ``name``, downloading it once."""
    source = PRETRAINED.get(name)
    if source is None:
        have = ", ".join(sorted(PRETRAINED)) or "none"
        raise GhostnetError(
            f"no pretrained weights are published for {name!r} (available: {have}); "
            "pass a local file as pretrained=PATH instead"
        )
    target = cache_dir() / source.filename
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(
                source.url, str(target), hash_prefix=source.sha256_prefix, progress=True
            )
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise GhostnetError(
                f"could not download the {name} weights from {source.url} ({exc}). "
                f"Offline? Fetch that file elsewhere and pass it as a local file: "
                f"create_model('{name}', pretrained='PATH') or --pretrained PATH "
                f"(or put it at {target})"
            ) from exc
        except RuntimeError as exc:  # hash mismatch from torch.hub
            raise GhostnetError(f"download of {source.url} failed verification: {exc}") from exc
    verify(target, source)
    return target


def _unwrap(obj: object, path: Path) -> StateDict:
    """Find the state_dict inside a checkpoint (plain, ``state_dict``/``model``/``ema`` keys)."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
                return _unwrap(inner, path)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            prefix = "module."
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
            return tensors
    raise GhostnetError(f"{path}: no tensors found; is this a model checkpoint?")


def safe_torch_load(path: str | os.PathLike) -> object:
    """``torch.load(weights_only=True)`` with one clear line for every way it can fail."""
    path = Path(path)
    if not path.is_file():
        raise GhostnetError(f"file not found: {path}")
    if path.stat().st_size == 0:
        raise GhostnetError(f"{path}: file is empty (0 bytes); download or save it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        with open(path, "rb") as f:
            head = f.read(4)
        # a torch.save file is a zip archive (or, in the legacy format, a pickle, which
        # starts with the protocol opcode 0x80); anything else is not a checkpoint at all
        if not (head.startswith(b"PK") or head[:1] == b"\x80"):
            raise _not_a_checkpoint(path, exc) from exc
        raise GhostnetError(
            f"{path}: refused to load: the file holds pickled Python objects other than "
            "tensors and plain data, which could run code. Re-save only the state_dict "
            "(or use safetensors) from a trusted copy"
        ) from exc
    except Exception as exc:  # the unpickler meets random bytes with many error types
        raise _not_a_checkpoint(path, exc) from exc


def _not_a_checkpoint(path: Path, exc: Exception) -> GhostnetError:
    reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
    return GhostnetError(
        f"{path}: not a readable PyTorch checkpoint ({reason}); truncated or corrupt, or "
        "another kind of file? Download or save it again"
    )


def load_state_dict_file(path: str | os.PathLike) -> StateDict:
    """Read a weights file safely (safetensors, or torch.load with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise GhostnetError(f"weights file not found: {path}")
    if path.suffix != ".safetensors":
        return _unwrap(safe_torch_load(path), path)
    if path.stat().st_size == 0:
        raise GhostnetError(f"{path}: file is empty (0 bytes); download or save it again")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise GhostnetError(
            f"{path}: not a readable safetensors file ({exc}); truncated or corrupt?"
        ) from exc


def _preview(items: Iterable[str], limit: int = 6) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def load_into(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """``load_state_dict(strict=True)`` with one clear message when it does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_preview(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches: {_preview(mismatched, 3)}")
        raise GhostnetError(
            f"{source} does not fit {type(model).__name__} (a checkpoint of another "
            f"architecture or class count?): " + "; ".join(parts)
        )
    model.load_state_dict(state_dict, strict=True)


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a weights file into ``model`` (strict, with a clear report on mismatch)."""
    load_into(model, load_state_dict_file(path), source=str(path))
    return model


def save_weights(
    model: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a state_dict as safetensors (tensors made contiguous, shared storage split)."""
    from safetensors.torch import save_file

    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    return path
