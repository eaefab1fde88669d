"""Where a process sits in a torchrun job, and every collective of a run.

``init_distributed`` joins the job (NCCL on CUDA, gloo on CPU) with a bounded collective
timeout (``--dist-timeout``), so a dead peer ends the others with one line instead of a
hang. ``Collectives`` keeps every collective on the training device (NCCL's rule, checked
on one process too). ``ResumableSampler`` is the DistributedSampler that can skip the start
of an epoch; ``wrap_for_training`` puts DDP (and torch.compile) around the model.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Sized
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from ..errors import GhostnetError


@dataclass
class Dist:
    """Where this process sits in a torchrun job (world of 1 when not launched by it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_kind: str, timeout_s: float = 1800.0) -> Dist:
    """Join the torchrun job if there is one: NCCL on CUDA, gloo on CPU. Collectives that
    wait longer than ``timeout_s`` (a peer died or hangs) raise instead of blocking."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device_kind == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class PeerLost(GhostnetError):
    """A collective failed or timed out: another process of the job died or hangs."""


class Collectives:
    """Every collective of a run, on tensors that live on the training device.

    NCCL only accepts tensors on the GPU, so values are created on ``device`` here and the
    check below makes a tensor on any other device an immediate error (on one process too,
    where no collective runs), instead of a failure that only multi-GPU runs would meet.
    A failed collective (a peer died: gloo reports a closed connection or the timeout)
    becomes one ``PeerLost`` line.
    """

    def __init__(self, ddp: Dist, device: torch.device, timeout_s: float = 1800.0) -> None:
        self.ddp = ddp
        self.device = device
        self.timeout_s = timeout_s

    def _check(self, tensor: torch.Tensor) -> None:
        if tensor.device != self.device:
            raise RuntimeError(
                f"collective on a tensor on {tensor.device}, the run trains on {self.device}"
            )

    def lost(self, exc: BaseException) -> PeerLost:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return PeerLost(
            f"rank {self.ddp.rank}: another process of the job stopped answering (collective "
            f"failed or waited over --dist-timeout {self.timeout_s:g} s: {first}); resume the "
            "run with --resume once every process can start"
        )

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over all processes (the tensor itself on one process)."""
        self._check(tensor)
        if self.ddp.enabled:
            tensor = tensor.clone()
            try:
                dist.all_reduce(tensor)
            except (RuntimeError, dist.DistBackendError) as exc:
                raise self.lost(exc) from None
        return tensor

    def agree(self, *flags: bool | torch.Tensor) -> list[bool]:
        """Whether any process raised each flag: every process gets the same answer."""
        values = torch.stack(
            [torch.as_tensor(f, dtype=torch.float32, device=self.device).reshape(()) for f in flags]
        )
        return [bool(v) for v in (self.sum(values) > 0).tolist()]

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BN statistics) everywhere, before evaluating."""
        if self.ddp.enabled:
            for buffer in module.buffers():
                self._check(buffer)
                try:
                    dist.broadcast(buffer, 0)
                except (RuntimeError, dist.DistBackendError) as exc:
                    raise self.lost(exc) from None

    def gather_objects(self, obj: object) -> list[object]:
        """``obj`` of every process, in rank order, on every process."""
        if not self.ddp.enabled:
            return [obj]
        gathered: list[object] = [None] * self.ddp.world
        try:
            dist.all_gather_object(gathered, obj)
        except (RuntimeError, dist.DistBackendError) as exc:
            raise self.lost(exc) from None
        return gathered


def pick_device(name: str, ddp: Dist | None = None) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` -> this process's device (its local GPU under torchrun)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise GhostnetError("--device cuda, but no CUDA GPU is available; use --device cpu")
        return torch.device("cuda", ddp.local_rank if ddp else 0)
    if name != "cpu":
        raise GhostnetError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled by seed + epoch) that can skip the first samples of an
    epoch, to continue a run exactly where a checkpoint left it."""

    def __init__(self, dataset: Sized, world: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return super().__len__() - self.skip


def wrap_for_training(
    model: nn.Module, ddp: Dist, device: torch.device, compile: bool
) -> nn.Module:
    """DDP around the model when distributed, then torch.compile when asked."""
    wrapped = model
    if ddp.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def shutdown(ddp: Dist) -> None:
    """Leave the process group (a no-op on one process)."""
    if ddp.enabled and dist.is_initialized():
        dist.destroy_process_group()
