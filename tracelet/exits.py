"""How a run learns that the program is ending, and how: FAILED, KILLED or finished.

While a run is active: an uncaught exception (``sys.excepthook``) marks it FAILED, or KILLED
for a KeyboardInterrupt; ``sys.exit(non-zero)``, which never reaches the excepthook, FAILED;
SIGTERM KILLED, and the run is stopped before the signal's previous handler runs; ``atexit``
stops a run the program forgot. Each hook chains to what was there before it, and
``remove`` puts every one of them back.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from tracelet.events import FAILED, KILLED
from tracelet.sink import Sink


class ExitHooks:
    def __init__(self, sink: Sink, stop: Callable[[], object]) -> None:
        self._sink = sink
        self._stop = stop  # api.stop_logging: the same for every run, so atexit can unregister it
        self._installed = False
        self._previous_excepthook: Any = None
        self._previous_exit: Any = None
        self._previous_sigterm: Any = None
        # bound once: ``sys.excepthook is self._excepthook`` must hold while installed
        self._excepthook_bound = self._excepthook
        self._exit_bound = self._exit
        self._sigterm_bound = self._on_sigterm

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        atexit.register(self._stop)
        self._previous_excepthook, sys.excepthook = sys.excepthook, self._excepthook_bound
        self._previous_exit, sys.exit = sys.exit, self._exit_bound
        if threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGTERM)
            if current is not signal.SIG_IGN and current is not None:
                self._previous_sigterm = current
                signal.signal(signal.SIGTERM, self._sigterm_bound)

    def remove(self) -> None:
        """Put back what ``install`` replaced, where nobody has replaced it since."""
        if not self._installed:
            return
        self._installed = False
        atexit.unregister(self._stop)
        if sys.excepthook is self._excepthook_bound:
            sys.excepthook = self._previous_excepthook
        if sys.exit is self._exit_bound:
            sys.exit = self._previous_exit
        if (
            self._previous_sigterm is not None
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == self._sigterm_bound
        ):
            signal.signal(signal.SIGTERM, self._previous_sigterm)
        self._previous_excepthook = self._previous_exit = self._previous_sigterm = None

    def _excepthook(self, kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        self._sink.mark_status(KILLED if issubclass(kind, KeyboardInterrupt) else FAILED, value)
        (self._previous_excepthook or sys.__excepthook__)(kind, value, tb)

    def _exit(self, status: object = None) -> None:
        self._sink.note_exit(status)
        (self._previous_exit or _raise_system_exit)(status)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        previous = self._previous_sigterm
        self._sink.mark_status(KILLED)
        self._stop()
        if callable(previous):
            previous(signum, frame)
        else:  # the default action: terminate, as if we had not been here
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)


def _raise_system_exit(status: object = None) -> None:
    raise SystemExit(status)
