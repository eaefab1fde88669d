"""Deployment: BN folding, ONNX export verified by ONNX Runtime, inference sessions.

``fuse(model)`` returns an eval-mode copy with every BatchNorm folded into the conv that
feeds it: Ghost modules' primary and cheap branches, bottleneck depthwise convs, shortcuts,
ghostified convs and plain conv-BN pairs of any FX-traceable model (others: conv-BN pairs
inside ``nn.Sequential``). Outputs stay identical to float rounding.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval as _torch_fuse_conv_bn
from torch.nn.utils.fusion import fuse_linear_bn_eval as _torch_fuse_linear_bn

from .errors import GhostnetError
from .files import check_output_file
from .layers import GhostConv2d
from .safe_io import atomic_path, error_line, write_failure

log = logging.getLogger("ghostnet")


# ----------------------------------------------------------------------------- fusion


def _in_float64(fuse_fn, layer: nn.Module, bn: nn.Module) -> nn.Module:
    """torch's fusion helper evaluated in float64, then cast back: folding a BN with a tiny
    variance multiplies the weights by a large factor, and float32 arithmetic there would
    add avoidable rounding to every folded layer."""
    dtype = layer.weight.dtype
    fused = fuse_fn(copy.deepcopy(layer).double(), copy.deepcopy(bn).double())
    return fused.to(dtype)


def fuse_conv_bn_eval(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    return _in_float64(_torch_fuse_conv_bn, conv, bn)


def fuse_linear_bn_eval(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    return _in_float64(_torch_fuse_linear_bn, linear, bn)


class FusedGhostConv2d(nn.Module):
    """A GhostConv2d with the BatchNorm that followed it folded in (inference only).

    The ghost half of the BN folds into the cheap depthwise conv. The intrinsic half cannot
    fold into the primary conv, because the cheap op must still see the un-normalised maps
    (folding would change its input, and zero padding makes that non-linear at the
    borders); it stays as a per-channel scale and shift (a 1x1 depthwise conv) on the
    intrinsic maps only.
    """

    def __init__(self, ghost: GhostConv2d, bn: nn.BatchNorm2d | None) -> None:
        super().__init__()
        primary = ghost.primary_conv
        if ghost.inner_bn is not None:
            primary = fuse_conv_bn_eval(primary, ghost.inner_bn)
        self.primary_conv = primary
        m = primary.out_channels
        self.cheap_operation = ghost.cheap_operation
        self._first_maps = ghost._first_maps
        self.register_buffer("ghost_sources", ghost.ghost_sources.clone(), persistent=False)
        # an inherited layer's permutation back to the conv's channel order; _fold_orders
        # moves it into the layers that follow where it can (then it is None)
        order = ghost.output_order
        self.register_buffer(
            "output_order", None if order is None else order.clone(), persistent=False
        )
        if bn is not None:
            std = torch.sqrt(bn.running_var + bn.eps)
            weight = bn.weight if bn.affine else torch.ones_like(std)
            bias = bn.bias if bn.affine else torch.zeros_like(std)
            full_scale = (weight / std).detach()
            full_shift = (bias - bn.running_mean * weight / std).detach()
            if order is not None:  # the BN is in the conv's order: map it onto cat's
                inverse = torch.argsort(order)
                full_scale, full_shift = full_scale[inverse], full_shift[inverse]
            scale, shift = full_scale[:m].clone(), full_shift[:m].clone()
            if self.cheap_operation is not None:
                cheap_bn = nn.BatchNorm2d(self.cheap_operation.out_channels, eps=0.0)
                cheap_bn.eval()
                cheap_bn.running_mean.zero_()
                cheap_bn.running_var.fill_(1.0)
                cheap_bn.weight.data.copy_(full_scale[m:])
                cheap_bn.bias.data.copy_(full_shift[m:])
                self.cheap_operation = fuse_conv_bn_eval(self.cheap_operation, cheap_bn)
        # the intrinsic half of the BN as a 1x1 depthwise conv: one op that runtimes keep
        # in their blocked layouts (ONNX Runtime's NCHWc), unlike a Mul + Add pair
        self.affine: nn.Conv2d | None = None
        if bn is not None:
            self.affine = nn.Conv2d(m, m, 1, groups=m, bias=True)
            self.affine.weight.data.copy_(scale.view(m, 1, 1, 1))
            self.affine.bias.data.copy_(shift)
        self._sources_all = (
            self.cheap_operation is not None
            and self._first_maps
            and self.cheap_operation.in_channels == m
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary_conv(x)
        if self.cheap_operation is None:
            return intrinsic if self.affine is None else self.affine(intrinsic)
        if self._sources_all:  # every intrinsic map feeds one ghost: no slice op at all
            source = intrinsic
        elif self._first_maps:
            source = intrinsic[:, : self.cheap_operation.in_channels]
        else:
            source = intrinsic.index_select(1, self.ghost_sources)
        ghosts = self.cheap_operation(source)
        if self.affine is not None:
            intrinsic = self.affine(intrinsic)
        out = torch.cat([intrinsic, ghosts], dim=1)
        return out if self.output_order is None else out.index_select(1, self.output_order)


class _GhostLeafTracer(torch.fx.Tracer):
    """Keeps GhostConv2d as one node, so 'GhostConv2d -> BN' can be folded as a pair."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, GhostConv2d) or super().is_leaf_module(m, qualname)


