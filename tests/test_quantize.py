"""INT8 export (ONNX Runtime static quantization) and the bf16 guard: the quantized model
keeps the fp32 model's top-1 on real CIFAR-10 images, and bad calibration input, a model
with nothing to quantize and bf16 on a CPU without it are one clear line each."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from ghostnet import bench
from ghostnet.checkpoint import FORMAT
from ghostnet.cli import main
from ghostnet.data import build_transform, choose_preset, read_image
from ghostnet.deploy import (
    OnnxClassifier,
    OnnxSession,
    calibration_batches,
    export_onnx,
    float_layer_nodes,
    fuse,
    quantize_onnx,
)
from ghostnet.errors import GhostnetError
from ghostnet.models import ModelSpec

from .imagegen import make_image_folder

pytest.importorskip("onnxruntime")

# fp32 and INT8 top-1 on the same 300 real test images may differ by at most this much
# (2 points = 6 images: per-channel INT8 of a BN-folded CNN moves a few borderline images)
TOP1_TOLERANCE = 2.0


def _real_subset(root, split: str, per_class: int, out) -> None:
    """Links to the first ``per_class`` images of every class of CIFAR-10's ``split``."""
    for class_dir in sorted((root / split).iterdir()):
        target = out / "test" / class_dir.name  # eval reads test/
        target.mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            os.symlink(image, target / image.name)


