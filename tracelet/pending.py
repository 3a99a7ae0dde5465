"""Values the training thread captured and the bus's sender thread finishes: the two kinds
of event that never leave the training process. The sender turns both into ``Metrics``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from tracelet.events import Metrics


class DeferredMetrics(NamedTuple):
    """Metrics whose values are still being copied from a device (never leaves this process).

    ``values()`` waits for the copy; the sender thread calls it, so the training thread
    never waits for a device.
    """

    names: tuple[str, ...]
    values: Callable[[], list[float]]
    step: int | None
    timestamp: float


class HostMetrics(NamedTuple):
    """Metrics as the training thread captured them: numbers (CPU tensors already read, see
    ``values.read_cpu_scalar``), not yet checked (never leaves this process).

    On the sender thread, ``read(names, values, step, timestamp)`` turns them into ``Metrics``
    (or None when none is usable), so the training thread does not pay for the checks.
    """

    names: tuple[str, ...]
    values: tuple[Any, ...]
    step: int | None
    timestamp: float
    read: Callable[[tuple[str, ...], tuple[Any, ...], int | None, float], Metrics | None]
