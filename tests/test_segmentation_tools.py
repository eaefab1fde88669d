"""Segmenter tools: evaluate a folder, predict writes a coloured overlay PNG, ONNX export
agrees with PyTorch in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ghostnet.segmentation import create_segmenter
from ghostnet.segmentation.tools import (
    evaluate_folder,
    export_segmenter_onnx,
    overlay,
    predict_images,
)

from .imagegen import write_voc


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_segmenter("lraspp", "timm:mobilenetv3_small_050", 3).eval()


def test_evaluate_folder(tmp_path: Path, model: torch.nn.Module) -> None:
    root = write_voc(tmp_path)
    result = evaluate_folder(model, root, "val", size=32, batch_size=2)
    assert result["images"] == 4 and result["skipped"] == 0
    # 32x32 masks, the 255 row resized with nearest neighbours is left out of the count
    assert 0 < result["pixels"] < 4 * 32 * 32
    assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["pixel_acc"] <= 1.0
    assert set(result["per_class_iou"]) == {"background", "c1", "c2"}


def test_overlay_colours_only_objects() -> None:
    image = Image.new("RGB", (4, 2), (100, 100, 100))
    labels = np.array([[0, 1, 1, 0], [0, 0, 15, 0]], dtype=np.uint8)
    pixels = np.asarray(overlay(image, labels, alpha=0.5))
    assert tuple(pixels[0, 0]) == (100, 100, 100)
    assert tuple(pixels[0, 1]) == (114, 50, 50)  # VOC label 1 is (128, 0, 0)
    assert tuple(pixels[1, 2]) == (146, 114, 114)  # label 15 (person) is (192, 128, 128)


def test_predict_writes_overlay_png(tmp_path: Path, model: torch.nn.Module) -> None:
    root = write_voc(tmp_path / "voc", count=2)
    results = predict_images(
        model, [root / "JPEGImages"], tmp_path / "out", ["bg", "a", "b"], size=32
    )
    assert [Path(r.overlay).name for r in results] == ["im00.png", "im01.png"]
    written = Image.open(results[0].overlay)
    assert written.format == "PNG" and written.size == (40, 30)
    assert sum(results[0].classes_found.values()) == pytest.approx(1.0, abs=1e-3)


def test_onnx_export_agrees(tmp_path: Path, model: torch.nn.Module) -> None:
    import onnxruntime as ort

    path, diff = export_segmenter_onnx(
        model, tmp_path / "seg.onnx", size=64, classes=["a", "b", "c"]
    )
    assert diff < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 64, 64)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x)["out"]
    assert got.shape == (1, 3, 64, 64)
    assert np.abs(got - expected.numpy()).max() < 1e-4
    assert "segmentation" in session.get_modelmeta().custom_metadata_map["task"]