def _fold(producer: nn.Module, bn: nn.Module) -> nn.Module | None:
    if type(producer) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d):
        return fuse_conv_bn_eval(producer, bn)
    if isinstance(producer, GhostConv2d) and isinstance(bn, nn.BatchNorm2d):
        return FusedGhostConv2d(producer, bn)
    if type(producer) is nn.Linear and isinstance(bn, nn.BatchNorm1d):
        return fuse_linear_bn_eval(producer, bn)
    return None


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


def _fuse_graph(model: nn.Module) -> nn.Module:
    graph = _GhostLeafTracer().trace(model)
    gm = torch.fx.GraphModule(model, graph, class_name=type(model).__name__)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        is_bn = isinstance(modules.get(node.target), (nn.BatchNorm1d, nn.BatchNorm2d))
        if node.op != "call_module" or not is_bn:
            continue
        source = node.args[0]
        if not isinstance(source, torch.fx.Node) or source.op != "call_module":
            continue
        if len(source.users) != 1:  # the un-normalised output is used elsewhere too
            continue
        fused = _fold(modules[source.target], modules[node.target])
        if fused is None:
            continue
        _set_submodule(gm, source.target, fused)
        modules[source.target] = fused
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
    # Ghost layers with no BN after them still fold their inner BN
    for name, module in list(gm.named_modules()):
        if isinstance(module, GhostConv2d):
            _set_submodule(gm, name, FusedGhostConv2d(module, None))
    _fold_orders(gm)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


# ops that act on each channel alone (with the same function for all): a permutation of the
# channels passes through them unchanged
_CHANNELWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
)
_CHANNELWISE_FUNCTIONS = (
    torch.relu,
    torch.nn.functional.relu,
    torch.nn.functional.relu6,
    torch.nn.functional.hardswish,
    torch.nn.functional.silu,
    torch.nn.functional.gelu,
    torch.sigmoid,
    torch.tanh,
)
_CHANNELWISE_METHODS = ("relu", "relu_", "sigmoid", "tanh")


