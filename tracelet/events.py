"""The records that travel from the training process to the backends.

Events hold plain Python values only (str, float, int, None, dicts and lists of them), so
they pickle quickly and mean the same thing in every backend. They are NamedTuples: cheap
to create on the training thread and immutable once emitted.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Metric(NamedTuple):
    """One point of a series. ``timestamp`` is wall-clock seconds (``time.time()``)."""

    name: str
    value: float
    step: int | None
    timestamp: float


class Metrics(NamedTuple):
    """Points of several series at one step and time, as one logging call produced them.

    Only the bus carries them: the writer expands them into ``Metric`` events before any
    backend sees them, so a logging call costs the training thread one event, not one per series.
    """

    names: tuple[str, ...]
    values: tuple[float, ...]
    step: int | None
    timestamp: float

    def points(self) -> list[Metric]:
        step, timestamp = self.step, self.timestamp
        pairs = zip(self.names, self.values, strict=False)  # equal lengths by construction
        return [Metric(name, value, step, timestamp) for name, value in pairs]


class Params(NamedTuple):
    """Hyperparameters; values may be nested dicts/lists, each backend flattens them its own way."""

    values: dict[str, Any]


class Tags(NamedTuple):
    values: dict[str, str]


class Artifact(NamedTuple):
    """A local file or directory to copy into the run, under ``artifact_path`` when given."""

    path: str
    artifact_path: str | None


class RunEnd(NamedTuple):
    """The last event of a run; backends close with ``status`` when they reach it."""

    status: str


Event = Metric | Params | Tags | Artifact | RunEnd

FINISHED = "FINISHED"
FAILED = "FAILED"
KILLED = "KILLED"
STATUSES = (FINISHED, FAILED, KILLED)
