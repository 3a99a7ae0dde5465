"""The journal format: a directory per run, read by ``tracelet replay`` and ``tracelet runs``.

Layout of ``<journal_dir>/<YYYYmmdd-HHMMSS>-<run uid>/``::

    run.json        the run (uid, project, name, start, command, settings, git, status, end)
    events.jsonl    one JSON array per event, appended in the order the backends receive them
    delivery.json   per backend: state, events sent/dropped/failed, its run id (written at close)
    artifacts/      copies of the run's artifacts (the originals may be temporary files)

Why JSON lines and not SQLite: an append is one ``write`` with no locking, no transaction and
no schema; a record torn by a crash is only ever the last line, which the reader detects and
skips; the file is greppable; and it costs a few microseconds per event on the writer side.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from tracelet import _log, commands
from tracelet.events import Artifact, Event, Metric, Params, Tags
from tracelet.wire import BackendStats, Ledger

log = _log.get_logger(__name__)

FORMAT = 1
RUN_FILE = "run.json"
EVENTS_FILE = "events.jsonl"
DELIVERY_FILE = "delivery.json"
ARTIFACTS_DIR = "artifacts"


def run_dir_name(run_uid: str, started_at: float) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(started_at)) + f"-{run_uid[:8]}"


def encode(event: Event, artifact_path: str | None = None) -> str:
    """One line. Artifacts carry the path of their copy, relative to the run directory."""
    if type(event) is Metric:
        line = _metric_line(event)
        if line is not None:
            return line
        record: list[Any] = ["m", event.name, event.value, event.step, event.timestamp]
    elif type(event) is Params:
        record = ["p", event.values]
    elif type(event) is Tags:
        record = ["t", event.values]
    elif type(event) is Artifact:
        record = ["a", artifact_path or event.path, event.artifact_path]
    else:
        raise TypeError(f"not an event: {type(event).__name__}")
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"


_NAMES: dict[str, str] = {}  # metric name -> its JSON string: a run has few names, logged many times
_MAX_NAMES = 10_000
_SPECIAL_FLOATS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # as json.dumps writes them


def _metric_line(event: Metric) -> str | None:
    """The line ``json.dumps`` writes for a metric, character for character; None for anything
    but str/float/int-or-None. Kept beside the library because the writer's CPU is partly
    training's on a busy machine: ``python benchmarks/bench_journal_line.py`` gives 2.8 us per
    line here against 5.7 us for a reused ``json.JSONEncoder`` and 7.0 us for ``json.dumps``."""
    name, value, step, timestamp = event
    if (
        type(name) is not str
        or type(value) is not float
        or type(timestamp) is not float
        or (step is not None and type(step) is not int)
    ):
        return None
    encoded = _NAMES.get(name)
    if encoded is None:
        encoded = json.dumps(name, ensure_ascii=False)
        if len(_NAMES) < _MAX_NAMES:
            _NAMES[name] = encoded
    number = repr(value)
    number = _SPECIAL_FLOATS.get(number, number)
    moment = repr(timestamp)
    moment = _SPECIAL_FLOATS.get(moment, moment)
    return f'["m",{encoded},{number},{"null" if step is None else step},{moment}]\n'


def decode(line: str, run_dir: str) -> Event:
    record = json.loads(line)
    kind = record[0]
    if kind == "m":
        return Metric(record[1], float(record[2]), record[3], record[4])
    if kind == "p":
        return Params(record[1])
    if kind == "t":
        return Tags(record[1])
    if kind == "a":
        return Artifact(os.path.join(run_dir, record[1]), record[2])
    raise ValueError(f"unknown record kind {kind!r}")


class Journal(NamedTuple):
    """A journaled run, as found on disk."""

    path: str
    run: dict[str, Any]
    delivery: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.run.get("status") or "RUNNING")


def load(path: str | os.PathLike[str]) -> Journal:
    """Read a run directory's metadata; raises FileNotFoundError/ValueError for what is not one."""
    directory = os.path.abspath(os.fspath(path))
    with open(os.path.join(directory, RUN_FILE), encoding="utf-8") as handle:
        run = json.load(handle)
    if not isinstance(run, dict) or run.get("format") != FORMAT:
        raise ValueError(f"{directory} is not a tracelet journal (format {FORMAT})")
    delivery: dict[str, Any] = {}
    with (
        contextlib.suppress(FileNotFoundError, ValueError),
        open(os.path.join(directory, DELIVERY_FILE), encoding="utf-8") as handle,
    ):
        delivery = json.load(handle)
    return Journal(directory, run, delivery)


