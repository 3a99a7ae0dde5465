"""How chunks of the event stream reach the dispatcher: a writer process, or a thread.

The process transport is the default. Measured on a 2-core machine (DESIGN.md), MLflow's
Python-heavy write path on a thread of the training process stalls training through the
GIL far beyond its CPU cost; in a separate process it costs training almost nothing, keeps
backend SDK imports out of the training process, and survives the training process being
killed (the writer sees EOF and closes the runs). What travels, and how it is framed, is
``wire.py``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from tracelet import _log
from tracelet.backends.base import WRITER_ENV, import_path  # WRITER_ENV: nothing in the writer tracks
from tracelet.wire import Reply, connect, decode, encode_events

log = _log.get_logger(__name__)


class ThreadTransport:
    """The dispatcher on the sender thread of this process: no extra process, more GIL."""

    def __init__(self, on_reply: Callable[[Reply], None]) -> None:
        # the writer's side, run in this process on request (writer="thread"): the one place
        # the training side imports it (tests/test_wire.py)
        from tracelet.dispatcher import Dispatcher

        self._dispatcher = Dispatcher(on_reply)

    def send(self, items: Sequence[Any]) -> None:
        self._dispatcher.handle(items)

    def close(self) -> None:
        pass

    def after_fork_in_child(self) -> None:
        pass


class ProcessTransport:
    """The dispatcher in a writer process started now, so it is warm before training."""

    def __init__(self, on_reply: Callable[[Reply], None], on_exit: Callable[[int | None], None]) -> None:
        data_read, data_write = os.pipe()
        reply_read, reply_write = os.pipe()
        env = dict(os.environ)
        env[WRITER_ENV] = "1"
        env["PYTHONSAFEPATH"] = "1"  # no working directory on the writer's path
        env["PYTHONPATH"] = os.pathsep.join(import_path())  # nor the script's or the home directory
        env.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # no schema-migration chatter from the writer
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tracelet.writer", str(data_read), str(reply_write)],
                pass_fds=(data_read, reply_write),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=_stderr_fd(),
                start_new_session=True,  # a Ctrl+C for the training must not kill the writer
            )
        finally:
            os.close(data_read)
            os.close(reply_write)
        self._events = connect(data_write, readable=False)
        self._replies = connect(reply_read, readable=True)
        self._on_reply = on_reply
        self._on_exit = on_exit
        self._reader = threading.Thread(target=self._read_replies, name="tracelet-replies", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def send(self, items: Sequence[Any]) -> None:
        self._events.send_bytes(encode_events(items))

    def close(self) -> None:
        """Close our end of the data pipe: the writer finishes on its own deadline."""
        with contextlib.suppress(OSError):  # the writer may be gone already; nothing to tell it
            self._events.close()
        # reap the writer when it exits (it finishes on its own deadline), leaving no zombie
        threading.Thread(target=self._process.wait, name="tracelet-reaper", daemon=True).start()

    def wait(self, timeout: float) -> int | None:
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def after_fork_in_child(self) -> None:
        """A forked child (e.g. a DataLoader worker) must not hold the writer's pipe open.

        Its copies of the pipe's ends become ``/dev/null`` under the same numbers rather than
        being closed: the ``Connection`` objects still own those numbers and close them when
        collected, which must not close a file the child opened since.
        """
        with contextlib.suppress(OSError):
            placeholder = os.open(os.devnull, os.O_RDWR)
            try:
                for end in (self._events, self._replies):
                    with contextlib.suppress(OSError):
                        os.dup2(placeholder, end.fileno(), inheritable=False)
            finally:
                os.close(placeholder)

    def _read_replies(self) -> None:
        try:
            while True:
                self._on_reply(decode(self._replies.recv_bytes()))
        except (EOFError, OSError):  # OSError: also a message cut short by the writer's death
            pass
        except Exception:  # a reply we cannot decode: stop listening, the bus reports it
            log.exception("tracelet could not read a reply from its writer process")
        finally:
            with contextlib.suppress(OSError):
                self._replies.close()  # the writer is gone: do not wait for the GC to free the fd
            self._on_exit(self.wait(2.0))


def _stderr_fd() -> int | None:
    """Backend SDKs print; keep that off the user's stdout."""
    try:
        return sys.__stderr__.fileno() if sys.__stderr__ is not None else None
    except (OSError, ValueError):  # e.g. a notebook without real standard streams
        return None
