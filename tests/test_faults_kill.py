"""SIGKILL during the write itself: a forked child writes through ghostnet.safe_io with a
hook that kills it at a seeded byte (or between write, fsync and rename). Afterwards the
destination is the old complete file or the new complete file, never a torn one; the
temp file a kill leaves is ignored by readers and removed by the next owner of the folder.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import random
import signal
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ghostnet import safe_io
from ghostnet.checkpoint import atomic_save, read_checkpoint, remove_stale_temp_files
from ghostnet.engine import config_from, fit

from .imagegen import make_image_folder

SEED = 30  # the kill points below are drawn from it, so a failure replays exactly


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _temps(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp-*"))


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _KillingFile:
    """A file object that writes in small pieces, flushed to the OS, and SIGKILLs its
    process once ``at`` bytes of the file are written (a kill mid-write: the bytes before
    it are in the temp file, the rest never arrive)."""

    def __init__(self, f, at: int) -> None:
        self._f, self._at, self._written = f, at, 0

    def write(self, data: bytes | str) -> int:
        view = data if isinstance(data, str) else memoryview(data).cast("B")  # text: ASCII
        for start in range(0, len(view), 4096):
            piece = view[start : start + 4096]
            if self._written + len(piece) > self._at:
                self._f.write(piece[: self._at - self._written])
                self._f.flush()
                _die()
            self._f.write(piece)
            self._written += len(piece)
        return len(view)

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _in_child(action: Callable[[], None], hook: Callable[[], None]) -> int:
    """Fork; the child installs ``hook``, runs ``action`` and must die by SIGKILL in it.
    Returns the child's pid (its temp files carry it)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            torch.set_num_threads(1)
            hook()
            action()
        except BaseException:  # shown in the test's output: why the child was not killed
            traceback.print_exc()
        finally:
            os._exit(3)  # not killed: the hook never fired
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    return pid


def _train_and_die(values: dict[str, object], at: int) -> None:  # pragma: no cover - child
    """A spawned child: train with a hook that kills it at byte ``at`` of the second
    last.pt. Spawned, not forked: the parent (a test worker) may have run autograd, whose
    threads a forked child cannot use."""
    torch.set_num_threads(1)
    _kill_at_byte("last.pt", at, nth=2)()
    fit(config_from(None, **values))
    raise SystemExit(3)  # not killed: the hook never fired


def _kill_at_byte(name: str, at: int, nth: int = 1) -> Callable[[], None]:
    """Hook: the ``nth`` safe_io write whose final name is ``name`` dies at byte ``at``."""

    def install() -> None:
        real_open = open
        seen = {"n": 0}

        def killing_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if "w" in mode and Path(file).name.startswith(f".{Path(name).stem}.tmp-"):
                seen["n"] += 1
                if seen["n"] == nth:
                    return _KillingFile(f, at)
            return f

        safe_io.open = killing_open  # atomic_open's `open` is looked up in safe_io first

    return install


def _kill_at(step: str) -> Callable[[], None]:
    """Hook: die after the bytes are written, at ``step`` of the commit sequence."""

    def install() -> None:
        if step == "before fsync":
            os.fsync = lambda fd: _die()
        elif step == "before rename":
            os.replace = lambda src, dst: _die()
        elif step == "after rename":
            safe_io._fsync_folder = lambda folder: _die()

    return install


def _payload(marker: int) -> dict[str, object]:
    torch.manual_seed(marker)
    return {"marker": marker, "weights": torch.randn(64, 64)}


def _kill_points(size: int) -> list[int]:
    """Seeded byte offsets spread over the file, plus its first and last byte."""
    rng = random.Random(SEED)
    return [0, 1, *sorted(rng.sample(range(2, size - 1), 6)), size - 1]


