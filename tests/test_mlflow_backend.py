"""The MLflow backend against a real SQLite store, read back with MlflowClient."""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

import pytest
from helpers import mlflow_run, mlflow_series
from mlflow.tracking import MlflowClient

import tracelet
from tracelet.backends.mlflow import MLflowBackend
from tracelet.backends.mlflow.keys import MAX_KEY, sanitize


def _finish(exp) -> str:
    report = tracelet.stop_logging()
    assert report.done, report.lines()
    return report.backends["mlflow"].location.run_id


@pytest.mark.fresh_store  # checks what is (not) created in the working directory
def test_default_store_is_sqlite_in_the_working_directory_with_project_and_run_name(tmp_path):
    exp = tracelet.start_logging(exp_name="baseline", project="cifar")
    exp.log_metric("loss", 0.5, iteration=3)
    run_id = _finish(exp)
    assert (tmp_path / "mlflow.db").exists()
    run = mlflow_run(run_id)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_experiment(run.info.experiment_id).name == "cifar"
    assert run.info.run_name == "baseline"
    assert run.info.status == "FINISHED"
    assert run.data.tags["tracelet.run_uid"] == exp.run_uid
    assert mlflow_series(run_id) == {"loss": [(3, 0.5)]}


def test_backend_url_beats_mlflow_tracking_uri(tmp_path, monkeypatch, store_at):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    uri = store_at(tmp_path / "arg.db")
    exp = tracelet.start_logging(backend_url=uri)
    exp.log_metric("x", 1.0)
    run_id = _finish(exp)
    assert mlflow_series(run_id, uri) == {"x": [(0, 1.0)]}
    assert not (tmp_path / "env.db").exists()


