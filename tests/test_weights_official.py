"""Official GhostNetV2/V3 checkpoint layouts, the EMA choice, and version mismatches."""

import pytest
import torch

import ghostnet
from ghostnet import GhostnetError
from ghostnet.cli import main


def _perturbed(state, delta):
    return {k: v + delta if v.is_floating_point() else v for k, v in state.items()}


def _official_v3(state):
    """Our (= timm's) V3 keys in the official release's names: ``bn`` in the branches,
    thop's profiling buffers in every module."""
    out = {}
    for key, value in state.items():
        if "_rpr_" in key:
            key = key.replace(".bn1.", ".bn.")
        out[key] = value
        module = key.rsplit(".", 1)[0]
        out[f"{module}.total_ops"] = torch.zeros(1, dtype=torch.float64)
        out[f"{module}.total_params"] = torch.zeros(1, dtype=torch.float64)
    return out


def test_official_v3_file_with_ema_and_renames(tmp_path):
    state = ghostnet.create_model("ghostnetv3_050").state_dict()
    ema = _perturbed(state, 0.5)
    path = tmp_path / "ghostnetv3-0.5.pth.tar"
    torch.save(
        {"epoch": 3, "state_dict": _official_v3(state), "state_dict_ema": _official_v3(ema)}, path
    )
    key = "blocks.3.0.ghost1.primary_rpr_conv.0.bn1.weight"
    default = ghostnet.create_model("ghostnetv3_050", pretrained=path)
    assert torch.equal(default.state_dict()[key], ema[key])  # EMA copy by default
    raw = ghostnet.create_model("ghostnetv3_050", pretrained=path, ema=False)
    assert torch.equal(raw.state_dict()[key], state[key])
    both = ghostnet.create_model("ghostnetv3_050", pretrained=path, ema=True)
    assert torch.equal(both.state_dict()[key], ema[key])


def test_official_v2_file_with_module_prefix(tmp_path):
    state = ghostnet.create_model("ghostnetv2_100").state_dict()
    path = tmp_path / "ck_ghostnetv2_10.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = ghostnet.create_model("ghostnetv2_100", pretrained=path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(GhostnetError, match="no EMA copy"):
        ghostnet.create_model("ghostnetv2_100", pretrained=path, ema=True)


def test_version_mismatch_is_named_in_one_line(tmp_path):
    v3 = tmp_path / "v3.pth"
    torch.save(ghostnet.create_model("ghostnetv3_100").state_dict(), v3)
    with pytest.raises(GhostnetError) as err:
        ghostnet.create_model("ghostnetv2_100", pretrained=v3)
    assert "GhostNetV3 (training form)" in str(err.value) and "\n" not in str(err.value)
    v2 = tmp_path / "v2.pth"
    torch.save(ghostnet.create_model("ghostnetv2_100").state_dict(), v2)
    with pytest.raises(GhostnetError, match="GhostNetV2 checkpoint but the model is a GhostNetV3"):
        ghostnet.create_model("ghostnetv3_100", pretrained=v2)
    with pytest.raises(GhostnetError, match="deploy=True"):
        deploy = tmp_path / "v3d.pth"
        torch.save(ghostnet.create_model("ghostnetv3_100", deploy=True).state_dict(), deploy)
        ghostnet.create_model("ghostnetv3_100", pretrained=deploy)


def test_cli_no_ema_flag_reaches_the_loader(tmp_path, capsys):
    state = ghostnet.create_model("ghostnetv3_050").state_dict()
    path = tmp_path / "v3.pth.tar"
    torch.save({"state_dict": state}, path)
    args = ["export", "--model", "ghostnetv3_050", "--pretrained", str(path)]
    args += ["--input-size", "3,32,32", "--out", str(tmp_path / "m.onnx"), "--ema"]
    assert main(args) == 2
    assert "no EMA copy" in capsys.readouterr().err
