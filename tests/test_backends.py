"""The same run in MLflow, W&B (offline) and ClearML (offline) at once, each read back from
what it stored; isolation between backends; plugins found through entry points."""

from __future__ import annotations

import contextlib
import importlib.metadata
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    assert_same_series,
    clearml_series,
    make_trainer,
    mlflow_run,
    mlflow_series,
    run_tiny_job,
    wandb_series,
)
from mlflow.tracking import MlflowClient
from test_lightning import _oracle

import tracelet
from tracelet import cli, journal
from tracelet.backends.clearml import title_and_series
from tracelet.config import ConfigError
from tracelet.naming import program_name

ALL = ["mlflow", "wandb", "clearml"]


def _three_backend_run(**model_kwargs):
    exp = tracelet.start_logging(exp_name="fanout", project="tiny", backend=ALL)
    with contextlib.suppress(RuntimeError):
        run_tiny_job("lightning.pytorch", logger=False, **model_kwargs)
    exp.log_params({"manual": {"nested": [1, 2], "none": None}})
    report = tracelet.stop_logging()
    assert report.done, report.lines()
    return {name: stats.location for name, stats in report.backends.items()}, report


def test_one_fit_reaches_all_three_backends_with_the_series_csvlogger_records(tmp_path):
    expected = _oracle("lightning.pytorch", tmp_path)
    locations, report = _three_backend_run()
    assert all(report.backends[name].dropped == 0 and report.backends[name].failed == 0 for name in ALL)

    assert_same_series(mlflow_series(locations["mlflow"].run_id), expected)
    params = mlflow_run(locations["mlflow"].run_id).data.params
    assert params["lr"] == "0.05" and params["manual/nested"] == "[1, 2]" and params["manual/none"] == "None"

    series, run = wandb_series(locations["wandb"].uri)
    assert_same_series(series, expected)
    assert run["name"] == "fanout" and run["project"] == "tiny" and run["exit_code"] == 0
    assert run["config"]["lr"] == 0.05 and run["config"]["hidden"] == 4
    assert run["config"]["manual"] == {"nested": [1, 2], "none": None}
    assert ("train/loss_step", "trainer/global_step") in run["metrics"]
    assert ("system/*", "system/sample") in run["metrics"]

    series, task = clearml_series(locations["clearml"].uri)
    assert_same_series(series, expected)
    assert task["name"] == "fanout" and task["project_name"] == "tiny"
    general = {k: v["value"] for k, v in task["hyperparams"]["General"].items()}
    assert general["lr"] == "0.05" and general["manual/nested"] == "[1, 2]"
    assert "status:finished" in task["tags"]


def test_a_failed_fit_is_failed_in_every_backend():
    locations, report = _three_backend_run(fail_at_step=4)
    assert report.status == "FAILED"
    assert mlflow_run(locations["mlflow"].run_id).info.status == "FAILED"
    assert wandb_series(locations["wandb"].uri)[1]["exit_code"] == 1
    assert "status:failed" in clearml_series(locations["clearml"].uri)[1]["tags"]


