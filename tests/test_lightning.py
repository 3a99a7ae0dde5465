"""What tracelet sends from a real Lightning job equals what Lightning's own CSVLogger records."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import assert_same_series, csv_series, make_trainer, mlflow_run, mlflow_series, run_tiny_job

import tracelet

NAMESPACES = ["lightning.pytorch", "pytorch_lightning"]


def _csv_logger(namespace: str, tmp_path: Path):
    loggers = importlib.import_module(f"{namespace}.loggers")
    return loggers.CSVLogger(save_dir=str(tmp_path / "csv"), name="oracle", version=0)


def _oracle(namespace: str, tmp_path: Path) -> dict:
    """The same job without tracelet, recorded by Lightning's CSVLogger."""
    logger = _csv_logger(namespace, tmp_path)
    run_tiny_job(namespace, logger=logger)
    return csv_series(Path(logger.log_dir) / "metrics.csv")


def _run_id(exp) -> str:
    assert exp.flush(60)
    return exp.locations["mlflow"].run_id


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_logger_false_sends_what_csvlogger_records_for_the_same_job(namespace, tmp_path):
    expected = _oracle(namespace, tmp_path)
    exp = tracelet.start_logging(exp_name="no-logger", project="tiny")
    run_tiny_job(namespace, logger=False)
    run_id = _run_id(exp)
    tracelet.stop_logging()

    sent = mlflow_series(run_id)
    assert_same_series(sent, expected)
    assert "not_for_loggers" not in sent and "bar_only" not in sent
    assert {"train/loss_step", "train/loss_epoch", "val_loss", "test_loss", "epoch"} <= set(sent)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_with_a_user_logger_series_equal_that_loggers_csv_and_logger_is_untouched(namespace, tmp_path):
    logger = _csv_logger(namespace, tmp_path)
    exp = tracelet.start_logging(exp_name="with-logger", project="tiny")
    trainer = run_tiny_job(namespace, logger=logger)
    run_id = _run_id(exp)
    tracelet.stop_logging()

    assert trainer.loggers == [logger] and trainer.logger is logger
    assert_same_series(mlflow_series(run_id), csv_series(Path(logger.log_dir) / "metrics.csv"))


def test_trainer_built_before_start_logging_is_captured(tmp_path):
    expected = _oracle("lightning.pytorch", tmp_path)
    trainer = make_trainer("lightning.pytorch", logger=False)
    exp = tracelet.start_logging(project="tiny")
    run_tiny_job("lightning.pytorch", trainer=trainer)
    run_id = _run_id(exp)
    tracelet.stop_logging()
    assert_same_series(mlflow_series(run_id), expected)


def test_save_hyperparameters_become_params():
    exp = tracelet.start_logging(project="tiny")
    run_tiny_job("lightning.pytorch", logger=False, test=False, lr=0.02, hidden=5)
    run_id = _run_id(exp)
    tracelet.stop_logging()
    params = mlflow_run(run_id).data.params
    hparams = {k: v for k, v in params.items() if not k.startswith(("trainer/", "model/"))}
    assert hparams == {"lr": "0.02", "hidden": "5", "fail_at_step": "-1"}
    # the trainer's configuration and the model's size come along (Linear(3,5) + Linear(5,1): 26)
    assert params["trainer/max_epochs"] == "2" and params["trainer/accumulate_grad_batches"] == "1"
    assert params["trainer/strategy"] == "SingleDeviceStrategy" and params["trainer/num_devices"] == "1"
    assert params["model/class"] == "TinyModule"
    assert params["model/params_total"] == params["model/params_trainable"] == "26"


def test_exception_in_training_step_marks_run_failed_and_keeps_what_was_captured():
    exp = tracelet.start_logging(project="tiny")
    with pytest.raises(RuntimeError, match="boom in training_step"):
        run_tiny_job("lightning.pytorch", logger=False, fail_at_step=5)
    run_id = _run_id(exp)
    report = tracelet.stop_logging()
    assert report.status == "FAILED"
    run = mlflow_run(run_id)
    assert run.info.status == "FAILED"
    assert [s for s, _ in mlflow_series(run_id)["train/loss_step"]] == [2]  # steps 0..4 ran; logged at 3rd
    assert "boom in training_step" in run.data.tags["tracelet.failure"]


