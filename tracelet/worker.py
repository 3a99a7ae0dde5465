"""One backend, one bounded queue, one thread: the unit of isolation between backends.

A worker opens its backend on its own thread (opening MLflow's SQLite store takes
seconds), writes events in batches in the order they were submitted, and closes the
backend when it reaches the ``RunEnd`` event. ``submit`` never blocks: events beyond the
queue's capacity are dropped and counted. A backend that fails to open is disabled with one
warning and everything sent to it afterwards is counted as dropped, with the reason.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tracelet import _log
from tracelet.backends.base import Backend, RunInfo, RunLocation
from tracelet.events import Event, RunEnd

log = _log.get_logger(__name__)

MAX_BATCH = 1000


@dataclasses.dataclass
class BackendStats:
    """What happened to the events addressed to one backend."""

    name: str
    state: str = "starting"  # starting, open, failed, closed
    sent: int = 0
    dropped: int = 0
    failed: int = 0
    pending: int = 0
    high_water: int = 0
    reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    location: RunLocation | None = None
    error: str | None = None

    def drop(self, count: int, reason: str) -> None:
        self.dropped += count
        self.reasons[reason] = self.reasons.get(reason, 0) + count


class _Marker:
    """A flush request travelling in the queue behind the events it must wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()


class BackendWorker:
    def __init__(
        self,
        name: str,
        make_backend: Callable[[], Backend],
        run: RunInfo,
        capacity: int,
        max_batch: int = MAX_BATCH,
        on_opened: Callable[[BackendStats], None] | None = None,
    ) -> None:
        self.name = name
        self.stats = BackendStats(name)
        self._make_backend = make_backend
        self._run = run
        self._capacity = capacity
        self._max_batch = max_batch
        self._on_opened = on_opened
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"tracelet-{name}", daemon=True)

    # -- called from the dispatcher ---------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, events: Sequence[Event]) -> None:
        """Queue ``events`` for writing; never blocks. Overflow is dropped and counted."""
        with self._cond:
            stats = self.stats
            if stats.state in ("failed", "closed"):
                self._drop_unwritable(events)
                ends = [e for e in events if isinstance(e, RunEnd)]
                if ends and stats.state == "failed":
                    self._items.append(ends)  # the thread still has to see the end of the run
                    self._cond.notify()
                return
            room = self._capacity - stats.pending
            accepted = events if len(events) <= room else self._accept_within(events, max(room, 0))
            if accepted:
                self._items.append(accepted)
                stats.pending += len(accepted)
                stats.high_water = max(stats.high_water, stats.pending)
                self._cond.notify()

    def flush_marker(self) -> threading.Event:
        """An Event set once everything submitted so far has been written (or given up on)."""
        marker = _Marker()
        with self._cond:
            if self._finished.is_set():
                marker.done.set()
            else:
                self._items.append(marker)
                self._cond.notify()
        return marker.done

    def snapshot(self) -> BackendStats:
        with self._cond:
            return dataclasses.replace(self.stats, reasons=dict(self.stats.reasons))

    @property
    def finished(self) -> threading.Event:
        return self._finished

    # -- internals ----------------------------------------------------------------------
    def _accept_within(self, events: Sequence[Event], room: int) -> list[Event]:
        """Keep what fits, always keep RunEnd (the backend must close), count the rest."""
        accepted = list(events[:room])
        overflow = events[room:]
        ends = [e for e in overflow if isinstance(e, RunEnd)]
        accepted.extend(ends)
        lost = len(overflow) - len(ends)
        if lost:
            self.stats.drop(lost, "queue full")
            _log.warn_once(
                f"overflow:{self.name}",
                "backend %r cannot keep up: its queue of %d events is full, new events are dropped "
                "(counted; raise `queue_size` if this run needs it)",
                self.name,
                self._capacity,
                log=log,
            )
        return accepted

    def _drop_unwritable(self, events: Sequence[Event]) -> None:
        reason = "backend failed to open" if self.stats.state == "failed" else "run already ended"
        countable = sum(1 for e in events if not isinstance(e, RunEnd))
        if countable:
            self.stats.drop(countable, reason)

    def _main(self) -> None:
        backend = self._open()
        try:
            while True:
                batch, markers, end = self._next_batch()
                if batch:
                    self._write(backend, batch)
                if end is not None:
                    self._close(backend, end.status)
                for marker in markers:
                    marker.done.set()
                if end is not None:
                    return
        finally:
            with self._cond:
                self.stats.state = "closed" if self.stats.state != "failed" else "failed"
                self._finished.set()
                for item in self._items:
                    if isinstance(item, _Marker):
                        item.done.set()
                self._items.clear()

    def _open(self) -> Backend | None:
        started = time.monotonic()
        try:
            backend = self._make_backend()
            location = backend.open(self._run)
        except Exception as err:  # any failure to open disables this backend only
            with self._cond:
                self.stats.state = "failed"
                self.stats.error = f"{type(err).__name__}: {err}"
                # what is queued can never be written; keep flush markers and the RunEnd in order
                kept: collections.deque[Any] = collections.deque()
                for item in self._items:
                    if isinstance(item, _Marker):
                        kept.append(item)
                        continue
                    self._drop_unwritable(item)
                    ends = [e for e in item if isinstance(e, RunEnd)]
                    if ends:
                        kept.append(ends)
                self._items = kept
                self.stats.pending = sum(len(i) for i in kept if not isinstance(i, _Marker))
            log.warning(
                "backend %r disabled for this run: it failed to open (%s)", self.name, self.stats.error
            )
            self._announce_opened()
            return None
        with self._cond:
            self.stats.state = "open"
            self.stats.location = location
        log.debug("backend %r opened in %.2fs", self.name, time.monotonic() - started)
        self._announce_opened()
        return backend

    def _announce_opened(self) -> None:
        if self._on_opened is not None:
            self._on_opened(self.snapshot())

    def _next_batch(self) -> tuple[list[Event], list[_Marker], RunEnd | None]:
        """Up to ``max_batch`` events in order, stopping at a flush marker or the RunEnd."""
        batch: list[Event] = []
        markers: list[_Marker] = []
        with self._cond:
            while not self._items:
                self._cond.wait()
            while self._items and len(batch) < self._max_batch:
                item = self._items[0]
                if isinstance(item, _Marker):
                    self._items.popleft()
                    markers.append(item)
                    break
                take = self._max_batch - len(batch)
                if len(item) > take:
                    batch.extend(item[:take])
                    self._items[0] = item[take:]
                else:
                    batch.extend(item)
                    self._items.popleft()
            self.stats.pending -= len(batch)
        end = next((e for e in batch if isinstance(e, RunEnd)), None)
        if end is not None:
            batch = [e for e in batch if not isinstance(e, RunEnd)]
        return batch, markers, end

    def _write(self, backend: Backend | None, batch: list[Event]) -> None:
        if backend is None:
            with self._cond:
                self._drop_unwritable(batch)
            return
        try:
            outcome = backend.write(batch)
        except Exception as err:  # a failing write costs this batch, not the run
            with self._cond:
                self.stats.failed += len(batch)
                reason = f"write error: {type(err).__name__}"
                self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + len(batch)
            _log.warn_once(
                f"write:{self.name}:{type(err).__name__}",
                "backend %r failed to write %d events (%s: %s); counted as failed, the run goes on",
                self.name,
                len(batch),
                type(err).__name__,
                err,
                log=log,
            )
            return
        rejected = {"rejected by backend": outcome} if isinstance(outcome, int) else dict(outcome or {})
        with self._cond:
            self.stats.sent += len(batch) - sum(rejected.values())
            for reason, count in rejected.items():
                if count:
                    self.stats.drop(count, reason)

    def _close(self, backend: Backend | None, status: str) -> None:
        if backend is None:
            return
        try:
            backend.close(status)
        except Exception as err:  # the data is written; a failed close is reported, not raised
            log.warning("backend %r failed to close its run (%s: %s)", self.name, type(err).__name__, err)
            with self._cond:
                self.stats.error = f"close failed: {type(err).__name__}: {err}"
