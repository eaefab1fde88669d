"""The built-in tasks; importing this package registers them (``--task NAME``)."""

from __future__ import annotations

from typing import Any

from ...errors import GhostnetError
from ..task import TASKS, Task
from . import classification, detection, segmentation  # noqa: F401  (each registers itself)


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name``."""
    if name not in TASKS:
        raise GhostnetError(f"--task must be one of {', '.join(sorted(TASKS))}, got {name!r}")
    return TASKS[name]


def task_of_checkpoint(checkpoint: dict[str, Any]) -> type[Task]:
    """The task class of a checkpoint (no ``task`` field: classification, as written before)."""
    from ...checkpoint import checkpoint_task

    return get_task(checkpoint_task(checkpoint))
