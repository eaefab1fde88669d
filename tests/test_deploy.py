import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

import ghostnet
from ghostnet import GhostnetError
from ghostnet.bench import resolve_model, run_benchmark
from ghostnet.cli import main
from ghostnet.deploy import (
    FusedGhostConv2d,
    OnnxSession,
    count_batchnorm,
    export_onnx,
    fuse,
    onnx_op_counts,
    verify_onnx,
)

pytest.importorskip("onnxruntime")

from .conftest import randomise_bn as _randomise_bn
from .conftest import small_size as _small_size
from .conftest import swept_models


@pytest.mark.parametrize("name", swept_models())
def test_fuse_matches_eager_for_every_registered_model(name):
    kwargs = {"ratio": 3} if name.startswith("ghost_") else {}
    model = _randomise_bn(ghostnet.create_model(name, **kwargs), _small_size(name))
    fused = fuse(model)
    x = torch.randn(2, *_small_size(name))
    with torch.no_grad():
        expected, got = model(x), fused(x)
        exact = copy.deepcopy(model).double()(x.double())
    # within 1e-5 (relative to the logits' scale), or no further from the float64 truth than
    # the float32 eager model itself is (deep random nets amplify rounding either way)
    own_rounding = (expected.double() - exact).abs().max().item()
    fused_error = (got.double() - exact).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    assert (expected - got).abs().max().item() <= 1e-5 * scale or fused_error <= 2 * own_rounding
    assert count_batchnorm(fused) == 0
    assert len(list(fused.modules())) < len(list(model.modules()))


def test_fused_ghost_conv_handles_inner_bn_bias_and_ratio():
    model = nn.Sequential(
        ghostnet.GhostConv2d(4, 7, 3, padding=1, bias=True, ratio=3, inner_bn=True),
        nn.BatchNorm2d(7),
        nn.ReLU(),
        ghostnet.GhostConv2d(7, 5, 1),
        nn.ReLU(),
    )
    _randomise_bn(model)
    fused = fuse(model)
    assert sum(isinstance(m, FusedGhostConv2d) for m in fused.modules()) == 2
    x = torch.randn(3, 4, 9, 9)
    with torch.no_grad():
        assert torch.allclose(model(x), fused(x), atol=1e-5)


def test_untraceable_model_falls_back_to_sequential_pairs(caplog):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

        def forward(self, x):
            if x.sum() > 0:  # data-dependent: FX cannot trace this
                return self.body(x)
            return -self.body(x)

    model = _randomise_bn(Branchy())
    fused = fuse(model)
    assert count_batchnorm(fused) == 0 and "not FX-traceable" in caplog.text
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), fused(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", swept_models())
def test_onnx_export_matches_eager_for_every_registered_model(name, tmp_path):
    kwargs = {"ratio": 3} if name.startswith("ghost_") else {}
    size = _small_size(name)
    model = _randomise_bn(ghostnet.create_model(name, **kwargs), size)
    path, diff = export_onnx(fuse(model), tmp_path / f"{name}.onnx", size, reference=model)
    assert diff <= 1e-4
    assert verify_onnx(model, path, size, batch_size=1, trials=2) <= 1e-4


def test_onnx_check_is_relative_for_large_outputs_and_catches_a_wrong_file(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(4)).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 8, 8))
        model[2].weight.mul_(1e6)  # outputs of ~1e6: float32 rounding alone is ~0.1 absolute
    path, diff = export_onnx(model, tmp_path / "big.onnx", (3, 8, 8))
    assert diff <= 1e-6  # in units of the output scale
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[0].weight.mul_(1.01)  # a 1% different model: the file does not reproduce it
    with pytest.raises(GhostnetError, match="not faithful"):
        verify_onnx(other, path, (3, 8, 8))


