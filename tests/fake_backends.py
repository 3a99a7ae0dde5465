"""Backends for tests of the bus and the lifecycle, loaded by ``module:Class`` name.

They run inside the writer process, so they report through a file in the working
directory: one JSON line per call.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from tracelet.backends.base import RunInfo, RunLocation
from tracelet.events import Metric


class Recording:
    """Writes every event it receives to ``<Class>.jsonl``."""

    def __init__(self) -> None:
        self._file = Path(f"{type(self).__name__}.jsonl").open("a")  # noqa: SIM115 - closed in close()

    def _record(self, *fields) -> None:
        self._file.write(json.dumps(fields) + "\n")
        self._file.flush()

    def open(self, run: RunInfo) -> RunLocation:
        self._record("open", run.project, run.exp_name)
        return RunLocation(
            type(self).__name__, run.run_uid, "file:" + self._file.name, "cat " + self._file.name
        )

    def write(self, batch):
        for event in batch:
            if isinstance(event, Metric):
                self._record("metric", event.name, event.value, event.step)
            else:
                self._record(type(event).__name__, *event)

    def close(self, status: str) -> None:
        self._record("close", status)
        self._file.close()


class Recording2(Recording):
    pass


class Hanging(Recording):
    """Accepts the run, then never returns from a write."""

    def write(self, batch):
        threading.Event().wait()


class HangingClose(Recording):
    def close(self, status: str) -> None:
        threading.Event().wait()


class Slow(Recording):
    """Takes a second per batch: a backend far slower than training."""

    def write(self, batch):
        time.sleep(1.0)
        return super().write(batch)


class FailingOpen(Recording):
    def open(self, run: RunInfo) -> RunLocation:
        raise ConnectionError("tracking server unreachable")


class FailingWrite(Recording):
    def write(self, batch):
        raise OSError("disk full")


def recorded(name: str = "Recording") -> list[list]:
    path = Path(f"{name}.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class FailingClose(Recording):
    def close(self, status: str) -> None:
        super().close(status)
        raise RuntimeError("server said 500 on close")


class Blocking(Recording):
    """Blocks for three seconds on every batch."""

    def write(self, batch):
        time.sleep(3.0)
        return super().write(batch)


OPEN_GATE = threading.Event()


class GatedOpen(Recording):
    """Opens only once ``OPEN_GATE`` is set (in-process dispatchers only)."""

    def open(self, run: RunInfo) -> RunLocation:
        OPEN_GATE.wait(30)
        return super().open(run)