def test_kill_at_seeded_bytes_leaves_the_old_checkpoint(tmp_path):
    """Old last.pt present: a kill at any byte of the new one's write leaves the old one,
    bit for bit, and a temp file nobody takes for a checkpoint."""
    path = tmp_path / "last.pt"
    atomic_save(_payload(1), path)
    old = _sha(path)
    size = path.stat().st_size  # the new payload has the same size
    for at in _kill_points(size):
        pid = _in_child(lambda: atomic_save(_payload(2), path), _kill_at_byte("last.pt", at))
        assert _sha(path) == old, f"killed at byte {at}"
        assert read_checkpoint_marker(path) == 1
        temp = tmp_path / f".last.tmp-{pid}.pt"
        assert _temps(tmp_path) == [temp]
        assert temp.stat().st_size == at  # the torn bytes stayed in the temp file
        remove_stale_temp_files(tmp_path)
        assert _temps(tmp_path) == []


def read_checkpoint_marker(path: Path) -> int:
    return torch.load(path, weights_only=True)["marker"]


@pytest.mark.parametrize(
    ("step", "marker"), [("before fsync", 1), ("before rename", 1), ("after rename", 2)]
)
def test_kill_between_write_fsync_and_rename(tmp_path, step, marker):
    """Before the rename the old file stands; after it the new one is complete."""
    path = tmp_path / "last.pt"
    atomic_save(_payload(1), path)
    before = {1: _sha(path)}
    atomic_save(_payload(2), tmp_path / "new.pt")
    before[2] = _sha(tmp_path / "new.pt")
    (tmp_path / "new.pt").unlink()
    _in_child(lambda: atomic_save(_payload(2), path), _kill_at(step))
    assert _sha(path) == before[marker] and read_checkpoint_marker(path) == marker
    assert len(_temps(tmp_path)) == (0 if step == "after rename" else 1)


def test_kill_during_a_first_write_leaves_no_file_under_the_name(tmp_path):
    path = tmp_path / "summary.json"
    _in_child(lambda: safe_io.write_text(path, "x" * 10_000), _kill_at_byte(path.name, 5000))
    assert not path.exists()  # a reader finds nothing rather than half a file
    (temp,) = _temps(tmp_path)
    assert temp.stat().st_size == 5000
    remove_stale_temp_files(tmp_path)
    assert _temps(tmp_path) == []


def test_training_killed_while_writing_last_pt_resumes(tmp_path, caplog):
    """A real run: killed at a seeded byte of epoch 2's last.pt. last.pt, last.prev.pt and
    best.pt are epoch 1's complete files; --resume takes the folder over (the dead owner's
    lock, with a warning), removes the temp file and finishes epoch 2."""
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=16)
    out = tmp_path / "run"
    values = dict(
        model="resnet20_cifar", data=str(data), out=str(out), epochs=2, batch_size=4, quiet=True
    )
    config = config_from(None, **values)
    at = random.Random(SEED).randrange(1, 500_000)  # resnet20_cifar's last.pt: ~3.3 MB
    child = multiprocessing.get_context("spawn").Process(target=_train_and_die, args=(values, at))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL, child.exitcode
    for name in ("last.pt", "last.prev.pt", "best.pt"):
        assert read_checkpoint(out / name)["epoch"] == 1, name
    assert _sha(out / "last.pt") == _sha(out / "last.prev.pt")
    assert [p.name.split(".tmp-")[0] for p in _temps(out)] == [".last"]
    with caplog.at_level(logging.WARNING, logger="ghostnet"):
        summary = fit(config, resume=out / "last.pt")
    assert "taking over" in caplog.text and "that process is gone" in caplog.text
    assert read_checkpoint(out / "last.pt")["epoch"] == 2
    assert read_checkpoint(out / "last.prev.pt")["epoch"] == 1
    assert not any(".last.tmp-" in p.name for p in _temps(out))  # the killed writer's
    assert summary["epochs_done"] == 2


# When last.pt and last.prev.pt are already one file (a kill after the link, before the new
# last.pt), rename(2) of a hard link onto the same file does nothing: keep_previous must
# remove its temporary link itself.
def test_keep_previous_leaves_no_temp_when_last_and_prev_are_one_file(tmp_path):
    from ghostnet.engine import keep_previous

    last = tmp_path / "last.pt"
    atomic_save(_payload(1), last)
    os.link(last, tmp_path / "last.prev.pt")
    keep_previous(last)
    assert read_checkpoint_marker(tmp_path / "last.prev.pt") == 1
    assert _temps(tmp_path) == []
