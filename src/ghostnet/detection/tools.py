"""Evaluation and prediction (boxes drawn) of a detector checkpoint, and ONNX export of a
detector's backbone + FPN + dense head (checked against PyTorch in ONNX Runtime)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from ..errors import GhostnetError
from ..safe_io import write_bytes
from .data import open_split
from .evaluate import detector_from_checkpoint, evaluate_detector
from .models import IMAGENET_MEAN, IMAGENET_STD, DenseCore

COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6"]


def evaluate_checkpoint(
    path: str | os.PathLike, data: str | os.PathLike, device: torch.device, batch_size: int = 8
) -> dict[str, Any]:
    """mAP (and the rest of ``coco_scores``) of a detector checkpoint on ``data``'s
    val2017 split, with ``checkpoint``, ``kind`` and ``backbone`` added."""
    model, checkpoint = detector_from_checkpoint(path)
    split = open_split(data, "val", checkpoint["classes"])
    result = evaluate_detector(model.to(device), split, device, batch_size)
    spec = checkpoint["detector"]
    return {**result, "checkpoint": str(path), "kind": spec["kind"], "backbone": spec["backbone"]}


def eval_lines(result: dict[str, Any]) -> list[str]:
    """``evaluate_checkpoint``'s result for a terminal."""
    lines = [
        f"{result['kind']} on {result['backbone']}: {result['images']} images",
        f"mAP {result['mAP']:.4f}   mAP@0.5 {result['mAP50']:.4f}",
        f"classes ignored: mAP {result['agnostic_mAP']:.4f}   "
        f"mAP@0.5 {result['agnostic_mAP50']:.4f}",
    ]
    lines += [f"{name:<20} AP {ap:.4f}" for name, ap in result["per_class_AP"].items()]
    return lines


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


def predict_images(
    path: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike = "predictions",
    threshold: float = 0.3,
) -> list[dict[str, Any]]:
    """Detect objects in ``images`` (files or folders) with a detector checkpoint; each
    image's boxes scoring >= ``threshold`` are drawn to ``out_dir``/NAME.png."""
    model, checkpoint = detector_from_checkpoint(path)
    classes = checkpoint["classes"]
    paths: list[Path] = []
    for item in images:
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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with torch.inference_mode():
        for image_path in paths:
            try:
                with Image.open(image_path) as im:
                    image = im.convert("RGB")
            except OSError as exc:
                raise GhostnetError(f"{image_path}: cannot decode image ({exc})") from exc
            tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
            found = model([tensor])[0]
            target = out / f"{image_path.stem}.png"
            drawn = draw_boxes(image, found, classes, threshold)
            buffer = io.BytesIO()
            drawn.save(buffer, format="PNG")
            write_bytes(target, buffer.getvalue())
            keep = found["scores"] >= threshold
            results.append(
                {
                    "image": str(image_path),
                    "drawn": str(target),
                    "detections": [
                        {"class": classes[int(label) - 1], "score": float(s), "box": b}
                        for b, s, label in zip(
                            found["boxes"][keep].tolist(),
                            found["scores"][keep].tolist(),
                            found["labels"][keep].tolist(),
                            strict=True,
                        )
                    ],
                }
            )
    return results


def predict_lines(results: list[dict[str, Any]]) -> list[str]:
    """``predict_images``' results for a terminal."""
    lines = []
    for r in results:
        found = ", ".join(f"{d['class']} {d['score']:.2f}" for d in r["detections"]) or "nothing"
        lines.append(f"{r['image']}: {found} -> {r['drawn']}")
    return lines


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
