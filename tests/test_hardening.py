"""Restart safety, concurrency, fork and self-telemetry: a tracker that never leaks and never
loses or duplicates a point."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import Counter

import lightning.pytorch as pl
import pytest
import torch
from fake_backends import recorded
from helpers import (
    assert_same_series,
    csv_series,
    make_trainer,
    mlflow_run,
    mlflow_series,
    tiny_loaders,
    tiny_module_class,
)

import tracelet


def _open_fds() -> set[tuple[str, str]]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:  # the fd listdir itself used, closed by now
            continue
    return found


def _patch_state() -> dict:
    import argparse

    from lightning.pytorch.trainer import call, trainer
    from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector
    from torch.utils.tensorboard import SummaryWriter

    return {
        "log_metrics": vars(_LoggerConnector)["log_metrics"],
        "hooks": vars(call)["_call_callback_hooks"],
        "hyperparams": vars(trainer)["_log_hyperparams"],
        "fit": vars(trainer.Trainer)["fit"],
        "add_scalar": vars(SummaryWriter)["add_scalar"],
        "add_hparams": vars(SummaryWriter)["add_hparams"],
        "parse_known_args": vars(argparse.ArgumentParser)["parse_known_args"],
        "excepthook": sys.excepthook,
        "sigterm": signal.getsignal(signal.SIGTERM),
        "stdout": sys.stdout,
        "stderr": sys.stderr,
    }


@pytest.mark.timeout(600)
def test_start_and_stop_100_times_leaks_no_thread_file_or_patch(monkeypatch):
    for name in ("TRACK_ENV", "TRACK_CONSOLE", "TRACK_SYSTEM"):
        monkeypatch.setenv(f"TRACELET_{name}", "1")
    # one full cycle first: imports, post-import hooks and logging handlers that live for the process
    tracelet.start_logging(backend="fake_backends:Recording", config={"metrics_interval": 1})
    tracelet.stop_logging()
    threads, fds, patches = set(threading.enumerate()), _open_fds(), _patch_state()
    for i in range(100):
        exp = tracelet.start_logging(backend="fake_backends:Recording", config={"metrics_interval": 1})
        exp.log_metric("loss", float(i), iteration=i)
        assert (
            sys.stdout is not patches["stdout"]
            and vars(__import__("lightning.pytorch.trainer.trainer", fromlist=["Trainer"]).Trainer)["fit"]
            is not patches["fit"]
        )
        report = tracelet.stop_logging()
        assert report.done and report.backends["Recording"].dropped == 0
    # nothing the 100 runs started may survive them (threads of earlier tests may end meanwhile)
    deadline = time.monotonic() + 15  # the last writer process may still be exiting
    while (set(threading.enumerate()) - threads or _open_fds() - fds) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [t.name for t in set(threading.enumerate()) - threads] == []
    assert _open_fds() - fds == set()
    assert _patch_state() == patches
    assert [line[3] for line in recorded() if line[:2] == ["metric", "loss"]] == list(range(100))


def test_eight_threads_logging_at_once_deliver_every_point_exactly_once():
    exp = tracelet.start_logging(backend="fake_backends:Recording")

    def log_from(thread: int) -> None:
        for i in range(5_000):
            exp.log_metric(f"thread{thread}", float(i), iteration=i)

    threads = [threading.Thread(target=log_from, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = tracelet.stop_logging()
    assert report.backends["Recording"].sent == 40_000 and report.backends["journal"].sent == 40_000
    points = Counter((line[1], line[3]) for line in recorded() if line[0] == "metric")
    assert len(points) == 40_000 and set(points.values()) == {1}
    for t in range(8):  # and each thread's points in the order it logged them
        steps = [line[3] for line in recorded() if line[0] == "metric" and line[1] == f"thread{t}"]
        assert steps == list(range(5_000))


def test_forked_dataloader_workers_neither_deadlock_nor_duplicate(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    exp = tracelet.start_logging(project="fork")
    pl.seed_everything(7, verbose=False)
    train, val = tiny_loaders()
    forked = torch.utils.data.DataLoader(
        train.dataset, batch_size=8, num_workers=2, multiprocessing_context="fork", persistent_workers=False
    )
    trainer = make_trainer(logger=CSVLogger(str(tmp_path / "csv"), name="job"))
    trainer.fit(tiny_module_class()(), forked, val)
    report = tracelet.stop_logging(timeout=60)
    assert report.done and report.backends["mlflow"].dropped == 0
    series = mlflow_series(exp.locations["mlflow"].run_id)
    assert_same_series(series, csv_series(tmp_path / "csv" / "job" / "version_0" / "metrics.csv"))


def test_a_forked_child_lets_go_of_the_pipe_and_its_bus_closes_none_of_the_childs_files(tmp_path):
    import os

    exp = tracelet.start_logging(backend="fake_backends:Recording")
    connections = [exp._bus._transport._events, exp._bus._transport._replies]
    pid = os.fork()
    if pid == 0:  # the child: it reports through its exit status only
        status = 0
        try:
            ends = {c.fileno() for c in connections}
            if any(os.readlink(f"/proc/self/fd/{fd}") != "/dev/null" for fd in ends):
                status = 1  # it still holds the writer's pipe
            mine = []  # files the child opens, enough to take any number that is free
            while len(mine) < 64 and not ends & {f.fileno() for f in mine}:
                mine.append(open(tmp_path / f"child{len(mine)}", "w"))  # noqa: SIM115
            for connection in connections:  # what collecting the bus does
                connection.close()
            for handle in mine:
                handle.write("still open")
                handle.flush()
        except Exception:
            status = 2  # a file of its own was closed under it
        os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    exp.log_metric("after", 1.0, iteration=0)
    report = tracelet.stop_logging()
    assert report.done and report.backends["Recording"].dropped == 0


def test_the_stop_summary_reports_tracelets_own_cost(monkeypatch):
    monkeypatch.setenv("TRACELET_SELF_TELEMETRY", "1")
    exp = tracelet.start_logging(project="telemetry")
    pl.seed_everything(7, verbose=False)
    train, val = tiny_loaders()
    make_trainer().fit(tiny_module_class()(), train, val)
    report = tracelet.stop_logging()
    assert report.hook_calls > 16 and 0 < report.hook_seconds < 5
    (cost,) = [line for line in report.lines() if line.startswith("cost on the training thread")]
    assert f"in {report.hook_calls} captures" in cost
    assert all("peak queue" in line for line in report.lines() if line.startswith(("mlflow", "journal")))
    assert report.backends["mlflow"].high_water > 0
    series = mlflow_series(exp.locations["mlflow"].run_id)
    assert series["tracelet/hook_calls"] == [(0, float(report.hook_calls))]
    assert series["tracelet/hook_time_s"][0][1] == pytest.approx(report.hook_seconds)


def test_a_backend_that_raises_on_close_is_reported_and_costs_the_others_nothing(caplog):
    exp = tracelet.start_logging(backend=["fake_backends:FailingClose", "fake_backends:Recording"])
    for i in range(100):
        exp.log_metric("loss", float(i), iteration=i)
    report = tracelet.stop_logging()
    assert report.done and report.status == "FINISHED"
    failing = report.backends["FailingClose"]
    assert failing.sent == 100 and "close failed: RuntimeError: server said 500 on close" in failing.error
    # a backend that did not confirm it holds the run (ClearML and W&B write on close) is not complete
    assert not failing.complete and report.backends["Recording"].complete
    (line,) = [line for line in report.lines() if line.startswith("FailingClose")]
    assert "INCOMPLETE" in line and "close failed: RuntimeError" in line
    assert report.backends["Recording"].sent == 100
    assert sum("failed to close" in r.getMessage() for r in caplog.records) == 1


def test_ten_thousand_distinct_metric_names_all_arrive():
    exp = tracelet.start_logging(project="names")
    for i in range(10_000):
        exp.log_metric(f"layer_{i:05d}/grad_norm", i / 10, iteration=0)
    report = tracelet.stop_logging(timeout=120)
    assert report.backends["mlflow"].sent == report.backends["journal"].sent == 10_000
    # the run's latest values in one read (a history per key would take MlflowClient ~20 s here)
    run = mlflow_run(exp.locations["mlflow"].run_id)
    assert run.data.metrics == {f"layer_{i:05d}/grad_norm": i / 10 for i in range(10_000)}
    assert mlflow_series(run.info.run_id, keys=["layer_09999/grad_norm"]) == {
        "layer_09999/grad_norm": [(0, 999.9)]
    }


SIGINT_FIT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import lightning.pytorch as pl
from helpers import make_trainer, tiny_loaders, tiny_module_class
import tracelet

seen = []


def previous(signum, frame):  # the program's own handler, installed before tracelet
    seen.append(signum)
    signal.default_int_handler(signum, frame)


signal.signal(signal.SIGINT, previous)


class InterruptAt(pl.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 5:
            os.kill(os.getpid(), signal.SIGINT)


tracelet.start_logging(project="sigint")
train, val = tiny_loaders()
trainer = make_trainer(log_every_n_steps=1, callbacks=[InterruptAt()], max_epochs=5)
try:
    trainer.fit(tiny_module_class()(), train, val)
finally:
    print("previous handler called:", seen == [signal.SIGINT])
"""


