"""deploy.export to every installed mobile runtime (ExecuTorch, ncnn, LiteRT): each
GhostNet family member matches PyTorch on the real runtime; predict/eval run the files;
bad input is one line each (runtime missing, op not lowerable, full disk, wrong runtime)."""

from __future__ import annotations

import builtins
import errno
import importlib.util
import json

import pytest
import torch
from torch import nn

from ghostnet.cli import main
from ghostnet.deploy import FORMATS, export, open_exported
from ghostnet.errors import GhostnetError
from ghostnet.models import create_model

from .conftest import randomise_bn
from .imagegen import make_image_folder

# the runtimes whose packages are importable here; litert behind its own marker
RUNTIMES = {
    "executorch": ("executorch", "executorch"),
    "ncnn": ("ncnn", "pnnx"),
    "litert": ("ai_edge_litert", "litert_torch"),
}
FAMILY = ["ghostnet_100", "ghostnetv2_100", "ghostnetv3_100", "g_ghost_regnetx_002"]
SIZE = (3, 32, 32)


def _installed(fmt: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in RUNTIMES[fmt])


def _formats(slow: tuple[str, ...] = ()) -> list:
    params = []
    for fmt in RUNTIMES:
        marks = [pytest.mark.skipif(not _installed(fmt), reason=f"ghostnet[{fmt}] not installed")]
        if fmt in slow:
            marks.append(pytest.mark.slow)
        if fmt == "litert":
            marks.append(pytest.mark.litert)
        params.append(pytest.param(fmt, marks=marks, id=fmt))
    return params


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """A mobilenetv2_cifar checkpoint trained one short epoch on 3 classes of 16x16 images."""
    root = tmp_path_factory.mktemp("runtimes")
    data = make_image_folder(root / "data", classes=3, per_class=4, size=16)
    out = root / "run"
    # mobilenetv2_cifar: resnet20_cifar's option-A shortcut (a strided slice) has no ncnn layer
    args = ["train", "--model", "mobilenetv2_cifar", "--data", str(data), "--out", str(out)]
    assert main([*args, "--epochs", "1", "--batch-size", "8", "--quiet"]) == 0
    return out / "last.pt", data


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomise_bn(create_model(name, num_classes=10), SIZE).eval()


# ExecuTorch's and LiteRT's lowering takes 40-150 s per model on a 2-core CPU: slow
@pytest.mark.parametrize("fmt", _formats(slow=("executorch", "litert")))
@pytest.mark.parametrize("name", FAMILY)
def test_family_exports_and_matches_pytorch(fmt, name, tmp_path):
    """The deploy form (V3 reparameterized, BN folded) on the real runtime agrees with the
    training-form PyTorch model, and the file carries the metadata predict needs."""
    model = _model(name)
    out = tmp_path / f"m{FORMATS[fmt][0]}"
    result = export(model, fmt, out, SIZE, metadata={"classes": list("abcdefghij")})
    assert result.agreement.max_diff < 1e-4 and result.agreement.note is None
    assert result.batchnorm[1] == 0
    session = open_exported(out, threads=1)
    x = torch.randn(1, *SIZE)
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(session(x), expected, atol=1e-4 * max(1.0, expected.abs().max()))
    assert session.metadata["classes"] == list("abcdefghij")
    assert session.metadata["input_size"] == list(SIZE)


