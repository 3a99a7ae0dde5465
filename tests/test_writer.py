"""The writer process's own housekeeping: when its backends are open, and its garbage collector."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import fake_backends

from tracelet.backends.base import BackendSpec
from tracelet.dispatcher import Control, Dispatcher, Init
from tracelet.events import RunEnd
from tracelet.testing import sample_run


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


def test_the_writer_collects_no_garbage_while_backends_open_then_freezes_what_opening_made():
    # in a fresh interpreter: the test process's own collector stays as it is
    code = textwrap.dedent(
        """
        import gc, threading
        from tracelet import writer

        opened = threading.Event()
        writer._defer_garbage_collection(opened)
        assert not gc.isenabled()
        made_while_opening = [[i] for i in range(1000)]
        opened.set()
        next(t for t in threading.enumerate() if t.name == "tracelet-gc").join(10)
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(made_while_opening), gc.get_freeze_count()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ
    )
    assert out.returncode == 0, out.stderr
