import json

import pytest
import torch
import torch.nn.functional as F

import ghostnet
from ghostnet import GhostnetError
from ghostnet.analysis import (
    analyze_model,
    capture,
    fit_pairs,
    reconstruct,
    resolve_layers,
    suggested_ratios,
    summarize,
    top_pairs,
)
from ghostnet.analysis.report import write_report
from ghostnet.cli import main

from .imagegen import make_image_folder


def _constructed_maps():
    """Two random 'intrinsic' maps, exact cheap-op copies of each, and two noise maps."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(24, 1, 14, 14, generator=g)
    b = torch.randn(24, 1, 14, 14, generator=g)
    shift = torch.zeros(1, 1, 3, 3)
    shift[0, 0, 1, 2] = 1.0  # move one pixel left
    blur = torch.full((1, 1, 3, 3), 1 / 9)
    maps = torch.cat(
        [
            a,  # 0
            F.conv2d(a, shift, padding=1),  # 1 shifted copy of 0
            F.conv2d(a, blur, padding=1),  # 2 blurred copy of 0
            2.5 * b + 1.0,  # 3 scaled and brightened copy of 4
            b,  # 4
            torch.randn(24, 2, 14, 14, generator=g),  # 5, 6 independent noise
        ],
        dim=1,
    )
    return maps


def test_ghost_pairs_found_with_near_zero_error():
    fits = fit_pairs(_constructed_maps())
    assert fits.error[0, 1] < 1e-4  # shift
    assert fits.error[0, 2] < 1e-4  # blur
    assert fits.error[4, 3] < 1e-4 and fits.error[3, 4] < 1e-4  # scale + brightness
    assert fits.error[0, 5] > 0.9 and fits.error[5, 6] > 0.9  # independent noise
    assert fits.error[0, 4] > 0.9  # independent intrinsic maps
    assert torch.isinf(fits.error.diagonal()).all()
    # the fitted kernel of the pure shift is the shift itself
    expected = torch.zeros(3, 3)
    expected[1, 2] = 1.0
    assert torch.allclose(fits.kernels[0, 1], expected, atol=1e-3)
    maps = _constructed_maps()
    recon = reconstruct(maps[3, 0], fits.kernels[0, 1], float(fits.bias[0, 1]))
    assert torch.allclose(recon, maps[3, 1], atol=1e-3)


def test_summary_cover_and_ratio():
    summary = summarize(fit_pairs(_constructed_maps()), threshold=0.05)
    assert summary.channels == 7
    intrinsic = set(summary.intrinsic)
    assert len(intrinsic & {0, 1, 2}) == 1 and len(intrinsic & {3, 4}) == 1
    assert {5, 6} <= intrinsic and len(intrinsic) == 4
    assert summary.ratio_exact == pytest.approx(7 / 4) and summary.suggested_ratio == 1
    # 1, 2 (from 0) and 3, 4 (from each other) are ghosts; a shift or blur loses information,
    # so 0 is not recovered from 1 or 2 within the threshold, and noise is from nothing
    assert [e < 0.05 for e in summary.best_error] == [False, True, True, True, True, False, False]
    assert summary.ghost_fraction == pytest.approx(4 / 7)
    assert summary.best_source[3] == 4 and summary.best_source[1] in (0, 2)


def test_dead_maps_and_top_pairs():
    maps = _constructed_maps()
    maps[:, 6] = 0.0  # a dead ReLU channel
    fits = fit_pairs(maps)
    assert fits.dead.tolist() == [False] * 6 + [True]
    pairs = top_pairs(fits, 3)
    assert all(6 not in (i, j) for i, j, _ in pairs)
    used = [m for i, j, _ in pairs for m in (i, j)]
    assert len(used) == len(set(used))


def test_pixel_subsampling_keeps_answers():
    fits = fit_pairs(_constructed_maps(), max_positions=1500)
    assert fits.positions == 1500
    assert fits.error[0, 1] < 1e-4 and fits.error[0, 5] > 0.8


def test_capture_and_layer_errors():
    model = ghostnet.create_model("resnet20_cifar")
    images = torch.randn(4, 3, 32, 32)
    maps = capture(model, images, ["layer1.0.conv1", "layer3.2.conv2"])
    assert maps["layer1.0.conv1"].shape == (4, 16, 32, 32)
    assert maps["layer3.2.conv2"].shape == (4, 64, 8, 8)
    with pytest.raises(GhostnetError, match=r"unknown layer 'layer1\.0\.conv9'.*layer1\.0\.conv1"):
        resolve_layers(model, "layer1.0.conv9")
    with pytest.raises(GhostnetError, match="not 4-D"):
        capture(model, images, ["fc"])
    assert len(resolve_layers(model, "all-convs")) == 19


def test_analyze_model_report_and_ghost_layers(tmp_path):
    model = ghostnet.create_model("ghost_resnet20_cifar")
    images = torch.randn(8, 3, 32, 32)
    report, _ = analyze_model(model, images, "all-convs", threshold=0.1, top=3)
    names = [layer["name"] for layer in report["layers"]]
    assert names[0] == "conv1" and "layer1.0.conv1" in names
    ghost_entry = next(e for e in report["layers"] if e["kind"] == "GhostConv2d")
    # a linear GhostConv2d's ghosts are exactly depthwise filters of their sources
    assert ghost_entry["ghost_layer"]["designated_error_mean"] < 1e-3
    assert ghost_entry["ghost_layer"]["designated_below_threshold"] == 1.0
    path = write_report(report, tmp_path / "report.json")
    ratios = suggested_ratios(path)
    assert list(ratios) == ["conv1"]  # Ghost layers are not converted twice
    json.loads(path.read_text())


def test_suggested_ratios_drive_ghostify(tmp_path):
    model = ghostnet.create_model("resnet20_cifar")
    report, _ = analyze_model(model, torch.randn(4, 3, 32, 32), "layer1.0.conv1,layer2.0.conv2")
    report["layers"][0]["suggested_ratio"] = 4
    report["layers"][1]["suggested_ratio"] = 2
    path = write_report(report, tmp_path / "report.json")
    converted = ghostnet.ghostify(model, suggested_ratios(path))
    ghosts = {
        n: m.ratio for n, m in converted.named_modules() if isinstance(m, ghostnet.GhostConv2d)
    }
    assert ghosts == {"layer1.0.conv1": 4, "layer2.0.conv2": 2}
    assert main(["ghostify", "resnet20_cifar", "--from-report", str(path)]) == 0
    assert main(["profile", "resnet20_cifar", "--from-report", str(path)]) == 0


def test_report_errors(tmp_path):
    with pytest.raises(GhostnetError, match="run `ghostnet analyze`"):
        suggested_ratios(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"layers": []}))
    with pytest.raises(GhostnetError, match="not a ghostnet analysis report"):
        suggested_ratios(bad)


def test_analyze_cli_end_to_end(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", classes=3, per_class=8, size=32)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                "resnet20_cifar",
                "--data",
                str(data),
                "--out",
                str(run),
                "--epochs",
                "1",
                "--batch-size",
                "12",
                "--quiet",
            ]
        )
        == 0
    )
    out = tmp_path / "analysis"
    code = main(
        [
            "analyze",
            "--checkpoint",
            str(run / "last.pt"),
            "--images",
            str(data),
            "--num-images",
            "12",
            "--layers",
            "conv1,layer2.0.conv1,layer3.0.conv2",
            "--compare-untrained",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == 12 and len(report["layers"]) == 3
    assert len(report["untrained"]["layers"]) == 3
    for figure in ("feature_maps.png", "ghost_pairs.png", "ratios.png"):
        assert (out / figure).stat().st_size > 5000
    printed = capsys.readouterr().out
    assert "layer2.0.conv1" in printed and "untrained" in printed

    cases = [
        (["--images", str(tmp_path / "empty")], "not found"),
        (["--images", str(data), "--layers", "nope"], "unknown layer"),
        (["--images", str(data), "--model", "resnet32_cifar"], "holds a resnet20_cifar"),
    ]
    (tmp_path / "noimages").mkdir()
    cases.append((["--images", str(tmp_path / "noimages")], "no images"))
    for extra, fragment in cases:
        code = main(["analyze", "--checkpoint", str(run / "last.pt"), "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2 and fragment in err and "Traceback" not in err