@pytest.mark.parametrize("fmt", _formats())
def test_predict_and_eval_on_an_exported_checkpoint(fmt, tmp_path, capsys, trained_tiny):
    """predict on the exported file names the checkpoint's classes, with the same top-1 as
    the checkpoint; eval runs it on a data set."""
    checkpoint, data = trained_tiny
    out = tmp_path / f"m{FORMATS[fmt][0]}"
    assert (
        main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]) == 0
    )
    capsys.readouterr()
    images = str(data / "test")
    assert main(["predict", str(out), images, "--topk", "1", "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert main(["predict", "--checkpoint", str(checkpoint), images, "--topk", "1", "--json"]) == 0
    reference = json.loads(capsys.readouterr().out)
    classes = torch.load(checkpoint, weights_only=True)["classes"]
    assert {r["top"][0]["class"] for r in exported} <= set(classes)
    assert [r["top"][0]["class"] for r in exported] == [r["top"][0]["class"] for r in reference]
    assert main(["eval", str(out), "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == len(exported)


@pytest.mark.slow
@pytest.mark.skipif(not _installed("executorch"), reason="ghostnet[executorch] not installed")
def test_executorch_int8_export_is_quantized_and_runs(tmp_path, capsys, trained_tiny):
    """--format executorch --int8: PT2E with XNNPACKQuantizer, calibrated on the data's
    images; int8 weights make the program well under half the fp32 one's size, its
    metadata says how it was quantized, and eval runs it."""
    checkpoint, data = trained_tiny
    base = ["export", "--checkpoint", str(checkpoint), "--format", "executorch"]
    fp32, int8 = tmp_path / "fp32.pte", tmp_path / "int8.pte"
    assert main([*base, "--out", str(fp32)]) == 0
    calibration = ["--calibration", str(data), "--calibration-images", "8"]
    assert main([*base, "--int8", *calibration, "--out", str(int8)]) == 0
    printed = capsys.readouterr().out
    assert "int8: XNNPACKQuantizer" in printed and "top-1 agrees with fp32 on" in printed
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    meta = open_exported(int8).metadata
    assert meta["int8"]["quantize_ops"] > 10 and meta["int8"]["calibration_images"] == 8
    assert main(["eval", str(int8), "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 12


def test_int8_on_a_format_without_a_toolchain_is_one_line(tmp_path, capsys, trained_tiny):
    checkpoint, data = trained_tiny
    base = ["export", "--checkpoint", str(checkpoint), "--int8", "--calibration", str(data)]
    assert main([*base, "--format", "ncnn", "--out", str(tmp_path / "m.param")]) == 2
    assert "--int8 is built for --format onnx or executorch; not ncnn" in _one_line(capsys)
    out = str(tmp_path / "m.pte")
    assert main([*base, "--format", "executorch", "--float-layers", "se", "--out", out]) == 2
    assert "--float-layers and --calibration-method are ONNX Runtime's" in _one_line(capsys)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("fmt", list(RUNTIMES))
def test_missing_runtime_names_the_extra(fmt, tmp_path, monkeypatch, capsys):
    """With the runtime's package not importable: one line naming ghostnet[FORMAT]."""
    real_import = builtins.__import__
    blocked = RUNTIMES[fmt]

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] in blocked:
            raise ImportError(f"No module named {name!r}", name=name.split(".")[0])
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    out = tmp_path / f"m{FORMATS[fmt][0]}"
    status = main(["export", "--model", "resnet20_cifar", "--format", fmt, "--out", str(out)])
    line = _one_line(capsys)
    assert status == 2 and f"pip install 'ghostnet[{fmt}]'" in line, line
    assert not out.exists()


class _Unlowerable(nn.Module):
    """An op with no ExecuTorch/ncnn kernel on its path: a complex FFT."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(x).abs().mean((2, 3))


@pytest.mark.parametrize(
    ("fmt", "model", "op"),
    [
        pytest.param("executorch", _Unlowerable(), "fft", marks=_formats()[0].marks),
        # resnet20_cifar's option-A shortcut x[:, :, ::2, ::2]: ncnn's Crop has no step
        pytest.param(
            "ncnn", create_model("resnet20_cifar"), "Tensor.slice", marks=_formats()[1].marks
        ),
    ],
    ids=["executorch", "ncnn"],
)
def test_a_model_the_converter_cannot_lower_names_the_op(fmt, model, op, tmp_path):
    with pytest.raises(GhostnetError, match=op) as info:
        export(model.eval(), fmt, tmp_path / f"m{FORMATS[fmt][0]}", (3, 32, 32))
    assert len(str(info.value).splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", [p for p in _formats() if p.values[0] != "litert"])
def test_full_disk_is_one_line(fmt, tmp_path, monkeypatch, capsys):
    """ENOSPC from the write path (as tests/test_faults.py patches it): one line, no file."""
    import ghostnet.safe_io as safe_io

    real_open = open

    def full_open(file, mode="r", *args, **kwargs):
        if "w" in mode and ".tmp-" in str(file):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(safe_io, "open", full_open, raising=False)
    out = tmp_path / f"m{FORMATS[fmt][0]}"
    argv = ["export", "--model", "mobilenetv2_cifar", "--format", fmt, "--out", str(out)]
    status = main(argv)
    line = _one_line(capsys)
    assert status == 2 and line.startswith("ghostnet export: error: cannot write "), line
    assert "disk full" in line
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


@pytest.mark.skipif(not _installed("executorch"), reason="ghostnet[executorch] not installed")
def test_pte_given_to_ncnn_predict_is_one_line(tmp_path, capsys):
    out = tmp_path / "m.pte"
    export(create_model("resnet20_cifar").eval(), "executorch", out, (3, 32, 32))
    status = main(["predict", "--backend", "ncnn", str(out), str(tmp_path)])
    line = _one_line(capsys)
    assert status == 2 and "is a --format executorch file" in line and ".param" in line, line


def test_an_unknown_suffix_is_one_line(tmp_path, capsys):
    (tmp_path / "m.xyz").write_bytes(b"")
    with pytest.raises(GhostnetError, match="not an exported model file"):
        open_exported(tmp_path / "m.xyz")
    with pytest.raises(GhostnetError, match=r"ends in \.pte"):
        export(create_model("resnet20_cifar"), "executorch", tmp_path / "m.onnx", (3, 32, 32))


@pytest.mark.skipif(not _installed("ncnn"), reason="ghostnet[ncnn] not installed")
def test_ncnn_takes_module_names_that_are_not_identifiers(tmp_path):
    """torchvision's RegNet names its blocks `block1-0`: pnnx's generated Python model does
    not import, but its ncnn files are complete and agree with PyTorch."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    model = nn.Sequential()
    model.add_module("block1-0", block)
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    result = export(model.eval(), "ncnn", tmp_path / "m.param", (3, 16, 16))
    assert result.path.is_file() and result.agreement.max_diff <= 1e-4
