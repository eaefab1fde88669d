"""Semantic segmentation over ghostnet backbones: torchvision's LR-ASPP, DeepLabV3 and FCN
heads on any feature model, Pascal VOC-layout data, mIoU metrics, predict, ONNX export."""

from .models import KINDS, LogitsOnly, Segmenter, SegmenterSpec, create_segmenter

__all__ = ["KINDS", "LogitsOnly", "Segmenter", "SegmenterSpec", "create_segmenter"]
