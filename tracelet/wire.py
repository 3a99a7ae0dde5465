"""The wire: everything the training process and the writer exchange, and nothing else.

The training side (``api``, ``bus``, ``experiment``, ``transport``, instrumentation, the
collectors that run in training) and the writer side (``writer``, ``dispatcher``, ``worker``,
the backends) import this module, never each other (``tests/test_wire.py`` walks the imports).

On the event pipe: the run's ``Init`` (in a ``Control``), events, and ``flush``/``shutdown``
``Control`` requests, in order; the shutdown request carries the training side's ``Ledger``.
On the reply pipe: ``Reply`` messages carrying each backend's
``BackendStats``. Each message is one pickle, framed by ``multiprocessing.connection``
(``connect``). In the event messages, ``Metrics`` — nearly every event — travel as plain
tuples (``decode_events`` makes them ``Metrics`` again): pickling a NamedTuple calls its Python
``__getnewargs__``, 1.2 µs an event on the sender thread against 0.07 µs for a tuple.
"""

from __future__ import annotations

import dataclasses
import pickle
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from tracelet.backends.base import BackendSpec, RunInfo, RunLocation
from tracelet.events import Metrics


class Control(NamedTuple):
    """A request in the event stream; it applies to everything sent before it."""

    kind: str  # "init", "flush" or "shutdown"
    token: int
    deadline: float  # wall-clock seconds (time.time())
    payload: Any = None


class Init(NamedTuple):
    run: RunInfo
    backends: list[BackendSpec]
    capacity: int


class Reply(NamedTuple):
    kind: str  # "opened", "stats", "flushed", "closed", "log"
    token: int
    stats: dict[str, BackendStats]
    done: bool
    payload: Any = None


@dataclasses.dataclass
class BackendStats:
    """What happened to the events addressed to one backend.

    Every event tracelet accepted ends in exactly one of ``sent``, ``dropped`` (lost on the
    way: a full queue, a dead writer), ``refused`` (the backend would not store that entry),
    ``failed`` (the backend or its run was given up) or ``pending`` (not handled when asked).
    ``invalid`` counts the user's inputs refused at the door (a metric that is not a number):
    they never were events, so they do not make a delivery incomplete.
    """

    name: str
    state: str = "starting"  # starting, open, failed, closed; unclosed: its close raised; lost
    sent: int = 0
    dropped: int = 0
    failed: int = 0
    pending: int = 0
    high_water: int = 0
    reasons: Counter[str] = dataclasses.field(default_factory=Counter)
    location: RunLocation | None = None
    error: str | None = None
    refused: int = 0
    invalid: int = 0

    def drop(self, count: int, reason: str) -> None:
        self.dropped += count
        self._because(count, reason)

    def fail(self, count: int, reason: str) -> None:
        self.failed += count
        self._because(count, reason)

    def refuse(self, count: int, reason: str) -> None:
        self.refused += count
        self._because(count, reason)

    def reject_input(self, count: int, reason: str) -> None:
        self.invalid += count
        self._because(count, reason)

    @property
    def complete(self) -> bool:
        """The backend closed its run holding every event tracelet accepted."""
        return self.state == "closed" and not (self.dropped or self.refused or self.failed or self.pending)

    def _because(self, count: int, reason: str) -> None:
        self.reasons[reason] += count


class Ledger:
    """What the training process could not hand to any backend, by reason: the one count of
    it that the stop summary, the report and ``delivery.json`` all read (``charge``).

    ``dropped``: points lost on the way (a full buffer, a dead writer, a failed capture);
    every backend lacks them. ``invalid``: the user's inputs refused at the door (a metric
    value that is not a number). The training, sender and reply threads all count.
    """

    def __init__(self, dropped: Mapping[str, int] | None = None, invalid: Mapping[str, int] | None = None):
        self.dropped: Counter[str] = Counter(dropped)
        self.invalid: Counter[str] = Counter(invalid)
        self._lock = threading.Lock()

    def drop(self, count: int, reason: str) -> None:
        with self._lock:
            self.dropped[reason] += count

    def reject(self, count: int, reason: str) -> None:
        with self._lock:
            self.invalid[reason] += count

    def copy(self) -> Ledger:
        with self._lock:
            return Ledger(self.dropped, self.invalid)

    def charge(self, stats: BackendStats) -> None:
        """Add these counts to one backend's ``stats``."""
        with self._lock:
            dropped, invalid = list(self.dropped.items()), list(self.invalid.items())
        for reason, count in dropped:
            stats.drop(count, reason)
        for reason, count in invalid:
            stats.reject_input(count, reason)

    def __getstate__(self) -> tuple[dict[str, int], dict[str, int]]:
        with self._lock:
            return dict(self.dropped), dict(self.invalid)

    def __setstate__(self, state: tuple[dict[str, int], dict[str, int]]) -> None:
        self.__init__(*state)  # type: ignore[misc]


def connect(fd: int, *, readable: bool) -> Connection:
    """One direction of a pipe (``os.pipe``) as a framed message channel."""
    return Connection(fd, readable=readable, writable=not readable)


def encode(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def decode(message: bytes) -> Any:
    return pickle.loads(message)


def encode_events(items: Sequence[Any]) -> bytes:
    return encode([tuple(item) if type(item) is Metrics else item for item in items])


def decode_events(message: bytes) -> list[Any]:
    """The items ``encode_events`` encoded."""
    return [Metrics._make(item) if type(item) is tuple else item for item in decode(message)]