def events(journal: Journal) -> Iterator[Event]:
    """Every complete record, in order. A torn last line (a crash mid-write) is skipped."""
    with open(os.path.join(journal.path, EVENTS_FILE), encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.endswith("\n"):
                return  # the last write never finished
            try:
                yield decode(line, journal.path)
            except (ValueError, IndexError, TypeError):
                continue  # a damaged record costs itself, not the rest of the run


def count_events(journal: Journal) -> int:
    """Number of complete records (one per line), without decoding them."""
    total = 0
    with open(os.path.join(journal.path, EVENTS_FILE), "rb") as handle:
        while chunk := handle.read(1 << 20):
            total += chunk.count(b"\n")
    return total


def find(journal_dir: str | os.PathLike[str]) -> list[Journal]:
    """Every readable journaled run under ``journal_dir``, oldest first."""
    root = Path(journal_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if (child / RUN_FILE).is_file():
            with contextlib.suppress(OSError, ValueError):
                found.append(load(child))
    return sorted(found, key=lambda j: j.run.get("started_at") or 0)


def delivery_entry(stats: BackendStats) -> dict[str, Any]:
    """What ``delivery.json`` keeps of a backend's ``BackendStats``, ``uri`` (the store the run
    went to: replay goes there by default) included."""
    return {
        "state": stats.state,
        "complete": stats.complete,
        "sent": stats.sent,
        "dropped": stats.dropped,
        "refused": stats.refused,
        "failed": stats.failed,
        "pending": stats.pending,
        "invalid": stats.invalid,
        "reasons": stats.reasons,
        "run_id": stats.location.run_id if stats.location else None,
        "uri": stats.location.uri if stats.location else None,
        "error": stats.error,
    }


MISSING = ("dropped", "refused", "failed", "pending")  # what makes a delivery incomplete


def delivery_summary(name: str, entry: dict[str, Any]) -> str:
    """``mlflow complete`` or ``mlflow INCOMPLETE (120 dropped, 1 refused)``."""
    missing = [f"{entry[key]} {key}" for key in MISSING if entry.get(key)]
    complete = entry.get("state") == "closed" and not missing and entry.get("complete", True)
    if complete:
        return f"{name} complete"
    return f"{name} INCOMPLETE" + (f" ({', '.join(missing)})" if missing else f" ({entry.get('state')})")


def whole_journal(stats: Iterable[BackendStats]) -> str | None:
    """This run's journal directory, while the journal holds every event so far (so that
    ``tracelet replay`` can send the run again)."""
    entry = _journal_entry(stats)
    if entry is None or entry.state not in ("open", "closed") or entry.dropped or entry.failed:
        return None
    return entry.location.uri if entry.location is not None else None


def replay_advice(journal_dir: str | None, backend: str) -> str:
    """The sentence a backend's failure warning ends with: how to send the run again."""
    if journal_dir is None or backend == "journal":
        return ""
    command = f"{commands.script('tracelet')} replay {journal_dir} --backend {backend}"
    return f". The journal keeps every event: {command}"


def record_delivery(stats: Mapping[str, BackendStats], upstream: Ledger) -> None:
    """At the run's end, ``delivery.json`` learns what every backend received (``tracelet runs``
    shows it), the training side's own losses (``upstream``) charged to each."""
    journal_entry = _journal_entry(stats.values())
    if journal_entry is None or journal_entry.location is None:
        return
    directory = journal_entry.location.uri
    delivery = {}
    for name, entry in stats.items():
        upstream.charge(entry)
        delivery[name] = delivery_entry(entry)
    try:
        write_json(os.path.join(directory, DELIVERY_FILE), delivery)
    except OSError as err:
        log.warning("could not record delivery in the journal: %s", err)


def _journal_entry(stats: Iterable[BackendStats]) -> BackendStats | None:
    return next((s for s in stats if s.location is not None and s.location.backend == "journal"), None)


def record_end_without_writer(status: str, stats: Mapping[str, BackendStats]) -> None:
    """The writer process died before the run ended: the training process records the run's real
    end in ``run.json`` and what each backend lacks in ``delivery.json`` (when the run has a
    journal: ``stats["journal"]`` knows where)."""
    location = stats["journal"].location if "journal" in stats else None
    if location is None:
        return
    try:
        _record_end(location.uri, status, stats)
    except (OSError, ValueError) as err:
        log.warning("could not record the run's end in its journal %s: %s", location.uri, err)


def _record_end(directory: str, status: str, stats: Mapping[str, BackendStats]) -> None:
    run_file = os.path.join(directory, RUN_FILE)
    with open(run_file, encoding="utf-8") as handle:
        meta = json.load(handle)
    meta.update(status=status, ended_at=time.time(), writer_exited_early=True)
    write_json(run_file, meta)
    write_json(os.path.join(directory, DELIVERY_FILE), {name: delivery_entry(s) for name, s in stats.items()})


def write_json(path: str, data: Any) -> None:
    """Replace ``path`` atomically: a reader sees the old or the new file, never half of one."""
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
