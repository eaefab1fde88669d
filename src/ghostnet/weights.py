"""Safe weight files: load/save, pretrained sources with hashes, and clear mismatch reports.

Loading never unpickles arbitrary objects: ``.safetensors`` files are read with safetensors,
anything else with ``torch.load(weights_only=True)``, which refuses pickles that would
construct or call arbitrary Python objects.
"""

from __future__ import annotations

import hashlib
import logging
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
log = logging.getLogger("ghostnet")


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


# Where checkpoints keep their weights: timm's and the official GhostNetV2/V3 training
# scripts save "state_dict" and, with EMA on, "state_dict_ema"; other trainers use these.
_MODEL_KEYS = ("state_dict", "model", "model_state_dict")
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema")
# thop's profiling buffers, left in the official GhostNetV3 files
_PROFILER_KEYS = ("total_ops", "total_params")


def _tensor_mapping(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(k, str) for k in obj)


def _official_names(state: StateDict) -> StateDict:
    """Official checkpoint layouts -> ours (= timm's): drop ``module.`` prefixes and thop's
    ``total_ops``/``total_params`` buffers; the official GhostNetV3 names the BN of each
    re-parameterizable branch ``bn`` where timm and we say ``bn1``."""
    prefix = "module."
    if all(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items()}
    out: StateDict = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[-1] in _PROFILER_KEYS or key == "n_averaged":  # n_averaged: AveragedModel
            continue
        if "_rpr_" in key:
            parts = ["bn1" if p == "bn" else p for p in parts]
        out[".".join(parts)] = value
    return out


def _unwrap(obj: object, path: Path, ema: bool | None = None) -> StateDict:
    """Find the state_dict inside a checkpoint (plain, ``state_dict``/``model``/EMA keys).

    ``ema``: None takes the EMA copy when the file has one (it is the better model in the
    official V3 files), True requires it, False takes the raw weights."""
    if isinstance(obj, Mapping):
        ema_key = next((k for k in _EMA_KEYS if _tensor_mapping(obj.get(k))), None)
        if ema and ema_key is None:
            raise GhostnetError(
                f"{path}: no EMA copy in this file (looked for {', '.join(_EMA_KEYS)}); "
                "drop --ema / ema=True to load its weights"
            )
        if ema_key is not None and ema is not False:
            log.info("%s: loading the EMA weights (%s); ema=False for the raw ones", path, ema_key)
            return _unwrap(obj[ema_key], path, ema=False)
        for key in _MODEL_KEYS:
            if _tensor_mapping(obj.get(key)):
                return _unwrap(obj[key], path, ema=False)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return _official_names(tensors)
    raise GhostnetError(f"{path}: no tensors found; is this a model checkpoint?")


def safe_torch_load(path: str | os.PathLike) -> object:
    """``torch.load(weights_only=True)`` with one clear line for every way it can fail."""
    path = Path(path)
    if path.is_dir():
        best = path / "best.pt"
        hint = f" such as {best}" if best.is_file() else ""
        raise GhostnetError(f"{path} is a folder; give a checkpoint file{hint}")
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
            raise _not_a_checkpoint(path, "neither a zip archive nor a pickle") from exc
        raise GhostnetError(
            f"{path}: refused to load: the file holds pickled Python objects other than "
            "tensors and plain data, which could run code. Re-save only the state_dict "
            "(or use safetensors) from a trusted copy"
        ) from exc
    except Exception as exc:  # the unpickler meets random bytes with many error types
        raise _not_a_checkpoint(path, exc) from exc


def _not_a_checkpoint(path: Path, exc: Exception | str) -> GhostnetError:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:  # a readable header: bare weights; else the file itself is damaged
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as damaged:
            return GhostnetError(
                f"{path}: not a readable safetensors file ({damaged}); truncated or corrupt? "
                "Download or save it again"
            )
        return GhostnetError(
            f"{path}: a .safetensors file holds bare weights, not a training checkpoint; give "
            "a run's last.pt/best.pt, or rebuild the model with --model NAME --pretrained PATH "
            "where the command has them"
        )
    reason = exc if isinstance(exc, str) else (str(exc).splitlines() or [type(exc).__name__])[0]
    reason = reason[:120]
    return GhostnetError(
        f"{path}: not a readable PyTorch checkpoint ({reason}); truncated or corrupt, or "
        "another kind of file? Download or save it again"
    )


def load_state_dict_file(path: str | os.PathLike, ema: bool | None = None) -> StateDict:
    """Read a weights file safely (safetensors, or torch.load with ``weights_only=True``).

    Checkpoints holding both raw and EMA weights give the EMA copy unless ``ema=False``;
    official GhostNet/V2/V3 files are renamed to our keys (see ``_official_names``)."""
    path = Path(path)
    if not path.is_file():
        raise GhostnetError(f"weights file not found: {path}")
    if path.suffix != ".safetensors":
        return _unwrap(safe_torch_load(path), path, ema=ema)
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


def _family_hint(own: set[str], theirs: set[str]) -> str | None:
    """Name the GhostNet version mismatch (V1/V2/V3, V3 training vs deploy form, G-Ghost
    RegNet), if any; a G-Ghost stage has ``cheap`` and ``merge`` branches.

    V3 training form has ``*_rpr_*`` branches; every V3 block has ``ghost2.primary_conv.0``
    with a bias in deploy form; V2 has DFC ``short_conv`` but plain Ghost modules (BN)."""

    def kind(keys: set[str]) -> str | None:
        if any(k.endswith(".cheap.0.weight") for k in keys) and any(".merge." in k for k in keys):
            return "a G-GhostNet (RegNetX)"
        if any("_rpr_" in k for k in keys):
            return "a GhostNetV3 (training form)"
        if any(k.endswith("ghost2.primary_conv.0.bias") for k in keys):
            return "a GhostNetV3 (deploy form)"
        if any(".ghost1.short_conv." in k for k in keys):
            return "a GhostNetV2"
        if any(".ghost1.primary_conv." in k for k in keys):
            return "a GhostNet (V1)"
        return None

    mine, file = kind(own), kind(theirs)
    if mine is None or file is None or mine == file:
        return None
    fix = {
        "a GhostNetV3 (training form)": "load it into ghostnetv3_* (deploy=False)",
        "a GhostNetV3 (deploy form)": "load it into ghostnetv3_* with deploy=True",
        "a GhostNetV2": "load it into ghostnetv2_*",
        "a GhostNet (V1)": "load it into ghostnet_*",
        "a G-GhostNet (RegNetX)": "load it into g_ghost_regnetx_*",
    }[file]
    return f"the file holds {file} checkpoint but the model is {mine}; {fix}"


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
        hint = _family_hint(set(own), set(state_dict))
        if hint:
            raise GhostnetError(f"{source} does not fit {type(model).__name__}: {hint}")
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


def load_weights(model: nn.Module, path: str | os.PathLike, ema: bool | None = None) -> nn.Module:
    """Load a weights file into ``model`` (strict, with a clear report on mismatch)."""
    load_into(model, load_state_dict_file(path, ema=ema), source=str(path))
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