@pytest.fixture(scope="module")
def real_checkpoint(cifar10_path, tmp_path_factory):
    """resnet20_cifar trained for ~15 s on 600 real CIFAR-10 images, saved as a
    ghostnet checkpoint, with a 300-image real test folder and a calibration folder."""
    root = tmp_path_factory.mktemp("quant")
    preset = choose_preset("cifar", (32, 32))
    transform = build_transform(preset, train=False)
    classes = sorted(p.name for p in (cifar10_path / "train").iterdir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((cifar10_path / "train" / name).iterdir())[:60]:
            images.append(transform(read_image(file)))
            labels.append(label)
    x, y = torch.stack(images), torch.tensor(labels)
    spec = ModelSpec("resnet20_cifar", {"num_classes": 10})
    torch.manual_seed(0)
    model = spec.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    # a fixed thread count: the same model whatever an earlier test left set (reductions
    # split over threads round differently, and a weak model's borderline images follow);
    # 8 epochs reach ~30% on the 300 test images (4 epochs at lr 0.1 gave 21%, so close to
    # chance that INT8 rounding flipped 16% of its near-tied predictions)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in range(8):
            for idx in torch.randperm(len(x)).split(30):
                batch = x[idx]
                flip = torch.rand(len(idx)) < 0.5
                batch[flip] = batch[flip].flip(-1)
                loss = nn.functional.cross_entropy(model(batch), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    checkpoint = {
        "format": FORMAT,
        "model_spec": spec.to_dict(),
        "classes": classes,
        "preset": preset.to_dict(),
        "model": model.state_dict(),
    }
    path = root / "best.pt"
    torch.save(checkpoint, path)
    _real_subset(cifar10_path, "test", 30, root / "test_data")
    _real_subset(cifar10_path, "train", 10, root / "calib")
    return model, path, root / "test_data", root / "calib"


def _top1(module, folder, preset) -> tuple[float, torch.Tensor]:
    transform = build_transform(preset, train=False)
    classes = sorted(p.name for p in (folder / "test").iterdir())
    x, y = [], []
    for label, name in enumerate(classes):
        for file in sorted((folder / "test" / name).iterdir()):
            x.append(transform(read_image(file)))
            y.append(label)
    with torch.no_grad():
        pred = module(torch.stack(x)).argmax(1)
    return 100.0 * (pred == torch.tensor(y)).float().mean().item(), pred


@pytest.mark.slow  # the in-test training: ~20 s on an idle 2-core machine
def test_int8_top1_matches_fp32_on_real_images(real_checkpoint, tmp_path):
    model, _, test_data, calib = real_checkpoint
    preset = choose_preset("cifar", (32, 32))
    fp32, _ = export_onnx(fuse(model), tmp_path / "fp32.onnx", (3, 32, 32), batch_size=16)
    batches = calibration_batches(calib, preset, 100, 16)
    summary = quantize_onnx(fp32, tmp_path / "int8.onnx", batches)
    assert summary["int8_layers"] == 20  # 19 convs + the classifier
    top_fp32, pred_fp32 = _top1(OnnxClassifier(OnnxSession(fp32)), test_data, preset)
    top_int8, pred_int8 = _top1(
        OnnxClassifier(OnnxSession(tmp_path / "int8.onnx")), test_data, preset
    )
    assert top_fp32 > 20.0, f"the in-test model did not learn ({top_fp32:.1f}%, chance 10%)"
    assert abs(top_int8 - top_fp32) <= TOP1_TOLERANCE, (top_fp32, top_int8)
    assert (pred_int8 == pred_fp32).float().mean() >= 0.9
    # the INT8 file is smaller and holds int8 weights, not a float copy
    assert (tmp_path / "int8.onnx").stat().st_size < 0.5 * fp32.stat().st_size


@pytest.mark.slow  # shares the in-test training fixture
def test_export_int8_and_eval_cli(real_checkpoint, tmp_path, capsys):
    _, checkpoint, test_data, calib = real_checkpoint
    results = {}
    for kind, extra in (("fp32", []), ("int8", ["--int8", "--calibration", str(calib)])):
        out = tmp_path / f"{kind}.onnx"
        argv = ["export", "--checkpoint", str(checkpoint), "--batch-size", "8", "--out", str(out)]
        code = main([*argv, *extra, "--calibration-images", "100"] if extra else argv)
        text = capsys.readouterr().out
        assert code == 0 and out.is_file() and not os.path.exists(f"{out}.data"), text
        code = main(["eval", "--backend", "onnxruntime", str(out), "--data", str(test_data)])
        text = capsys.readouterr().out
        assert code == 0 and f"ONNX Runtime, {kind}" in text and "300 images" in text
        code = main(
            ["eval", "--backend", "onnxruntime", str(out), "--data", str(test_data), "--json"]
        )
        record = json.loads(capsys.readouterr().out)
        assert record["precision"] == kind  # what the file computes in
        results[kind] = record["top1"]
    assert abs(results["int8"] - results["fp32"]) <= TOP1_TOLERANCE, results
    meta = OnnxSession(tmp_path / "int8.onnx").metadata
    assert meta["int8"]["calibration_batches"] == 13 and meta["preset"]["input_size"] == 32


def _one_line(capsys, argv, *fragments):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_calibration_folder_errors(tmp_path, capsys):
    argv = ["export", "--model", "resnet20_cifar", "--int8", "--out", str(tmp_path / "q.onnx")]
    _one_line(capsys, argv, "--int8 needs --calibration")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line(capsys, [*argv, "--calibration", str(empty)], "no images", str(empty))
    broken = tmp_path / "broken" / "cat"
    broken.mkdir(parents=True)
    for i in range(3):
        (broken / f"{i}.jpg").write_bytes(b"not a jpeg at all")
    _one_line(
        capsys,
        [*argv, "--calibration", str(broken.parent)],
        "only 0 of 3 calibration images could be read",
    )
    _one_line(capsys, [*argv, "--calibration", str(tmp_path / "nope")], "not a folder")
    data = make_image_folder(tmp_path / "ok", classes=2, per_class=2, size=32)
    _one_line(
        capsys,
        [*argv, "--calibration", str(data), "--float-layers", "everything"],
        "unknown --float-layers everything",
    )
    assert not (tmp_path / "q.onnx").exists()


def test_int8_on_a_model_with_nothing_to_quantize(tmp_path):
    class NoWeights(nn.Module):  # pooling and activations only: no Conv/Gemm/MatMul
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x).mean(dim=(2, 3))

    path, _ = export_onnx(NoWeights(), tmp_path / "f.onnx", (3, 8, 8))
    with pytest.raises(GhostnetError, match="quantized nothing") as info:
        quantize_onnx(path, tmp_path / "q.onnx", [torch.randn(1, 3, 8, 8).numpy()])
    assert "\n" not in str(info.value) and not (tmp_path / "q.onnx").exists()


def test_float_layers_keep_chosen_nodes_in_float(tmp_path):
    import onnx

    model = ModelSpec("ghostnet_050", {"num_classes": 10}).build().eval()
    path, _ = export_onnx(fuse(model), tmp_path / "g.onnx", (3, 32, 32))
    proto = onnx.load(str(path))
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    depthwise = float_layer_nodes(proto, ["depthwise"])
    grouped = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert depthwise == grouped and len(grouped) > 10
    assert float_layer_nodes(proto, ["first"]) == [convs[0].name]
    assert len(float_layer_nodes(proto, ["se"])) > 0
    cheap = float_layer_nodes(proto, ["cheap"])
    assert len(cheap) > 0 and set(cheap) <= set(depthwise)
    batches = [torch.randn(1, 3, 32, 32).numpy()]
    full = quantize_onnx(path, tmp_path / "a.onnx", batches)
    kept = quantize_onnx(path, tmp_path / "b.onnx", batches, float_layers=["depthwise"])
    assert kept["int8_layers"] == full["int8_layers"] - len(grouped)


def test_bf16_on_a_cpu_without_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "cpu_flags", lambda: ["avx2", "avx512f"])
    with pytest.raises(GhostnetError, match="avx512_bf16 or amx_bf16"):
        bench.run_benchmark(["resnet20_cifar"], [1], ["eager-bf16"], repeats=1, warmup=0)
    _one_line(
        capsys,
        ["bench", "--models", "resnet20_cifar", "--backends", "eager", "--precision", "bf16"],
        "bf16 needs a CPU with avx512_bf16 or amx_bf16",
        "use --precision fp32",
    )
    data = make_image_folder(tmp_path / "d", classes=2, per_class=2, size=16)
    _one_line(
        capsys,
        ["eval", "--checkpoint", "x.pt", "--data", str(data), "--precision", "bf16"],
    )


@pytest.mark.skipif(not bench.has_bf16(), reason="this CPU has no native bf16")
def test_bf16_backends_run_where_the_cpu_has_it():
    records = bench.run_benchmark(
        ["resnet20_cifar"], [2], ["fused-bf16", "onnxruntime-int8"], threads=1, repeats=1
    )
    assert [r.backend for r in records] == ["fused-bf16", "onnxruntime-int8"]
