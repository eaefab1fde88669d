"""The one write path: temp file in the same folder, fsync, atomic rename; OS errors
(disk full, quota, read-only, permission) become one GhostnetError line naming the path."""

from __future__ import annotations

import errno
import io
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from .errors import GhostnetError

# errno -> (what happened, how to fix it)
_REASONS = {
    errno.ENOSPC: ("disk full", "free space there or choose another folder"),
    errno.EDQUOT: ("disk quota exceeded", "free space in your quota or choose another folder"),
    errno.EROFS: ("read-only file system", "choose a writable folder"),
    errno.EACCES: ("permission denied", "choose a folder you can write to"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to"),
}


def write_failure(path: Path, exc: BaseException) -> OSError | None:
    """The OSError with a mapped errno in ``exc`` or its causes (libraries wrap them)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _REASONS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _free_space(path: Path) -> str:
    folder = next((p for p in (path, *path.parents) if p.is_dir()), Path("/"))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit} free" if unit == "B" else f"{free:.1f} {unit} free"
        free /= 1024
    return ""


def error_line(path: Path, exc: OSError, survived: str | None = None) -> GhostnetError:
    """One line: the path, the cause (free space when it is about space), what survived."""
    reason, fix = _REASONS[exc.errno]
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = f"{reason}, {_free_space(path.parent)} in {path.parent}"
    kept = f"; {survived}" if survived else ""
    return GhostnetError(
        f"cannot write {path}: {reason}; nothing partial was left under that name{kept}; {fix}"
    )


def temp_name(path: Path) -> Path:
    """A hidden temp name beside ``path`` keeping its suffix (writers infer formats from it);
    ``checkpoint.remove_stale_temp_files`` removes these after a kill."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike, survived: str | None = None) -> Iterator[Path]:
    """Yield a temp path for a writer that wants a file name; renamed onto ``path`` on
    success, removed on failure. A mapped OS error becomes one GhostnetError line."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except Exception as exc:
        failure = write_failure(path, exc)
        if failure is not None:
            raise error_line(path, failure, survived) from None
        raise
    finally:
        _unlink_quietly(tmp)


@contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", survived: str | None = None, **kwargs: Any
) -> Iterator[IO[Any]]:
    """``open`` for writing, made atomic (see ``atomic_path``)."""
    with atomic_path(path, survived) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()


def write_text(path: str | os.PathLike, text: str, survived: str | None = None) -> Path:
    with atomic_open(path, "w", survived) as f:
        f.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes, survived: str | None = None) -> Path:
    with atomic_open(path, "wb", survived) as f:
        f.write(data)
    return Path(path)


def save_torch(obj: Any, path: str | os.PathLike, survived: str | None = None) -> Path:
    """torch.save through the one write path. Serialised in memory first: torch's zip writer
    turns a failed write into an opaque RuntimeError, a plain file write keeps the errno."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getbuffer(), survived)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with suppress(OSError):
        path.unlink(missing_ok=True)


class RunFolderLock:
    """``DIR/.lock``: one process owns a run folder. fcntl.flock, held while the process
    lives and dropped by the kernel when it dies; the file records pid, host, start time and
    command for the refusal line. flock is exact across processes on one host; on NFS it
    works only where the client maps it to POSIX locks the server honours (Linux NFSv4)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> RunFolderLock:
        import fcntl
        import json
        import logging
        import socket
        import sys
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if write_failure(self.path, exc) is not None:
                raise error_line(self.path, exc) from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise GhostnetError(
                f"{self.path.parent} is in use by another run (pid {owner.get('pid', '?')} on "
                f"{owner.get('host', '?')} since {owner.get('since', '?')}: "
                f"{owner.get('command', '?')}); wait for it to end or choose another --out"
            ) from None
        previous = _read_owner(fd)
        if previous:  # a lock file nobody holds: its owner died without releasing it
            logging.getLogger("ghostnet").warning(
                "taking over %s left by pid %s on %s (since %s): that process is gone",
                self.path,
                previous.get("pid", "?"),
                previous.get("host", "?"),
                previous.get("since", "?"),
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv)[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the file, then drop the lock. The file stays: removing it would let a
        process that opened it just before lock a file no longer in the folder."""
        if self._fd is None:
            return
        with suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_owner(fd: int) -> dict[str, Any]:
    import json

    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        owner = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}