def test_keyboard_interrupt_in_fit_marks_run_killed():
    import lightning.pytorch as pl

    class Interrupt(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 4:
                raise KeyboardInterrupt

    exp = tracelet.start_logging(project="tiny")
    trainer = make_trainer(callbacks=[Interrupt()])
    with pytest.raises(SystemExit):  # Lightning turns Ctrl+C into a graceful exit(1)
        run_tiny_job(trainer=trainer, test=False)
    run_id = _run_id(exp)
    assert tracelet.stop_logging().status == "KILLED"
    assert mlflow_run(run_id).info.status == "KILLED"


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_stop_logging_puts_the_original_functions_back(namespace):
    pl = importlib.import_module(namespace)
    trainer_module = importlib.import_module(f"{namespace}.trainer.trainer")
    connector = importlib.import_module(f"{namespace}.trainer.connectors.logger_connector.logger_connector")
    fit_loop = importlib.import_module(f"{namespace}.loops.fit_loop")._FitLoop
    evaluation_loop = importlib.import_module(f"{namespace}.loops.evaluation_loop")._EvaluationLoop
    call = importlib.import_module(f"{namespace}.trainer.call")

    def current():
        return (
            *(
                vars(connector._LoggerConnector)[name]
                for name in ("log_metrics", "on_batch_start", "on_batch_end")
            ),
            *(vars(fit_loop)[name] for name in ("on_run_start", "on_advance_start", "on_advance_end")),
            vars(evaluation_loop)["_on_evaluation_end"],
            vars(trainer_module)["_log_hyperparams"],
            *(vars(pl.Trainer)[name] for name in ("fit", "validate", "test", "predict")),
        )

    originals = current()
    hook_dispatch = vars(call)["_call_callback_hooks"]
    for _ in range(3):  # and again: nothing accumulates across runs
        tracelet.start_logging(config={"writer": "thread"})
        assert all(p is not o for p, o in zip(current(), originals, strict=True))
        assert vars(call)["_call_callback_hooks"] is hook_dispatch  # 6 calls a step: not patched
        tracelet.stop_logging()
        assert all(r is o for r, o in zip(current(), originals, strict=True))


def test_patch_runs_original_once_and_hides_tracelet_errors_when_not_strict(monkeypatch, caplog):
    from lightning.pytorch.trainer.connectors.logger_connector import logger_connector

    from tracelet.instrumentation import lightning as instrumentation

    calls = []
    original = logger_connector._LoggerConnector.log_metrics
    monkeypatch.setattr(
        logger_connector._LoggerConnector,
        "log_metrics",
        lambda self, metrics, step=None: (calls.append(dict(metrics)), original(self, metrics, step))[1],
    )

    def broken(*args, **kwargs):
        raise ZeroDivisionError("tracelet bug")

    run_tiny_job("lightning.pytorch", logger=False, test=False)
    calls_without_tracelet = list(calls)
    calls.clear()

    monkeypatch.setattr(instrumentation, "_split_by_device", broken)
    monkeypatch.setenv("TRACELET_STRICT", "0")
    exp = tracelet.start_logging(project="tiny", config={"writer": "thread"})
    trainer = run_tiny_job("lightning.pytorch", logger=False, test=False)  # must not raise
    assert trainer.state.finished
    tracelet.stop_logging()
    assert len(calls) == len(calls_without_tracelet) > 0  # the original ran exactly once per call
    assert sum("tracelet failed in lightning log_metrics" in r.message for r in caplog.records) == 1
    assert exp.status == "FINISHED"


def test_patch_errors_are_raised_in_strict_mode(monkeypatch):
    from tracelet.instrumentation import lightning as instrumentation
    from tracelet.instrumentation.base import TraceletInternalError

    monkeypatch.setattr(instrumentation, "_split_by_device", lambda *a: 1 / 0)
    tracelet.start_logging(project="tiny", config={"writer": "thread"})
    with pytest.raises(TraceletInternalError):
        run_tiny_job("lightning.pytorch", logger=False, test=False)


def test_lightning_imported_after_start_logging_is_instrumented(tmp_path):
    script = tmp_path / "late_import.py"
    script.write_text(
        textwrap.dedent(
            """
        import sys
        import tracelet
        exp = tracelet.start_logging(project="late")
        assert "lightning" not in sys.modules
        sys.path.insert(0, sys.argv[1])
        from helpers import run_tiny_job, mlflow_series
        run_tiny_job("lightning.pytorch", logger=False)
        assert exp.flush(60)
        series = mlflow_series(exp.locations["mlflow"].run_id)
        tracelet.stop_logging()
        print(sorted(series))
        """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    assert "'train/loss_step'" in out.stdout and "'val_loss'" in out.stdout


def test_device_values_are_read_off_the_training_thread_and_arrive_intact(monkeypatch, tmp_path):
    """The deferred path (used for CUDA tensors), exercised on CPU: the values are read by the
    bus's sender thread, which here waits on a gate that opens only after training has ended."""
    import threading

    from tracelet.instrumentation import lightning as instrumentation

    expected = _oracle("lightning.pytorch", tmp_path)
    gate = threading.Event()
    reads = []

    def gated_copy(stacked):
        values = stacked.tolist()

        def wait_and_read():
            gate.wait()
            reads.append(threading.current_thread().name)
            return values

        return wait_and_read

    monkeypatch.setattr(instrumentation, "_CPU_TENSORS_AS_DEVICE", True)
    monkeypatch.setattr(instrumentation, "_to_host_later", gated_copy)
    exp = tracelet.start_logging(project="tiny")
    run_tiny_job("lightning.pytorch", logger=False)  # would hang here if training waited on values
    assert reads == []
    gate.set()
    run_id = _run_id(exp)
    tracelet.stop_logging()
    assert reads and set(reads) == {"tracelet-sender"}
    assert_same_series(mlflow_series(run_id), expected)


def test_cpu_values_are_read_at_capture_checked_on_the_sender_thread_and_arrive_intact(monkeypatch, tmp_path):
    """The training thread reads Lightning's CPU tensors when it captures them, so the bus's
    buffer holds numbers, never a tensor (~600 bytes each, against 24 for its number: the
    buffer's memory would not be bounded by ``queue_size`` times a small event); the values are
    checked on the sender thread."""
    import threading

    import torch

    from tracelet.sink import Sink

    logged = {"train/loss_step", "train/loss_epoch", "val_loss", "test_loss"}
    expected = _oracle("lightning.pytorch", tmp_path)
    checkers: dict[str, set[str]] = {}
    buffered: list[type] = []
    read_metrics, emit_host = Sink.read_metrics, Sink.host_metrics

    def recording(self, names, values, step, timestamp):
        for name in logged.intersection(names):
            checkers.setdefault(name, set()).add(threading.current_thread().name)
        return read_metrics(self, names, values, step, timestamp)

    def recording_emits(self, names, values, step, timestamp):
        buffered.extend(type(value) for name, value in zip(names, values, strict=True) if name in logged)
        return emit_host(self, names, values, step, timestamp)

    monkeypatch.setattr(Sink, "read_metrics", recording)
    monkeypatch.setattr(Sink, "host_metrics", recording_emits)
    exp = tracelet.start_logging(project="tiny")
    run_tiny_job("lightning.pytorch", logger=False)
    run_id = _run_id(exp)
    tracelet.stop_logging()
    assert set(checkers) == logged
    assert set().union(*checkers.values()) == {"tracelet-sender"}
    assert buffered and torch.Tensor not in buffered and set(buffered) <= {float, int}
    assert_same_series(mlflow_series(run_id), expected)
