"""A local MLflow SQLite store written straight into MLflow's own tables, without importing MLflow.

Why: importing MLflow and building its client cost ~1.9 s of CPU here, nearly all of the
writer process's start-up, and that start-up overlaps the first seconds of training (on a
2-vCPU VM the writer's CPU is partly training's). MLflow's ``log_batch`` also builds an ORM
object per metric (~150 us of CPU each). For the embedded default, ``sqlite:///<cwd>/mlflow.db``,
this module creates the experiment and the run, stores metrics, params and tags, copies
artifacts into the run's local artifact directory and ends the run, with the standard
library's ``sqlite3`` (a few ms to open, a few us of CPU per metric).

It writes only where the schema is known to be the one the installed MLflow would find:

- the database file exists and its ``alembic_version`` is one of ``schema.VERIFIED_HEADS``, the schema
  revisions tracelet's tests verified these writes against (any other: ``MlflowClient``);
- every table written holds the columns filled here, and every other column may be left out;
- workspaces are off (``MLFLOW_ENABLE_WORKSPACES``) and the experiment is in the default one.

Everything else is declined (``None`` or ``False``, nothing written) and the caller does it
through ``MlflowClient``, importing MLflow only then, so MLflow's own rules and messages apply:
a store that does not exist yet (MLflow creates its schema), a deleted experiment, a
name or value MLflow's validation would refuse, a changed param, a ``mlflow.runName`` tag, a
point already stored (a retried batch), a run no longer active, a locked database, an
artifact location that is not a local directory.

The rows are MLflow's (``SqlAlchemyStore.create_run``, ``log_batch``, ``update_run_info`` and
``LocalArtifactRepository`` of MLflow 3.x, read in its source); ``tests/test_mlflow_sqlite.py``
writes the same runs both ways and compares everything MLflow reads back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from tracelet import _log
from tracelet.backends.base import RunGone
from tracelet.backends.mlflow import schema
from tracelet.backends.mlflow.keys import (
    MAX_EXPERIMENT_NAME,
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    RUN_NAME_TAG,
    random_run_name,
    valid_key,
)
from tracelet.backends.mlflow.schema import Experiment, Point, file_identity, store_path

log = logging.getLogger(__name__)

DEFAULT_ARTIFACT_ROOT = "./mlruns"  # DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH, resolved in the working directory
_DEFAULT_WORKSPACE = "default"
_LOCK_WAIT_S = 10.0  # another writer (the MLflow UI, a second run) holds the database meanwhile


class LocalStore:
    """A connection to an MLflow SQLite store whose schema is the installed MLflow's own."""

    def __init__(self, connection: sqlite3.Connection, path: str) -> None:
        self._connection = connection
        self.path = path
        self._identity = file_identity(path)

    @classmethod
    def connect(cls, uri: str) -> LocalStore | None:
        """The store behind ``uri``, or None where this module must not write it (see above)."""
        path = store_path(uri)
        if path is None or not os.path.isfile(path):
            return None
        if os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").strip().lower() in ("1", "true", "yes"):
            return None
        if sqlite3.sqlite_version_info < (3, 24, 0):  # ON CONFLICT ... DO UPDATE
            return None
        try:
            connection = sqlite3.connect(
                path, timeout=_LOCK_WAIT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as err:
            log.debug("MLflow store %s: not opened directly (%s)", path, err)
            return None
        store = cls(connection, path)
        try:
            usable = store._schema_is_known()
        except sqlite3.Error as err:
            log.debug("MLflow store %s: schema not readable (%s)", path, err)
            usable = False
        if not usable:
            connection.close()
            return None
        return store

    def _schema_is_known(self) -> bool:
        version = self._connection.execute("SELECT version_num FROM alembic_version").fetchall()
        if len(version) != 1 or version[0][0] not in schema.VERIFIED_HEADS:
            _log.warn_once(
                f"mlflow-schema:{version}",
                "MLflow store %s is at schema revision %s, which tracelet's direct writes were not "
                "verified against: its runs go through MlflowClient (verified: %s)",
                self.path,
                ", ".join(v for (v,) in version) or "(none)",
                ", ".join(f"{head} ({release})" for head, release in schema.VERIFIED_HEADS.items()),
                log=log,
                level=logging.INFO,
            )
            return False
        for table, written in schema.COLUMNS.items():
            columns = self._connection.execute(f'PRAGMA table_info("{table}")').fetchall()
            # (cid, name, type, notnull, dflt_value, pk)
            names = {c[1] for c in columns}
            if not names >= set(written):
                return False
            if any(c[3] and c[4] is None and c[1] not in written for c in columns):
                return False  # a column MLflow fills that this module does not know
        for table, read in schema.READ.items():
            names = {c[1] for c in self._connection.execute(f'PRAGMA table_info("{table}")')}
            if not names >= set(read):
                return False
        return True

    def experiment(self, name: str) -> Experiment | None:
        """The active experiment ``name`` of the default workspace with a local artifact location."""
        found = self._connection.execute(
            "SELECT experiment_id, artifact_location, lifecycle_stage FROM experiments "
            "WHERE name = ? AND workspace = ?",
            (name, _DEFAULT_WORKSPACE),
        ).fetchone()
        if found is None or found[2] != "active" or not found[1] or schema.local_directory(found[1]) is None:
            return None
        return Experiment(str(found[0]), found[1])

    def create_experiment(self, name: str) -> Experiment | None:
        """A new experiment as ``MlflowClient.create_experiment`` makes it in this store, its
        artifacts under ``./mlruns/<id>`` of the working directory (MLflow's default artifact root
        for a client of a SQLite store); None where MLflow must (a name it would refuse, a name
        taken meanwhile or by a deleted experiment)."""
        if not name or len(name) > MAX_EXPERIMENT_NAME:
            return None
        now = int(time.time() * 1000)
        root = os.path.abspath(DEFAULT_ARTIFACT_ROOT)
        try:
            with self._transaction() as cursor:
                cursor.execute(
                    "INSERT INTO experiments (name, lifecycle_stage, creation_time, last_update_time, "
                    "workspace) VALUES (?, 'active', ?, ?, ?)",
                    (name, now, now, _DEFAULT_WORKSPACE),
                )
                experiment_id = cursor.lastrowid
                location = posixpath.join(root, str(experiment_id))
                cursor.execute(
                    "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                    (location, experiment_id),
                )
        except sqlite3.Error as err:
            log.debug("could not create experiment %r directly (%s); MLflow creates it", name, err)
            return None
        return Experiment(str(experiment_id), location)

    def create_run(
        self, experiment: Experiment, run_name: str | None, start_time_ms: int, tags: Mapping[str, str]
    ) -> LocalRun | None:
        """A new RUNNING run, as ``MlflowClient.create_run`` makes it; None where MLflow must.

        A run without a name gets one in MLflow's style (``adjective-noun-number``)."""
        run_name = run_name or random_run_name()
        if len(run_name) > 250 or RUN_NAME_TAG in tags:
            return None
        tag_rows = {**tags, RUN_NAME_TAG: run_name}
        if not all(valid_key(k) and len(v) <= MAX_TAG_VALUE for k, v in tag_rows.items()):
            return None
        run_id = uuid.uuid4().hex
        artifact_uri = f"{experiment.artifact_location.rstrip('/')}/{run_id}/artifacts"
        row = (
            run_id,
            run_name,
            "UNKNOWN",  # MLflow's create_run: the source is told by the mlflow.source.* tags
            "",
            "",
            tags.get("mlflow.user", "unknown"),
            "RUNNING",
            start_time_ms,
            None,
            "",
            "active",
            artifact_uri,
            int(experiment.experiment_id),
            None,
        )
        try:
            with self._transaction() as cursor:
                cursor.execute(schema.insert("runs"), row)
                cursor.executemany(schema.insert("tags"), [(k, v, run_id) for k, v in tag_rows.items()])
        except sqlite3.Error as err:
            log.debug("could not create the run directly (%s); MLflow creates it", err)
            return None
        return LocalRun(self, run_id, artifact_uri)

    def attach(self, run_id: str) -> LocalRun | None:
        """A run MLflow created, for the writes that follow."""
        found = self._connection.execute(
            "SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)
        ).fetchone()
        return LocalRun(self, run_id, found[0] or "") if found is not None else None

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._connection.close()

    def check_present(self) -> None:
        """Raise ``RunGone`` when the database file was deleted or replaced: the connection would
        go on writing into the deleted file, where nobody will ever read it."""
        if file_identity(self.path) != self._identity:
            raise RunGone(f"the MLflow store {self.path} was deleted or replaced during the run")

    @contextlib.contextmanager
    def _transaction(self) -> Any:
        self.check_present()
        cursor = self._connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")  # the write lock now, not half-way through
        try:
            yield cursor
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")


class LocalRun:
    """One run's writes; each method answers False (nothing written) where MLflow must do it."""

    def __init__(self, store: LocalStore, run_id: str, artifact_uri: str) -> None:
        self._store = store
        self.run_id = run_id
        self.artifact_uri = artifact_uri
        self.enabled = True
        self._valid_keys: set[str] = set()  # metric names checked once per run

    def write(
        self,
        points: Sequence[Point],
        params: Sequence[tuple[str, str]] = (),
        tags: Sequence[tuple[str, str]] = (),
    ) -> bool:
        """Store everything in one transaction, or nothing."""
        if not self.enabled:
            return False
        run_id = self.run_id
        valid = self._valid_keys
        try:
            for key in {p.key for p in points if p.key not in valid}:
                if not valid_key(key):
                    raise ValueError(f"metric name {key!r}")
                valid.add(key)
            rows = list(dict.fromkeys(schema.metric_row(point, run_id) for point in points))
            param_values = dict(params)
            if len(param_values) != len(params):
                raise ValueError("a param key twice in one batch")
            if not all(valid_key(k) and type(v) is str and len(v) <= MAX_PARAM_VALUE for k, v in params):
                raise ValueError("a param name or value")
            if not all(
                valid_key(k) and k != RUN_NAME_TAG and type(v) is str and len(v) <= MAX_TAG_VALUE
                for k, v in tags
            ):
                raise ValueError("a tag name or value")
        except (ValueError, TypeError) as err:  # MLflow refuses it: log_batch isolates the entry
            log.debug("direct path declined a batch (%s)", err)
            return False
        try:
            with self._store._transaction() as cursor:
                self._check_active(cursor)
                new_params = self._new_params(cursor, param_values)
                if rows:
                    cursor.executemany(schema.insert("metrics"), rows)
                    cursor.executemany(schema.UPSERT_LATEST, schema.newest_per_key(rows))
                if new_params:
                    cursor.executemany(
                        schema.insert("params"), [(k, v, run_id) for k, v in new_params.items()]
                    )
                if tags:
                    cursor.executemany(schema.UPSERT_TAG, [(k, v, run_id) for k, v in tags])
        except _Declined as why:
            log.debug("direct path declined a batch (%s)", why)
            return False
        except sqlite3.IntegrityError:  # a point already stored (a retried batch): MLflow's dedup rule
            return False
        except sqlite3.OperationalError as err:  # locked, disk full: log_batch meets it too
            log.debug("direct path failed (%s); using log_batch for this batch", err)
            return False
        except sqlite3.Error as err:  # unexpected: stop using this path for the run
            self.enabled = False
            log.debug("direct path disabled (%s: %s); using MLflow", type(err).__name__, err)
            return False
        return True

    def terminate(self, status: str, end_time_ms: int) -> bool:
        if not self.enabled:
            return False
        try:
            with self._store._transaction() as cursor:
                cursor.execute(
                    "UPDATE runs SET status = ?, end_time = ? "
                    "WHERE run_uuid = ? AND lifecycle_stage = 'active'",
                    (status, end_time_ms, self.run_id),
                )
                return cursor.rowcount == 1
        except sqlite3.Error as err:
            log.debug("could not end the run directly (%s)", err)
            return False

    def close(self) -> None:
        self.enabled = False
        self._store.close()

    def copy_artifact(self, path: str, artifact_path: str | None) -> bool:
        """Copy a file or directory under the run's artifact directory, as MLflow's
        ``LocalArtifactRepository`` does; False where the location is not a local directory."""
        root = schema.local_directory(self.artifact_uri)
        if root is None or not self.enabled:
            return False
        relative = posixpath.normpath(artifact_path or ".")
        if relative.startswith(("/", "..")) or os.path.isabs(relative):
            return False  # MLflow's own message for a bad artifact path
        destination = root if relative == "." else os.path.join(root, *relative.split("/"))
        os.makedirs(destination, exist_ok=True)
        if os.path.isdir(path):
            shutil.copytree(path, destination, dirs_exist_ok=True, copy_function=shutil.copyfile)
            return True
        target = os.path.join(destination, os.path.basename(path))
        with contextlib.suppress(FileNotFoundError):
            if os.path.samefile(path, target):
                return True
        # a temporary file renamed into place: a reader never sees half a file
        handle, temporary = tempfile.mkstemp(dir=destination, prefix=".tracelet-")
        try:
            with os.fdopen(handle, "wb") as out, open(path, "rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)
            shutil.copystat(path, temporary)
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return True

    def _check_active(self, cursor: sqlite3.Cursor) -> None:
        found = cursor.execute(
            "SELECT lifecycle_stage FROM runs WHERE run_uuid = ?", (self.run_id,)
        ).fetchone()
        if found is None:
            raise RunGone(f"the MLflow run {self.run_id} was purged from {self._store.path}")
        if found[0] != "active":
            raise RunGone(f"the MLflow run {self.run_id} was deleted (lifecycle stage {found[0]!r})")

    def _new_params(self, cursor: sqlite3.Cursor, values: Mapping[str, str]) -> dict[str, str]:
        """Params not stored yet; an identical one again is nothing, a changed one is MLflow's refusal."""
        if not values:
            return {}
        keys = list(values)
        stored: dict[str, str] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            query = (
                f"SELECT key, value FROM params WHERE run_uuid = ? AND key IN ({', '.join('?' * len(chunk))})"
            )
            stored.update(cursor.execute(query, (self.run_id, *chunk)).fetchall())
        if any(stored[k] != v for k, v in values.items() if k in stored):
            raise _Declined("a param changes value")
        return {k: v for k, v in values.items() if k not in stored}


class _Declined(Exception):
    pass