def test_hard_sigmoid_is_one_op_and_dynamic_batch(tmp_path):
    model = ghostnet.create_model("ghostnet_050").eval()
    path, _ = export_onnx(fuse(model), tmp_path / "g.onnx", (3, 64, 64), dynamic_batch=True)
    ops = onnx_op_counts(path)
    se_blocks = sum(isinstance(m, ghostnet.SqueezeExcite) for m in model.modules())
    assert ops["HardSigmoid"] == se_blocks == 7
    assert "BatchNormalization" not in ops
    session = OnnxSession(path)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            assert torch.allclose(session(x), model(x), atol=1e-4)


def test_export_errors(tmp_path):
    model = ghostnet.create_model("resnet20_cifar").eval()
    for opset in (5, 99):
        with pytest.raises(GhostnetError, match="--opset must be between"):
            export_onnx(model, tmp_path / "m.onnx", (3, 32, 32), opset=opset)
    path, _ = export_onnx(model, tmp_path / "m.onnx", (3, 32, 32), batch_size=2)
    session = OnnxSession(path)
    with pytest.raises(
        GhostnetError, match=r"expects input \[2, 3, 32, 32\], got \[1, 3, 32, 32\]"
    ):
        session(torch.randn(1, 3, 32, 32))
    with pytest.raises(GhostnetError, match="expects input"):
        session(torch.randn(2, 3, 28, 28))
    with pytest.raises(GhostnetError, match="does not run on input"):
        export_onnx(model, tmp_path / "bad.onnx", (1, 32, 32))

    class Untraceable(nn.Module):
        def forward(self, x):  # Python-side, data-dependent: tracers bake it into constants
            return torch.tensor(sorted(x.flatten().tolist())[:4])

    with pytest.raises(
        GhostnetError, match=r"cannot be exported|not faithful|expected one image input"
    ):
        export_onnx(Untraceable(), tmp_path / "u.onnx", (3, 8, 8))
    assert not (tmp_path / "u.onnx").exists()
    with pytest.raises(GhostnetError, match="not found"):
        OnnxSession(tmp_path / "missing.onnx")


