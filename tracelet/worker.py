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
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tracelet import _log, failures, journal
from tracelet.backends.base import Backend, RunGone, RunInfo, WriteInterrupted
from tracelet.events import Event, RunEnd
from tracelet.wire import BackendStats

log = _log.get_logger(__name__)

MAX_BATCH = 1000
RETRY_DELAYS_S = (1.0, 2.0, 4.0)  # before each retry of a failed open or write; none once the run ends


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
        retry_delays: Sequence[float] = RETRY_DELAYS_S,
        journal: Callable[[], str | None] | None = None,
    ) -> None:
        self.name = name
        self.stats = BackendStats(name)
        self._make_backend = make_backend
        self._run = run
        self._capacity = capacity
        self._max_batch = max_batch
        self._on_opened = on_opened
        self._retry_delays = tuple(retry_delays)
        self._journal = journal  # where this run's journal is, for the advice when this backend fails
        self._end_submitted = False  # the RunEnd is queued: stop retrying, close
        self._unwritable = ("backend failed to open", False)  # reason, and whether it counts as failed
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
            if stats.state in ("failed", "closed", "unclosed"):
                self._drop_unwritable(events)
                ends = [e for e in events if isinstance(e, RunEnd)]
                if ends and stats.state == "failed":
                    self._items.append(ends)  # the thread still has to see the end of the run
                    stats.pending += len(ends)
                    self._cond.notify()
                return
            room = self._capacity - stats.pending
            if events and isinstance(events[-1], RunEnd):
                self._end_submitted = True
                self._cond.notify_all()
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
            return dataclasses.replace(self.stats, reasons=Counter(self.stats.reasons))

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
        countable = sum(1 for e in events if not isinstance(e, RunEnd))
        if not countable:
            return
        if self.stats.state != "failed":
            self.stats.drop(countable, "run already ended")
            return
        reason, counts_as_failed = self._unwritable
        (self.stats.fail if counts_as_failed else self.stats.drop)(countable, reason)

    def _main(self) -> None:
        backend = self._open()
        try:
            while True:
                batch, markers, end = self._next_batch()
                if batch:
                    backend = self._write(backend, batch)
                if end is not None:
                    self._close(backend, end.status)
                for marker in markers:
                    marker.done.set()
                if end is not None:
                    return
        finally:
            with self._cond:
                if self.stats.state not in ("failed", "unclosed"):
                    self.stats.state = "closed"
                self._finished.set()
                for item in self._items:
                    if isinstance(item, _Marker):
                        item.done.set()
                self._items.clear()

    def _open(self) -> Backend | None:
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                backend = self._make_backend()
                location = backend.open(self._run)
                break
            except Exception as err:  # any failure to open disables this backend only
                if self._retry_after(attempt, err, "open"):
                    attempt += 1
                    continue
                self._disable(failures.describe(err), "backend failed to open", counts_as_failed=False)
                log.debug("backend %r failed to open", self.name, exc_info=err)
                log.warning(
                    "backend %r disabled for this run: it failed to open (%s); training goes on%s",
                    self.name,
                    self.stats.error,
                    self._replay_advice(),
                )
                self._announce_opened()
                return None
        with self._cond:
            self.stats.state = "open"
            self.stats.location = location
        log.debug("backend %r opened in %.2fs", self.name, time.monotonic() - started)
        self._announce_opened()
        return backend

    def _retry_after(self, attempt: int, err: Exception, action: str) -> bool:
        """Wait before the next attempt (not at all once the run is ending); False when none is left."""
        if attempt >= len(self._retry_delays):
            return False
        delay = self._retry_delays[attempt]
        log.debug(
            "backend %r failed to %s (%s: %s); retry in %.1fs",
            self.name,
            action,
            type(err).__name__,
            err,
            delay,
        )
        with self._cond:
            self._cond.wait_for(lambda: self._end_submitted, timeout=delay)
        return True

    def _disable(self, error: str, reason: str, counts_as_failed: bool) -> None:
        """From now on nothing reaches the backend: what is queued and what comes is counted."""
        with self._cond:
            self.stats.state = "failed"
            self.stats.error = error
            self._unwritable = (reason, counts_as_failed)
            # keep flush markers and the RunEnd in order; the thread still has to see them
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

    def _replay_advice(self) -> str:
        return journal.replay_advice(self._journal() if self._journal is not None else None, self.name)

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

    def _write(self, backend: Backend | None, batch: list[Event]) -> Backend | None:
        """Write one batch, retrying with backoff; returns None once the backend is given up on."""
        if backend is None:
            with self._cond:
                self._drop_unwritable(batch)
            return None
        attempt = 0
        while True:
            try:
                outcome = backend.write(batch)
                break
            except WriteInterrupted as err:  # the first part is stored: only the rest is retried
                if err.written:
                    self._count_written(err.written, err.rejected)
                    batch = batch[err.written :]
                failure: Exception = err.cause if isinstance(err.cause, Exception) else err
            except Exception as err:
                failure = err
            if isinstance(failure, RunGone):  # retrying cannot bring it back
                self._give_up(batch, failure, "run gone")
                return None
            if self._retry_after(attempt, failure, "write"):
                attempt += 1
                continue
            self._give_up(batch, failure, f"write error: {type(failure).__name__}")
            return None
        rejected = {"rejected by backend": outcome} if isinstance(outcome, int) else dict(outcome or {})
        self._count_written(len(batch), rejected)
        return backend

    def _count_written(self, count: int, rejected: Mapping[str, int]) -> None:
        with self._cond:
            self.stats.sent += count - sum(rejected.values())
            for reason, number in rejected.items():
                if number:
                    self.stats.refuse(number, reason)

    def _give_up(self, batch: list[Event], err: Exception, reason: str) -> None:
        with self._cond:
            self.stats.fail(len(batch), reason)
        self._disable(f"write failed: {failures.describe(err)}", reason, counts_as_failed=True)
        log.debug("backend %r failed to write", self.name, exc_info=err)
        if isinstance(err, RunGone):
            log.warning(
                "backend %r: %s. Nothing more is sent there for this run; what it did not receive is "
                "counted as failed%s",
                self.name,
                err,
                self._replay_advice(),
            )
            return
        log.warning(
            "backend %r failed to write (%s) after %d attempts and is disabled for this run; training "
            "goes on, and what it did not receive is counted as failed%s",
            self.name,
            failures.describe(err),
            len(self._retry_delays) + 1,
            self._replay_advice(),
        )

    def _close(self, backend: Backend | None, status: str) -> None:
        if backend is None:
            return
        try:
            backend.close(status)
        except Exception as err:  # reported, not raised; the backend did not confirm it holds the run
            log.warning("backend %r failed to close its run (%s: %s)", self.name, type(err).__name__, err)
            with self._cond:
                self.stats.state = "unclosed"
                self.stats.error = f"close failed: {type(err).__name__}: {err}"
