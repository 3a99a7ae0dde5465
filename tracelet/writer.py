"""The writer process: ``python -m tracelet.writer DATA_FD REPLY_FD``.

Reads the event stream from the training process, runs the dispatcher and the backend
workers, and answers flush/shutdown requests. Warnings logged here (by tracelet's backend
adapters) travel back to the training process so the user sees them in their own log.
When the training process disappears without a shutdown (killed, crashed hard), the pipe
reaches EOF and every backend still gets what was received and a KILLED status.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from tracelet import _log
from tracelet.dispatcher import Dispatcher
from tracelet.events import KILLED
from tracelet.wire import Control, Reply, connect, decode_events, encode

WRITER_NICENESS = 10  # the writer's threads, where tasks compete one by one (inside a cgroup)
BACKGROUND_GROUP_NICENESS = 19  # its session group while training runs (autogroup)
ABANDON_GRACE_S = 30.0  # how long backends may take to close after the training process vanished
STATS_INTERVAL_S = 1.0  # how stale the training process's view of delivery may be if this process dies
OPENED_WAIT_MAX_S = 60.0  # collection and priorities are settled by then, even if a backend still opens


class _ReplyChannel:
    def __init__(self, fd: int) -> None:
        self._connection = connect(fd, readable=False)
        self._lock = threading.Lock()

    def send(self, reply: Reply) -> None:
        message = encode(reply)
        with self._lock, contextlib.suppress(OSError):  # OSError: the training process is gone
            self._connection.send_bytes(message)


class _ForwardWarnings(logging.Handler):
    """Send tracelet's warnings to the training process, where the user's logging sees them."""

    def __init__(self, channel: _ReplyChannel) -> None:
        super().__init__(logging.WARNING)
        self._channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            payload = (record.name, record.levelno, record.getMessage())
            self._channel.send(Reply("log", 0, {}, True, payload))
        except Exception:  # logging must never take the writer down
            self.handleError(record)


def main(argv: list[str]) -> int:
    data_fd, reply_fd = int(argv[0]), int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only EOF or a shutdown request end the writer
    priority = _Priority()
    channel = _ReplyChannel(reply_fd)
    logger = logging.getLogger(_log.LOGGER_NAME)
    logger.addHandler(_ForwardWarnings(channel))
    logger.setLevel(logging.INFO)
    logger.propagate = False

    closed = threading.Event()

    def reply(message: Reply) -> None:
        if message.kind == "flushed":  # the flush's work is done: back to the background first
            priority.background()
        channel.send(message)
        if message.kind == "closed":
            closed.set()

    dispatcher = Dispatcher(reply)
    _once_opened(dispatcher.all_opened, _defer_garbage_collection(), priority.adopt_sessions)
    _report_progress(dispatcher, channel, closed)
    events = connect(data_fd, readable=True)
    try:
        while True:
            items = decode_events(events.recv_bytes())
            for item in items:
                if isinstance(item, Control) and item.kind != "init":  # training waits on it now
                    priority.foreground(final=item.kind == "shutdown")
            dispatcher.handle(items)
    except (EOFError, OSError):  # OSError: the last message was cut short (the training process died)
        pass
    if not dispatcher.ended:
        logger.warning("the training process ended without stop_logging; closing its runs as KILLED")
        dispatcher.abandon(KILLED, ABANDON_GRACE_S)
    else:
        closed.wait(ABANDON_GRACE_S)  # the shutdown reply is sent by its own thread, on its deadline
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # backend SDKs may leave non-daemon threads behind; the runs are closed


class _Priority:
    """Training gets the CPU first on a busy machine; the writer catches up when it can.

    Linux shares the CPU by one of two groupings, so both are lowered. Inside a cgroup
    (containers, systemd slices, Slurm jobs) tasks compete one by one and the nice value of
    the writer's threads orders them. Outside one, where the kernel groups tasks by session
    (autogroup: most distributions' kernels), the writer, which runs in a session of its own so
    that a Ctrl+C for training does not reach it, would get a share as large as the whole
    training session's: a core of its own beside training and its data loaders. The nice
    value of the writer's session group takes that share back; unlike a thread's nice value it
    can be raised again without privileges, so while training waits on a flush or a shutdown
    the writer runs at its full share. Services a backend starts in sessions of their own
    (W&B's ``wandb-core``) get the same group nice value once every backend is open.
    """

    AUTOGROUP = "/proc/self/autogroup"

    def __init__(self) -> None:
        with contextlib.suppress(OSError):  # e.g. already at the limit
            os.nice(WRITER_NICENESS)
        self._groups = [self.AUTOGROUP] if self.grouped_by_session() else []
        self._nice = 0
        self._ending = False
        self._lock = threading.Lock()
        self.background()

    @staticmethod
    def grouped_by_session(path: str = AUTOGROUP) -> bool:
        """Whether the kernel shares the CPU among the session group of the process at ``path``.

        The file exists on every autogroup kernel but reads empty for a task in a cgroup of
        its own (CI runners, containers): there the group's nice value changes nothing.
        """
        try:
            with open(path) as group:
                return group.read().startswith("/autogroup-")
        except OSError:
            return False

    def adopt_sessions(self) -> None:
        """Give the writer's priority to the processes its backends started in sessions of their
        own (W&B's service): each would otherwise get a share as large as training's."""
        if not self._groups:
            return
        import psutil

        session = os.getsid(0)
        with self._lock:
            for child in psutil.Process().children(recursive=True):
                path = f"/proc/{child.pid}/autogroup"
                with contextlib.suppress(OSError):  # the child is gone
                    if os.getsid(child.pid) == session or path in self._groups:
                        continue
                    if self.grouped_by_session(path) and self._write(path, self._nice):
                        self._groups.append(path)

    def background(self) -> None:
        if not self._ending:
            self._set_group_nice(BACKGROUND_GROUP_NICENESS)

    def foreground(self, final: bool = False) -> None:
        self._ending = self._ending or final
        self._set_group_nice(0)

    def _set_group_nice(self, nice: int) -> None:
        with self._lock:
            self._nice = nice
            for path in list(self._groups):
                if not self._write(path, nice):
                    # not in the root cgroup, or not allowed: the threads' nice value holds
                    self._groups = [] if path == self.AUTOGROUP else [g for g in self._groups if g != path]

    @staticmethod
    def _write(path: str, nice: int) -> bool:
        for _ in range(3):  # the kernel takes one change every 0.1 s from unprivileged processes
            try:
                with open(path, "w") as group:
                    group.write(str(nice))
                return True
            except BlockingIOError:
                time.sleep(0.1)
            except OSError:
                return False
        return True  # busy each time: the next change tries again


def _report_progress(dispatcher: Dispatcher, channel: _ReplyChannel, closed: threading.Event) -> None:
    """Every second, what each backend has stored: if this process is killed, the training process
    still knows what was delivered and counts the rest as lost, instead of guessing."""

    def loop() -> None:
        last: dict = {}
        while not closed.wait(STATS_INTERVAL_S) and not dispatcher.ended:
            stats = dispatcher.stats()
            if stats != last:
                channel.send(Reply("stats", 0, stats, True))
                last = stats

    threading.Thread(target=loop, name="tracelet-progress", daemon=True).start()


def _once_opened(opened: threading.Event, *actions: Callable[[], None]) -> None:
    """Run ``actions`` once every backend is open (or after ``OPENED_WAIT_MAX_S``)."""

    def run() -> None:
        opened.wait(OPENED_WAIT_MAX_S)
        for action in actions:
            action()

    threading.Thread(target=run, name="tracelet-opened", daemon=True).start()


def _defer_garbage_collection() -> Callable[[], None]:
    """No collections while the backends open, then none that walk what opening them made.

    Opening MLflow imports it: ~500,000 objects, all kept for the life of the process; each
    full collection walks every one of them (~0.1 s here), both during the import and later
    while training runs, and on a 2-vCPU VM the writer's CPU is partly training's. So the
    collector is off until every backend is open, then what exists is frozen (``gc.freeze``:
    never collected, never walked again) and collection resumes for what comes after: the
    function returned does that.
    """
    gc.disable()

    def resume() -> None:
        gc.freeze()
        gc.enable()

    return resume


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
