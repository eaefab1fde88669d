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


def test_cli_exports_a_trained_segmenter_checkpoint(tmp_path: Path, capsys) -> None:
    """`ghostnet export --checkpoint` of a segmentation run: ONNX with the task's metadata,
    checked in ONNX Runtime; flags that only classifiers' exports take are refused in one
    line."""
    import onnx

    from ghostnet.cli import main

    data = write_voc(tmp_path / "voc", count=4, size=(40, 40))
    run = tmp_path / "run"
    flags = ["--task", "segmentation", "--segmenter", "lraspp", "--input-size", "32"]
    flags += ["--model", "timm:mobilenetv3_small_050", "--epochs", "1", "--batch-size", "2"]
    assert main(["train", "--data", str(data), "--out", str(run), "--quiet", *flags]) == 0
    capsys.readouterr()
    out = tmp_path / "seg.onnx"
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "segmenter logits, input 1x3x32x32" in printed and "max abs diff" in printed
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["task"] == '"segmentation"' and meta["image_size"] == "32"
    bad = ["export", "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "b.onnx")]
    assert main([*bad, "--int8", "--calibration", str(data)]) == 2
    err = capsys.readouterr().err
    assert "segmentation checkpoint" in err and "drop --int8" in err and "Traceback" not in err
    assert not (tmp_path / "b.onnx").exists()
