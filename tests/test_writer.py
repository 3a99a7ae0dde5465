"""The writer process's own housekeeping: when its backends are open, and its garbage collector."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import fake_backends
import pytest

from tracelet.backends.base import BackendSpec
from tracelet.dispatcher import Dispatcher
from tracelet.events import RunEnd
from tracelet.testing import sample_run
from tracelet.wire import Control, Init


def test_all_opened_waits_for_every_backend_to_open_or_give_up(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_backends.OPEN_GATE.clear()
    specs = [
        BackendSpec("gated", "fake_backends:GatedOpen"),
        BackendSpec("failing", "fake_backends:FailingOpen"),
    ]
    dispatcher = Dispatcher(lambda reply: None)
    dispatcher.handle([Control("init", 0, 0.0, Init(sample_run(), specs, 100))])
    try:
        dispatcher.handle([RunEnd("FINISHED")])  # the failing one gives up at once instead of backing off
        gated, failing = dispatcher._workers
        assert failing.finished.wait(10) and failing.stats.state == "failed"
        assert not dispatcher.all_opened.is_set(), "one backend is still opening"
    finally:
        fake_backends.OPEN_GATE.set()
    assert dispatcher.all_opened.wait(10)
    assert gated.finished.wait(10) and gated.stats.state == "closed"


def test_one_thread_answers_flushes_and_the_shutdown_in_the_order_they_came(tmp_path, monkeypatch):
    import threading

    from tracelet.events import Metric

    monkeypatch.chdir(tmp_path)
    fake_backends.OPEN_GATE.clear()
    replies = []
    answered = threading.Event()

    def reply(message):
        if message.kind != "opened":
            replies.append((message.kind, message.token, message.done))
        if message.kind == "closed":
            answered.set()

    dispatcher = Dispatcher(reply)
    spec = BackendSpec("gated", "fake_backends:GatedOpen")
    deadline = time.time() + 60
    dispatcher.handle([Control("init", 0, 0.0, Init(sample_run(), [spec], 100))])
    before = set(threading.enumerate())  # the backend's worker is running
    try:
        for token in range(1, 6):  # none can be answered while the backend is still opening
            dispatcher.handle(
                [Metric("loss", float(token), token, time.time()), Control("flush", token, deadline)]
            )
        dispatcher.handle([RunEnd("FINISHED"), Control("shutdown", 6, deadline)])
        answering = list(set(threading.enumerate()) - before)
        assert len(answering) == 1, answering
        assert replies == []
    finally:
        fake_backends.OPEN_GATE.set()
    assert answered.wait(30)
    assert replies == [("flushed", token, True) for token in range(1, 6)] + [("closed", 6, True)]
    answering[0].join(10)
    assert not answering[0].is_alive(), "the thread ends with the shutdown's answer"


def test_the_writer_collects_no_garbage_while_backends_open_then_freezes_what_opening_made():
    # in a fresh interpreter: the test process's own collector stays as it is
    code = textwrap.dedent(
        """
        import gc, threading
        from tracelet import writer

        opened = threading.Event()
        writer._once_opened(opened, writer._defer_garbage_collection())
        assert not gc.isenabled()
        made_while_opening = [[i] for i in range(1000)]
        opened.set()
        next(t for t in threading.enumerate() if t.name == "tracelet-opened").join(10)
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(made_while_opening), gc.get_freeze_count()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ
    )
    assert out.returncode == 0, out.stderr


def _autogroups() -> bool:
    from tracelet.writer import _Priority

    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as enabled:
            return enabled.read().strip() == "1" and _Priority.grouped_by_session()
    except OSError:
        return False


def _group(pid: int | str) -> tuple[str, int]:
    """(the session group, its nice value) from ``/autogroup-123 nice 19``; the test is skipped
    where the kernel gave the process no group of its own (the file reads empty: some CI kernels)."""
    with open(f"/proc/{pid}/autogroup") as group:
        fields = group.read().split()
    if len(fields) != 3:
        pytest.skip(f"process {pid} is in no session group of its own")
    name, _, nice = fields
    return name, int(nice)


def test_the_writers_threads_yield_the_cpu_to_training():
    import psutil

    import tracelet
    from tracelet import writer

    experiment = tracelet.start_logging(exp_name="priority")
    pid = experiment._bus._transport.pid
    assert experiment.flush(60)
    assert psutil.Process(pid).nice() == writer.WRITER_NICENESS
    assert psutil.Process().nice() == 0, "training keeps its own priority"


@pytest.mark.skipif(not _autogroups(), reason="this process is not in a session group (autogroup)")
def test_the_writers_session_yields_the_cpu_to_training_and_takes_its_share_while_training_waits():
    import tracelet
    from tracelet import writer

    experiment = tracelet.start_logging(exp_name="priority")
    pid = experiment._bus._transport.pid
    assert experiment.flush(60)
    group, nice = _group(pid)
    assert group != _group(os.getpid())[0], "the writer has a session, so a session group, of its own"
    assert nice == writer.BACKGROUND_GROUP_NICENESS, "after a flush the writer is back in the background"
    # while training waits on it (flush, shutdown) the group runs at an ordinary share
    code = textwrap.dedent(
        """
        from tracelet import writer
        priority = writer._Priority()
        print(open("/proc/self/autogroup").read().split()[-1:])
        priority.foreground()
        print(open("/proc/self/autogroup").read().split()[-1:])
        priority.background()
        print(open("/proc/self/autogroup").read().split()[-1:])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, start_new_session=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        f"['{writer.BACKGROUND_GROUP_NICENESS}']",
        "['0']",
        f"['{writer.BACKGROUND_GROUP_NICENESS}']",
    ]


@pytest.mark.skipif(not _autogroups(), reason="this process is not in a session group (autogroup)")
def test_a_service_that_a_backend_starts_in_a_session_of_its_own_gets_the_writers_priority():
    import psutil

    import tracelet
    from tracelet import writer

    experiment = tracelet.start_logging(exp_name="priority", backend="wandb")
    pid = experiment._bus._transport.pid
    assert experiment.flush(60)
    services = [p for p in psutil.Process(pid).children(recursive=True) if os.getsid(p.pid) != os.getsid(pid)]
    assert services, "W&B runs its service (wandb-core) in a session of its own"
    deadline = time.monotonic() + 30  # the writer adopts them once every backend is open
    while any(_group(s.pid)[1] != writer.BACKGROUND_GROUP_NICENESS for s in services):
        assert time.monotonic() < deadline, [_group(s.pid) for s in services]
        time.sleep(0.1)
    tracelet.stop_logging()
