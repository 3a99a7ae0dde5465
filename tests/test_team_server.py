"""tracelet against a team's MLflow server: ``mlflow server`` on PostgreSQL with proxied artifacts
(the session fixture ``team_server``). Everything is read back over the server's REST API."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from helpers import assert_same_series, csv_series, mlflow_series, run_tiny_job, sweep
from mlflow.tracking import MlflowClient

import tracelet
from tracelet import journal
from tracelet.backends.base import RunInfo
from tracelet.backends.mlflow import MLflowBackend
from tracelet.cli import main as cli
from tracelet.events import Metric, Params, Tags

TESTS = os.path.dirname(os.path.abspath(__file__))

JOB = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from helpers import make_trainer, tiny_loaders, tiny_module_class

    class HangAt(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == int(os.environ.get("HANG_AT_STEP", "-1")):
                print("READY", flush=True)
                time.sleep(120)

    print("hello from the training script", flush=True)
    pl.seed_everything(7, verbose=False)
    train, val = tiny_loaders()
    checkpoint = ModelCheckpoint(dirpath="ckpt", monitor="val_loss")
    trainer = make_trainer(
        logger=CSVLogger("csv", name="job"), callbacks=[checkpoint, HangAt()], enable_checkpointing=True
    )
    trainer.fit(tiny_module_class()(), train, val)
    print("LOG_DIR=" + os.path.abspath(trainer.logger.log_dir))
    print("BEST=" + os.path.abspath(checkpoint.best_model_path))
    """
)