def test_artifacts_and_tags_reach_wandb_and_clearml(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    exp = tracelet.start_logging(backend=["wandb", "clearml"])
    exp.log_artifact(tmp_path / "notes.txt", artifact_path="docs")
    exp.set_tag("dataset", "cifar10")
    report = tracelet.stop_logging()
    wandb_dir = report.backends["wandb"].location.uri
    assert (tmp_path / wandb_dir / "files" / "docs" / "notes.txt").read_text() == "hello"
    assert wandb_series(wandb_dir)[1]["config"]["tags"] == {"dataset": "cifar10"}
    task = clearml_series(report.backends["clearml"].location.uri)[1]
    assert [a["key"] for a in task["execution"]["artifacts"]] == ["docs/notes.txt"]


def test_wandb_renames_what_it_reserves_and_keeps_every_point():
    exp = tracelet.start_logging(backend="wandb")
    exp.log_metric("_hidden", 1.0, iteration=1)
    exp.log_metric("trainer/global_step", 2.0, iteration=1)
    exp.log_metric("", 3.0, iteration=1)
    exp.log_metric("late", 4.0, iteration=10)
    exp.log_metric("late", 5.0, iteration=2)  # a step going backwards: W&B keeps it via our step field
    series, _ = wandb_series(tracelet.stop_logging().backends["wandb"].location.uri)
    assert series == {
        "metric_hidden": [(1, 1.0)],
        "metric/trainer/global_step": [(1, 2.0)],
        "unnamed": [(1, 3.0)],
        "late": [(2, 5.0), (10, 4.0)],
    }


@pytest.mark.parametrize(
    "name, expected",
    [
        ("train/loss", ("train", "loss")),
        ("a/b/c", ("a", "b/c")),
        ("loss", ("loss", "loss")),
        ("/x", ("x", "x")),
        ("", ("unnamed", "unnamed")),
    ],
)
def test_clearml_splits_names_into_title_and_series(name, expected):
    assert title_and_series(name) == expected


def test_a_blocking_and_a_raising_backend_cost_mlflow_and_training_nothing():
    def fit(backends):
        exp = tracelet.start_logging(project="iso", backend=backends, config={"stop_timeout": 5})
        deadline = time.monotonic() + 120  # MLflow open (a new store through MlflowClient: seconds)
        while exp.stats()["mlflow"].state == "starting" and time.monotonic() < deadline:
            time.sleep(0.05)
        run_tiny_job(trainer=make_trainer(max_epochs=4), test=False)
        at_fit_end = exp.stats()
        report = tracelet.stop_logging()
        assert exp.status == "FINISHED"
        return at_fit_end, report

    _, clean = fit(["mlflow"])
    at_fit_end, report = fit(["mlflow", "fake_backends:Blocking", "fake_backends:FailingWrite"])
    assert report.backends["mlflow"].sent == clean.backends["mlflow"].sent > 0
    assert report.backends["mlflow"].dropped == 0
    assert report.backends["FailingWrite"].failed == clean.backends["mlflow"].sent
    # the fit ended while the blocking backend (3 s per batch) was stuck: training did not wait
    assert at_fit_end["Blocking"].sent < report.backends["Blocking"].sent


def _install_plugin(tmp_path, monkeypatch) -> None:
    """A real installed distribution (a dist-info in a site directory on sys.path, not in the
    working directory, which tracelet never imports from) declaring a tracelet.backends entry point."""
    site = tmp_path / "site-packages"
    (site / "plugin_pkg").mkdir(parents=True)
    (site / "plugin_pkg" / "__init__.py").write_text(
        "from fake_backends import Recording\n\nclass PluginBackend(Recording):\n    pass\n"
    )
    info = site / "tracelet_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tracelet-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tracelet.backends]\nmyplugin = plugin_pkg:PluginBackend\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    assert any(ep.name == "myplugin" for ep in importlib.metadata.entry_points(group="tracelet.backends"))


def test_a_backend_plugin_registered_by_entry_point_is_found_by_name(tmp_path, monkeypatch):
    from fake_backends import recorded

    _install_plugin(tmp_path, monkeypatch)
    exp = tracelet.start_logging(backend=["myplugin", "mlflow"])
    exp.log_metric("loss", 0.5, iteration=1)
    report = tracelet.stop_logging()
    assert report.backends["myplugin"].sent == 1
    assert ["metric", "loss", 0.5, 1] in recorded("PluginBackend")


def test_unknown_backend_lists_builtins_and_installed_plugins(tmp_path, monkeypatch):
    _install_plugin(tmp_path, monkeypatch)
    with pytest.raises(ConfigError) as error:
        tracelet.start_logging(backend="neptune")
    assert "Available backends: clearml, journal, mlflow, myplugin, wandb" in str(error.value)


def test_nan_and_inf_in_each_backend_stored_or_counted_never_silently_changed(caplog):
    import math
    import sys

    exp = tracelet.start_logging(backend=ALL)
    for i, value in enumerate([math.nan, math.inf, -math.inf, 1.5]):
        exp.log_metric("weird", value, iteration=i)
    report = tracelet.stop_logging()
    mlflow_points = mlflow_series(report.backends["mlflow"].location.run_id)["weird"]
    assert math.isnan(mlflow_points[0][1]) and mlflow_points[1:] == [
        (1, sys.float_info.max),
        (2, -sys.float_info.max),
        (3, 1.5),
    ]
    wandb_points = wandb_series(report.backends["wandb"].location.uri)[0]["weird"]
    assert math.isnan(wandb_points[0][1]) and wandb_points[1:] == [(1, math.inf), (2, -math.inf), (3, 1.5)]
    assert clearml_series(report.backends["clearml"].location.uri)[0] == {"weird": [(3, 1.5)]}
    assert report.backends["clearml"].reasons == {"non-finite value": 3}
    assert caplog.text.count("ClearML cannot store NaN/inf") == 1


@pytest.mark.parametrize(
    "target",
    [
        "tracelet.backends.mlflow:MLflowBackend",
        "tracelet.backends.wandb:WandbBackend",
        "tracelet.backends.clearml:ClearMLBackend",
        "tracelet.backends.journal:JournalBackend",
        "custom_backend:JsonLinesBackend",  # the plugin example
    ],
)
def test_every_backend_keeps_the_reusable_contract(target, tmp_path, monkeypatch):
    from tracelet.backends.base import BackendSpec, load
    from tracelet.testing import check_backend

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "examples"))
    check_backend(lambda: load(BackendSpec("contract", target)), workdir=tmp_path)


