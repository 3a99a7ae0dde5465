"""Console capture: what the process writes to ``sys.stdout``/``sys.stderr`` is also kept as
the run's ``console.log`` artifact.

The terminal sees exactly what it would see without tracelet: the tee hands every write to
the original stream first, unchanged. Logging handlers that already hold the original streams
(Lightning's, made when it is imported before tracking starts) write through the tee too, until
the run stops. Capturing costs the writer a deque append — no I/O,
no lock; a background thread turns the text into lines every few seconds, keeping only the
last state of carriage-return redraws (progress bars), up to a size cap. The file is logged
as an artifact when the run stops, also after a crash (the traceback included).
"""

from __future__ import annotations

import collections
import logging
import os
import re
import sys
import tempfile
import threading
from typing import IO, Any

MAX_BYTES = 10 * 2**20
FLUSH_INTERVAL_S = 5.0
_BREAKS = re.compile(r"(\r\n|\r|\n)")


class _Tee:
    """Stands in for sys.stdout/stderr: the original gets every write; we get a copy."""

    def __init__(self, original: IO[str], capture: ConsoleCapture, stream: str) -> None:
        self._original = original
        self._capture = capture
        self._stream = stream

    def write(self, text: str) -> int:
        written = self._original.write(text)
        if self._capture.recording and isinstance(text, str):
            self._capture.pending.append((self._stream, text))
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, buffer, ...
        return getattr(self._original, name)


class LineCollapser:
    """Text chunks in, finished lines out; a ``\\r`` restarts the current line (progress bars)."""

    def __init__(self) -> None:
        self._current: dict[str, str] = {}

    def feed(self, stream: str, text: str) -> list[str]:
        lines = []
        current = self._current.get(stream, "")
        for part in _BREAKS.split(text):
            if part in ("\n", "\r\n"):
                lines.append(current)
                current = ""
            elif part == "\r":
                current = ""
            else:
                current += part
        self._current[stream] = current
        return lines

    def rest(self) -> list[str]:
        """Unfinished lines (a progress bar's final state without a newline)."""
        lines = [text for text in self._current.values() if text]
        self._current.clear()
        return lines


class ConsoleCapture:
    def __init__(self, max_bytes: int = MAX_BYTES, flush_interval: float | None = None) -> None:
        self.pending: collections.deque[tuple[str, str]] = collections.deque()
        self.recording = False
        self._max_bytes = max_bytes
        self._flush_interval = FLUSH_INTERVAL_S if flush_interval is None else flush_interval
        self._collapser = LineCollapser()
        self._written = 0
        self.truncated = False
        self.directory = tempfile.mkdtemp(prefix="tracelet-console-")
        self.path = os.path.join(self.directory, "console.log")
        self._file = open(self.path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed in stop()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracelet-console", daemon=True)
        self._originals: tuple[Any, Any] = (None, None)
        self._handlers: list[tuple[logging.StreamHandler, Any]] = []

    def start(self) -> None:
        self._originals = (sys.stdout, sys.stderr)
        sys.stdout = _Tee(sys.stdout, self, "stdout")
        sys.stderr = _Tee(sys.stderr, self, "stderr")
        self._redirect_handlers({id(self._originals[0]): sys.stdout, id(self._originals[1]): sys.stderr})
        self.recording = True
        self._thread.start()

    def _redirect_handlers(self, tees: dict[int, _Tee]) -> None:
        """Point logging handlers that write to the original streams at the tees."""
        loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        for logger in loggers:
            for handler in getattr(logger, "handlers", ()):
                tee = tees.get(id(getattr(handler, "stream", None)))
                if tee is not None and type(handler) is logging.StreamHandler:
                    self._handlers.append((handler, handler.setStream(tee)))

    def _restore_handlers(self) -> None:
        while self._handlers:
            handler, original = self._handlers.pop()
            stream = handler.stream
            if isinstance(stream, _Tee) and stream._capture is self:
                handler.setStream(original)

    def stop(self) -> str:
        """Put the original streams back, write what is left, close; returns the file's path."""
        self.recording = False
        stdout, stderr = self._originals
        if isinstance(sys.stdout, _Tee) and sys.stdout._capture is self:
            sys.stdout = stdout
        if isinstance(sys.stderr, _Tee) and sys.stderr._capture is self:
            sys.stderr = stderr
        self._restore_handlers()
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        self._drain()
        self._write_lines(self._collapser.rest())
        self._file.close()
        return self.path

    def cleanup(self) -> None:
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)

    def _run(self) -> None:
        while not self._stopped.wait(self._flush_interval):
            self._drain()
            self._file.flush()

    def _drain(self) -> None:
        pending = self.pending
        while pending:
            stream, text = pending.popleft()
            self._write_lines(self._collapser.feed(stream, text))

    def _write_lines(self, lines: list[str]) -> None:
        for line in lines:
            if self.truncated:
                return
            data = line + "\n"
            size = len(data.encode("utf-8", "replace"))
            if self._written + size > self._max_bytes:
                self._file.write(f"[tracelet: console output truncated after {self._written} bytes]\n")
                self.truncated = True
                return
            self._file.write(data)
            self._written += size