def test_export_cli(tmp_path, capsys):
    out = tmp_path / "g.onnx"
    code = main(["export", "--model", "ghostnet_050", "--input-size", "3,64,64", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "HardSigmoid 7" in text and "max abs diff" in text
    meta = OnnxSession(out).metadata
    assert meta["model_spec"]["name"] == "ghostnet_050" and meta["preset"]["input_size"] == 64
    split = tmp_path / "split.onnx"
    argv = ["export", "--model", "ghostnet_050", "--input-size", "3,64,64", "--split"]
    code = main([*argv, "--out", str(split)])
    text = capsys.readouterr().out
    assert code == 0 and "Concat" not in text and "max abs diff" in text
    padded = tmp_path / "padded.onnx"
    code = main([*argv, "--pad-channels", "16", "--out", str(padded)])
    assert code == 0 and "max abs diff" in capsys.readouterr().out  # checked against torch
    code = main([*argv[:-1], "--pad-channels", "16", "--out", str(tmp_path / "p.onnx")])
    assert code == 2 and "add --split" in capsys.readouterr().err
    code = main(
        ["export", "--model", "resnet20_cifar", "--out", str(tmp_path / "x.onnx"), "--opset", "3"]
    )
    assert code == 2 and "--opset" in capsys.readouterr().err


def test_bench_records_and_json(tmp_path, capsys):
    records = run_benchmark(
        ["resnet20_cifar"],
        [1, 2],
        ["eager", "fused", "onnxruntime"],
        threads=1,
        repeats=2,
        warmup=1,
    )
    assert {(r.backend, r.batch) for r in records} == {
        (b, n) for b in ("eager", "fused", "onnxruntime") for n in (1, 2)
    }
    assert all(r.min_ms <= r.median_ms <= r.max_ms and r.images_per_s > 0 for r in records)
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--models",
            "resnet20_cifar",
            "--batch-sizes",
            "1",
            "--backends",
            "eager,onnxruntime",
            "--threads",
            "1",
            "--repeats",
            "2",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    rows = json.loads(out.read_text())
    for key in ("median_ms", "min_ms", "max_ms", "images_per_s", "threads", "machine"):
        assert key in rows[0]
    assert rows[0]["machine"]["torch"] == torch.__version__
    assert resolve_model("resnet50") == "torchvision:resnet50"
    code = main(["bench", "--models", "resnet20_cifar", "--backends", "tensorrt"])
    assert code == 2 and "unknown backend" in capsys.readouterr().err


def test_openvino_backend_same_function():
    pytest.importorskip("openvino")
    records = run_benchmark(["resnet20_cifar"], [2], ["openvino"], threads=1, repeats=1, warmup=1)
    assert records[0].backend == "openvino" and records[0].median_ms > 0


class _InheritChain(nn.Module):
    """A MobileNetV2-like block (expand -> BN -> ReLU6 -> depthwise -> BN -> ReLU6 ->
    project) whose expansion becomes an inherited Ghost layer, then a conv whose output
    meets a residual add (its output order cannot be folded away)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.expand = nn.Conv2d(8, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False)
        self.bn2 = nn.BatchNorm2d(24)
        self.project = nn.Conv2d(24, 8, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=True)
        self.bn4 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = nn.functional.relu6(self.bn1(self.expand(x)))
        y = nn.functional.relu6(self.bn2(self.dw(y)))
        x = x + self.bn3(self.project(y))
        x = torch.relu(self.bn4(self.conv(x)) + x)
        return self.fc(x.mean(dim=(2, 3)))


def _inherited_chain():
    torch.manual_seed(0)
    model = _randomise_bn(_InheritChain(), (3, 16, 16))
    calibration = torch.randn(16, 3, 16, 16)
    return ghostnet.ghostify(
        model, 2, 3, include=["expand", "conv"], init="inherit", calibration=calibration
    ).eval()


def test_fuse_folds_inherited_output_order_where_it_can():
    model = _inherited_chain()
    assert not torch.equal(model.expand.output_order, torch.arange(24))
    fused = fuse(model)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max() < 1e-4
    # through BN, ReLU6 and the depthwise conv into the projection: folded away
    assert isinstance(fused.expand, FusedGhostConv2d) and fused.expand.output_order is None
    # into a residual add: kept, so the add still sees the original channel order
    assert torch.equal(fused.conv.output_order, model.conv.output_order)


def test_inherited_output_order_survives_onnx_export(tmp_path):
    model = _inherited_chain()
    path, diff = export_onnx(fuse(model), tmp_path / "inherit.onnx", (3, 16, 16), reference=model)
    assert diff <= 1e-4
    # one gather of ghost sources per layer, plus the one kept order (the folded one is gone)
    assert onnx_op_counts(path).get("Gather", 0) == 2 + 1


def _random_checkpoint(path, name="resnet20_cifar", size=32):
    """A ghostnet checkpoint with untrained weights (export checks need no accuracy)."""
    from ghostnet.checkpoint import FORMAT
    from ghostnet.data import choose_preset
    from ghostnet.models import ModelSpec

    spec = ModelSpec(name, {"num_classes": 3})
    torch.save(
        {
            "format": FORMAT,
            "model_spec": spec.to_dict(),
            "classes": ["a", "b", "c"],
            "preset": choose_preset("cifar", (size, size)).to_dict(),
            "model": spec.build().state_dict(),
        },
        path,
    )
    return path


def test_export_file_defects(tmp_path, capsys):
    """Issue #14: one self-contained file, the exported size in the metadata, a folder as
    --out and a --model that disagrees with --checkpoint refused before any work."""
    checkpoint = _random_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "m.onnx"
    argv = ["export", "--checkpoint", str(checkpoint), "--input-size", "3,64,64"]
    assert main([*argv, "--out", str(out)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "m.onnx"]  # no m.onnx.data
    session = OnnxSession(out)
    assert session.input_shape == [1, 3, 64, 64] and session.metadata["preset"]["input_size"] == 64
    # predict prepares images at the exported size instead of refusing the file
    from .imagegen import make_image_folder

    images = make_image_folder(tmp_path / "imgs", classes=1, per_class=2, size=32)
    assert main(["predict", "--backend", "onnxruntime", str(out), str(images)]) == 0
    capsys.readouterr()
    folder = tmp_path / "existing"
    folder.mkdir()
    code = main(["export", "--checkpoint", str(checkpoint), "--out", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and "is an existing folder" in err and "traceable" not in err
    assert len(err.strip().splitlines()) == 1 and list(folder.iterdir()) == []
    assert not (tmp_path / "existing.data").exists()
    code = main(["export", "--model", "ghostnet_100", "--checkpoint", str(checkpoint), "--out",
                 str(tmp_path / "x.onnx")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "disagrees" in err and "resnet20_cifar" in err
    assert not (tmp_path / "x.onnx").exists()
    # the same name is accepted
    argv = ["export", "--model", "resnet20_cifar", "--checkpoint", str(checkpoint)]
    assert main([*argv, "--out", str(tmp_path / "y.onnx")]) == 0


def test_bench_precision_backends_are_validated(capsys):
    from ghostnet.bench import _parse_backend

    assert _parse_backend("onnxruntime-split-int8") == ("onnxruntime", "split", "int8")
    assert _parse_backend("onnxruntime-pad") == ("onnxruntime", "pad", "fp32")
    assert _parse_backend("compile-bf16") == ("compile", "", "bf16")
    for bad in (
        "onnxruntime-bf16",
        "eager-int8",
        "eager-split",
        "eager-pad",
        "onnxruntime-pad-split",
    ):
        with pytest.raises(GhostnetError, match="unknown backend"):
            _parse_backend(bad)


def test_squeeze_excite_pooling_exports_as_global_average_pool(tmp_path):
    """x.mean((2, 3), keepdim=True) of a 4-D map becomes GlobalAveragePool (runs in ONNX
    Runtime's blocked layout); other means stay ReduceMean; outputs checked by the export."""
    import onnx

    class Means(nn.Module):
        def forward(self, x):
            gate = torch.sigmoid(x.mean((2, 3), keepdim=True))  # -> GlobalAveragePool
            flat = x.mean((-2, -1), keepdim=True)  # -> GlobalAveragePool (negative axes)
            over_channels = x.mean(1, keepdim=True)  # stays: not a spatial pool
            squeezed = x.mean((2, 3))  # stays: keepdim=False changes the shape
            return x * gate + flat + over_channels + squeezed[:, :, None, None]

    path, diff = export_onnx(Means(), tmp_path / "m.onnx", (4, 5, 6), batch_size=2)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("GlobalAveragePool") == 2 and ops.count("ReduceMean") == 2
    assert diff < 1e-5


def test_global_pools_leaves_what_it_cannot_prove_alone():
    """Integer maps (GlobalAveragePool is float-only) and axes that are graph inputs (a
    caller may feed others) keep their ReduceMean; nothing they read is dropped."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ghostnet.deploy import global_pools

    def model(dtype, axes_is_input):
        axes = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")
        inputs = [helper.make_tensor_value_info("x", dtype, [1, 2, 3, 3])]
        if axes_is_input:
            inputs.append(helper.make_tensor_value_info("axes", TensorProto.INT64, [2]))
        graph = helper.make_graph(
            [helper.make_node("ReduceMean", ["x", "axes"], ["y"])],
            "g",
            inputs,
            [helper.make_tensor_value_info("y", dtype, [1, 2, 1, 1])],
            initializer=[axes],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    for dtype, axes_is_input in ((TensorProto.INT32, False), (TensorProto.FLOAT, True)):
        proto = model(dtype, axes_is_input)
        assert global_pools(proto) == 0
        assert [n.op_type for n in proto.graph.node] == ["ReduceMean"]
        assert [t.name for t in proto.graph.initializer] == ["axes"]
        onnx.checker.check_model(proto)
    proto = model(TensorProto.FLOAT, False)
    assert global_pools(proto) == 1 and not proto.graph.initializer
    onnx.checker.check_model(proto)