def test_clearml_in_the_writer_is_its_own_task_when_the_training_process_has_one(monkeypatch):
    # what ClearML leaves in the environment of a process that called Task.init itself
    monkeypatch.setenv("CLEARML_PROC_MASTER_ID", "1:0123456789abcdef")
    monkeypatch.setenv("TRAINS_PROC_MASTER_ID", "1:0123456789abcdef")
    exp = tracelet.start_logging(backend="clearml")
    exp.log_metric("train/loss", 0.5, iteration=1)
    report = tracelet.stop_logging()
    stats = report.backends["clearml"]
    assert stats.state == "closed" and stats.sent == 1, stats.error
    series, task = clearml_series(stats.location.uri)
    assert series == {"train/loss": [(1, 0.5)]} and task["id"] == stats.location.run_id


def test_a_run_started_without_names_has_one_name_and_project_everywhere(tmp_path, capsys):
    exp = tracelet.start_logging(backend=["mlflow", "wandb"])
    exp.log_metric("a", 1.0)
    report = tracelet.stop_logging()
    assert report.done, report.lines()
    name, project = exp.name, exp.project
    assert project == tmp_path.name  # the working directory's name
    assert name == f"{program_name()}-{exp.run_uid[:6]}"  # the program's name and the run's id
    location = report.backends["mlflow"].location
    run = mlflow_run(location.run_id, location.uri)
    assert run.info.run_name == name
    assert MlflowClient(tracking_uri=location.uri).get_experiment(run.info.experiment_id).name == project
    _, wandb_run = wandb_series(report.backends["wandb"].location.uri)
    assert (wandb_run["name"], wandb_run["project"]) == (name, project)
    (record,) = journal.find("tracelet-runs")
    assert (record.run["exp_name"], record.run["project"]) == (name, project)
    capsys.readouterr()
    assert cli.main(["runs"]) == 0
    (row,) = capsys.readouterr().out.splitlines()[1:]
    assert row.split()[2:4] == [name, project]


def test_clearml_holds_every_point_at_close_after_this_process_recorded_a_failed_exit(monkeypatch):
    """ClearML hooks ``sys.exit`` and ``sys.excepthook`` for the whole process: once anything in
    it exits non-zero or raises uncaught (a crashed training with writer="thread", a CLI called
    in-process), every later ``Task.close()`` skips waiting for its reporter. Its
    ``Logger.flush(wait=True)`` can also return while its report thread still holds a batch (it
    says "empty" after finishing the batch it was writing). Together: points reported before
    close reach the store minutes later, or never, after the run said complete."""
    from clearml.backend_interface.metrics.interface import Metrics

    from tracelet.backends.clearml import ClearMLBackend
    from tracelet.events import Metric
    from tracelet.testing import sample_run

    real_write, writes, writing = Metrics._do_write_events, [], threading.Event()

    def slow_store(self, events, *args, **kwargs):  # a slow disk or server
        writes.append(len(events))
        writing.set()
        time.sleep(1.0 if len(writes) == 1 else 3.0)
        return real_write(self, events, *args, **kwargs)

    monkeypatch.setattr(Metrics, "_do_write_events", slow_store)
    backend = ClearMLBackend()
    location = backend.open(sample_run())
    hook = sys.exit.__self__  # ClearML's exit hook, installed by Task.init
    monkeypatch.setattr(hook, "exit_code", hook.exit_code)  # restored after the test
    with pytest.raises(SystemExit):
        sys.exit(3)
    points = [Metric("loss", float(i), i, 1_700_000_000.0 + i) for i in range(500)]
    backend.write(points[:250])
    assert writing.wait(30), "ClearML's report thread never wrote"
    backend.write(points[250:])  # queued while the thread writes the first batch
    backend.close("FINISHED")
    assert clearml_series(location.uri)[0]["loss"] == [(i, float(i)) for i in range(500)]