def test_sigint_mid_fit_marks_the_run_killed_and_the_previous_handler_still_runs(tmp_path):
    import subprocess

    from tracelet import journal

    (tmp_path / "job.py").write_text(SIGINT_FIT.format(tests=os.path.dirname(__file__)))
    out = subprocess.run(
        [sys.executable, "job.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert "previous handler called: True" in out.stdout, out.stderr[-3000:]
    (record,) = journal.find(tmp_path / "tracelet-runs")
    assert record.status == "KILLED"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = record.delivery["mlflow"]["run_id"]
    assert mlflow_run(run_id, uri).info.status == "KILLED"
    # the interrupt came in the hook of the 5th batch, before Lightning logged it (step 4)
    assert [s for s, _ in mlflow_series(run_id, uri)["train/loss_step"]] == [0, 1, 2, 3]


PLANTED = """
import pathlib
pathlib.Path({marker!r}).write_text(__name__)
class Backend:
    def open(self, run): raise RuntimeError("planted code ran")
"""


def _plant(directory, marker) -> None:
    """Files that would run if tracelet imported code from ``directory``: SDK look-alikes, a
    sitecustomize, and a distribution registering a backend entry point."""
    directory.mkdir(parents=True, exist_ok=True)
    for module in ("mlflow", "wandb", "planted_plugin", "sitecustomize"):
        (directory / f"{module}.py").write_text(PLANTED.format(marker=str(marker)))
    info = directory / "planted_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: planted-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tracelet.backends]\nplanted = planted_plugin:Backend\n")


@pytest.mark.parametrize("script_in_cwd", [True, False])
def test_code_lying_in_the_working_home_or_script_directory_is_never_run(tmp_path, script_in_cwd, store_at):
    import json
    import subprocess

    work, home = tmp_path / "work", tmp_path / "home"
    scripts = work if script_in_cwd else tmp_path / "scripts"
    marker = tmp_path / "planted-code-ran"
    for directory in {work, home, scripts}:
        _plant(directory, marker)
    store_at(work / "mlflow.db")
    script = scripts / "train.py"
    script.write_text(
        "import json, tracelet\n"
        "from tracelet.config import ConfigError\n"
        "refused = {}\n"
        "for name in ('planted', 'planted_plugin:Backend'):\n"
        "    try:\n"
        "        tracelet.start_logging(backend=name)\n"
        "    except ConfigError as err:\n"
        "        refused[name] = str(err)\n"
        "exp = tracelet.start_logging(backend='mlflow')\n"
        "exp.log_metric('loss', 0.5, iteration=1)\n"
        "report = tracelet.stop_logging()\n"
        "print(json.dumps({'refused': refused, 'sent': report.backends['mlflow'].sent,\n"
        "                  'run_id': report.backends['mlflow'].location.run_id}))\n"
    )
    env = {**os.environ, "HOME": str(home)}
    out = subprocess.run(
        [sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert not marker.exists(), f"planted code ran as {marker.read_text()!r}"
    assert "unknown backend 'planted'" in result["refused"]["planted"]
    assert "is not installed" in result["refused"]["planted_plugin:Backend"]
    assert result["sent"] == 1  # the real MLflow, not the look-alike beside the script
    assert mlflow_series(result["run_id"], f"sqlite:///{work / 'mlflow.db'}") == {"loss": [(1, 0.5)]}


def test_a_backend_hanging_forever_leaves_the_programs_exit_code_and_time_alone(tmp_path):
    import subprocess

    tests_dir = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, tracelet\n"
        "exp = tracelet.start_logging(backend=['fake_backends:Hanging', 'fake_backends:Recording'],\n"
        "                             config={'stop_timeout': 2})\n"
        "for i in range(100):\n"
        "    exp.log_metric('loss', 1.0 / (i + 1), iteration=i)\n"
        "sys.exit(3)  # no stop_logging: the exit handler ends the run\n"
    )
    env = {**os.environ, "PYTHONPATH": tests_dir}
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    elapsed = time.monotonic() - started
    assert out.returncode == 3, out.stderr[-2000:]
    assert elapsed < 20  # the 2 s stop deadline, not forever
    hanging = next(line for line in out.stderr.splitlines() if "Hanging:" in line)
    assert "did not finish in time" in hanging
    recording = next(line for line in out.stderr.splitlines() if "Recording:" in line)
    assert "101 events sent" in recording  # 100 points and the tag that says why the run FAILED
    rows = [json.loads(line) for line in (tmp_path / "Recording.jsonl").read_text().splitlines()]
    assert rows[-1] == ["close", "FAILED"]  # sys.exit(3): the program failed
