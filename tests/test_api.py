"""The public API and the run lifecycle: start/stop, summaries, exits, ranks, import cost."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap

import pytest
from fake_backends import recorded
from helpers import mlflow_run, mlflow_series

import tracelet


def _script(tmp_path, body: str) -> subprocess.CompletedProcess:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )


def _only_run_id(tmp_path) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    return runs[0].info.run_id


def test_public_api_is_tiny():
    assert sorted(tracelet.__all__) == sorted(
        [
            "ConfigError",
            "Experiment",
            "RunReport",
            "__version__",
            "get_active_experiment",
            "start_logging",
            "stop_logging",
        ]
    )


def test_import_tracelet_imports_no_framework_or_backend_sdk():
    code = (
        "import sys, tracelet; print(sorted(m for m in ('torch', 'lightning', 'pytorch_lightning', "
        "'mlflow', 'wandb', 'clearml', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_start_returns_the_active_experiment_and_stop_is_idempotent(caplog):
    exp = tracelet.start_logging(exp_name="one", project="api")
    assert tracelet.get_active_experiment() is exp and exp.is_recording
    exp.log_metric("loss", 1.0, iteration=1)
    report = tracelet.stop_logging()
    assert report.status == "FINISHED" and report.done
    assert tracelet.get_active_experiment() is None and not exp.is_recording
    assert tracelet.stop_logging() is None
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mlflow: ")]
    assert len(summary) == 1
    assert summary[0].startswith("mlflow: complete, 1 events sent, peak queue ")
    assert "mlflow ui --backend-store-uri sqlite:///" in summary[0]


def test_starting_twice_ends_the_first_run_cleanly_with_a_warning(caplog):
    first = tracelet.start_logging(exp_name="first")
    first.log_metric("a", 1.0)
    second = tracelet.start_logging(exp_name="second")
    messages = [r.getMessage() for r in caplog.records]
    warned = next(i for i, m in enumerate(messages) if "run 'first' is still active; it is ended now" in m)
    assert messages[warned + 1].startswith("mlflow: complete, 1 events sent")  # the first run's summary
    assert not first.is_recording and first.status == "FINISHED"
    second.log_metric("b", 2.0)
    report = tracelet.stop_logging()
    first_id = first.stats()["mlflow"].location.run_id
    assert mlflow_run(first_id).info.status == "FINISHED"
    assert mlflow_series(first_id) == {"a": [(0, 1.0)]}
    assert mlflow_series(report.backends["mlflow"].location.run_id) == {"b": [(0, 2.0)]}


def test_bad_manual_values_are_dropped_counted_and_warned_once_never_raised(caplog):
    exp = tracelet.start_logging(backend="fake_backends:Recording")
    for _ in range(3):
        exp.log_metric("acc", "high")
        exp.log_metric("acc", [1, 2])
        exp.log_metric("loss", 1.0, iteration=1.5)
    exp.log_metric("ok", 0.5, iteration=2.0)
    exp.log_artifact("does-not-exist.bin")
    report = tracelet.stop_logging()
    assert report.backends["Recording"].reasons == {
        "invalid metric: not a number": 6,
        "invalid metric: step not a whole number": 3,
        "artifact not found": 1,
    }
    assert [line for line in recorded() if line[0] == "metric"] == [["metric", "ok", 0.5, 2]]
    # one warning per cause, naming the first metric that had it
    assert caplog.text.count("metric 'acc': not a number") == 1
    assert caplog.text.count("metric 'loss': step not a whole number") == 1
    assert caplog.text.count("does-not-exist.bin") == 1


def test_tensor_and_numpy_values_are_accepted():
    import numpy as np
    import torch

    exp = tracelet.start_logging(backend="fake_backends:Recording")
    exp.log_metric("t", torch.tensor(0.25), iteration=torch.tensor(3))
    exp.log_metric("bf16", torch.tensor([1.5], dtype=torch.bfloat16))
    exp.log_metric("np", np.float32(0.5), iteration=np.int64(4))
    exp.log_metric("flag", True)
    tracelet.stop_logging()
    assert [line[1:] for line in recorded() if line[0] == "metric"] == [
        ["t", 0.25, 3],
        ["bf16", 1.5, None],
        ["np", 0.5, 4],
        ["flag", 1.0, None],
    ]


def test_a_script_that_forgets_stop_logging_is_flushed_and_finished_at_exit(tmp_path):
    out = _script(
        tmp_path,
        """
        import tracelet
        exp = tracelet.start_logging(project="forgetful")
        for i in range(3000):
            exp.log_metric("loss", 1.0 / (i + 1), iteration=i)
    """,
    )
    assert out.returncode == 0, out.stderr
    run_id = _only_run_id(tmp_path)
    assert mlflow_run(run_id, f"sqlite:///{tmp_path / 'mlflow.db'}").info.status == "FINISHED"
    assert len(mlflow_series(run_id, f"sqlite:///{tmp_path / 'mlflow.db'}")["loss"]) == 3000


def test_an_uncaught_exception_marks_the_run_failed_and_still_exits_with_the_error(tmp_path):
    out = _script(
        tmp_path,
        """
        import tracelet
        exp = tracelet.start_logging(project="crash")
        exp.log_metric("loss", 1.0)
        raise ValueError("user bug")
    """,
    )
    assert out.returncode == 1 and "ValueError: user bug" in out.stderr
    run = mlflow_run(_only_run_id(tmp_path), f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FAILED"
    assert "user bug" in run.data.tags["tracelet.failure"]


def test_a_program_that_exits_non_zero_fails_its_run(tmp_path):
    out = _script(
        tmp_path,
        """
        import sys, tracelet
        exp = tracelet.start_logging(project="exit")
        exp.log_metric("loss", 1.0)
        sys.exit(2)
    """,
    )
    assert out.returncode == 2, out.stderr
    run = mlflow_run(_only_run_id(tmp_path), f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FAILED"
    assert "SystemExit: 2" in run.data.tags["tracelet.failure"]


def test_stop_logging_restores_every_global_the_run_changed(capsys):
    import signal

    def handler(signum, frame):
        pass

    previous_term = signal.signal(signal.SIGTERM, handler)
    try:
        before = (sys.excepthook, sys.exit, signal.getsignal(signal.SIGTERM), sys.stdout, sys.stderr)
        tracelet.start_logging(backend="fake_backends:Recording", config={"track_console": True})
        during = (sys.excepthook, sys.exit, signal.getsignal(signal.SIGTERM), sys.stdout, sys.stderr)
        assert all(now is not then for now, then in zip(during, before, strict=True))
        tracelet.stop_logging()
        after = (sys.excepthook, sys.exit, signal.getsignal(signal.SIGTERM), sys.stdout, sys.stderr)
        assert all(now is then for now, then in zip(after, before, strict=True))
    finally:
        signal.signal(signal.SIGTERM, previous_term)


def test_sigterm_marks_the_run_killed_and_still_terminates(tmp_path):
    out = _script(
        tmp_path,
        """
        import os, signal, tracelet
        exp = tracelet.start_logging(project="term")
        exp.log_metric("loss", 1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        print("not reached")
    """,
    )
    assert out.returncode == -15 and "not reached" not in out.stdout
    run = mlflow_run(_only_run_id(tmp_path), f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "KILLED"
    assert mlflow_series(run.info.run_id, f"sqlite:///{tmp_path / 'mlflow.db'}") == {"loss": [(0, 1.0)]}


def test_a_training_process_killed_hard_leaves_a_killed_run_with_what_was_sent(tmp_path):
    out = _script(
        tmp_path,
        """
        import os, signal, tracelet
        exp = tracelet.start_logging(project="sigkill")
        for i in range(500):
            exp.log_metric("loss", i, iteration=i)
        assert exp.flush(60)
        os.kill(os.getpid(), signal.SIGKILL)
    """,
    )
    assert out.returncode == -9
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    import time

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the writer closes the run on its own after EOF
        run = client.get_run(_only_run_id(tmp_path))
        if run.info.status != "RUNNING":
            break
        time.sleep(0.2)
    assert run.info.status == "KILLED"
    assert len(mlflow_series(run.info.run_id, uri)["loss"]) == 500


@pytest.mark.fresh_store  # checks what is (not) created in the working directory
def test_non_zero_ranks_record_nothing_and_start_no_writer(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    exp = tracelet.start_logging()
    assert not exp.is_recording
    exp.log_metric("loss", 1.0)
    assert exp.flush(1)
    report = tracelet.stop_logging()
    assert report.backends == {} and not (tmp_path / "mlflow.db").exists()


def test_writer_thread_mode_delivers_the_same(tmp_path):
    exp = tracelet.start_logging(config={"writer": "thread"})
    exp.log_metric("loss", 3.0, iteration=7)
    report = tracelet.stop_logging()
    assert mlflow_series(report.backends["mlflow"].location.run_id) == {"loss": [(7, 3.0)]}


def test_repeated_runs_leave_no_threads_writer_processes_or_patches_behind():
    import threading
    import time

    import psutil

    earlier = set(threading.enumerate())  # e.g. a worker another test's backend hangs forever in

    def tracelet_threads():
        return [t.name for t in threading.enumerate() if t.name.startswith("tracelet") and t not in earlier]

    def writers():  # other children (W&B's service, when a test ran W&B in this process) don't count
        found = []
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if child.status() == psutil.STATUS_ZOMBIE or "tracelet.writer" in child.cmdline():
                    found.append(child)
        return found

    for _ in range(5):
        exp = tracelet.start_logging(backend="fake_backends:Recording")
        exp.log_metric("loss", 1.0)
        tracelet.stop_logging()
    deadline = time.monotonic() + 20
    while (tracelet_threads() or writers()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tracelet_threads() == []
    assert writers() == []  # writers exited and were reaped: no zombies