def _job(tmp_path: Path, server, **environ: str) -> subprocess.Popen:
    """``tracelet run`` of the Lightning job above, tracking into the team server."""
    (tmp_path / "job.py").write_text(JOB.format(tests=TESTS))
    command = [sys.executable, "-m", "tracelet", "run", "--backend-url", server.url, "--project", "team"]
    env = {
        **os.environ,
        "TRACELET_STRICT": "0",
        "TRACELET_TRACK_CONSOLE": "1",
        "TRACELET_TRACK_ENV": "1",
        "PYTHONUNBUFFERED": "1",
        **environ,
    }
    return subprocess.Popen(
        [*command, "--", sys.executable, "job.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _printed(stdout: str, key: str) -> str:
    return next(line.split("=", 1)[1] for line in stdout.splitlines() if line.startswith(key + "="))


def _the_run(tmp_path: Path, server):
    (record,) = journal.find(tmp_path / "tracelet-runs")
    run_id = record.delivery["mlflow"]["run_id"]
    return record, MlflowClient(server.url).get_run(run_id)


def _download(server, run_id: str, path: str, tmp_path: Path) -> Path:
    return Path(MlflowClient(server.url).download_artifacts(run_id, path, str(tmp_path / "dl")))


def test_a_zero_code_lightning_job_lands_in_the_server_as_its_csvlogger_records_it(team_server, tmp_path):
    job = _job(tmp_path, team_server)
    stdout, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr[-3000:]
    record, run = _the_run(tmp_path, team_server)
    run_id = run.info.run_id

    series = mlflow_series(run_id, team_server.url)
    best_score = series.pop("checkpoint/best_score")  # tracelet's own; CSVLogger has no such column
    assert_same_series(series, csv_series(Path(_printed(stdout, "LOG_DIR")) / "metrics.csv"))
    assert best_score and run.info.status == "FINISHED" and record.status == "FINISHED"
    assert record.delivery["mlflow"]["complete"], record.delivery["mlflow"]
    assert {"lr": "0.05", "hidden": "4", "fail_at_step": "-1"}.items() <= run.data.params.items()
    assert run.data.tags["mlflow.runName"] and run.data.tags["tracelet.run_uid"] == record.run["run_uid"]
    assert (
        MlflowClient(team_server.url)
        .get_experiment(run.info.experiment_id)
        .artifact_location.startswith("mlflow-artifacts:")
    )

    # artifacts went through the server's proxy into its destination, and come back from it
    console = _download(team_server, run_id, "console.log", tmp_path).read_text()
    assert "hello from the training script" in console
    requirements = _download(team_server, run_id, "environment/requirements.txt", tmp_path).read_text()
    assert "lightning==" in requirements
    best = Path(_printed(stdout, "BEST"))
    uploaded = _download(team_server, run_id, f"checkpoints/{best.name}", tmp_path)
    assert uploaded.read_bytes() == best.read_bytes()
    assert list(team_server.artifacts.rglob(f"{run_id}/artifacts/checkpoints/{best.name}"))


@pytest.mark.parametrize("namespace", ["lightning.pytorch", "pytorch_lightning"])
def test_logger_false_sends_the_server_what_csvlogger_records(team_server, namespace, tmp_path):
    loggers = __import__(f"{namespace}.loggers", fromlist=["CSVLogger"])
    oracle = loggers.CSVLogger(save_dir=str(tmp_path / "csv"), name="oracle", version=0)
    run_tiny_job(namespace, logger=oracle)
    exp = tracelet.start_logging(
        project="team", exp_name=f"no-logger-{namespace}", backend_url=team_server.url
    )
    run_tiny_job(namespace, logger=False)
    report = tracelet.stop_logging()

    assert report.backends["mlflow"].complete, report.lines()
    run_id = exp.locations["mlflow"].run_id
    assert_same_series(
        mlflow_series(run_id, team_server.url), csv_series(Path(oracle.log_dir) / "metrics.csv")
    )


def test_an_exception_in_training_marks_the_server_run_failed(team_server):
    exp = tracelet.start_logging(project="team", exp_name="crash", backend_url=team_server.url)
    with pytest.raises(RuntimeError, match="boom in training_step"):
        run_tiny_job("lightning.pytorch", logger=False, fail_at_step=5)
    assert tracelet.stop_logging().status == "FAILED"
    run = MlflowClient(team_server.url).get_run(exp.locations["mlflow"].run_id)
    assert run.info.status == "FAILED" and "boom in training_step" in run.data.tags["tracelet.failure"]
    assert [s for s, _ in mlflow_series(run.info.run_id, team_server.url)["train/loss_step"]] == [2]


def test_sigterm_marks_the_server_run_killed(team_server, tmp_path):
    job = _job(tmp_path, team_server, HANG_AT_STEP="5")
    assert job.stdout is not None
    for line in job.stdout:  # the job reached step 5 and waits there
        if line.strip() == "READY":
            break
    job.send_signal(signal.SIGTERM)  # what a scheduler does: `tracelet run` passes it to the job
    _, stderr = job.communicate(timeout=120)
    assert job.returncode != 0
    record, run = _the_run(tmp_path, team_server)
    assert run.info.status == "KILLED" and record.status == "KILLED", stderr[-3000:]
    assert [s for s, _ in mlflow_series(run.info.run_id, team_server.url)["train/loss_step"]] == [2]
    assert (
        "hello from the training script"
        in _download(team_server, run.info.run_id, "console.log", tmp_path).read_text()
    )


def test_eight_jobs_at_once_against_the_server_all_land(team_server, tmp_path):
    outputs = sweep(tmp_path, 8, points=500, TRACELET_BACKEND_URL=team_server.url)
    assert outputs == ["complete"] * 8
    client = MlflowClient(team_server.url)
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    mine = sorted((r for r in runs if r.info.run_name.startswith("job")), key=lambda r: r.info.run_name)
    assert [r.info.run_name for r in mine][-8:] == [f"job{i}" for i in range(8)]
    for run in mine[-8:]:
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(500)) and run.info.status == "FINISHED"


class _Gateway:
    """A loopback TCP port forwarding to the team server, that can be down: the server as its
    clients see it through an outage."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None

    def up(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def down(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError), source, sink:
            while data := source.recv(65536):
                sink.sendall(data)


def test_a_run_that_missed_the_server_is_replayed_into_it_keeping_its_times(team_server, caplog):
    gateway = _Gateway(team_server.port)  # down: nothing listens there during the run
    exp = tracelet.start_logging(project="team", exp_name="outage", backend_url=gateway.url)
    for step in range(300):
        exp.log_metric("loss", 1.0 / (step + 1), iteration=step)
        if step % 100 == 0:
            time.sleep(0.5)
    report = tracelet.stop_logging(timeout=60)
    assert report.backends["mlflow"].state == "failed" and report.backends["journal"].complete
    advice = [r.getMessage() for r in caplog.records if "tracelet replay" in r.getMessage()]
    assert advice and all("--backend journal" not in a for a in advice)

    (record,) = journal.find("tracelet-runs")
    gateway.up()  # the server is back
    try:
        assert cli(["replay", record.path, "--backend", "mlflow"]) == 0
    finally:
        gateway.down()
    client = MlflowClient(team_server.url)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("team").experiment_id],
        filter_string=f"tags.`tracelet.run_uid` = '{record.run['run_uid']}'",
    )
    assert mlflow_series(run.info.run_id, team_server.url)["loss"] == [(s, 1.0 / (s + 1)) for s in range(300)]
    assert run.info.status == "FINISHED"
    assert run.info.start_time == int(record.run["started_at"] * 1000)
    assert run.info.end_time == int(record.run["ended_at"] * 1000)
    assert run.info.end_time - run.info.start_time < 30_000  # the run's duration, not the replay's time


def _written_directly_and_through_the_client(server, events: list, rest: bool) -> str:
    """A run of ``events`` written by the MLflow backend, its batches as tracelet's JSON
    requests (``rest``) or as MlflowClient's entities."""
    backend = MLflowBackend()
    run_info = RunInfo(
        uuid.uuid4().hex, "rest", "rest" if rest else "client", None, server.url, time.time(), {}
    )
    run_id = backend.open(run_info).run_id
    if not rest:
        backend._rest_send = None  # MlflowClient.log_batch, as before tracelet's JSON requests
    assert backend.write(events) == {}
    backend.close("FINISHED")
    assert bool(backend._rest_send) is rest
    return run_id


def test_json_batches_read_back_exactly_as_mlflows_client_writes_them(team_server):
    values = [math.nan, math.inf, -math.inf, 1e308, -0.0, 1 / 3, 7, 2**53 + 1]
    events = [Params({"lr": 0.1, "name": "naïve ünïcode", "nested": {"a": [1, 2]}}), Tags({"team": "ü"})]
    events += [Metric("v", value, step, 1_700_000_000.5 + step) for step, value in enumerate(values)]
    events += [Metric("step/big", 1.0, 2**40, 1_700_000_001.0), Metric("loss@val", 2.0, -1, 1_700_000_002.0)]
    events += [Metric("many", float(i), i, 1_700_000_003.0) for i in range(2_500)]  # several batches
    client = MlflowClient(team_server.url)
    runs = [
        client.get_run(_written_directly_and_through_the_client(team_server, events, rest))
        for rest in (True, False)
    ]
    histories = [
        {
            key: [
                (m.step, m.timestamp, repr(m.value)) for m in client.get_metric_history(run.info.run_id, key)
            ]
            for key in run.data.metrics
        }
        for run in runs
    ]
    assert histories[0] == histories[1] and len(histories[0]["many"]) == 2_500
    assert histories[0]["v"][1][2] == repr(sys.float_info.max) and histories[0]["v"][0][2] == "nan"
    assert (
        runs[0].data.params
        == runs[1].data.params
        == {"lr": "0.1", "name": "naïve ünïcode", "nested/a": "[1, 2]"}
    )
    assert runs[0].data.tags["team"] == runs[1].data.tags["team"] == "ü"


def test_an_entry_the_server_refuses_costs_only_itself_on_the_json_path(team_server, caplog):
    exp = tracelet.start_logging(project="team", exp_name="refusal", backend_url=team_server.url)
    assert exp.flush(60)
    run_id = exp.locations["mlflow"].run_id
    MlflowClient(team_server.url).log_param(run_id, "lr", "set by someone else")
    exp.log_params({"lr": 0.1})  # MLflow params are write-once: the server refuses this one
    for step in range(300):
        exp.log_metric("loss", 1.0 / (step + 1), iteration=step)
    stats = tracelet.stop_logging().backends["mlflow"]
    assert stats.refused == 1 and stats.failed == 0 and stats.sent >= 300
    assert [s for s, _ in mlflow_series(run_id, team_server.url)["loss"]] == list(range(300))
    assert MlflowClient(team_server.url).get_run(run_id).info.status == "FINISHED"
    assert sum("MLflow refused 'lr'" in r.getMessage() for r in caplog.records) == 1
