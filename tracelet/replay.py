"""Re-send a journaled run to any backend: a fresh run there, with the original steps,
timestamps, params, tags and artifacts, and the run's final status."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from tracelet import journal
from tracelet.backends import base
from tracelet.collectors.git import GitInfo
from tracelet.events import KILLED, STATUSES, RunEnd, Tags
from tracelet.wire import BackendStats
from tracelet.worker import BackendWorker

CHUNK = 1000
MAX_PENDING = 20_000  # per backend: replay waits for slow backends instead of dropping
PROGRESS_EVERY_S = 0.5


def replay(
    path: str | os.PathLike[str],
    backend_names: Sequence[str],
    backend_url: str | None = None,
    api_key: str | None = None,
    progress: TextIO | None = None,
    timeout: float = 3600.0,
) -> dict[str, BackendStats]:
    """Send every event of the journal at ``path`` to each of ``backend_names``; returns their stats.

    Each backend gets the run where it was meant to go: ``backend_url`` when given, else the
    ``backend_url`` the run was started with, else (MLflow) the tracking URI it used — so a run
    that missed a server during an outage lands in that server, not in ``./mlflow.db``. The run
    keeps its original start and end times and status. Raises ``ConfigError`` for an unknown or
    uninstalled backend and ``FileNotFoundError`` / ``ValueError`` for a path that is not a
    journaled run.
    """
    record = journal.load(path)
    specs = base.resolve(tuple(n for n in backend_names if n != "journal"))
    meta = record.run
    run = base.RunInfo(
        run_uid=meta["run_uid"],
        project=meta.get("project"),
        exp_name=meta.get("exp_name"),
        api_key=api_key,
        backend_url=backend_url,
        started_at=float(meta.get("started_at") or time.time()),
        settings=meta.get("settings") or {},
        argv=tuple(meta.get("argv") or ()),
        git=GitInfo(**meta["git"]) if meta.get("git") else None,
        ended_at=meta.get("ended_at"),
    )
    workers = [
        BackendWorker(
            spec.name,
            lambda spec=spec: base.load(spec),
            run._replace(backend_url=backend_url or recorded_url(record, spec.name)),
            capacity=2 * MAX_PENDING + CHUNK,
        )
        for spec in specs
    ]
    for worker in workers:
        worker.start()
    total = journal.count_events(record)
    bar = _Progress(progress, total)
    chunk: list = [Tags({"tracelet.replayed_from": record.path})]
    for event in journal.events(record):
        chunk.append(event)
        if len(chunk) >= CHUNK:
            _submit(workers, chunk, bar)
            chunk = []
    status = record.status if record.status in STATUSES else KILLED  # the writer itself died
    _submit(workers, [*chunk, RunEnd(status)], bar)
    deadline = time.monotonic() + timeout
    for worker in workers:
        while not worker.finished.wait(PROGRESS_EVERY_S) and time.monotonic() < deadline:
            bar.show(_delivered(workers))
    bar.show(_delivered(workers), final=True)
    stats = {w.name: w.snapshot() for w in workers}
    _remember(record, stats)
    return stats


def recorded_url(record: journal.Journal, backend: str) -> str | None:
    """Where the run was meant to go in ``backend``: the ``backend_url`` it was started with, else
    the tracking URI MLflow resolved (``MLFLOW_TRACKING_URI``, or the absolute ``./mlflow.db``)."""
    configured = (record.run.get("settings") or {}).get("backend_url")
    if configured:
        return str(configured)
    if backend == "mlflow":
        uri = (record.delivery.get("mlflow") or {}).get("uri")
        return str(uri) if uri else None
    return None


def _submit(workers: list[BackendWorker], events: list, bar: _Progress) -> None:
    for worker in workers:
        while worker.snapshot().pending > MAX_PENDING and not worker.finished.is_set():
            bar.show(_delivered(workers))
            worker.finished.wait(0.05)
        worker.submit(events)
    bar.show(_delivered(workers))


def _delivered(workers: list[BackendWorker]) -> int:
    counts = [s.sent + s.dropped + s.failed for s in (w.snapshot() for w in workers)]
    return min(counts) if counts else 0


def _remember(record: journal.Journal, stats: dict[str, BackendStats]) -> None:
    """The journal's delivery record learns that these backends now have the run."""
    delivery = dict(record.delivery)
    for name, s in stats.items():
        delivery[name] = {**journal.delivery_entry(s), "replayed_at": time.time()}
    journal.write_json(os.path.join(record.path, journal.DELIVERY_FILE), delivery)


class _Progress:
    """tqdm's bar on a terminal, set to what the backends have delivered; nothing when
    ``stream`` is None."""

    def __init__(self, stream: TextIO | None, total: int) -> None:
        self._bar = None
        if stream is not None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, file=stream, desc="replaying", unit="event", mininterval=PROGRESS_EVERY_S
            )

    def show(self, done: int, final: bool = False) -> None:
        if self._bar is None:
            return
        self._bar.update(min(done, self._bar.total) - self._bar.n)  # tqdm redraws at most every 0.5 s
        if final:
            self._bar.close()


def stderr_if_terminal() -> TextIO | None:
    return sys.stderr if sys.stderr.isatty() else None
