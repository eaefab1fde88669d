import os
import pickle

import pytest
import torch

import ghostnet
from ghostnet import GhostnetError, load_state_dict_file, load_weights, save_weights
from ghostnet.weights import PRETRAINED, WeightSource, fetch_pretrained, verify


class _Evil:
    """Unpickling this would create a directory: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def small():
    return ghostnet.create_model("resnet20_cifar")


def test_safetensors_round_trip(tmp_path, small):
    path = save_weights(small, tmp_path / "m.safetensors", {"model": "resnet20_cifar"})
    fresh = load_weights(ghostnet.create_model("resnet20_cifar"), path)
    for k, v in small.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_torch_state_dict_and_wrapped_checkpoints(tmp_path, small):
    plain = tmp_path / "plain.pt"
    torch.save(small.state_dict(), plain)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": small.state_dict(), "epoch": 3}, wrapped)
    ddp = tmp_path / "ddp.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in small.state_dict().items()}}, ddp)
    for path in (plain, wrapped, ddp):
        assert set(load_state_dict_file(path)) == set(small.state_dict())


def test_wrong_architecture_lists_keys_and_shapes(tmp_path):
    path = save_weights(ghostnet.create_model("resnet20_cifar"), tmp_path / "r20.safetensors")
    with pytest.raises(GhostnetError) as info:
        load_weights(ghostnet.create_model("resnet32_cifar"), path)
    message = str(info.value)
    assert "missing" in message and "layer1.3" in message
    path10 = save_weights(ghostnet.create_model("resnet20_cifar"), tmp_path / "r20_10.safetensors")
    with pytest.raises(GhostnetError, match=r"shape mismatches: fc.weight \(10, 64\)"):
        load_weights(ghostnet.create_model("resnet20_cifar", num_classes=100), path10)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_file(tmp_path, small, suffix):
    path = tmp_path / f"m{suffix}"
    if suffix == ".pt":
        torch.save(small.state_dict(), path)
    else:
        save_weights(small, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GhostnetError, match="truncated or corrupt"):
        load_state_dict_file(path)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(GhostnetError, match="0 bytes"):
        load_state_dict_file(empty)
    with pytest.raises(GhostnetError, match="not found"):
        load_state_dict_file(tmp_path / "nope.pt")


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_code_executing_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"weight": torch.zeros(1), "trap": _Evil(str(marker))}
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(GhostnetError, match="refused"):
        load_state_dict_file(path)
    assert not marker.exists(), "the pickle's code ran"


def test_hash_verification(tmp_path, monkeypatch):
    data = tmp_path / "w.pth"
    data.write_bytes(b"not the official weights")
    with pytest.raises(GhostnetError, match="SHA-256"):
        verify(data, PRETRAINED["ghostnet_100"])
    import hashlib

    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    verify(data, WeightSource("file://x", "w.pth", sha[:8]))
    # a cached file is verified before use, never trusted blindly
    monkeypatch.setenv("GHOSTNET_CACHE", str(tmp_path))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / PRETRAINED["ghostnet_100"].filename).write_bytes(b"tampered")
    with pytest.raises(GhostnetError, match="SHA-256"):
        fetch_pretrained("ghostnet_100")


def test_checkpoint_reader_names_a_damaged_safetensors_and_a_folder(tmp_path):
    """A truncated .safetensors is called damaged (not 'bare weights'); a folder given as a
    checkpoint is called a folder, with its best.pt suggested when it has one."""
    from safetensors.torch import save_file

    from ghostnet.checkpoint import read_checkpoint

    whole = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(64, 64)}, str(whole))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:100])
    with pytest.raises(GhostnetError, match="not a readable safetensors file"):
        read_checkpoint(cut)
    with pytest.raises(GhostnetError, match="bare weights"):
        read_checkpoint(whole)
    (tmp_path / "run").mkdir()
    with pytest.raises(GhostnetError, match=r"is a folder; give a checkpoint file$"):
        read_checkpoint(tmp_path / "run")
    (tmp_path / "run" / "best.pt").write_bytes(b"x")
    with pytest.raises(GhostnetError, match=r"such as .*best\.pt"):
        read_checkpoint(tmp_path / "run")
