"""Metrics straight into a local MLflow SQLite store's own tables, one INSERT per batch.

MLflow's ``log_batch`` builds an ORM object per metric: ~150 us of CPU each (profiled), by
far the writer's largest cost. On a small machine that CPU is not free for training even on
"the other" core (a cloud VM's two vCPUs are often hyperthreads of one physical core: a busy
sibling slowed a pure-Python loop by up to 38% here). For a SQLite store this writes the
same rows through MLflow's own table definitions and engine in one multi-row INSERT, and
keeps ``latest_metrics`` by MLflow's rule (per key, the greatest ``(step, timestamp,
value)``), all in one transaction.

Whenever anything is not as expected — another kind of store, a table with a column this
does not fill, a name MLflow's validation refuses, a run no longer active, a row already
stored (a retried batch) — ``write`` writes nothing and answers False, and the caller sends
the batch through ``log_batch`` as before, with MLflow's own handling of each case.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

_FILLED = frozenset(("key", "value", "timestamp", "step", "is_nan", "run_uuid"))
_KEYS_PER_QUERY = 500  # bound parameters per IN (...), as MLflow's own store does


class Point(NamedTuple):
    """One metric value as MLflow stores it: sanitized key, millisecond timestamp, int step."""

    key: str
    value: float
    timestamp: int
    step: int


class SqlMetricWriter:
    """Writes metric points of one run; ``attach`` returns None where it does not apply."""

    def __init__(
        self,
        engine: Any,
        tables: tuple[Any, Any, Any],
        run_id: str,
        sanitize: Callable[[float], tuple[bool, float]],
        validate: Callable[[str, float, int, int], None],
        active_stage: str,
    ) -> None:
        self._engine = engine
        self._metrics, self._latest, self._runs = tables
        self._run_id = run_id
        self._sanitize = sanitize
        self._validate = validate
        self._active_stage = active_stage
        self._validated_keys: set[str] = set()
        self.enabled = True

    @classmethod
    def attach(cls, client: Any, run_id: str) -> SqlMetricWriter | None:
        try:
            from mlflow.entities.lifecycle_stage import LifecycleStage
            from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlRun
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
            from mlflow.utils.validation import _validate_metric

            store = client._tracking_client.store
            engine = store.engine
        except (ImportError, AttributeError) as err:  # another MLflow layout: log_batch it is
            log.debug("MLflow's direct SQL path is not available (%s)", err)
            return None
        if type(store) is not SqlAlchemyStore or engine.dialect.name != "sqlite":
            return None
        tables = (SqlMetric.__table__, SqlLatestMetric.__table__, SqlRun.__table__)
        if not all(_fillable(table) for table in tables[:2]):
            log.debug("MLflow's metric tables have columns tracelet does not fill; using log_batch")
            return None
        return cls(
            engine,
            tables,
            run_id,
            store.sanitize_metric_value,
            _validate_metric,
            LifecycleStage.ACTIVE,
        )

    def write(self, points: Sequence[Point]) -> bool:
        """Store ``points`` in one transaction; False (nothing written) where ``log_batch`` must."""
        if not self.enabled or not points:
            return False
        import sqlalchemy

        try:
            rows = self._rows(points)
        except Exception as err:  # MLflow's validation refused a name or value: log_batch isolates it
            log.debug("direct SQL path declined a batch (%s)", err)
            return False
        try:
            with self._engine.begin() as connection:
                if not self._run_is_active(connection):
                    return False
                connection.execute(self._metrics.insert(), rows)
                self._update_latest(connection, rows)
        except sqlalchemy.exc.IntegrityError:  # a point already stored (a retried batch)
            return False
        except sqlalchemy.exc.OperationalError as err:  # locked, disk full: log_batch meets it too
            log.debug("direct SQL path failed (%s); using log_batch for this batch", err)
            return False
        except Exception as err:  # unexpected: stop using this path for the run
            self.enabled = False
            log.debug("direct SQL path disabled (%s: %s); using log_batch", type(err).__name__, err)
            return False
        return True

    def _rows(self, points: Sequence[Point]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        seen: set[tuple[Any, ...]] = set()
        run_id = self._run_id
        for key, value, timestamp, step in points:
            if key not in self._validated_keys:
                self._validate(key, value, timestamp, step)
                self._validated_keys.add(key)
            is_nan, stored = self._sanitize(value)
            identity = (key, timestamp, step, stored, is_nan)
            if identity in seen:  # MLflow stores an identical point once
                continue
            seen.add(identity)
            rows.append(
                {
                    "key": key,
                    "value": stored,
                    "timestamp": timestamp,
                    "step": step,
                    "is_nan": is_nan,
                    "run_uuid": run_id,
                }
            )
        return rows

    def _run_is_active(self, connection: Any) -> bool:
        import sqlalchemy

        runs = self._runs
        query = sqlalchemy.select(runs.c.lifecycle_stage).where(runs.c.run_uuid == self._run_id)
        return connection.execute(query).scalar() == self._active_stage

    def _update_latest(self, connection: Any, rows: list[dict[str, Any]]) -> None:
        """MLflow's rule: per key, the point with the greatest (step, timestamp, value)."""
        import sqlalchemy

        latest = self._latest
        newest: dict[str, dict[str, Any]] = {}
        for row in rows:
            current = newest.get(row["key"])
            if current is None or _order(row) > _order(current):
                newest[row["key"]] = row
        keys = sorted(newest)
        stored: dict[str, tuple[int, int, float]] = {}
        for start in range(0, len(keys), _KEYS_PER_QUERY):
            query = sqlalchemy.select(latest.c.key, latest.c.step, latest.c.timestamp, latest.c.value).where(
                latest.c.run_uuid == self._run_id, latest.c.key.in_(keys[start : start + _KEYS_PER_QUERY])
            )
            stored.update(
                (key, (step, timestamp, value)) for key, step, timestamp, value in connection.execute(query)
            )
        inserts = [row for key, row in newest.items() if key not in stored]
        updates = [
            {"b_key": key, **{f"b_{name}": row[name] for name in ("value", "timestamp", "step", "is_nan")}}
            for key, row in newest.items()
            if key in stored and _order(row) > stored[key]
        ]
        if inserts:
            connection.execute(latest.insert(), inserts)
        if updates:
            statement = (
                latest.update()
                .where(latest.c.run_uuid == self._run_id, latest.c.key == sqlalchemy.bindparam("b_key"))
                .values(
                    value=sqlalchemy.bindparam("b_value"),
                    timestamp=sqlalchemy.bindparam("b_timestamp"),
                    step=sqlalchemy.bindparam("b_step"),
                    is_nan=sqlalchemy.bindparam("b_is_nan"),
                )
            )
            connection.execute(statement, updates)


def _order(row: dict[str, Any]) -> tuple[int, int, float]:
    return row["step"], row["timestamp"], row["value"]


def _fillable(table: Any) -> bool:
    """Every column this writer leaves out may be left out (nullable or with a default)."""
    names = {column.name for column in table.columns}
    if not names >= _FILLED:
        return False
    return all(
        column.name in _FILLED
        or column.nullable
        or column.default is not None
        or column.server_default is not None
        for column in table.columns
    )
