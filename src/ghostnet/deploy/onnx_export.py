"""ONNX export of the deploy form, verified by ONNX Runtime; OnnxSession runs the file."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import GhostnetError
from ..files import check_output_file
from ..safe_io import atomic_path, error_line, write_failure
from .runtime import RuntimeClassifier
from .verify import check_agreement


def _opset_range() -> tuple[int, int]:
    import onnx

    return 13, onnx.defs.onnx_opset_version()


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int] = (3, 224, 224),
    *,
    batch_size: int = 1,
    dynamic_batch: bool = False,
    opset: int | None = None,
    metadata: dict[str, Any] | None = None,
    reference: nn.Module | None = None,
    tolerance: float = 1e-4,
    verify: bool = True,
) -> tuple[Path, float]:
    """Export ``model`` (normally the deploy form) to ONNX and check it in ONNX Runtime.

    The ONNX model runs on random inputs next to ``reference`` (default: ``model``); above
    ``tolerance`` the file is deleted and a clear error raised (a tracer that silently baked
    a data-dependent branch into constants is caught here). Returns (path, max abs diff);
    with ``verify=False`` the check is the caller's (``deploy.export``) and diff is nan.
    """
    try:
        import onnx
    except ImportError as exc:
        raise GhostnetError("ONNX export needs: pip install 'ghostnet[onnx]'") from exc
    low, high = _opset_range()
    if opset is not None and not (low <= opset <= high):
        raise GhostnetError(f"--opset must be between {low} and {high} (this onnx), got {opset}")
    if batch_size < 1:
        raise GhostnetError(f"--batch-size must be >= 1, got {batch_size}")
    path = check_onnx_output(path)
    model = model.eval()
    example = torch.randn(batch_size, *input_size)
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:
        raise GhostnetError(
            f"the model does not run on input {tuple(example.shape)}: {str(exc).splitlines()[0]}"
        ) from exc
    errors = []
    for dynamo in (True, False):  # torch.export-based exporter first, TorchScript fallback
        kwargs: dict[str, Any] = dict(
            input_names=["input"],
            output_names=["logits"],
            opset_version=opset or (18 if dynamo else 17),
        )
        if dynamo:
            # one self-contained file: the exporter's default external-data side file
            # (<out>.data) is only needed past protobuf's 2 GB limit
            kwargs["external_data"] = _parameter_bytes(model) >= _PROTOBUF_LIMIT
        if dynamic_batch:
            if dynamo:
                kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
            else:
                kwargs["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
        try:
            with torch.no_grad():
                _quiet_export(model, example, path, dynamo, kwargs)
            break
        except Exception as exc:  # exporters raise many types; reported below in one line
            _remove_partial(path)
            failure = write_failure(path, exc)
            if failure is not None:  # a full disk is not an untraceable model
                raise error_line(path, failure) from None
            errors.append(
                f"{'torch.export' if dynamo else 'TorchScript'}: "
                f"{str(exc).strip().splitlines()[0][:200]}"
            )
    else:
        raise GhostnetError(
            f"{type(model).__name__} cannot be exported to ONNX ({'; '.join(errors)}); "
            "the model must be traceable by torch.export or TorchScript"
        )
    proto = onnx.load(str(path))
    global_pools(proto)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    if proto.ByteSize() < _PROTOBUF_LIMIT:  # weights now inside the file: no side file
        Path(f"{path}.data").unlink(missing_ok=True)
    if not verify:
        return path, float("nan")
    check_batch = 2 if dynamic_batch else batch_size
    try:
        diff = verify_onnx(reference or model, path, input_size, check_batch, tolerance=tolerance)
    except GhostnetError:
        path.unlink(missing_ok=True)
        raise
    return path, diff


_PROTOBUF_LIMIT = 2**31 - 2**26  # protobuf's 2 GiB message limit, less room for the graph


def global_pools(proto: Any) -> int:
    """Rewrite ``ReduceMean(x, axes=[2, 3], keepdims=1)`` of a 4-D ``x`` (how the exporter
    writes a squeeze-excite's pooling, and ``adaptive_avg_pool2d(x, 1)``) as the equal
    ``GlobalAveragePool(x)``. ONNX Runtime computes GlobalAveragePool in its blocked NCHWc
    layout; before a ReduceMean it must reorder the whole map back to NCHW (at batch 16,
    GhostNet-1.0x spent ~5% of its time in those reorders). Returns how many it rewrote."""
    import onnx
    from onnx import numpy_helper

    graph = proto.graph
    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
    # rank-4 floating tensors only: GlobalAveragePool pools every spatial dim, floats only
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*graph.value_info, *graph.input, *graph.output]
        if v.type.tensor_type.HasField("shape") and v.type.tensor_type.elem_type in floating
    }
    inputs = {i.name for i in graph.input}  # an initializer that is an input can be fed
    constants = {
        t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name not in inputs
    }
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            attr = node.attribute[0]
            if attr.name == "value":
                constants[node.output[0]] = numpy_helper.to_array(attr.t)
    rewritten = 0
    for index, node in enumerate(list(graph.node)):
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("keepdims", 1) != 1 or attrs.get("noop_with_empty_axes", 0):
            continue
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1] in constants:
            axes = constants[node.input[1]].tolist()
        if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            continue
        pool = onnx.helper.make_node(
            "GlobalAveragePool", [node.input[0]], list(node.output), name=node.name
        )
        graph.node[index].CopyFrom(pool)  # same place: the graph stays topologically sorted
        rewritten += 1
    subgraphs = any(a.type in (a.GRAPH, a.GRAPHS) for n in graph.node for a in n.attribute)
    if rewritten and not subgraphs:  # drop the axes constants nothing reads now (ORT warns)
        used = {name for node in graph.node for name in node.input}
        used |= {o.name for o in graph.output}
        for node in [n for n in graph.node if n.op_type == "Constant"]:
            if not any(name in used for name in node.output):
                graph.node.remove(node)
        for tensor in [t for t in graph.initializer if t.name not in used | inputs]:
            graph.initializer.remove(tensor)
    return rewritten


def _parameter_bytes(model: nn.Module) -> int:
    tensors = itertools.chain(model.parameters(), model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _remove_partial(path: Path) -> None:
    """A failed exporter may leave a half-written file and its side file behind."""
    path.unlink(missing_ok=True)
    Path(f"{path}.data").unlink(missing_ok=True)


def check_onnx_output(path: str | os.PathLike) -> Path:
    """``path`` as a writable .onnx target, checked before any work (one clear line)."""
    return check_output_file(path, "--out", "model.onnx")


def _quiet_export(
    model: nn.Module, example: torch.Tensor, path: Path, dynamo: bool, kwargs: dict[str, Any]
) -> None:
    import contextlib
    import io
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=dynamo, **kwargs)


def onnx_op_counts(path: str | os.PathLike) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _json_or_text(value: str) -> Any:
    """ghostnet writes JSON metadata; other tools' entries stay plain strings."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


class OnnxSession:
    """An ONNX Runtime session that checks input shapes and reads ghostnet metadata.

    ``spinning=False`` stops ONNX Runtime's idle worker threads from spinning after a call:
    two sessions timed in turn at 2+ threads would otherwise steal each other's cores."""

    runtime = "ONNX Runtime"

    def __init__(
        self, path: str | os.PathLike, threads: int | None = None, spinning: bool = True
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise GhostnetError(
                "the onnxruntime backend needs: pip install 'ghostnet[onnx]'"
            ) from exc
        path = Path(path)
        if not path.is_file():
            raise GhostnetError(f"ONNX file not found: {path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise GhostnetError(f"{path}: not a loadable ONNX model ({str(exc)[:200]})") from exc
        self.path = path
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {k: _json_or_text(v) for k, v in meta.items()}
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise GhostnetError(
                f"{path}: expected one image input, the graph has {len(inputs)} (a forward "
                "whose result does not depend on its input was traced into constants?)"
            )
        self.input = inputs[0]

    @property
    def input_shape(self) -> list[int | str]:
        return list(self.input.shape)

    def __call__(self, x: torch.Tensor | Any) -> torch.Tensor:
        array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        expected = self.input_shape
        ok = len(expected) == array.ndim and all(
            not isinstance(e, int) or e == s for e, s in zip(expected, array.shape)
        )
        if not ok:
            hint = ""
            if len(expected) == array.ndim and expected[1:] == list(array.shape[1:]):
                hint = f"; re-export with --batch-size {array.shape[0]} or --dynamic-batch"
            raise GhostnetError(
                f"{self.path.name} expects input {expected}, got {list(array.shape)}{hint}"
            )
        # copy=False: a float32 batch goes in as it is (a copy per call is a whole extra
        # pass over the input, ~0.5 ms for a 6 MB batch: visible in module timings)
        (out,) = self.session.run(None, {self.input.name: array.astype("float32", copy=False)})
        return torch.from_numpy(out)


def verify_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int],
    batch_size: int = 1,
    trials: int = 3,
    tolerance: float = 1e-4,
) -> float:
    """Max |PyTorch - ONNX Runtime| over random inputs, in units of max(1, max |output|);
    raises above ``tolerance`` (see ``verify.check_agreement``: PyTorch's float32 is checked
    against float64 first, so the line says whether the model or the export is to blame)."""
    session = OnnxSession(path)
    return check_agreement(
        session.runtime, path, model, session, input_size, batch_size, tolerance
    ).max_diff


# an ONNX file as a module for engine.evaluate (the name predates the other runtimes)
OnnxClassifier = RuntimeClassifier
