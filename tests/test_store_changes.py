"""A team's MLflow store is shared and changes under a run: one refused entry costs only itself,
a deleted run or database is recognised once, parallel jobs never break a fresh store, and the
report says "complete" only when every accepted event arrived."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import psutil
import pytest
from helpers import mlflow_run, mlflow_series, sweep
from mlflow.tracking import MlflowClient

import tracelet
from tracelet import journal
from tracelet.cli import main as cli

SWEEP_TRIALS = int(os.environ.get("TRACELET_TEST_SWEEP_TRIALS", "2"))  # the closing note ran 5


def _client() -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{Path('mlflow.db').resolve()}")


def _warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and text in r.getMessage()]


def _runs_listing(capsys) -> str:
    assert cli(["runs"]) == 0
    return capsys.readouterr().out


def test_an_artifact_the_store_refuses_costs_only_itself(tmp_path, caplog):
    """`mlflow ui`/`mlflow server` made the experiment: its artifacts live behind a server
    (``mlflow-artifacts:``), which a ``sqlite:///`` client cannot reach."""
    _client().create_experiment("team", artifact_location="mlflow-artifacts:/team")
    exp = tracelet.start_logging(project="team", exp_name="ui-first")
    (tmp_path / "notes.txt").write_text("kept in the journal")
    for step in range(200):
        exp.log_metric("loss", 1.0 / (step + 1), iteration=step)
        if step == 100:
            exp.log_artifact(tmp_path / "notes.txt")
    report = tracelet.stop_logging()

    stats = report.backends["mlflow"]
    assert mlflow_series(stats.location.run_id)["loss"] == [(s, 1.0 / (s + 1)) for s in range(200)]
    assert mlflow_run(stats.location.run_id).info.status == "FINISHED"
    assert stats.state == "closed" and stats.failed == 0
    assert stats.refused == 1 and stats.reasons == {"artifact refused": 1}
    assert not stats.complete and "INCOMPLETE" in report.lines()[0] and "1 refused" in report.lines()[0]
    assert len(_warnings(caplog, "did not store the artifact 'notes.txt'")) == 1
    assert report.backends["journal"].complete  # the journal kept the file for a replay


def test_a_run_deleted_mid_run_is_given_up_once_and_costs_the_writer_nothing(caplog, capsys):
    exp = tracelet.start_logging(project="team", exp_name="deleted")
    for step in range(100):
        exp.log_metric("loss", float(step), iteration=step)
    assert exp.flush(60)
    run_id = exp.locations["mlflow"].run_id
    _client().delete_run(run_id)
    writer = psutil.Process(exp._bus._transport.pid)
    cpu_before = sum(writer.cpu_times()[:2])
    for step in range(100, 20_100):
        exp.log_metric("loss", float(step), iteration=step)
    assert exp.flush(60)
    writer_cpu = sum(writer.cpu_times()[:2]) - cpu_before
    report = tracelet.stop_logging()

    stats = report.backends["mlflow"]
    assert stats.sent == 100 and stats.failed == 20_000 and stats.reasons == {"run gone": 20_000}
    assert stats.state == "failed" and not stats.complete
    (warning,) = _warnings(caplog, "was deleted")
    assert f"tracelet replay {exp.locations['journal'].uri} --backend mlflow" in warning
    assert writer_cpu < 1.0, f"writer spent {writer_cpu:.2f} s of CPU on 20,000 points for a deleted run"
    assert len(mlflow_series(run_id)["loss"]) == 100
    assert "mlflow INCOMPLETE (20000 failed)" in _runs_listing(capsys)


def test_a_deleted_database_is_never_recreated_empty(tmp_path, caplog, capsys):
    exp = tracelet.start_logging(project="team", exp_name="db-deleted")
    exp.log_metric("loss", 1.0, iteration=0)
    assert exp.flush(60)
    os.remove(tmp_path / "mlflow.db")
    for step in range(1, 5_001):
        exp.log_metric("loss", float(step), iteration=step)
    exp.log_artifact(__file__)
    report = tracelet.stop_logging()

    assert not (tmp_path / "mlflow.db").exists()
    stats = report.backends["mlflow"]
    assert stats.sent == 1 and stats.failed == 5_001 and stats.reasons == {"run gone": 5_001}
    assert len(_warnings(caplog, "was deleted or replaced")) == 1
    assert "mlflow INCOMPLETE (5001 failed)" in _runs_listing(capsys)


def test_points_dropped_for_a_full_queue_make_the_listing_incomplete(capsys):
    exp = tracelet.start_logging(project="team", config={"queue_size": 1_000})
    for step in range(50_000):
        exp.log_metric("loss", float(step), iteration=step)
    report = tracelet.stop_logging()

    dropped = report.backends["mlflow"].reasons["queue full"]
    assert dropped > 0 and not report.backends["mlflow"].complete
    (record,) = journal.find("tracelet-runs")
    assert record.delivery["mlflow"]["dropped"] >= dropped and not record.delivery["mlflow"]["complete"]
    assert "mlflow INCOMPLETE" in _runs_listing(capsys)


def test_a_killed_writer_is_noticed_at_once_and_the_journal_records_the_real_end(caplog, capsys):
    exp = tracelet.start_logging(project="team", exp_name="writer-killed")
    for step in range(300):
        exp.log_metric("loss", float(step), iteration=step)
    assert exp.flush(60)
    transport = exp._bus._transport
    os.kill(transport.pid, signal.SIGKILL)
    transport.wait(10)
    exp._bus._transport._reader.join(10)  # the reply pipe's end: the death is noticed
    assert len(_warnings(caplog, "writer process exited unexpectedly")) == 1
    for step in range(300, 400):
        exp.log_metric("loss", float(step), iteration=step)  # training goes on
    report = tracelet.stop_logging(timeout=5)

    stats = report.backends["mlflow"]
    assert stats.sent == 300 and stats.reasons == {"writer process exited": 100}
    assert not stats.complete
    (record,) = journal.find("tracelet-runs")
    assert record.status == "FINISHED" and record.run["ended_at"] is not None
    assert record.delivery["mlflow"]["sent"] == 300 and record.delivery["mlflow"]["dropped"] == 100
    listing = _runs_listing(capsys)
    assert "FINISHED" in listing and "mlflow INCOMPLETE (100 dropped)" in listing


@pytest.mark.fresh_store
@pytest.mark.parametrize("trial", range(SWEEP_TRIALS))
def test_eight_jobs_started_at_once_on_a_fresh_store_all_land_and_leave_it_usable(tmp_path, trial):
    outputs = sweep(tmp_path, 8)
    assert outputs == ["complete"] * 8
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"job{i}" for i in range(8)]
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 50 for r in runs)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert not [t for t in tables if t.startswith("_alembic_tmp")]
    assert sweep(tmp_path, 1) == ["complete"]  # a ninth run afterwards
