"""MLflow's SQLite store as tracelet writes it: where the file is and the lock that guards its
creation, the schema revisions the direct writes were verified against, and the rows."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import Any, NamedTuple
from urllib.parse import unquote, urlparse

_INT64 = (-(2**63), 2**63 - 1)
STORE_LOCK_WAIT_S = 120.0  # another process creating the store: MLflow's migrations take seconds

# what is written, per table; every other column must take NULL or have a default
COLUMNS = {
    "runs": (
        "run_uuid",
        "name",
        "source_type",
        "source_name",
        "entry_point_name",
        "user_id",
        "status",
        "start_time",
        "end_time",
        "source_version",
        "lifecycle_stage",
        "artifact_uri",
        "experiment_id",
        "deleted_time",
    ),
    "tags": ("key", "value", "run_uuid"),
    "params": ("key", "value", "run_uuid"),
    "metrics": ("key", "value", "timestamp", "step", "is_nan", "run_uuid"),
    "latest_metrics": ("key", "value", "timestamp", "step", "is_nan", "run_uuid"),
}
READ = {"experiments": ("experiment_id", "name", "artifact_location", "lifecycle_stage", "workspace")}


class Point(NamedTuple):
    """One metric value as MLflow stores it: sanitized key, millisecond timestamp, int step."""

    key: str
    value: float
    timestamp: int
    step: int


class Experiment(NamedTuple):
    experiment_id: str
    artifact_location: str


def file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; None when there is none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino)


@contextlib.contextmanager
def store_lock(path: str, timeout: float = STORE_LOCK_WAIT_S) -> Any:
    """Hold ``<path>.lock`` while a store is created, migrated or given a run and experiment.

    MLflow itself lets every process that opens a new SQLite store run the schema migrations:
    several jobs started at once leave a half-migrated store (``_alembic_tmp_*`` tables) that
    no MLflow can open again. With the lock, one process migrates and the others wait for it.
    A lock not granted within ``timeout`` raises ``TimeoutError`` (the worker retries the open).
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; MLflow's own behaviour
        yield
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process held {path}.lock for {timeout:.0f} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def store_path(uri: str) -> str | None:
    """The file of a ``sqlite:///`` URI; None for any other kind of store or an in-memory one."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].partition("?")[0]
    if not path or path == ":memory:":
        return None
    return os.path.abspath(path)


# MLflow schema revisions (alembic heads) whose tables the direct writes were verified against:
# ``tests/test_mlflow_sqlite.py`` writes the same runs directly and through ``MlflowClient`` on a
# store MLflow made at that revision and compares everything MLflow reads back. Adding a head
# means running those tests (``make compat``) on an MLflow release that creates stores at it.
VERIFIED_HEADS = {
    "dc11669786a5": "MLflow 3.17",
    "f4a9b2c7d1e6": "MLflow 3.18",  # its migrations add skill, issue and MCP tables only
}


def metric_row(point: Point, run_id: str) -> tuple[Any, ...]:
    """A ``metrics`` row in ``COLUMNS`` order, the value sanitized as MLflow's store does it."""
    key, value, timestamp, step = point
    if type(value) is int:
        value = float(value)
    if (
        type(value) is not float
        or type(timestamp) is not int
        or type(step) is not int
        or timestamp < 0
        or not _INT64[0] <= step <= _INT64[1]
        or timestamp > _INT64[1]
    ):
        raise ValueError(f"metric {key!r}: a value, timestamp or step MLflow would not take")
    if math.isnan(value):
        return (key, 0.0, timestamp, step, 1, run_id)
    if math.isinf(value):
        value = sys.float_info.max if value > 0 else -sys.float_info.max
    return (key, value, timestamp, step, 0, run_id)


def local_directory(location: str) -> str | None:
    """The directory of a local artifact location (a path or a ``file:`` URI); None otherwise."""
    if location.startswith("file:"):
        parsed = urlparse(location)
        if parsed.netloc not in ("", "localhost") or parsed.query or parsed.fragment:
            return None
        return unquote(parsed.path)
    if os.path.isabs(location):
        return location
    return None


def insert(table: str) -> str:
    columns = COLUMNS[table]
    names = ", ".join(f'"{c}"' for c in columns)
    return f'INSERT INTO "{table}" ({names}) VALUES ({", ".join("?" * len(columns))})'


# MLflow's rule for the run table's values: per key, the point with the greatest (step, timestamp, value)
UPSERT_LATEST = (
    f"{insert('latest_metrics')} ON CONFLICT (key, run_uuid) DO UPDATE SET "
    "value = excluded.value, timestamp = excluded.timestamp, step = excluded.step, is_nan = excluded.is_nan "
    "WHERE (excluded.step, excluded.timestamp, excluded.value) > "
    "(latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)"
)
UPSERT_TAG = f"{insert('tags')} ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value"


def newest_per_key(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    newest: dict[str, tuple[Any, ...]] = {}
    for row in rows:
        current = newest.get(row[0])
        if current is None or (row[3], row[2], row[1]) > (current[3], current[2], current[1]):
            newest[row[0]] = row
    return list(newest.values())
