"""The writer side of the bus: fans the event stream out to one worker per backend.

It receives an ordered stream of items (events and ``Control`` requests) and answers
through a ``reply`` callback. The same code runs inside the writer process (the default)
and on a thread of the training process (``writer="thread"``).
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tracelet import _log, journal
from tracelet.backends import base
from tracelet.events import Artifact, Event, Metrics, RunEnd
from tracelet.wire import BackendStats, Control, Init, Ledger, Reply
from tracelet.worker import BackendWorker

if TYPE_CHECKING:
    from tracelet.collectors.context import RunContext

log = _log.get_logger(__name__)


class Dispatcher:
    def __init__(self, reply: Callable[[Reply], None]) -> None:
        self._reply = reply
        self._workers: list[BackendWorker] = []
        self._ended = False
        self._context: RunContext | None = None
        self._console: str | None = None
        self._backends = 0
        self._context_events = 0  # events added here (git, environment): the bus counts what it sent
        self._upstream = Ledger()  # what the training process itself could not hand on
        self._opened = 0
        self._opened_lock = threading.Lock()
        self.all_opened = threading.Event()  # every backend is open (or gave up opening)
        self._requests: queue.SimpleQueue | None = None  # flushes and the shutdown, waiting for an answer

    def handle(self, items: Sequence[Any]) -> None:
        """Route a chunk of the stream: runs of events to every worker, controls in order."""
        run: list[Event] = []
        for item in items:
            if type(item) is Metrics:
                run.extend(item.points())
            elif isinstance(item, Control):
                if run:
                    self._submit(run)
                    run = []
                self._control(item)
            else:
                run.append(item)
        if run:
            self._submit(run)

    @property
    def ended(self) -> bool:
        return self._ended

    def abandon(self, status: str, grace: float) -> Reply:
        """The training process went away without a shutdown: close every run with ``status``."""
        self._ended = True
        last: list[Event] = [RunEnd(status)]
        if self._console and os.path.exists(self._console):  # what it printed, up to its last flush
            last.insert(0, Artifact(self._console, None))
        self._submit(last)
        reply = self._wait(
            Control("shutdown", -1, time.time() + grace), "closed", [w.finished for w in self._workers]
        )
        if reply.done and self._console:  # nobody else is left to remove it
            shutil.rmtree(os.path.dirname(self._console), ignore_errors=True)
        return reply

    # -- internals ----------------------------------------------------------------------
    def _submit(self, events: list[Event]) -> None:
        for worker in self._workers:
            worker.submit(events)

    def _control(self, control: Control) -> None:
        if control.kind == "init":
            self._start(control.payload)
        elif control.kind == "flush":
            markers = [w.flush_marker() for w in self._workers]
            self._answer_when(control, "flushed", markers)
        elif control.kind == "shutdown":
            self._ended = True
            self._upstream = control.payload or Ledger()
            self._answer_when(control, "closed", [w.finished for w in self._workers])
        else:
            log.warning("ignoring an unknown control request %r", control.kind)

    def _start(self, init: Init) -> None:
        from tracelet.collectors.context import RunContext

        self._context = context = RunContext(init.run)
        self._console = init.run.console_path
        run, first_events = context.run, context.events
        self._context_events = len(first_events)
        self._backends = len(init.backends)
        if not init.backends:
            self.all_opened.set()
        for spec in init.backends:
            worker = BackendWorker(
                spec.name,
                lambda spec=spec: base.load(spec),
                run,
                init.capacity,
                on_opened=self._on_opened,
                journal=lambda: journal.whole_journal(w.snapshot() for w in self._workers),
            )
            self._workers.append(worker)
            worker.submit(first_events)
            worker.start()

    def _on_opened(self, stats: BackendStats) -> None:
        self._reply(Reply("opened", 0, {stats.name: stats}, True, self._context_events))
        with self._opened_lock:
            self._opened += 1
            if self._opened >= self._backends:
                self.all_opened.set()

    def _answer_when(self, control: Control, kind: str, events: list[threading.Event]) -> None:
        """Reply once every event is set or the deadline passes, without blocking the stream.

        One thread answers the requests, in the order they came, until the shutdown's reply.
        """
        if self._requests is None:
            self._requests = queue.SimpleQueue()
            threading.Thread(
                target=self._answer, args=(self._requests,), name="tracelet-answers", daemon=True
            ).start()
        self._requests.put((control, kind, events))

    def _answer(self, requests: queue.SimpleQueue) -> None:
        while True:
            control, kind, events = requests.get()
            self._reply(self._wait(control, kind, events))
            if kind == "closed":
                return

    def _wait(self, control: Control, kind: str, events: list[threading.Event]) -> Reply:
        for event in events:
            event.wait(max(0.0, control.deadline - time.time()))
        done = all(event.is_set() for event in events)
        if kind == "closed":
            journal.record_delivery(self.stats(), self._upstream)
            if self._context is not None and all(w.finished.is_set() for w in self._workers):
                self._context.remove()  # every backend has copied its artifacts
        return Reply(kind, control.token, self.stats(), done)

    def stats(self) -> dict[str, BackendStats]:
        return {w.name: w.snapshot() for w in self._workers}
