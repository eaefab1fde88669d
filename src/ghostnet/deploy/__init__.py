"""Deployment: the deploy form (BN folded), export to ONNX / ExecuTorch / ncnn / LiteRT
checked on each real runtime, INT8 for ONNX Runtime, and sessions that run the files.

``export(model, fmt, out, input_size)`` is the whole pipeline; ``open_exported(path)``
loads any exported file by its suffix.
"""

from .api import (
    BACKEND_FORMATS,
    FORMATS,
    INT8_FORMATS,
    ExportResult,
    Int8Options,
    check_export_output,
    deploy_form,
    export,
    metadata_file,
    open_exported,
)
from .executorch import quantize_executorch
from .fusion import (
    FusedGhostConv2d,
    _set_submodule,
    count_batchnorm,
    fuse,
    fuse_conv_bn_eval,
    fuse_linear_bn_eval,
)
from .int8 import FLOAT_LAYER_GROUPS, calibration_batches, float_layer_nodes, quantize_onnx
from .onnx_export import (
    OnnxClassifier,
    OnnxSession,
    check_onnx_output,
    export_onnx,
    global_pools,
    onnx_op_counts,
    verify_onnx,
)
from .runtime import RuntimeClassifier, RuntimeSession
from .verify import Agreement, check_agreement, settle_batchnorm

__all__ = [
    "BACKEND_FORMATS",
    "FLOAT_LAYER_GROUPS",
    "FORMATS",
    "INT8_FORMATS",
    "Agreement",
    "ExportResult",
    "FusedGhostConv2d",
    "Int8Options",
    "OnnxClassifier",
    "OnnxSession",
    "RuntimeClassifier",
    "RuntimeSession",
    "_set_submodule",
    "calibration_batches",
    "check_agreement",
    "check_export_output",
    "check_onnx_output",
    "count_batchnorm",
    "deploy_form",
    "export",
    "export_onnx",
    "float_layer_nodes",
    "fuse",
    "fuse_conv_bn_eval",
    "fuse_linear_bn_eval",
    "global_pools",
    "metadata_file",
    "onnx_op_counts",
    "open_exported",
    "quantize_executorch",
    "quantize_onnx",
    "settle_batchnorm",
    "verify_onnx",
]
