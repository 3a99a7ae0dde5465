"""A backend's worker: bounded retries with backoff on open and write, then the backend is given up
for the run with one warning that points to the journal; a run that ends cuts the waiting short."""

from __future__ import annotations

import logging
import time

from tracelet.backends.base import RunInfo, RunLocation
from tracelet.events import Metric, RunEnd
from tracelet.worker import BackendWorker

RUN = RunInfo("uid", "p", "n", None, None, 0.0, {})
FAST = (0.01, 0.01, 0.01)


class Flaky:
    """Fails the first ``failures`` opens or writes, then works."""

    def __init__(self, open_failures: int = 0, write_failures: int = 0) -> None:
        self.open_failures = open_failures
        self.write_failures = write_failures
        self.written: list = []
        self.closed: str | None = None

    def open(self, run):
        if self.open_failures:
            self.open_failures -= 1
            raise ConnectionError("connection refused")
        return RunLocation("flaky", "id", "here", "look here")

    def write(self, batch):
        if self.write_failures:
            self.write_failures -= 1
            raise ConnectionError("HTTP 503")
        self.written.extend(batch)

    def close(self, status):
        self.closed = status


def _run(backend: Flaky, events: int, delays=FAST, journal=None) -> BackendWorker:
    worker = BackendWorker("flaky", lambda: backend, RUN, 100_000, retry_delays=delays, journal=journal)
    worker.start()
    worker.submit([Metric("loss", float(i), i, 0.0) for i in range(events)])
    worker.submit([RunEnd("FINISHED")])
    assert worker.finished.wait(30)
    return worker


def test_transient_open_and_write_failures_are_retried_and_nothing_is_lost():
    backend = Flaky(open_failures=2, write_failures=3)
    worker = _run(backend, 2_500)
    stats = worker.snapshot()
    assert (stats.sent, stats.failed, stats.dropped) == (2_500, 0, 0)
    assert [m.step for m in backend.written] == list(range(2_500))
    assert backend.closed == "FINISHED"


def test_a_backend_that_keeps_failing_is_given_up_with_one_warning_naming_the_journal(caplog):
    backend = Flaky(write_failures=10**9)
    with caplog.at_level(logging.WARNING, logger="tracelet"):
        worker = _run(backend, 2_500, journal=lambda: "/runs/20261124-1200-abcd")
    stats = worker.snapshot()
    assert stats.state == "failed" and stats.sent == 0 and stats.failed == 2_500
    assert stats.reasons == {"write error: ConnectionError": 2_500}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "after 4 attempts" in warnings[0]
    assert "tracelet replay /runs/20261124-1200-abcd --backend flaky" in warnings[0]


def test_the_end_of_the_run_cuts_the_backoff_short():
    backend = Flaky(open_failures=10**9)
    started = time.monotonic()
    worker = _run(backend, 10, delays=(60.0, 60.0, 60.0))
    assert time.monotonic() - started < 5
    stats = worker.snapshot()
    assert stats.state == "failed" and stats.dropped == 10
    assert stats.reasons == {"backend failed to open": 10}
