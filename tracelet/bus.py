"""The training-process side of the event bus.

``emit`` only appends to a bounded buffer (O(1), no lock, no I/O, never raises); a sender
thread ships the buffer in chunks to the dispatcher — in the writer process by default —
which fans out to one queue and worker per backend. ``flush`` and ``shutdown`` travel in
the same ordered stream as the events, so "flushed" means everything emitted before the
call has been handled by every backend, and they spend a single deadline across all of
them. Whatever cannot be delivered is counted with its reason, never silently lost.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import threading
import time
import weakref
from collections import Counter
from typing import Any

from tracelet import _log, journal
from tracelet.backends.base import BackendSpec, RunInfo
from tracelet.events import Event, Metrics, RunEnd
from tracelet.pending import DeferredMetrics, HostMetrics
from tracelet.transport import ProcessTransport, ThreadTransport
from tracelet.wire import BackendStats, Control, Init, Ledger, Reply

log = _log.get_logger(__name__)

CHUNK = 500  # events per frame to the writer
# The longest an event waits in this process before it is shipped (the journal is at most
# about this far behind, within the journal's promise of a second). Each wake of the sender
# takes the GIL from training several times. bench_twins, within one hour: every 0.2 s
# 1.04-1.09x (five runs), every 1 s 0.98-1.04x (three), every 0.5 s 0.94x and 1.10x (two short).
SEND_INTERVAL_S = 0.5
_REPLY_MARGIN = 0.9  # the writer answers at 90% of a deadline, so its answer arrives in time
# A held bus (the run ``tracelet run`` starts before the program's own ``start_logging`` may
# rename or redirect it) ships nothing until it is released: by ``release()``, a flush or stop,
# the first metrics Lightning hands its loggers, a full chunk of events, or at the latest this
# long after the start.
HOLD_MAX_S = 30.0


@dataclasses.dataclass
class Outcome:
    """The answer to a flush or shutdown: whether every backend made it, and their counters."""

    done: bool
    stats: dict[str, BackendStats]


class EventBus:
    def __init__(
        self,
        run: RunInfo,
        backends: list[BackendSpec],
        capacity: int,
        writer: str = "process",
        hold: bool = False,
    ) -> None:
        self._capacity = capacity
        self._buffer: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._dead = False  # the writer is gone: everything from now on is dropped, counted
        self._forked = False
        self.ledger = Ledger()  # what this process could not hand on, and the inputs it refused
        self._names = [spec.name for spec in backends]
        self._stats: dict[str, BackendStats] = {name: BackendStats(name) for name in self._names}
        self._stats_lock = threading.Lock()
        self._closed = False  # the writer's final report arrived
        self._shipped = 0  # points written to the writer; what no backend accounts for died with it
        self._context_events: dict[str, int] = {}  # events the writer added itself (git, environment)
        self._tokens = itertools.count(1)
        self._waiting: dict[int, tuple[threading.Event, list[Reply]]] = {}
        self._transport: Any = None
        if writer == "process":
            try:
                self._transport = ProcessTransport(self._on_reply, self._on_writer_exit)
            except OSError as err:  # no subprocesses here (a sandbox, exhausted limits)
                log.warning("could not start tracelet's writer process (%s); backends run on threads", err)
        if self._transport is None:
            self._transport = ThreadTransport(self._on_reply)
        self._buffer.append(Control("init", 0, 0.0, Init(run, backends, capacity)))
        self._hold_lock = threading.Lock()
        self._released = threading.Event()
        if not hold:
            self._released.set()
        self._sender = threading.Thread(target=self._send_loop, name="tracelet-sender", daemon=True)
        self._sender.start()
        _live_buses.add(self)

    # -- the training thread's side -----------------------------------------------------
    def emit(self, event: Event) -> None:
        """Queue one event for every backend; O(1), never blocks, never raises."""
        buffer = self._buffer
        if self._dead or len(buffer) >= self._capacity:
            self.count_dropped(_points(event), "writer process exited" if self._dead else "queue full")
            return
        buffer.append(event)
        if len(buffer) >= CHUNK and not self._wake.is_set():
            self._wake.set()

    def reconfigure(self, run: RunInfo, backends: list[BackendSpec], capacity: int) -> bool:
        """Open the run as ``run`` in ``backends`` instead; False once the bus has been released."""
        with self._hold_lock:
            buffer = self._buffer
            if self._released.is_set() or not buffer or type(buffer[0]) is not Control:
                return False
            buffer[0] = Control("init", 0, 0.0, Init(run, backends, capacity))
            self._capacity = capacity
            self._names = [spec.name for spec in backends]
            with self._stats_lock:
                self._stats = {name: BackendStats(name) for name in self._names}
            return True

    def rename(self, run: RunInfo) -> bool:
        """Open the run as ``run`` in the same backends; False once the bus has been released."""
        with self._hold_lock:
            first = self._buffer[0] if self._buffer and not self._released.is_set() else None
        if type(first) is not Control:
            return False
        return self.reconfigure(run, first.payload.backends, first.payload.capacity)

    def release(self) -> None:
        """Start shipping events to the writer (a no-op unless the bus was held)."""
        with self._hold_lock:
            self._released.set()
        self._wake.set()

    def flush(self, timeout: float) -> Outcome:
        """Wait until every backend has handled everything emitted so far, or ``timeout`` passes."""
        return self._request("flush", timeout)

    def shutdown(self, status: str, timeout: float) -> Outcome:
        """End the run with ``status`` in every backend and stop; returns within ``timeout``."""
        started = time.monotonic()
        if not (self._dead or self._forked):
            self._buffer.append(RunEnd(status))
        outcome = self._request("shutdown", timeout, self.ledger.copy())
        self._stopping = True
        self._wake.set()
        self._sender.join(max(0.05, timeout - (time.monotonic() - started)))
        self._transport.close()
        _live_buses.discard(self)
        if self._dead and not self._forked:
            journal.record_end_without_writer(status, outcome.stats)
        return outcome

    def stats(self) -> dict[str, BackendStats]:
        """The latest counters per backend, this process's own drops included."""
        if self._dead and not self._forked:
            self._drop_buffered()  # an emit that raced the writer's death may have appended since
        with self._stats_lock:
            result = {
                name: dataclasses.replace(s, reasons=Counter(s.reasons)) for name, s in self._stats.items()
            }
            for stats in result.values():
                if self._dead and not self._forked:
                    self._count_lost_with_writer(stats)
                self.ledger.charge(stats)
        return result

    def _count_lost_with_writer(self, stats: BackendStats) -> None:
        """What reached the dead writer but no backend accounted for (its queues, the pipe, and what
        was written after its last report) is lost: counted, so the run never reads as complete."""
        accounted = stats.sent + stats.refused + stats.failed + stats.dropped
        lost = self._shipped + self._context_events.get(stats.name, 0) - accounted
        stats.pending = 0
        if lost > 0:
            stats.drop(lost, "writer process exited")
        if stats.state in ("starting", "open"):
            stats.state = "lost"

    # -- internals ----------------------------------------------------------------------
    def _request(self, kind: str, timeout: float, payload: Any = None) -> Outcome:
        if self._dead or self._forked:
            return Outcome(False, self.stats())
        self.release()
        started = time.monotonic()
        token = next(self._tokens)
        answered = threading.Event()
        replies: list[Reply] = []
        self._waiting[token] = (answered, replies)
        writer_deadline = time.time() + timeout * _REPLY_MARGIN
        self._buffer.append(Control(kind, token, writer_deadline, payload))
        self._wake.set()
        answered.wait(max(0.0, timeout - (time.monotonic() - started)))
        self._waiting.pop(token, None)
        done = bool(replies) and replies[0].done
        return Outcome(done, self.stats())

    def count_dropped(self, count: int, reason: str) -> None:
        """Count points lost on the training side (every backend lacks them) under ``reason``."""
        self.ledger.drop(count, reason)
        if reason == "queue full":
            _log.warn_once(
                "bus-overflow",
                "the buffer of %d events is full: new events are dropped (counted; raise `queue_size`)",
                self._capacity,
                log=log,
            )

    def _send_loop(self) -> None:
        buffer = self._buffer
        self._wait_for_release()
        while True:
            self._wake.wait(SEND_INTERVAL_S)
            self._wake.clear()
            # what is there now, not what arrives meanwhile: chasing it sent frames of one or two
            # events, each a pipe write, a GIL handoff and a transaction in every backend
            waiting = len(buffer)
            while waiting and not self._dead:
                taken = min(CHUNK, waiting)
                waiting -= taken
                chunk = self._next_chunk(taken)
                if not chunk:
                    continue
                points = sum(map(_points, chunk))
                self._shipped += points  # before sending: a frame the writer dies on is lost, not unknown
                try:
                    self._transport.send(chunk)
                except Exception as err:  # the writer died or its pipe broke
                    self._shipped -= points  # counted as dropped by _writer_lost instead
                    self._writer_lost(chunk, err)
            if self._stopping and not buffer:
                return

    def _wait_for_release(self) -> None:
        deadline = time.monotonic() + HOLD_MAX_S
        while not self._released.wait(SEND_INTERVAL_S):
            self._wake.clear()
            # list() copies the deque in one C call: safe while the training thread appends
            training = any(type(item) in (HostMetrics, DeferredMetrics) for item in list(self._buffer))
            if training or len(self._buffer) >= CHUNK or self._dead or time.monotonic() >= deadline:
                self.release()

    def _next_chunk(self, count: int) -> list[Any]:
        """The next ``count`` items of the buffer, values read (fewer if the writer's death emptied it)."""
        chunk: list[Any] = []
        buffer = self._buffer
        for _ in range(count):
            try:
                item = buffer.popleft()
            except IndexError:  # the writer died meanwhile: what was left is counted there
                break
            kind = type(item)
            if kind is HostMetrics:
                item = self._read_host(item)
            elif kind is DeferredMetrics:
                item = self._resolve(item)
            if item is not None:
                chunk.append(item)
        return chunk

    def _read_host(self, host: HostMetrics) -> Metrics | None:
        try:
            return host.read(host.names, host.values, host.step, host.timestamp)
        except Exception as err:  # tracelet's own bug: these points are lost, counted; sending goes on
            self.count_dropped(len(host.names), "metric values unreadable")
            _log.warn_once(
                f"host-read:{type(err).__name__}",
                "tracelet could not read metric values (%s: %s); these points are dropped and counted",
                type(err).__name__,
                err,
                log=log,
            )
            return None

    def _resolve(self, deferred: DeferredMetrics) -> Metrics | None:
        try:
            values = deferred.values()
        except Exception as err:  # a device error surfaced by the copy: lose these points, counted
            self.count_dropped(len(deferred.names), "device transfer failed")
            _log.warn_once(
                f"deferred:{type(err).__name__}",
                "could not read metric values from the device (%s)",
                err,
                log=log,
            )
            return None
        return Metrics(deferred.names, tuple(map(float, values)), deferred.step, deferred.timestamp)

    def _writer_lost(self, chunk: list[Any], err: BaseException) -> None:
        self._dead = True
        self.count_dropped(sum(_points(item) for item in chunk), "writer process exited")
        self._drop_buffered()
        _log.warn_once(
            "writer-exit",
            "tracelet's writer stopped accepting events (%s); the rest of this run is counted as dropped",
            err,
            log=log,
        )
        self._release_waiters()

    def _on_writer_exit(self, code: int | None) -> None:
        if not self._stopping:
            self._dead = True
            self._drop_buffered()
            self._release_waiters()
            _log.warn_once(
                "writer-exit",
                "tracelet's writer process exited unexpectedly (exit code %s): training goes on, and what "
                "the backends did not receive is counted as lost ('writer process exited'); the journal "
                "keeps what reached it",
                code,
                log=log,
            )

    def _drop_buffered(self) -> None:
        """Count what waits in the buffer as lost to the writer's death, and empty it.

        Items are taken one ``popleft`` at a time (atomic), never by iterating: the training
        thread may still be appending, and the sender may be taking a chunk at the same time;
        each item is counted by exactly one of them.
        """
        buffer = self._buffer
        lost = 0
        while True:
            try:
                item = buffer.popleft()
            except IndexError:
                break
            lost += _points(item)
        if lost:
            self.count_dropped(lost, "writer process exited")

    def _release_waiters(self) -> None:
        for answered, _ in list(self._waiting.values()):
            answered.set()

    def _on_reply(self, reply: Reply) -> None:
        if reply.kind == "log":
            name, level, message = reply.payload
            logging.getLogger(name).log(level, message)
            return
        with self._stats_lock:
            if reply.kind == "closed":
                self._closed = True
            elif reply.kind == "stats" and self._closed:
                return  # a progress report overtaken by the final one
            self._stats.update(reply.stats)
            if reply.kind == "opened" and isinstance(reply.payload, int):
                self._context_events.update(dict.fromkeys(reply.stats, reply.payload))
        waiter = self._waiting.get(reply.token)
        if waiter is not None:
            waiter[1].append(reply)
            waiter[0].set()

    def _after_fork_in_child(self) -> None:
        self._forked = True
        self._dead = True
        self._buffer.clear()
        self._transport.after_fork_in_child()


def _points(item: Any) -> int:
    """How many of the user's events an item of the buffer stands for, for the drop counts: a
    group counts its points; requests (flush, shutdown) and the run's end are the bus's own."""
    kind = type(item)
    if kind in (Metrics, HostMetrics, DeferredMetrics):
        return len(item.names)
    return 0 if kind in (Control, RunEnd) else 1


_live_buses: weakref.WeakSet[EventBus] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for bus in list(_live_buses):
        bus._after_fork_in_child()
    _live_buses.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
