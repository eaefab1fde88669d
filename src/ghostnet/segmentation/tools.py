"""Library functions on a built segmenter: evaluate on a VOC-layout folder, predict with a
coloured mask overlay PNG, ONNX export checked in ONNX Runtime."""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from ..errors import GhostnetError
from ..files import check_output_file
from ..safe_io import atomic_path, write_bytes
from .data import (
    SegmentationDataset,
    SegSplit,
    collate_skipping,
    eval_transform,
    open_split,
    voc_palette,
)
from .metrics import ConfusionMatrix
from .models import IMAGENET_MEAN, IMAGENET_STD, LogitsOnly

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    split: SegSplit,
    size: int,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    workers: int = 0,
) -> ConfusionMatrix:
    """The confusion matrix of ``model`` over ``split`` resized to ``size`` x ``size`` (kept
    on ``device``; all-reduce ``.matrix`` across ranks before ``.compute``)."""
    dataset = SegmentationDataset(split, eval_transform(size))
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_skipping
    )
    matrix = ConfusionMatrix(len(split.classes), device)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            if batch.images.numel() == 0:
                continue
            out = model(batch.images.to(device))["out"]
            matrix.update(out, batch.masks.to(device))
    finally:
        model.train(was_training)
    return matrix


def evaluate_folder(
    model: nn.Module,
    root: str | os.PathLike,
    split: str = "val",
    size: int = 128,
    classes: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
) -> dict[str, object]:
    """mIoU, per-class IoU and pixel accuracy of ``model`` on ``root``'s ``split`` list."""
    data = open_split(root, split, classes)
    result = evaluate_split(model, data, size, device, batch_size).compute(data.classes)
    return {**result, "images": len(data), "skipped": len(data.skipped)}


def _normalise(pixels: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


@torch.no_grad()
def segment(model: nn.Module, image: Image.Image, size: int) -> np.ndarray:
    """Label map (H, W uint8) of ``image`` at its own size: the model runs at ``size`` x
    ``size`` and its logits are resized back (bilinear) before the argmax."""
    rgb = image.convert("RGB")
    x = _normalise(np.array(rgb.resize((size, size), Image.BILINEAR), dtype=np.uint8))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    logits = model(x.to(device))["out"]
    logits = nn.functional.interpolate(
        logits, size=(rgb.height, rgb.width), mode="bilinear", align_corners=False
    )
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def overlay(image: Image.Image, labels: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """``image`` with each non-background pixel blended with its label's VOC colour."""
    palette = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    colour = palette[labels].astype(np.float32)
    mixed = np.where((labels > 0)[..., None], (1 - alpha) * rgb + alpha * colour, rgb)
    return Image.fromarray(mixed.round().astype(np.uint8))


@dataclass
class Prediction:
    image: str
    overlay: str
    classes_found: dict[str, float]  # class name -> fraction of the image's pixels


def _image_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            paths.append(p)
        else:
            raise GhostnetError(f"{p}: no such image or folder")
    if not paths:
        raise GhostnetError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}"
        )
    return paths


def predict_images(
    model: nn.Module,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    classes: Sequence[str],
    size: int = 128,
    alpha: float = 0.5,
) -> list[Prediction]:
    """Segment each image (files or folders) and write ``out_dir/NAME.png``: the image with
    its predicted mask blended in VOC colours (written atomically through safe_io)."""
    out = Path(out_dir)
    results = []
    for path in _image_files(inputs):
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise GhostnetError(f"{path}: not a readable image ({str(exc)[:120]})") from exc
        labels = segment(model, image, size)
        buffer = io.BytesIO()
        overlay(image, labels, alpha).save(buffer, format="PNG")
        target = out / f"{path.stem}.png"
        write_bytes(target, buffer.getvalue())
        counts = np.bincount(labels.ravel(), minlength=len(classes))
        found = {
            (classes[k] if k < len(classes) else str(k)): round(float(c) / labels.size, 4)
            for k, c in enumerate(counts)
            if c
        }
        results.append(Prediction(str(path), str(target), found))
    return results


def export_segmenter_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    size: int = 128,
    *,
    classes: Sequence[str] | None = None,
    opset: int = 17,
    tolerance: float = 1e-4,
) -> tuple[Path, float]:
    """The segmenter's ``"out"`` logits (normalised 1x3xSxS images in, 1xKxSxS out) as an
    ONNX file with ``task``/``image_size``/``classes`` metadata, then checked against
    PyTorch in ONNX Runtime on random inputs (above ``tolerance`` the file is removed and
    one error line raised). Returns (path, max abs diff).

    ``deploy.export_onnx`` sits below ``train/`` (which trains segmenters) in the layering,
    so this uses ``torch.onnx`` and ONNX Runtime directly, as ``detection.tools`` does.
    """
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as exc:
        raise GhostnetError("ONNX export needs: pip install 'ghostnet[onnx]'") from exc
    path = check_output_file(path, "--out", "segmenter.onnx")
    core = LogitsOnly(model).eval()
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, 3, size, size, generator=generator) for _ in range(2)]
    metadata = {"task": "segmentation", "image_size": size, "classes": list(classes or [])}
    with atomic_path(path) as tmp:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            with torch.no_grad():
                torch.onnx.export(
                    core,
                    (inputs[0],),
                    str(tmp),
                    dynamo=False,  # TorchScript: seconds, where torch.export takes ~40 s
                    opset_version=opset,
                    input_names=["input"],
                    output_names=["logits"],
                )
        proto = onnx.load(str(tmp))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.save(proto, str(tmp))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            expected = core(x).numpy()
        (got,) = session.run(None, {"input": x.numpy()})
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > tolerance:
        path.unlink(missing_ok=True)
        raise GhostnetError(
            f"{path}: ONNX Runtime differs from PyTorch by {worst:.3g} (> {tolerance}); "
            "the export is not faithful"
        )
    return path, worst
