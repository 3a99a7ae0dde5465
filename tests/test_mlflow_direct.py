"""The direct SQL path for metrics stores exactly what MLflow's own ``log_batch`` stores.

Two runs in one real SQLite store receive the same events, one through the direct path and
one through ``log_batch`` only; everything MLflow reads back (every point of every history,
the latest value per key the UI's run table shows, what was refused) must be equal.
"""

from __future__ import annotations

import math
import random

import pytest

from tracelet.backends.mlflow import MLflowBackend
from tracelet.events import Metric, Params, Tags
from tracelet.testing import sample_run

T0 = 1_700_000_000.0


def _open(tmp_path, direct: bool) -> tuple[MLflowBackend, list[int]]:
    backend = MLflowBackend()
    backend.open(sample_run(backend_url=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    if direct:
        assert backend._direct is not None, "a local SQLite store must take the direct path"
    else:
        backend._direct = None
    metric_calls = [0]  # log_batch calls that carried metrics
    log_batch = backend._client.log_batch

    def counting(run_id, metrics=(), params=(), tags=()):
        metric_calls[0] += bool(metrics)
        return log_batch(run_id, metrics=metrics, params=params, tags=tags)

    backend._client.log_batch = counting
    return backend, metric_calls


def _stored(backend: MLflowBackend) -> tuple[dict, dict]:
    client = backend._client
    run = client.get_run(backend._run_id)
    histories = {
        key: sorted(
            (m.step, m.timestamp, "nan" if math.isnan(m.value) else m.value)
            for m in client.get_metric_history(backend._run_id, key)
        )
        for key in run.data.metrics
    }
    latest = {k: "nan" if math.isnan(v) else v for k, v in run.data.metrics.items()}
    return histories, latest


def _awkward_batches() -> list[list]:
    rng = random.Random(7)
    batches = [
        # steps out of order, the same step twice, an identical point twice, NaN and infinities
        [
            Metric("loss", 0.5, 3, T0),
            Metric("loss", 0.7, 1, T0 + 0.001),
            Metric("loss", 0.9, 3, T0 + 0.002),
            Metric("loss", 0.9, 3, T0 + 0.002),
            Metric("odd", math.nan, 2, T0),
            Metric("odd", math.inf, 1, T0),
            Metric("neg", -math.inf, 0, T0),
            Metric("no step", 1.5, None, T0),
            Metric("stays", 5.0, 5, T0),
        ],
        # a later batch with older points: the latest value must not move back
        [
            Metric("loss", 0.1, 2, T0 + 5),
            Metric("odd", 3.0, 2, T0 - 5),
            Metric("odd", 4.0, 2, T0 + 5),
            Metric("stays", 1.0, 1, T0 + 9),
        ],
        # params and tags beside metrics, and names MLflow does not take as they are
        [
            Params({"lr": 0.1}),
            Metric("bad name!", 1.0, 0, T0),
            Tags({"t": "v"}),
            Metric("a/../b", 2.0, 0, T0),
        ],
        # many keys in one batch: more than one query's worth of latest values
        [Metric(f"k{i}", float(i), 0, T0) for i in range(600)],
    ]
    batches.append([Metric(f"k{i}", rng.random(), 1, T0 + 1) for i in range(0, 600, 7)])
    batches.append([Metric("loss", rng.random(), step, T0 + step) for step in range(4, 1500)])
    return batches


def test_direct_path_stores_what_log_batch_stores(tmp_path):
    direct, direct_calls = _open(tmp_path, direct=True)
    plain, _ = _open(tmp_path, direct=False)
    for batch in _awkward_batches():
        assert direct.write(list(batch)) == plain.write(list(batch))
    assert _stored(direct) == _stored(plain)
    histories, latest = _stored(direct)
    assert latest["loss"] == histories["loss"][-1][2]
    assert (
        latest["stays"] == 5.0
        and latest["odd"] == 4.0
        and histories["odd"][0] == (1, int(T0 * 1000), 1.7976931348623157e308)
    )
    assert direct_calls[0] == 0, "every metric batch should have gone the direct way"


def test_a_batch_sent_again_after_a_failure_is_stored_once(tmp_path):
    direct, direct_calls = _open(tmp_path, direct=True)
    batch = [Metric("loss", float(i), i, T0 + i) for i in range(300)]
    direct.write(batch)
    direct.write(batch)  # as the worker does after a failure it cannot place exactly
    histories, _ = _stored(direct)
    assert [step for step, _, _ in histories["loss"]] == list(range(300))
    assert direct_calls[0] == 1, "the repeated rows go to log_batch, which keeps MLflow's dedup rule"


def test_an_identical_point_twice_in_one_batch_is_stored_once(tmp_path):
    from tracelet.backends.mlflow_sql import Point

    direct, _ = _open(tmp_path, direct=True)
    point = Point("loss", 0.5, int(T0 * 1000), 3)
    assert direct._direct.write([point, point, point._replace(value=0.6)])
    histories, latest = _stored(direct)
    assert histories == {"loss": [(3, int(T0 * 1000), 0.5), (3, int(T0 * 1000), 0.6)]}
    assert latest == {"loss": 0.6}


def test_a_transaction_failing_part_way_writes_nothing_and_log_batch_takes_the_batch(tmp_path, monkeypatch):
    import sqlalchemy

    direct, direct_calls = _open(tmp_path, direct=True)
    writer = direct._direct

    def locked(*_args):
        raise sqlalchemy.exc.OperationalError("UPDATE latest_metrics", {}, Exception("database is locked"))

    monkeypatch.setattr(writer, "_update_latest", locked)  # after the INSERT, inside the transaction
    direct.write([Metric("loss", float(i), i, T0 + i) for i in range(50)])
    histories, latest = _stored(direct)
    assert [step for step, _, _ in histories["loss"]] == list(range(50))
    assert latest["loss"] == 49.0
    assert direct_calls[0] == 1 and writer.enabled  # a locked database is worth another try next time


def test_a_run_deleted_meanwhile_is_refused_as_mlflow_refuses_it(tmp_path):
    direct, _ = _open(tmp_path, direct=True)
    plain, _ = _open(tmp_path, direct=False)
    for backend in (direct, plain):
        backend._client.delete_run(backend._run_id)
    batch = [Metric("loss", 1.0, 0, T0), Metric("loss", 2.0, 1, T0)]
    assert direct.write(list(batch)) == plain.write(list(batch)) == {"refused by MLflow": 2}


@pytest.mark.parametrize("uri", ["file", "sqlite-other-columns"])
def test_no_direct_path_where_it_does_not_apply(tmp_path, monkeypatch, uri):
    if uri == "file":
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        backend = MLflowBackend()
        backend.open(sample_run(backend_url=(tmp_path / "mlruns").as_uri()))
        assert backend._direct is None
        backend.write([Metric("loss", 1.0, 0, T0)])
        assert _stored(backend)[1] == {"loss": 1.0}
        return
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.models import SqlMetric

    # a future MLflow whose metrics table needs a value tracelet does not write
    table = SqlMetric.__table__
    extra = sqlalchemy.Column("required_by_a_future_mlflow", sqlalchemy.String(10), nullable=False)
    monkeypatch.setattr(table, "columns", [*table.columns, extra])
    backend = MLflowBackend()
    backend.open(sample_run(backend_url=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert backend._direct is None