def test_mlflow_tracking_uri_is_honoured(tmp_path, monkeypatch, store_at):
    uri = store_at(tmp_path / "env.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    exp = tracelet.start_logging()
    exp.log_metric("x", 2.0, iteration=1)
    run_id = _finish(exp)
    assert mlflow_series(run_id, uri) == {"x": [(1, 2.0)]}
    location = exp.locations["mlflow"]
    program, *command = location.view.split()
    assert command == ["ui", "--backend-store-uri", uri, "--workers", "1"]
    assert shutil.which(program)  # a path to the mlflow beside this Python, which a fresh shell finds
    assert (
        location.url
        == f"http://127.0.0.1:5000/#/experiments/{mlflow_run(run_id, uri).info.experiment_id}/runs/{run_id}"
    )


@pytest.mark.parametrize(
    "name, key",
    [
        ("val/acc", "val/acc"),
        ("loss@val", "loss_val"),
        ("a//b", "a/b"),
        ("/abs/name", "abs/name"),
        ("../up", "__/up"),
        ("", "_"),
        ("lr (group 0)", "lr _group 0_"),
        ("a:b c", "a:b c"),
        ("ü-ß", "ü-ß"),
    ],
)
def test_names_mlflow_refuses_are_sanitized(name, key):
    assert sanitize(name) == key


def test_sanitized_names_stay_distinct_and_within_the_length_limit(caplog):
    exp = tracelet.start_logging()
    for name in ("a@b", "a#b", "x" * 500):
        exp.log_metric(name, 1.0)
        exp.log_metric(name, 2.0)  # the second time: no second warning
    run_id = _finish(exp)
    keys = sorted(mlflow_series(run_id))
    assert len(keys) == 3 and "a_b" in keys and all(len(k) <= MAX_KEY for k in keys)
    assert sum("does not accept the metric name" in r.getMessage() for r in caplog.records) == 3


def test_nan_is_stored_and_inf_becomes_mlflows_float_max():
    exp = tracelet.start_logging()
    for i, value in enumerate([math.nan, math.inf, -math.inf, 1.5]):
        exp.log_metric("weird", value, iteration=i)
    series = mlflow_series(_finish(exp))["weird"]
    # MLflow's SQL store itself maps +-inf to +-sys.float_info.max
    assert math.isnan(series[0][1])
    assert series[1:] == [(1, sys.float_info.max), (2, -sys.float_info.max), (3, 1.5)]


def test_params_are_flattened_stringified_truncated_and_write_once(caplog):
    exp = tracelet.start_logging()
    exp.log_params({"lr": 0.1, "model": {"depth": 18, "act": "relu"}, "layers": [1, 2], "none": None})
    exp.log_params({"long": "x" * 10_000})
    exp.log_params({"lr": 0.1})  # same value again: fine, nothing to do
    exp.log_params({"lr": 0.2})  # MLflow params cannot change
    report = tracelet.stop_logging()
    params = mlflow_run(report.backends["mlflow"].location.run_id).data.params
    assert params["lr"] == "0.1" and params["model/depth"] == "18" and params["model/act"] == "relu"
    assert params["layers"] == "[1, 2]" and params["none"] == "None"
    assert len(params["long"]) == 6000
    assert report.backends["mlflow"].reasons == {"param value changed": 1}
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "truncated" in messages and "cannot change" in messages


def test_more_than_a_batch_of_metrics_params_and_tags_all_arrive():
    exp = tracelet.start_logging()
    exp.log_params({f"p{i}": i for i in range(250)})
    exp.set_tags({f"t{i}": i for i in range(150)})
    for i in range(2_500):
        exp.log_metric("m", i, iteration=i)
    run_id = _finish(exp)
    run = mlflow_run(run_id)
    assert len(run.data.params) == 250
    assert sum(1 for k in run.data.tags if k.startswith("t")) >= 150
    assert [s for s, _ in mlflow_series(run_id)["m"]] == list(range(2_500))


def test_artifacts_files_and_directories(tmp_path):
    (tmp_path / "report.txt").write_text("hello")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.csv").write_text("1,2")
    exp = tracelet.start_logging()
    exp.log_artifact(tmp_path / "report.txt")
    exp.log_artifact(str(tmp_path / "plots"), artifact_path="figures")
    run_id = _finish(exp)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert {a.path for a in client.list_artifacts(run_id)} == {"report.txt", "figures"}
    assert [a.path for a in client.list_artifacts(run_id, "figures")] == ["figures/a.csv"]
    (tmp_path / "dl").mkdir()  # MLflow 2.x wants the destination to exist
    local = client.download_artifacts(run_id, "report.txt", str(tmp_path / "dl"))
    assert Path(local).read_text() == "hello"


def test_a_repeated_point_in_the_same_millisecond_is_kept(tmp_path):
    from tracelet.backends.base import RunInfo
    from tracelet.events import Metric

    backend = MLflowBackend()
    location = backend.open(RunInfo("uid", "p", "r", None, None, 1_700_000_000.0, {}))
    ts = 1_700_000_000.123
    assert backend.write([Metric("epoch", 1.0, 15, ts), Metric("epoch", 1.0, 15, ts)]) == {}
    backend.close("FINISHED")
    assert mlflow_series(location.run_id) == {"epoch": [(15, 1.0), (15, 1.0)]}


def test_status_failed_and_killed_reach_mlflow():
    for status in ("FAILED", "KILLED"):
        exp = tracelet.start_logging()
        exp.sink.mark_status(status)
        run_id = _finish(exp)
        assert mlflow_run(run_id).info.status == status


def test_does_not_touch_the_users_fluent_mlflow_run(tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as user_run:
        exp = tracelet.start_logging(config={"writer": "thread"})
        exp.log_metric("ours", 1.0)
        mlflow.log_metric("theirs", 2.0)
        ours = _finish(exp)
        assert mlflow.active_run().info.run_id == user_run.info.run_id
    assert ours != user_run.info.run_id
    assert set(mlflow_series(ours)) == {"ours"}
    assert set(mlflow_series(user_run.info.run_id)) == {"theirs"}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
