"""``ghostnet eval`` / ``ghostnet predict`` on a detector checkpoint, and ONNX export of a
detector's backbone + FPN + dense head (checked against PyTorch in ONNX Runtime)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from ..engine import pick_device
from ..errors import GhostnetError
from .data import open_split
from .models import IMAGENET_MEAN, IMAGENET_STD, DenseCore
from .train import detector_from_checkpoint, evaluate_detector

COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6"]


def run_eval(args: argparse.Namespace) -> int:
    """mAP of a detector checkpoint on ``--data``'s val2017 split."""
    model, checkpoint = detector_from_checkpoint(args.checkpoint)
    device = pick_device(getattr(args, "device", "auto"))
    split = open_split(args.data, "val", checkpoint["classes"])
    # eval's --batch-size default (256) suits 32x32 classification, not detection images
    batch_size = min(int(getattr(args, "batch_size", 8)), 16)
    result = evaluate_detector(model.to(device), split, device, batch_size)
    if getattr(args, "json", False):
        print(json.dumps({**result, "checkpoint": str(args.checkpoint)}, indent=2))
        return 0
    kind = checkpoint["detector"]["kind"]
    print(f"{kind} on {checkpoint['detector']['backbone']}: {result['images']} images")
    print(f"mAP {result['mAP']:.4f}   mAP@0.5 {result['mAP50']:.4f}")
    print(
        f"classes ignored: mAP {result['agnostic_mAP']:.4f}   "
        f"mAP@0.5 {result['agnostic_mAP50']:.4f}"
    )
    for name, ap in result["per_class_AP"].items():
        print(f"{name:<20} AP {ap:.4f}")
    return 0


def draw_boxes(
    image: Image.Image, out: dict[str, torch.Tensor], classes: list[str], threshold: float
) -> Image.Image:
    """``image`` with the detections scoring >= ``threshold`` drawn as labelled boxes."""
    image = image.convert("RGB").copy()
    draw = ImageDraw.Draw(image)
    for box, score, label in zip(out["boxes"], out["scores"], out["labels"], strict=True):
        if score < threshold:
            continue
        colour = COLOURS[int(label) % len(COLOURS)]
        name = classes[int(label) - 1] if 1 <= int(label) <= len(classes) else str(int(label))
        draw.rectangle([float(v) for v in box], outline=colour, width=2)
        draw.text((float(box[0]) + 2, float(box[1]) + 1), f"{name} {score:.2f}", fill=colour)
    return image


def run_predict(args: argparse.Namespace) -> int:
    """Detect objects in images; ``--out DIR`` (default ``predictions``) gets one PNG each."""
    model, checkpoint = detector_from_checkpoint(args.checkpoint)
    classes = checkpoint["classes"]
    paths: list[Path] = []
    for item in args.images:
        p = Path(item)
        if p.is_dir():
            paths += sorted(
                f for f in p.rglob("*") if f.suffix.lower() in (".jpg", ".jpeg", ".png")
            )
        elif p.is_file():
            paths.append(p)
        else:
            raise GhostnetError(f"{p}: no such image or folder")
    if not paths:
        raise GhostnetError("no images found in the given paths")
    out_dir = Path(getattr(args, "out", None) or "predictions")
    out_dir.mkdir(parents=True, exist_ok=True)
    threshold = float(getattr(args, "threshold", 0.3))
    results = []
    with torch.inference_mode():
        for path in paths:
            try:
                with Image.open(path) as im:
                    image = im.convert("RGB")
            except OSError as exc:
                raise GhostnetError(f"{path}: cannot decode image ({exc})") from exc
            tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
            out = model([tensor])[0]
            target = out_dir / f"{path.stem}.png"
            draw_boxes(image, out, classes, threshold).save(target)
            keep = out["scores"] >= threshold
            results.append(
                {
                    "image": str(path),
                    "drawn": str(target),
                    "detections": [
                        {"class": classes[int(label) - 1], "score": float(s), "box": b}
                        for b, s, label in zip(
                            out["boxes"][keep].tolist(),
                            out["scores"][keep].tolist(),
                            out["labels"][keep].tolist(),
                            strict=True,
                        )
                    ],
                }
            )
    if getattr(args, "json", False):
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        found = ", ".join(f"{d['class']} {d['score']:.2f}" for d in r["detections"]) or "nothing"
        print(f"{r['image']}: {found} -> {r['drawn']}")
    return 0


def export_dense(
    detector: nn.Module, path: str | os.PathLike, image_size: int = 256, check: bool = True
) -> dict[str, Any]:
    """Export backbone + FPN + dense head (inputs: normalised 1x3xSxS images) to ONNX and,
    with ``check``, compare every output with PyTorch in ONNX Runtime. Box decoding and NMS
    are not exported (data-dependent output sizes); Faster R-CNN's second stage neither,
    since it runs on the NMS-selected proposals (only its RPN head is exported)."""
    core = DenseCore(detector).eval()
    x = torch.rand(1, 3, image_size, image_size)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        expected = core(x)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import contextlib
    import io
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(core, (x,), str(path), dynamo=False, opset_version=17)
    report: dict[str, Any] = {"path": str(path), "outputs": len(expected), "kind": core.kind}
    if check:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        report["max_abs_diff"] = max(
            float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected, strict=True)
        )
    return report
