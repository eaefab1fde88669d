"""Model registry: ``create_model`` / ``list_models``, plus ``torchvision:NAME`` and
``timm:NAME`` for any model of those libraries, and :class:`ModelSpec`, the plain-data
record (name, kwargs, ghostify options) from which checkpoints rebuild their model.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ..convert import ghostify as ghostify_model
from ..errors import GhostnetError
from ..weights import fetch_pretrained, load_into, load_state_dict_file
from .features import OUTPUT_STRIDES, features_from_model, timm_features

log = logging.getLogger("ghostnet")

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: its builder and the defaults a user needs to run it."""

    name: str
    builder: Builder
    input_size: tuple[int, int, int]
    num_classes: int
    classifier: str  # state_dict prefix of the classification layer (dropped on class change)
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register(
    name: str,
    *,
    input_size: tuple[int, int, int],
    num_classes: int,
    classifier: str,
    description: str,
) -> Callable[[Builder], Builder]:
    """Decorator adding a builder to the registry under ``name``."""

    def add(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(
            name, builder, input_size, num_classes, classifier, description
        )
        return builder

    return add


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by an ``fnmatch`` pattern (``"ghost*"``)."""
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; unknown names raise an error listing close matches."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise GhostnetError(_unknown(name, list(_REGISTRY), "ghostnet.list_models()"))


def _unknown(name: str, known: list[str], where: str) -> str:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown model {name!r}{hint} (see {where} for all names)"


def default_input_size(name: str) -> tuple[int, int, int]:
    """The input size a model is meant for (CIFAR models 32x32, ImageNet models 224x224)."""
    return _REGISTRY[name].input_size if name in _REGISTRY else (3, 224, 224)


def _bad_kwargs(name: str, kwargs: dict[str, Any], exc: Exception) -> GhostnetError:
    if isinstance(exc, GhostnetError):
        return exc
    return GhostnetError(f"cannot build {name} with {kwargs or 'no arguments'}: {exc}")


def _external(name: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    """Build ``torchvision:NAME`` or ``timm:NAME``."""
    library, _, model_name = name.partition(":")
    if library == "torchvision":
        import torchvision

        known = torchvision.models.list_models()
        if model_name not in known:
            raise GhostnetError(_unknown(model_name, known, "torchvision.models.list_models()"))
        weights = "DEFAULT" if pretrained else None
        try:
            return torchvision.models.get_model(model_name, weights=weights, **kwargs)
        except (OSError, RuntimeError) as exc:
            if pretrained:
                raise GhostnetError(
                    f"could not fetch torchvision weights for {model_name} ({exc}); offline? "
                    "build it without pretrained and load a local file with --pretrained PATH"
                ) from exc
            raise _bad_kwargs(name, kwargs, exc) from exc
        except (TypeError, ValueError) as exc:
            raise _bad_kwargs(name, kwargs, exc) from exc
    if library == "timm":
        try:
            import timm
        except ImportError as exc:
            raise GhostnetError(
                f"{name!r} needs timm, which is not installed: pip install timm"
            ) from exc
        if not timm.is_model(model_name):
            raise GhostnetError(_unknown(model_name, timm.list_models(), "timm.list_models()"))
        try:
            return timm.create_model(model_name, pretrained=pretrained, **kwargs)
        except (TypeError, ValueError, KeyError) as exc:
            raise _bad_kwargs(name, kwargs, exc) from exc
        except Exception as exc:  # hub download errors come in many types
            if not pretrained:
                raise
            raise GhostnetError(
                f"could not fetch timm weights for {model_name} ({type(exc).__name__}); "
                "offline? build it without pretrained and load a local file with "
                "--pretrained PATH"
            ) from exc
    raise GhostnetError(
        f"unknown model source {library!r} in {name!r}: use torchvision:NAME or timm:NAME"
    )


def create_model(
    name: str,
    pretrained: bool | str | os.PathLike = False,
    ema: bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name.

    ``pretrained``: ``False``; ``True`` for the published weights (downloaded once, hash
    checked); or a path to a local weights file (safetensors or a state_dict). With a
    ``num_classes`` other than the checkpoint's, the classifier is left freshly initialised.
    ``ema``: for a file holding raw and EMA weights, None/True load the EMA copy, False the
    raw one (True also insists there is one).
    ``features_only=True`` (with ``out_indices``, ``output_stride`` 32/16/8, ``ghostify``)
    returns the feature-map backbone instead (see ``ghostnet.models.features``).
    """
    if kwargs.pop("features_only", False):
        return create_features(name, pretrained=pretrained, ema=ema, **kwargs)
    for key in ("out_indices", "output_stride"):
        if key in kwargs:
            raise GhostnetError(f"{key}= needs features_only=True")
    if pretrained is None:  # "no weights", as torchvision's weights=None
        pretrained = False
    if ":" in name:
        if pretrained not in (False, True):
            model = _external(name, kwargs, pretrained=False)
            state = load_state_dict_file(pretrained, ema=ema)
            load_into(model, state, source=str(pretrained))
            return model
        return _external(name, kwargs, pretrained=bool(pretrained))
    entry = get_entry(name)
    try:
        model = entry.builder(**kwargs)
    except (TypeError, ValueError) as exc:
        raise _bad_kwargs(name, kwargs, exc) from exc
    if pretrained is False or pretrained is None:
        return model
    path = fetch_pretrained(name) if pretrained is True else pretrained
    state = load_state_dict_file(path, ema=ema)
    num_classes = kwargs.get("num_classes", entry.num_classes)
    if num_classes != entry.num_classes:
        head = entry.classifier + "."
        dropped = [k for k in state if k.startswith(head)]
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        state.update({k: v for k, v in model.state_dict().items() if k.startswith(head)})
        log.warning(
            "%s: num_classes=%d differs from the pretrained %d: classifier (%s) not loaded, "
            "freshly initialised",
            name,
            num_classes,
            entry.num_classes,
            ", ".join(dropped),
        )
    load_into(model, state, source=str(path))
    return model


def create_features(
    name: str,
    pretrained: bool | str | os.PathLike = False,
    out_indices: Sequence[int] | None = None,
    output_stride: int = 32,
    ghostify: dict[str, Any] | None = None,
    ema: bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``create_model(name, features_only=True, ...)``: the classifier ``name`` (weights
    loaded first, then ghostified if asked) as a feature model. ``timm:NAME`` uses timm's
    ``features_only`` (its own levels and output strides)."""
    if output_stride not in OUTPUT_STRIDES:
        raise GhostnetError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if name.startswith("timm:"):
        model = timm_features(name, pretrained, out_indices, output_stride, kwargs)
        if ghostify is not None:
            model = ghostify_model(model, inplace=True, **ghostify)
        return model
    model = create_model(name, pretrained=pretrained, ema=ema, **kwargs)
    if ghostify is not None:
        model = ghostify_model(model, inplace=True, **ghostify)
    in_chans = int(kwargs.get("in_chans", 3))
    return features_from_model(model, out_indices, output_stride, in_chans)


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model: registry name, kwargs, ghostify options.

    It is plain data (str/int/float/bool/list/dict) so it can live in a checkpoint that
    loads with ``weights_only=True``.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    ghostify: dict[str, Any] | None = None  # ratio, dw_size, skip_first, include, exclude...

    def build(
        self, pretrained: bool | str | os.PathLike = False, ema: bool | None = None
    ) -> nn.Module:
        model = create_model(self.name, pretrained=pretrained, ema=ema, **self.kwargs)
        if self.ghostify is not None:
            model = ghostify_model(model, inplace=True, **self.ghostify)
        return model

    @property
    def input_size(self) -> tuple[int, int, int]:
        return default_input_size(self.name)

    def label(self) -> str:
        if self.ghostify is None:
            return self.name
        ratio = self.ghostify.get("ratio", 2)
        ratio = "per-layer" if isinstance(ratio, dict) else ratio
        return f"{self.name} (ghostified s={ratio}, d={self.ghostify.get('dw_size', 3)})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(data["name"], dict(data.get("kwargs") or {}), data.get("ghostify"))
