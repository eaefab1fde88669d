"""Static INT8 quantization of an ONNX export (ONNX Runtime, QDQ) on real images."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import GhostnetError
from ..safe_io import atomic_path
from .onnx_export import _remove_partial, check_onnx_output

log = logging.getLogger("ghostnet")

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
    """``count`` images from ``folder`` through the one calibration loader
    (:func:`ghostnet.data.calibration_images`), stacked into numpy batches of
    ``batch_size`` (the last one filled by repeating images: a static-batch export takes
    no other)."""
    from ..data import calibration_images

    images = calibration_images(folder, preset, count, seed)
    if len(images) % batch_size:
        repeat = torch.arange(batch_size - len(images) % batch_size) % len(images)
        images = torch.cat([images, images[repeat]])
    return [b.numpy() for b in images.split(batch_size)]


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