def _fold_orders(gm: torch.fx.GraphModule) -> None:
    """Move inherited Ghost layers' output permutations into the layers that follow.

    From a ``FusedGhostConv2d`` with an ``output_order``, follow its only consumer through
    channel-wise ops (activations, depthwise convs and BNs, whose per-channel weights are
    permuted) to an ordinary conv or Ghost layer, whose input channels are permuted instead;
    the gather then disappears. Anything else on the way (a residual add, a second
    consumer, a shared module, pooling into a linear layer) keeps the order in the layer.
    """
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        layer = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(layer, FusedGhostConv2d) or layer.output_order is None:
            continue
        channelwise: list[nn.Module] = []  # depthwise convs / BNs to permute on the way
        consumer: nn.Conv2d | None = None
        current = node
        while consumer is None:
            if len(current.users) != 1:
                break
            user = next(iter(current.users))
            if user.args[:1] != (current,) or any(
                isinstance(a, torch.fx.Node) for a in (*user.args[1:], *user.kwargs.values())
            ):
                break
            if user.op == "call_module":
                module = modules[user.target]
                if isinstance(module, _CHANNELWISE_MODULES):
                    current = user  # stateless: may be shared (one ReLU called twice)
                    continue
                if calls[user.target] != 1:  # its weights are about to be permuted
                    break
                elif isinstance(module, nn.BatchNorm2d) or (
                    type(module) is nn.Conv2d
                    and module.groups == module.in_channels == module.out_channels
                ):
                    channelwise.append(module)
                elif type(module) is nn.Conv2d and module.groups == 1:
                    consumer = module
                elif isinstance(module, FusedGhostConv2d):
                    consumer = module.primary_conv
                else:
                    break
            elif not (
                (user.op == "call_function" and user.target in _CHANNELWISE_FUNCTIONS)
                or (user.op == "call_method" and user.target in _CHANNELWISE_METHODS)
            ):
                break
            current = user
        if consumer is None:
            continue
        inverse = torch.argsort(layer.output_order)
        with torch.no_grad():
            for module in channelwise:
                for name in ("weight", "bias", "running_mean", "running_var"):
                    tensor = getattr(module, name, None)
                    if tensor is not None:
                        tensor.copy_(tensor[inverse])
            consumer.weight.copy_(consumer.weight[:, inverse])
        layer.output_order = None


def _fuse_sequential(model: nn.Module) -> int:
    """Fallback for models FX cannot trace: conv-BN pairs adjacent in an nn.Sequential."""
    count = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq._modules.items())
        for (name_a, a), (name_b, b) in itertools.pairwise(children):
            if (fused := _fold(a, b)) is not None:
                seq._modules[name_a] = fused
                seq._modules[name_b] = nn.Identity()
                count += 1
    for name, module in list(model.named_modules()):
        if isinstance(module, GhostConv2d):
            _set_submodule(model, name, FusedGhostConv2d(module, None))
    return count


