"""Object detection over ghostnet backbones: torchvision detectors (Faster R-CNN, RetinaNet,
FCOS, SSDlite) on any feature model, COCO-layout data, training, mAP, predict, export."""

from .models import KINDS, DenseCore, DetectorSpec, create_detector

__all__ = ["KINDS", "DenseCore", "DetectorSpec", "create_detector"]
