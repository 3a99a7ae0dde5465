"""A Lightning release that renames, moves or changes what tracelet patches costs only that
capability: named once with the Lightning version, every other patch point still applied, and
a capture that fails while training counted as lost points, never "0 dropped"."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import lightning
import pytest
from helpers import mlflow_run, mlflow_series, remove_symbol, run_tiny_job

import tracelet
from tracelet import journal

CONNECTOR = "trainer.connectors.logger_connector.logger_connector"
# (module under the namespace, owner in it or None for the module itself, attribute, capability)
PATCH_POINTS = [
    (CONNECTOR, "_LoggerConnector", "log_metrics", "Lightning metrics (self.log)"),
    ("trainer.trainer", None, "_log_hyperparams", "hyperparameters (save_hyperparameters)"),
    (
        "trainer.trainer",
        "Trainer",
        "fit",
        "run status when Trainer.fit fails and the best checkpoint at its end",
    ),
    ("trainer.trainer", "Trainer", "validate", "run status when Trainer.validate fails"),
    ("trainer.trainer", "Trainer", "test", "run status when Trainer.test fails"),
    ("trainer.trainer", "Trainer", "predict", "run status when Trainer.predict fails"),
    (CONNECTOR, "_LoggerConnector", "on_batch_start", "learning rates per step and perf/ step timings"),
    (CONNECTOR, "_LoggerConnector", "on_batch_end", "learning rates per step and perf/ step timings"),
    ("loops.fit_loop", "_FitLoop", "on_run_start", "trainer configuration params"),
    ("loops.fit_loop", "_FitLoop", "on_advance_start", "learning rates per epoch"),
    ("loops.fit_loop", "_FitLoop", "on_advance_end", "epoch times and checkpoint tags"),
    ("loops.evaluation_loop", "_EvaluationLoop", "_on_evaluation_end", "checkpoint tags after validation"),
]


def _owner(module: str, owner: str | None, namespace: str = "lightning.pytorch"):
    found = importlib.import_module(f"{namespace}.{module}")
    return getattr(found, owner) if owner else found


def _current(point):
    module, owner, attribute, _ = point
    return vars(_owner(module, owner)).get(attribute)


def _unpatched(originals: dict) -> list:
    return [point[1:3] for point, original in originals.items() if _current(point) is original]


def _drift_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "tracelet cannot capture" in r.getMessage()]


@pytest.mark.parametrize("point", PATCH_POINTS, ids=[f"{p[1] or 'module'}.{p[2]}" for p in PATCH_POINTS])
def test_a_missing_patch_point_costs_only_its_capability(point, monkeypatch, caplog):
    module, owner_name, attribute, capability = point
    remove_symbol(monkeypatch, _owner(module, owner_name), attribute)  # as if this Lightning had none
    originals = {p: _current(p) for p in PATCH_POINTS}
    tracelet.start_logging(project="drift")
    try:
        assert _unpatched(originals) == [point[1:3]]  # every other patch point applied
        with pytest.raises(RuntimeError, match="boom"):
            run_tiny_job("lightning.pytorch", logger=False, test=False, fail_at_step=5)
    finally:
        report = tracelet.stop_logging()
    warnings = _drift_warnings(caplog)
    assert (
        len(warnings) == 1
        and capability in warnings[0]
        and f"lightning.pytorch {lightning.__version__}" in warnings[0]
    )
    run_id = report.backends["mlflow"].location.run_id
    if attribute == "log_metrics":
        assert "train/loss_step" not in mlflow_series(run_id)
    else:  # the metrics still arrive
        assert [s for s, _ in mlflow_series(run_id)["train/loss_step"]] == [2]
    expected_status = "FINISHED" if attribute == "fit" else "FAILED"
    assert report.status == mlflow_run(run_id).info.status == expected_status
    params = mlflow_run(run_id).data.params
    assert ("lr" in params) is (attribute != "_log_hyperparams")


def test_a_method_moved_up_into_a_base_class_is_still_patched_and_restored(caplog):
    """The refactor that once switched off every later patch: ``_FitLoop.on_advance_start``
    moved into a base class between ``_FitLoop`` and ``_Loop``."""
    from lightning.pytorch.loops import fit_loop

    fit = fit_loop._FitLoop
    original_bases, moved = fit.__bases__, vars(fit)["on_advance_start"]
    fit.__bases__ = (type("_MovedUp", original_bases, {"on_advance_start": moved}),)
    delattr(fit, "on_advance_start")
    try:
        tracelet.start_logging(project="drift", config={"track_optimizer": True})
        assert "on_advance_start" in vars(fit)  # patched on _FitLoop itself, the base left alone
        assert vars(fit.__bases__[0])["on_advance_start"] is moved
        with pytest.raises(RuntimeError, match="boom"):
            run_tiny_job("lightning.pytorch", logger=False, test=False, fail_at_step=5)
        report = tracelet.stop_logging()
        assert "on_advance_start" not in vars(fit)  # inherited again, as before tracelet
        assert report.status == "FAILED" and _drift_warnings(caplog) == []
        series = mlflow_series(report.backends["mlflow"].location.run_id)
        assert [s for s, _ in series["train/lr"]] == [0]  # read at the epoch start
    finally:
        fit.__bases__ = original_bases
        fit.on_advance_start = moved


def test_every_patch_point_exists_in_the_installed_lightning(caplog):
    originals = {p: _current(p) for p in PATCH_POINTS}
    tracelet.start_logging(project="drift")
    try:
        assert _unpatched(originals) == []
    finally:
        tracelet.stop_logging()
    assert _drift_warnings(caplog) == []


def test_a_capture_failing_at_run_time_counts_its_points_as_lost(monkeypatch, caplog):
    """An attribute read at every capture renamed by a release: the points of every failed
    capture are counted, in the report, the summary line and ``delivery.json``."""
    from lightning.pytorch.trainer.connectors.logger_connector import logger_connector

    from tracelet.instrumentation import lightning as instrumentation

    handed: list[int] = []
    original = logger_connector._LoggerConnector.log_metrics
    monkeypatch.setattr(
        logger_connector._LoggerConnector,
        "log_metrics",
        lambda self, metrics, step=None: (handed.append(len(metrics)), original(self, metrics, step))[1],
    )

    def renamed(*args):
        raise AttributeError("'_TrainingEpochLoop' object has no attribute '_batches_that_stepped'")

    monkeypatch.setattr(instrumentation, "_split_by_device", renamed)
    monkeypatch.setenv("TRACELET_STRICT", "0")
    tracelet.start_logging(project="drift")
    run_tiny_job("lightning.pytorch", logger=False)
    report = tracelet.stop_logging()
    stats = report.backends["mlflow"]
    reason = "capture failed: lightning log_metrics"
    assert sum(handed) > 0 and stats.reasons[reason] == stats.dropped == sum(handed)
    assert not stats.complete
    line = next(line for line in report.lines() if line.startswith("mlflow:"))
    assert line.startswith("mlflow: INCOMPLETE") and f"{reason}: {sum(handed)}" in line
    record = journal.load(Path(report.backends["journal"].location.uri))
    assert record.delivery["mlflow"]["dropped"] == sum(handed) and not record.delivery["mlflow"]["complete"]
    assert json.loads(Path(record.path, "delivery.json").read_text())["mlflow"]["reasons"][reason] == sum(
        handed
    )
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and reason in r.getMessage()]
    assert len(warned) == 1


def test_an_attribute_read_renamed_by_a_release_costs_only_that_capture(monkeypatch, caplog):
    """``module._log_hyperparams`` (read only by tracelet when there is no logger) gone: the
    hyperparameters are lost and counted, the metrics and the run's status are not."""
    from helpers import tiny_module_class

    def renamed(self):
        raise AttributeError("'TinyModule' object has no attribute '_log_hyperparams'")

    module_class = tiny_module_class()
    monkeypatch.setattr(
        module_class, "_log_hyperparams", property(renamed, lambda self, value: None), raising=False
    )
    monkeypatch.setenv("TRACELET_STRICT", "0")
    tracelet.start_logging(project="drift")
    import lightning.pytorch as pl
    from helpers import make_trainer, tiny_loaders

    pl.seed_everything(7, verbose=False)
    train, val = tiny_loaders()
    make_trainer().fit(module_class(), train, val)
    report = tracelet.stop_logging()
    stats = report.backends["mlflow"]
    assert stats.reasons == {"capture failed: lightning hyperparameters": 1} and not stats.complete
    run = mlflow_run(stats.location.run_id)
    assert "lr" not in run.data.params and run.info.status == "FINISHED"
    assert [s for s, _ in mlflow_series(stats.location.run_id)["train/loss_step"]][:2] == [2, 5]
    assert (
        sum(
            "lightning hyperparameters" in r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.WARNING
        )
        == 1
    )