def fuse(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with BatchNorm folded into the preceding convs."""
    from .reparam import reparameterize  # multi-branch blocks (GhostNetV3) fold first

    model = copy.deepcopy(reparameterize(model)).eval()
    try:
        return _fuse_graph(model)
    except Exception as exc:  # torch.fx raises many types for untraceable code
        folded = _fuse_sequential(model)
        remaining = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        log.warning(
            "%s is not FX-traceable (%s): folded %d conv-BN pairs found in nn.Sequential, "
            "%d BatchNorm layers left",
            type(model).__name__,
            str(exc).splitlines()[0][:120],
            folded,
            remaining,
        )
        return model


def count_batchnorm(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# ----------------------------------------------------------------------------- export


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
) -> tuple[Path, float]:
    """Export ``model`` (normally the deploy form) to ONNX and check it in ONNX Runtime.

    The ONNX model runs on random inputs next to ``reference`` (default: ``model``); above
    ``tolerance`` the file is deleted and a clear error raised (a tracer that silently baked
    a data-dependent branch into constants is caught here). Returns (path, max abs diff).
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
    """An ONNX Runtime session that checks input shapes and reads ghostnet metadata."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
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
    raises above ``tolerance``.

    Absolute for outputs of the usual scale, relative for large ones: float32 rounding
    grows with the outputs (a random-init GhostNetV3 on random images reaches ~1e7), and
    a faithful export of such a model differs by ~1e-7 of them, not by 1e-4 absolute.
    """
    session = OnnxSession(path)
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    model = model.eval()
    for _ in range(trials):
        x = torch.randn(batch_size, *input_size, generator=generator)
        with torch.no_grad():
            expected = model(x)
        scale = max(1.0, expected.abs().max().item())
        worst = max(worst, (session(x) - expected).abs().max().item() / scale)
    if worst > tolerance:
        raise GhostnetError(
            f"{path}: ONNX Runtime differs from PyTorch by {worst:.3g} of the output scale "
            f"(> {tolerance}); the export is not faithful"
        )
    return worst


class OnnxClassifier(nn.Module):
    """An ONNX file as a module for ``engine.evaluate``: batches of any size, padded (then
    trimmed) or chunked to a fixed-batch export's size."""

    def __init__(self, session: OnnxSession) -> None:
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


# ----------------------------------------------------------------------------- int8

# ``--float-layers`` groups: layers kept in float in an INT8 export when they cost accuracy
FLOAT_LAYER_GROUPS = {
    "first": "the first conv (it sees the normalised pixels)",
    "depthwise": "every depthwise/grouped conv (Ghost cheap ops, bottleneck depthwise)",
    "cheap": "the Ghost modules' cheap operations only",
    "se": "squeeze-excite blocks",
    "last": "the classifier (Gemm/MatMul)",
}


def _node_scope(node: Any) -> str:
    """Module path and class names of an ONNX node (torch.export metadata, else its name)."""
    meta = {p.key: p.value for p in node.metadata_props}
    return " ".join(
        [node.name, meta.get("pkg.torch.onnx.name_scopes", ""), meta.get("namespace", "")]
    )


def float_layer_nodes(proto: Any, groups: Sequence[str]) -> list[str]:
    """Names of the ONNX nodes that ``groups`` (keys of FLOAT_LAYER_GROUPS) keep in float."""
    unknown = [g for g in groups if g not in FLOAT_LAYER_GROUPS]
    if unknown:
        raise GhostnetError(
            f"unknown --float-layers {', '.join(unknown)}: choose from "
            f"{', '.join(FLOAT_LAYER_GROUPS)}"
        )
    nodes = list(proto.graph.node)
    chosen: list[str] = []
    convs = [n for n in nodes if n.op_type == "Conv"]
    for node in nodes:
        scope = _node_scope(node)
        group_attr = next((a.i for a in node.attribute if a.name == "group"), 1)
        if (
            ("first" in groups and convs and node is convs[0])
            or ("depthwise" in groups and node.op_type == "Conv" and group_attr > 1)
            or ("cheap" in groups and node.op_type == "Conv" and "cheap_operation" in scope)
            or ("se" in groups and ("SqueezeExcite" in scope or ".se" in scope))
            or ("last" in groups and node.op_type in ("Gemm", "MatMul"))
        ):
            chosen.append(node.name)
    return chosen


def calibration_batches(
    folder: str | os.PathLike, preset: Any, count: int, batch_size: int, seed: int = 0
) -> list[Any]:
    """``count`` images from ``folder`` (its test/ or val/ split if any, spread over the
    classes), prepared by the model's eval transform and stacked into numpy batches of
    ``batch_size`` (the last one filled by repeating images). Unreadable images are skipped;
    none readable is one clear error."""
    from .data import BadImageError, build_transform, read_image, sample_image_files

    folder = Path(folder)
    if not folder.is_dir():
        raise GhostnetError(f"--calibration {folder}: not a folder of images")
    if count < 1:
        raise GhostnetError(f"--calibration-images must be >= 1, got {count}")
    files = sample_image_files(folder, count, seed)
    transform = build_transform(preset, train=False)
    images, bad = [], []
    for file in files:
        try:
            images.append(transform(read_image(file)))
        except (BadImageError, OSError):
            bad.append(file)
    if not images:
        raise GhostnetError(
            f"--calibration {folder}: none of its {len(files)} image files could be read "
            f"(first: {bad[0]}); give a folder of real images like those the model will see"
        )
    if bad:
        log.warning("calibration: skipped %d unreadable images (first: %s)", len(bad), bad[0])
    while len(images) % batch_size:
        images.append(images[len(images) % len(images)])
    stacked = torch.stack(images)
    return [b.numpy() for b in stacked.split(batch_size)]


def quantize_onnx(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    batches: Sequence[Any],
    *,
    float_layers: Sequence[str] = (),
    per_channel: bool = True,
    method: str = "minmax",
) -> dict[str, Any]:
    """Static INT8 quantization of an ONNX file with ONNX Runtime: QDQ format, int8
    per-channel weights, uint8 activations whose ranges are calibrated on ``batches`` (numpy
    arrays shaped like the model input). Layers in ``float_layers`` groups stay float.
    Returns a summary (node counts) that is also stored in the file's metadata."""
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as exc:
        raise GhostnetError("INT8 export needs: pip install 'ghostnet[onnx]'") from exc
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise GhostnetError(f"unknown calibration method {method!r}: {', '.join(methods)}")
    fp32_path, out_path = Path(fp32_path), check_onnx_output(out_path)
    proto = onnx.load(str(fp32_path))
    input_name = proto.graph.input[0].name
    excluded = float_layer_nodes(proto, float_layers)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    root_level = logging.getLogger().level
    # ORT's quantizer logs advice on the root logger at WARNING (pre-processing hints that do
    # not apply to an already BN-folded export)
    logging.getLogger().setLevel(logging.ERROR)
    try:
        quantize_static(
            str(fp32_path),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            # uint8 activations with int8 weights (U8S8): ONNX Runtime's fast x86 int8
            # kernels; signed int8 activations (S8S8) measured 1.6x slower than fp32 here
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=methods[method],
            extra_options={"WeightSymmetric": True},
        )
    except Exception as exc:  # ORT's quantizer raises many types
        _remove_partial(out_path)
        raise GhostnetError(
            f"ONNX Runtime cannot quantize {fp32_path.name}: {str(exc).strip().splitlines()[0]}"
            "; keep the failing layers in float with --float-layers or export without --int8"
        ) from exc
    finally:
        logging.getLogger().setLevel(root_level)
    quantized = onnx.load(str(out_path))
    ops = [n.op_type for n in quantized.graph.node]
    dequantized = {
        o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output
    }
    int8_layers = [
        n.name
        for n in quantized.graph.node
        # a layer runs in int8 when its weights are quantized (a float layer still reads
        # its input through the previous layer's Q/DQ pair)
        if n.op_type in ("Conv", "Gemm", "MatMul")
        and len(n.input) > 1
        and n.input[1] in dequantized
    ]
    summary = {
        "format": "QDQ uint8 activations, int8 weights" + (" per channel" if per_channel else ""),
        "calibration_method": method,
        "calibration_batches": len(batches),
        "float_layers": list(float_layers),
        "float_nodes": len(excluded),
        "int8_layers": len(int8_layers),
        "quantize_ops": ops.count("QuantizeLinear"),
    }
    if not int8_layers:
        _remove_partial(out_path)
        raise GhostnetError(
            f"ONNX Runtime quantized nothing in {fp32_path.name} (no Conv/Gemm/MatMul left to "
            "quantize"
            + (f" once {', '.join(float_layers)} stay float" if float_layers else "")
            + "); export it without --int8"
        )
    del quantized.metadata_props[:]
    for entry in proto.metadata_props:  # ghostnet metadata (classes, preset) carries over
        quantized.metadata_props.add().CopyFrom(entry)
    item = quantized.metadata_props.add()
    item.key, item.value = "int8", json.dumps(summary)
    with atomic_path(out_path) as tmp:
        onnx.save(quantized, str(tmp))
    return summary
