"""The journal backend: every event of the run, appended to a local file as it arrives.

On by default (``journal``), in ``journal_dir`` (default ``./tracelet-runs``). It is a
backend like the others — its own worker in the writer process — so it costs the training
thread nothing. Each batch is appended with ``os.write`` straight to the operating system
(a killed process loses nothing that reached the writer) and whole or not at all: a failed
append (a full disk) is cut back, so a retry never leaves a torn or doubled record. The file
is ``fsync``-ed at most a second apart and at close. ``tracelet replay`` re-sends a journal to any backend.
See ``tracelet.journal`` for the format.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from typing import Any

from tracelet import commands, journal
from tracelet.backends.base import RunInfo, RunLocation
from tracelet.events import Artifact, Event

DEFAULT_DIR = "tracelet-runs"
SYNC_INTERVAL_S = 1.0


class JournalBackend:
    """The ``journal`` backend."""

    def __init__(self) -> None:
        self._dir = ""
        self._fd: int | None = None
        self._meta: dict[str, Any] = {}
        self._artifacts = 0
        self._synced = time.monotonic()

    def open(self, run: RunInfo) -> RunLocation:
        root = os.path.abspath(run.settings.get("journal_dir") or DEFAULT_DIR)
        self._dir = os.path.join(root, journal.run_dir_name(run.run_uid, run.started_at))
        os.makedirs(os.path.join(self._dir, journal.ARTIFACTS_DIR), exist_ok=True)
        self._meta = {
            "format": journal.FORMAT,
            "run_uid": run.run_uid,
            "project": run.project,
            "exp_name": run.exp_name,
            "started_at": run.started_at,
            "ended_at": None,
            "status": "RUNNING",
            "argv": list(run.argv),
            "pid": run.pid,
            "settings": dict(run.settings),
            "git": run.git._asdict() if run.git is not None else None,
        }
        journal.write_json(os.path.join(self._dir, journal.RUN_FILE), self._meta)
        self._fd = os.open(
            os.path.join(self._dir, journal.EVENTS_FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
        )
        return RunLocation(
            "journal",
            run.run_uid,
            self._dir,
            f"{commands.script('tracelet')} replay {self._dir} --backend mlflow",
        )

    def write(self, batch: list[Event]) -> dict[str, int]:
        assert self._fd is not None
        rejected: Counter[str] = Counter()
        lines = []
        for event in batch:
            try:
                copy = self._copy(event) if type(event) is Artifact else None
                lines.append(journal.encode(event, copy))
            except (OSError, TypeError, ValueError) as err:
                reason = f"not journaled: {type(err).__name__}"
                rejected[reason] += 1
        self._append("".join(lines).encode("utf-8", "surrogatepass"))
        if time.monotonic() - self._synced >= SYNC_INTERVAL_S:
            self._sync()
        return rejected

    def close(self, status: str) -> None:
        if self._fd is not None:
            self._sync()
            os.close(self._fd)
            self._fd = None
        self._meta.update(status=status, ended_at=time.time())
        journal.write_json(os.path.join(self._dir, journal.RUN_FILE), self._meta)

    def _append(self, data: bytes) -> None:
        assert self._fd is not None
        start = os.fstat(self._fd).st_size
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except BaseException:
            os.ftruncate(self._fd, start)  # whole batches only: the worker retries this one
            raise

    def _sync(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        self._synced = time.monotonic()

    def _copy(self, event: Artifact) -> str:
        """The artifact's own copy (the original may be a temporary file), relative to the run dir."""
        self._artifacts += 1
        relative = os.path.join(journal.ARTIFACTS_DIR, str(self._artifacts), os.path.basename(event.path))
        target = os.path.join(self._dir, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(event.path):
            shutil.copytree(event.path, target)
        else:
            shutil.copy2(event.path, target)
        return relative
