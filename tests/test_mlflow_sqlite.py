"""MLflow's SQLite store written without MLflow stores exactly what MLflow's own client stores.

Runs in one real SQLite store receive the same events, one through the direct path
(``tracelet/backends/mlflow/sqlite.py``) and one through ``MlflowClient`` only; everything MLflow
reads back (the run's info, every point of every history, the latest value per key the UI's run
table shows, params, tags, artifacts, what was refused) must be equal. Where the direct path must not
write, MLflow does, and the test sees which one did.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tracelet import _log
from tracelet.backends.base import RunGone, WriteInterrupted
from tracelet.backends.mlflow import MLflowBackend, schema
from tracelet.backends.mlflow.schema import Point
from tracelet.backends.mlflow.sqlite import LocalStore
from tracelet.events import Artifact, Metric, Params, Tags
from tracelet.testing import sample_run

T0 = 1_700_000_000.0


def _verified_release() -> bool:
    """Whether the installed MLflow is a release whose schema the direct path was verified on."""
    import mlflow

    releases = (release.split()[1] for release in schema.VERIFIED_HEADS.values())
    return any(mlflow.__version__.startswith(release + ".") for release in releases)


@pytest.fixture
def store(tmp_path) -> str:
    """A store MLflow created (schema at its head), with the experiment the runs go to. The
    direct path's own tests need an MLflow it was verified on; on any other (``make compat``'s
    MLflow 2.x) it declines, which the head test below checks, and these are skipped."""
    if not _verified_release():
        pytest.skip("the installed MLflow's schema is not one the direct path is verified against")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment("tracelet-contract")
    return uri


def _open(uri: str, direct: bool, monkeypatch: pytest.MonkeyPatch, **run) -> tuple[MLflowBackend, list[int]]:
    backend = MLflowBackend()
    if direct:
        backend.open(sample_run(backend_url=uri, **run))
        assert backend._local is not None and backend._client_instance is None, (
            "the run must be made directly"
        )
    else:
        with monkeypatch.context() as patch:
            patch.setattr(LocalStore, "connect", classmethod(lambda cls, uri: None))
            backend.open(sample_run(backend_url=uri, **run))
        assert backend._local is None
    calls = [0]  # log_batch calls
    client = backend._client
    log_batch = client.log_batch

    def counting(run_id, metrics=(), params=(), tags=()):
        calls[0] += 1
        return log_batch(run_id, metrics=metrics, params=params, tags=tags)

    client.log_batch = counting
    return backend, calls


def _stored(backend: MLflowBackend) -> dict:
    """Everything MLflow reads back of the run, minus what differs by nature between two runs."""
    client = backend._client
    run = client.get_run(backend._run_id)
    info = run.info
    histories = {
        key: sorted(
            (m.step, m.timestamp, "nan" if math.isnan(m.value) else m.value)
            for m in client.get_metric_history(backend._run_id, key)
        )
        for key in run.data.metrics
    }
    root = info.artifact_uri
    artifacts = {
        str(path.relative_to(root)): path.read_bytes() for path in Path(root).rglob("*") if path.is_file()
    }
    tags = {k: v for k, v in run.data.tags.items() if k != "tracelet.run_uid"}
    return {
        "info": (info.run_name, info.status, info.user_id, info.lifecycle_stage, info.experiment_id),
        "artifact_uri": root.replace(backend._run_id, "<run>"),
        "ended": info.end_time is not None and info.end_time >= info.start_time,
        "histories": histories,
        "latest": {k: "nan" if math.isnan(v) else v for k, v in run.data.metrics.items()},
        "params": run.data.params,
        "tags": tags,
        "artifacts": artifacts,
    }


def _awkward_batches(workdir: Path) -> list[list]:
    rng = random.Random(7)
    (workdir / "report.txt").write_text("hello")
    (workdir / "plots" / "deep").mkdir(parents=True)
    (workdir / "plots" / "a.csv").write_text("1,2")
    (workdir / "plots" / "deep" / "b.csv").write_text("3,4")
    batches = [
        [Params({"lr": 0.1, "model": {"depth": 3}}), Tags({"team": "x", "stage": "one"})],
        # steps out of order, the same step twice, an identical point twice, NaN and infinities
        [
            Metric("loss", 0.5, 3, T0),
            Metric("loss", 0.7, 1, T0 + 0.001),
            Metric("loss", 0.9, 3, T0 + 0.002),
            Metric("loss", 0.9, 3, T0 + 0.002),
            Metric("odd", math.nan, 2, T0),
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
        # a tag changes value, a param is repeated, one changes (refused), names MLflow does not
        # take (sanitized before either path sees them)
        [
            Params({"lr": 0.1}),
            Metric("bad name!", 1.0, 0, T0),
            Tags({"stage": "two"}),
            Metric("a/../b", 2.0, 0, T0),
            Params({"lr": 0.2}),
        ],
        # many keys in one batch: more than one query's worth of latest values and of params
        [Metric(f"k{i}", float(i), 0, T0) for i in range(600)],
        [Params({f"p{i}": i for i in range(700)})],
        [Artifact(str(workdir / "report.txt"), None), Artifact(str(workdir / "plots"), "figures/x")],
        [Artifact(str(workdir / "report.txt"), "again")],
    ]
    batches.append([Metric(f"k{i}", rng.random(), 1, T0 + 1) for i in range(0, 600, 7)])
    batches.append([Metric("loss", rng.random(), step, T0 + step) for step in range(4, 1500)])
    return batches


def test_a_run_written_directly_reads_back_as_one_mlflow_wrote(store, tmp_path, monkeypatch):
    direct, direct_calls = _open(store, True, monkeypatch)
    plain, plain_calls = _open(store, False, monkeypatch)
    for batch in _awkward_batches(tmp_path):
        assert direct.write(list(batch)) == plain.write(list(batch))
    direct.close("FINISHED")
    plain.close("FINISHED")
    stored = _stored(direct)
    assert stored == _stored(plain)
    assert stored["latest"]["loss"] == stored["histories"]["loss"][-1][2]
    assert stored["latest"]["stays"] == 5.0 and stored["latest"]["odd"] == 4.0
    assert stored["histories"]["odd"][:3] == [
        (1, int(T0 * 1000), sys.float_info.max),
        (2, int(T0 * 1000) - 5000, 3.0),
        (2, int(T0 * 1000), "nan"),
    ]
    assert stored["params"]["lr"] == "0.1" and len(stored["params"]) == 702
    assert stored["tags"]["stage"] == "two" and stored["tags"]["mlflow.runName"] == "contract"
    assert set(stored["artifacts"]) == {
        "report.txt",
        "figures/x/a.csv",
        "figures/x/deep/b.csv",
        "again/report.txt",
    }
    assert stored["info"][1] == "FINISHED" and stored["ended"]
    assert direct_calls[0] == 0 and plain_calls[0] > 0, "every batch should have gone the direct way"


def test_the_default_path_never_imports_mlflow(store, tmp_path):
    """A fresh process (the writer's situation): open, write everything a run writes, close."""
    script = textwrap.dedent(
        f"""
        import sys, os
        from tracelet.backends.mlflow import MLflowBackend
        from tracelet.testing import sample_batches, sample_run
        backend = MLflowBackend()
        location = backend.open(sample_run(backend_url={store!r}))
        for batch in sample_batches({str(tmp_path)!r}):
            backend.write(batch)
        backend.close("FINISHED")
        print(location.run_id, "mlflow" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    run_id, imported = out.stdout.split()
    assert imported == "False"
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "contract"
    assert run.data.params["model/depth"] == "3" and run.data.tags["team"] == "x"
    assert len(client.get_metric_history(run_id, "train/loss")) == 250
    assert math.isnan(run.data.metrics["weird"]) is False  # the inf at step 4 is the latest
    assert [a.path for a in client.list_artifacts(run_id, "contract")] == ["contract/contract-artifact.txt"]


def test_a_batch_sent_again_after_a_failure_is_stored_once(store, monkeypatch):
    direct, calls = _open(store, True, monkeypatch)
    batch = [Metric("loss", float(i), i, T0 + i) for i in range(300)]
    direct.write(batch)
    direct.write(batch)  # as the worker does after a failure it cannot place exactly
    histories = _stored(direct)["histories"]
    assert [step for step, _, _ in histories["loss"]] == list(range(300))
    assert calls[0] == 1, "the repeated rows go to log_batch, which keeps MLflow's dedup rule"


def test_an_identical_point_twice_in_one_batch_is_stored_once(store, monkeypatch):
    direct, _ = _open(store, True, monkeypatch)
    point = Point("loss", 0.5, int(T0 * 1000), 3)
    assert direct._local.write([point, point, point._replace(value=0.6)])
    stored = _stored(direct)
    assert stored["histories"] == {"loss": [(3, int(T0 * 1000), 0.5), (3, int(T0 * 1000), 0.6)]}
    assert stored["latest"] == {"loss": 0.6}


def test_a_transaction_failing_part_way_writes_nothing_and_log_batch_takes_the_batch(store, monkeypatch):
    direct, calls = _open(store, True, monkeypatch)

    def locked(_rows):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(schema, "newest_per_key", locked)  # after the INSERT, inside the transaction
    direct.write([Metric("loss", float(i), i, T0 + i) for i in range(50)] + [Params({"lr": 1})])
    stored = _stored(direct)
    assert [step for step, _, _ in stored["histories"]["loss"]] == list(range(50))
    assert stored["latest"]["loss"] == 49.0 and stored["params"] == {"lr": "1"}
    assert calls[0] == 1 and direct._local.enabled  # a locked database is worth another try next time


def test_a_run_deleted_meanwhile_is_gone_for_both_paths(store, monkeypatch):
    """A deleted run is not an entry MLflow refuses but a run that no longer exists: both paths
    say so once (``RunGone``) instead of having every later point refused one by one."""
    direct, _ = _open(store, True, monkeypatch)
    plain, _ = _open(store, False, monkeypatch)
    for backend in (direct, plain):
        backend._client.delete_run(backend._run_id)
    batch = [Metric("loss", 1.0, 0, T0), Metric("loss", 2.0, 1, T0)]
    for backend in (direct, plain):
        with pytest.raises(WriteInterrupted) as raised:
            backend.write(list(batch))
        assert isinstance(raised.value.cause, RunGone), raised.value.cause
        assert raised.value.written == 0


def _rebuild_with_required_column(path: str, table: str) -> None:
    """A future MLflow whose ``table`` needs a value tracelet does not write."""
    connection = sqlite3.connect(path)
    (sql,) = connection.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    new_sql = sql.replace(f'"{table}"', '"rebuilt"', 1).replace("(", "(\n\tfuture TEXT NOT NULL, ", 1)
    connection.executescript(f'{new_sql}; DROP TABLE "{table}"; ALTER TABLE rebuilt RENAME TO "{table}";')
    connection.close()


@pytest.mark.parametrize("case", ["new store", "other schema version", "unknown column"])
def test_mlflow_does_what_the_direct_path_must_not(tmp_path, store, monkeypatch, case):
    """MLflow creates a new store; once the run exists the direct path takes the writes. A schema
    it does not know is left to MLflow entirely."""
    path = schema.store_path(store)
    run = {}
    if case == "new store":
        store = f"sqlite:///{tmp_path / 'new.db'}"
    elif case == "other schema version":
        monkeypatch.setattr(schema, "VERIFIED_HEADS", {})
    else:
        _rebuild_with_required_column(path, "params")
    backend = MLflowBackend()
    backend.open(sample_run(backend_url=store, **run))
    assert backend._client_instance is not None, "MLflow made the run"
    direct = case == "new store"
    assert (backend._local is not None) is direct
    if case == "unknown column":
        return  # MLflow's own client refuses to work on a schema it does not know either
    backend.write([Metric("loss", 1.0, 0, T0), Params({"lr": 0.1})])
    backend.close("FINISHED")
    stored = _stored(backend)
    assert stored["latest"] == {"loss": 1.0} and stored["params"] == {"lr": "0.1"}
    assert stored["info"][1] == "FINISHED" and stored["info"][0]


def test_a_new_experiment_made_directly_reads_back_as_one_mlflow_made(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's client puts a new experiment's artifacts under ./mlruns
    backend, _ = _open(store, True, monkeypatch, project="made-directly")  # MLflow not imported
    client = MlflowClient(tracking_uri=store)
    by_mlflow = client.get_experiment(client.create_experiment("made-by-mlflow"))
    directly = client.get_experiment_by_name("made-directly")
    assert int(by_mlflow.experiment_id) == int(directly.experiment_id) + 1  # the same id sequence

    def seen(experiment) -> tuple:
        directory, last = experiment.artifact_location.rsplit("/", 1)
        location = f"{directory}/<id>" if last == experiment.experiment_id else experiment.artifact_location
        return location, experiment.lifecycle_stage, experiment.tags, experiment.creation_time > 0

    assert seen(directly) == seen(by_mlflow) == (f"{tmp_path}/mlruns/<id>", "active", {}, True)
    assert directly.last_update_time == directly.creation_time
    backend.write([Metric("loss", 1.0, 0, T0)])
    backend.close("FINISHED")
    stored = _stored(backend)
    assert stored["latest"] == {"loss": 1.0} and stored["info"][4] == directly.experiment_id
    # a name MLflow keeps for a deleted experiment: MLflow's own rules, not a second experiment
    client.delete_experiment(by_mlflow.experiment_id)
    local = LocalStore.connect(store)
    assert local.experiment("made-by-mlflow") is None and local.create_experiment("made-by-mlflow") is None


def test_no_direct_path_for_other_stores_or_with_workspaces(tmp_path, store, monkeypatch):
    assert LocalStore.connect(store) is not None
    assert LocalStore.connect((tmp_path / "mlruns").as_uri()) is None
    assert LocalStore.connect("sqlite:///:memory:") is None
    assert LocalStore.connect("http://127.0.0.1:5000") is None
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", "true")
    assert LocalStore.connect(store) is None


def test_the_installed_mlflow_creates_stores_at_a_verified_head_exactly_when_it_was_verified(tmp_path):
    """Found with alembic's own script API (alembic ships with MLflow)."""
    import mlflow
    from alembic.script import ScriptDirectory

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=store).create_experiment("tracelet-contract")
    migrations = Path(mlflow.__file__).parent / "store" / "db_migrations"
    head = ScriptDirectory(str(migrations)).get_current_head()
    (version,) = (
        sqlite3.connect(tmp_path / "mlflow.db").execute("SELECT version_num FROM alembic_version").fetchone()
    )
    assert version == head
    assert (head in schema.VERIFIED_HEADS) is _verified_release()
    assert (LocalStore.connect(store) is not None) is _verified_release()


def test_a_store_at_an_unverified_head_goes_through_mlflow_with_identical_results(
    store, tmp_path, monkeypatch, caplog
):
    direct, _ = _open(store, True, monkeypatch)
    _log.forget_warnings()  # said once per process: an earlier test may have said it
    with monkeypatch.context() as patch:
        patch.setattr(schema, "VERIFIED_HEADS", {})
        caplog.set_level(logging.INFO, logger="tracelet")
        unverified = MLflowBackend()
        unverified.open(sample_run(backend_url=store))
        assert unverified._local is None
        for batch in _awkward_batches(tmp_path):
            assert direct.write(list(batch)) == unverified.write(list(batch))
        unverified.close("FINISHED")
    direct.close("FINISHED")
    assert _stored(direct) == _stored(unverified)
    said = [r.getMessage() for r in caplog.records if "not verified against" in r.getMessage()]
    assert len(said) == 1 and "go through MlflowClient" in said[0]


def test_a_file_store_still_works_through_mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    backend = MLflowBackend()
    backend.open(sample_run(backend_url=(tmp_path / "mlruns").as_uri()))
    assert backend._local is None
    backend.write([Metric("loss", 1.0, 0, T0)])
    assert _stored(backend)["latest"] == {"loss": 1.0}
    assert os.path.isdir(tmp_path / "mlruns")


@pytest.mark.parametrize(
    "points, params, tags",
    [
        ([Point("bad name!", 1.0, 0, 0)], [], []),
        ([Point("a/../b", 1.0, 0, 0)], [], []),
        ([Point("x" * 251, 1.0, 0, 0)], [], []),
        ([Point("ok", 1.0, -1, 0)], [], []),
        ([Point("ok", 1.0, 0, 2**63)], [], []),
        ([Point("ok", "1.0", 0, 0)], [], []),
        ([], [("lr", "x" * 6001)], []),
        ([], [("lr", "1"), ("lr", "2")], []),
        ([], [], [("mlflow.runName", "renamed")]),
        ([], [], [("t", "x" * 8001)]),
    ],
)
def test_what_mlflow_would_refuse_is_declined_and_nothing_is_written(
    store, monkeypatch, points, params, tags
):
    direct, _ = _open(store, True, monkeypatch)
    ok = [Point("fine", 1.0, 0, 0)]
    assert direct._local.write(ok + points, params, tags) is False
    stored = _stored(direct)
    assert stored["histories"] == {} and stored["params"] == {}
    assert direct._local.write(ok) and _stored(direct)["latest"] == {"fine": 1.0}


def test_a_run_without_a_name_is_named_in_mlflows_style(store, monkeypatch):
    backend, _ = _open(store, True, monkeypatch, exp_name=None)
    backend.close("FINISHED")
    stored = _stored(backend)
    assert re.fullmatch(r"[a-z]+-[a-z]+-\d{1,3}", stored["info"][0]), stored["info"]
    assert stored["tags"]["mlflow.runName"] == stored["info"][0]
