"""A backend's worker: bounded retries with backoff on open and write, then the backend is given up
for the run with one warning that points to the journal; a run that ends cuts the waiting short."""

from __future__ import annotations

import logging
import time

import pytest

from tracelet.backends.base import RunInfo, RunLocation, WriteInterrupted
from tracelet.events import Metric, Params, RunEnd
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


class HalfThenFails(Flaky):
    """Stores the first half of one batch, then fails: a retry must not store that half again."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False

    def write(self, batch):
        if not self.interrupted and len(batch) > 1:
            self.interrupted = True
            half = len(batch) // 2
            self.written.extend(batch[:half])
            raise WriteInterrupted(half, {}, ConnectionError("reset by peer"))
        self.written.extend(batch)


def test_a_write_interrupted_part_way_is_retried_from_where_it_stopped():
    backend = HalfThenFails()
    worker = _run(backend, 2_500)
    stats = worker.snapshot()
    assert backend.interrupted
    assert (stats.sent, stats.failed, stats.dropped) == (2_500, 0, 0)
    assert [m.step for m in backend.written] == list(range(2_500))


def _fail_once_at_call(owner, attribute: str, call: int) -> list[int]:
    """Make ``owner.attribute`` raise ConnectionError on its ``call``-th call, once."""
    original = getattr(owner, attribute)
    calls = [0]

    def flaky(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            raise ConnectionError("connection reset by peer")
        return original(*args, **kwargs)

    setattr(owner, attribute, flaky)
    return calls


def _mlflow_points(backend, location):
    from helpers import mlflow_series

    return mlflow_series(location.run_id, location.uri)


def _wandb_points(backend, location):
    from helpers import wandb_series

    return wandb_series(location.uri)[0]


def _clearml_points(backend, location):
    from helpers import clearml_series

    return clearml_series(location.uri)[0]


def _journal_points(backend, location):
    from tracelet import journal

    series: dict = {}
    for event in journal.events(journal.load(location.uri)):
        if isinstance(event, Metric):
            series.setdefault(event.name, []).append((event.step, event.value))
    return series


def _os_write_fails_once_part_way(monkeypatch):
    import os

    from tracelet.backends import journal as journal_backend

    real_write, state = os.write, {"failed": False}

    def write(fd, data):
        if not state["failed"] and len(data) > 1000:
            state["failed"] = True
            real_write(fd, bytes(data[: len(data) // 3]))
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(journal_backend.os, "write", write)
    return state


FAILING_CALLS = {  # backend: (attribute, its method that fails, on which call)
    "mlflow": ("_local", "write", 2),  # the direct SQLite path
    "mlflow/log_batch": ("_client", "log_batch", 1),  # MLflow's client (a remote server, say)
    "wandb": ("_run", "log", 700),
    "clearml": ("_logger", "report_scalar", 700),
}


@pytest.mark.parametrize("name", ["mlflow", "mlflow/log_batch", "wandb", "clearml", "journal"])
def test_a_real_backend_failing_part_way_through_a_batch_stores_every_point_once(name, tmp_path, monkeypatch):
    from tracelet.backends.base import BUILTINS, BackendSpec, load
    from tracelet.testing import sample_run

    kind = name.split("/")[0]
    backend = load(BackendSpec(kind, BUILTINS[kind].target))
    run = sample_run(settings={"journal_dir": str(tmp_path / "runs")})
    failing = dict(FAILING_CALLS)
    original_open = backend.open

    def open_then_break(run):
        location = original_open(run)
        if name == "mlflow/log_batch":
            backend._local = None
        if name in failing:
            owner, attribute, call = failing[name]
            failing[name] = _fail_once_at_call(getattr(backend, owner), attribute, call)
        return location

    backend.open = open_then_break
    journal_state = _os_write_fails_once_part_way(monkeypatch) if name == "journal" else None
    worker = BackendWorker(name, lambda: backend, run, 100_000, retry_delays=FAST)
    worker.start()
    params = Params({f"p{i}": i for i in range(150)})  # more than one MLflow log_batch holds
    worker.submit([params] + [Metric("loss", float(i), i, 1_700_000_000.0 + i) for i in range(2_500)])
    worker.submit([RunEnd("FINISHED")])
    assert worker.finished.wait(60)
    stats = worker.snapshot()
    assert (stats.sent, stats.failed, stats.dropped) == (2_501, 0, 0), stats
    if journal_state is not None:
        assert journal_state["failed"]
    else:
        assert failing[name][0] > FAILING_CALLS[name][2], "the injected failure never happened"
    reader = {
        "mlflow": _mlflow_points,
        "wandb": _wandb_points,
        "clearml": _clearml_points,
        "journal": _journal_points,
    }
    assert reader[kind](backend, stats.location)["loss"] == [(i, float(i)) for i in range(2_500)]
    if kind == "mlflow":  # params of a failed call are sent again, not taken as stored
        from helpers import mlflow_run

        assert mlflow_run(stats.location.run_id, stats.location.uri).data.params == {
            f"p{i}": str(i) for i in range(150)
        }


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            ConnectionError(
                "HTTPConnectionPool(host='127.0.0.1', port=5999): Max retries exceeded with url: /api "
                '(Caused by NewConnectionError("...: Failed to establish a new connection: [Errno 111] '
                'Connection refused")) while calling http://127.0.0.1:5999/api/2.0/mlflow/runs/create'
            ),
            "cannot reach http://127.0.0.1:5999 (connection refused)",
        ),
        (OSError("[Errno -2] Name or service not known"), "cannot reach the server (host name not found)"),
        (RuntimeError("API request to https://mlflow.team:443/x failed: 503 Server Error"), None),
        (ValueError("bad value\n" + "x" * 500), "ValueError: bad value"),
        (RuntimeError("y" * 500), None),
    ],
)
def test_a_backend_failure_is_one_short_line(error, expected):
    from tracelet.failures import describe

    line = describe(error)
    assert "\n" not in line and len(line) <= 200
    if expected is not None:
        assert line == expected
    elif "503" in str(error):
        assert line == "HTTP error from https://mlflow.team:443 (HTTP 503)"
    else:
        assert line.endswith("...") and line.startswith("RuntimeError: yyy")
