"""Beyond self.log: optimizer state under schedulers, checkpoints, early stopping, perf/ timings and
TensorBoard scalars — read back from a real MLflow store."""

from __future__ import annotations

import itertools
import logging
import struct
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import make_trainer, mlflow_run, mlflow_series, tiny_loaders, tiny_module_class
from mlflow.tracking import MlflowClient

import tracelet
from tracelet.instrumentation import lightning_training
from tracelet.instrumentation.lightning_training import _optimizer_state


@pytest.fixture
def depth(monkeypatch):
    monkeypatch.setenv("TRACELET_TRACK_OPTIMIZER", "1")
    monkeypatch.setenv("TRACELET_TRACK_PERF", "1")


class HeldBy(pl.Callback):
    """The oracle: what the optimizer held at the start of every training batch, and the step."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, dict[str, float]]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        group = trainer.optimizers[0].param_groups[0]
        values = {"train/lr": group["lr"]}
        if "momentum" in group:
            values["train/momentum"] = group["momentum"]
        if "betas" in group:
            values["train/beta1"], values["train/beta2"] = group["betas"]
        self.seen.append((trainer.fit_loop.epoch_loop._batches_that_stepped, values))


def _module_with(configure):
    base = tiny_module_class()

    class Scheduled(base):
        def configure_optimizers(self):
            return configure(self.parameters())

    return Scheduled()


def _step_lr(parameters):
    optimizer = torch.optim.SGD(parameters, lr=0.1, momentum=0.9)
    return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)}


def _one_cycle(parameters):
    optimizer = torch.optim.AdamW(parameters, lr=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=24)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _fit(module, *callbacks, **trainer_options):
    exp = tracelet.start_logging(project="depth")
    pl.seed_everything(7, verbose=False)
    train, val = tiny_loaders()
    trainer = make_trainer(callbacks=list(callbacks), **trainer_options)
    trainer.fit(module, train, val)
    report = tracelet.stop_logging()
    return exp.locations["mlflow"].run_id, trainer, report


@pytest.mark.parametrize(
    ("configure", "series", "changes_every_step"),
    [
        (_step_lr, ("train/lr", "train/momentum"), False),
        (_one_cycle, ("train/lr", "train/beta1", "train/beta2"), True),
    ],
)
def test_optimizer_series_hold_what_the_optimizer_held(depth, configure, series, changes_every_step):
    oracle = HeldBy()
    run_id, _, _ = _fit(_module_with(configure), oracle, max_epochs=3)
    stored = mlflow_series(run_id)
    held = dict(oracle.seen)  # step -> values at the start of that step's batch
    for name in series:
        points = stored[name]
        assert points, name
        for step, value in points:
            assert value == pytest.approx(held[step][name], rel=1e-12), (name, step)
    lr_changes = [step for i, (step, v) in enumerate(oracle.seen) if i and v != oracle.seen[i - 1][1]]
    epoch_starts = [0, 8, 16]  # 8 batches an epoch
    steps = [s for s, _ in stored["train/lr"]]
    assert set(lr_changes) | set(epoch_starts) == set(steps)  # every scheduler step, every epoch, no more
    assert len(steps) == len(set(steps))
    if changes_every_step:
        assert len(steps) == 24
    else:
        assert [v for _, v in stored["train/lr"]] == [0.1, 0.05, 0.025]


def test_optimizer_class_and_defaults_become_params(depth):
    run_id, _, _ = _fit(_module_with(_step_lr), max_epochs=1)
    params = mlflow_run(run_id).data.params
    assert params["optimizer/class"] == "SGD"
    assert params["optimizer/lr"] == "0.1" and params["optimizer/momentum"] == "0.9"
    assert params["optimizer/param_groups"] == "1"


def test_several_param_groups_and_optimizers_get_suffixes():
    class Optimizer:
        def __init__(self, *groups):
            self.param_groups = list(groups)

    adam = Optimizer({"lr": 0.1, "betas": (0.9, 0.99)}, {"lr": 0.2, "betas": (0.8, 0.9)})
    sgd = Optimizer({"lr": 0.3, "momentum": 0.5})
    assert _optimizer_state([sgd]) == {"train/lr": 0.3, "train/momentum": 0.5}
    assert _optimizer_state([adam, sgd]) == {
        "train/lr/0/pg0": 0.1,
        "train/beta1/0/pg0": 0.9,
        "train/beta2/0/pg0": 0.99,
        "train/lr/0/pg1": 0.2,
        "train/beta1/0/pg1": 0.8,
        "train/beta2/0/pg1": 0.9,
        "train/lr/1": 0.3,
        "train/momentum/1": 0.5,
    }


def test_checkpoints_paths_score_and_best_file_are_recorded(tmp_path):
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_last=True)
    run_id, _, _ = _fit(tiny_module_class()(), checkpoint, max_epochs=3, enable_checkpointing=True)
    run = mlflow_run(run_id)
    assert run.data.tags["checkpoint.best_path"] == checkpoint.best_model_path
    assert run.data.tags["checkpoint.last_path"] == checkpoint.last_model_path
    assert run.data.tags["checkpoint.monitor"] == "val_loss"
    scores = mlflow_series(run_id)["checkpoint/best_score"]
    assert scores[-1][1] == pytest.approx(float(checkpoint.best_model_score))
    assert [s for s, _ in scores] == sorted({s for s, _ in scores})  # once per change, epoch-end steps
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    name = Path(checkpoint.best_model_path).name
    downloaded = client.download_artifacts(run_id, f"checkpoints/{name}", str(tmp_path / "dl"))
    assert Path(downloaded).read_bytes() == Path(checkpoint.best_model_path).read_bytes()


def test_a_checkpoint_over_the_cap_is_not_uploaded_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TRACELET_CHECKPOINT_MAX_MB", "0.001")
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss")
    with caplog.at_level(logging.WARNING, logger="tracelet"):
        run_id, _, _ = _fit(tiny_module_class()(), checkpoint, max_epochs=2, enable_checkpointing=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.list_artifacts(run_id, "checkpoints") == []
    assert mlflow_run(run_id).data.tags["checkpoint.best_path"] == checkpoint.best_model_path
    assert sum("over checkpoint_max_mb" in r.getMessage() for r in caplog.records) == 1


def test_log_checkpoints_off_uploads_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACELET_LOG_CHECKPOINTS", "false")
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss")
    run_id, _, _ = _fit(tiny_module_class()(), checkpoint, max_epochs=1, enable_checkpointing=True)
    assert MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").list_artifacts(run_id) == []


def test_early_stopping_records_the_epoch_and_the_reason():
    stopper = pl.callbacks.EarlyStopping(monitor="val_loss", patience=0, min_delta=10.0)
    run_id, trainer, _ = _fit(tiny_module_class()(), stopper, max_epochs=5)
    tags = mlflow_run(run_id).data.tags
    assert trainer.current_epoch < 5
    assert tags["early_stopping.stopped_epoch"] == str(stopper.stopped_epoch) != "0"
    assert "val_loss" in tags["early_stopping.reason"]


class SlowData(torch.utils.data.Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        time.sleep(0.003)  # 24 ms per batch of 8: far more than the tiny model's step
        return self.base[index]


def test_perf_metrics_are_logged_when_lightning_logs_and_see_a_slow_dataloader(depth, monkeypatch):
    monkeypatch.setattr(lightning_training, "PERF_MIN_WINDOW_S", 0.0)  # a point at every logging step
    exp = tracelet.start_logging(project="perf")
    pl.seed_everything(7, verbose=False)
    train, val = tiny_loaders()
    slow = torch.utils.data.DataLoader(SlowData(train.dataset), batch_size=8)
    trainer = make_trainer(max_epochs=2, log_every_n_steps=3)
    trainer.fit(tiny_module_class()(), slow, val)
    tracelet.stop_logging()
    series = mlflow_series(exp.locations["mlflow"].run_id)
    logging_steps = [s for s, _ in series["train/loss_step"]]
    for name in ("perf/step_time_s", "perf/dataloader_wait_share", "perf/samples_per_s"):
        assert [s for s, _ in series[name]] == logging_steps, name
    for (_, step_time), (_, share), (_, rate) in zip(
        series["perf/step_time_s"],
        series["perf/dataloader_wait_share"],
        series["perf/samples_per_s"],
        strict=True,
    ):
        assert step_time > 0.024 and 0.5 < share <= 1.0
        assert rate == pytest.approx(8 / step_time, rel=1e-6)
    epochs = series["perf/epoch_time_s"]
    assert [s for s, _ in epochs] == [s for s, _ in series["train/loss_epoch"]]
    assert all(seconds > 8 * 0.024 for _, seconds in epochs)


def test_perf_points_average_windows_of_at_least_the_minimum(depth, monkeypatch):
    monkeypatch.setattr(lightning_training, "PERF_MIN_WINDOW_S", 0.1)
    exp = tracelet.start_logging(project="perf")
    pl.seed_everything(7, verbose=False)
    train, val = tiny_loaders()
    slow = torch.utils.data.DataLoader(SlowData(train.dataset), batch_size=8)
    make_trainer(max_epochs=2, log_every_n_steps=1).fit(tiny_module_class()(), slow, val)
    tracelet.stop_logging()
    run_id = exp.locations["mlflow"].run_id
    client = MlflowClient(tracking_uri=f"sqlite:///{Path('mlflow.db').resolve()}")
    points = client.get_metric_history(run_id, "perf/step_time_s")
    logging_steps = {s for s, _ in mlflow_series(run_id)["train/loss_step"]}
    assert 2 <= len(points) < len(logging_steps) and {p.step for p in points} <= logging_steps
    times = sorted(p.timestamp for p in points)
    assert all(b - a >= 90 for a, b in itertools.pairwise(times))  # ms; 0.1 s windows


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def _tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the event files directly in ``logdir`` (float32, as TensorBoard keeps them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }


def test_summary_writer_scalars_are_tracked_with_their_global_step(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    exp = tracelet.start_logging(project="tensorboard")
    writer = SummaryWriter(str(tmp_path / "tb"))
    for step in range(0, 50, 5):
        writer.add_scalar("loss", torch.tensor(1.0 / (step + 1)), global_step=step)
        writer.add_scalars("acc", {"train": step / 100, "val": step / 200}, step)
    writer.add_hparams({"lr": 0.1, "layers": 3}, {"hparam/final": 0.5})
    writer.close()
    tracelet.stop_logging()
    run_id = exp.locations["mlflow"].run_id
    series = mlflow_series(run_id)
    assert series["loss"] == [(s, pytest.approx(1.0 / (s + 1))) for s in range(0, 50, 5)]
    assert series["acc/train"] == [(s, s / 100) for s in range(0, 50, 5)]
    assert series["acc/val"] == [(s, s / 200) for s in range(0, 50, 5)]
    tensorboard = _tensorboard_scalars(tmp_path / "tb")
    assert [(s, _float32(v)) for s, v in series["loss"]] == tensorboard["loss"]
    assert series["hparam/final"] == [(0, 0.5)]
    assert mlflow_run(run_id).data.params == {"lr": "0.1", "layers": "3"}


class WritesItsOwnScalar(tiny_module_class()):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.logger.experiment.add_scalar("direct/loss", loss.item(), self.global_step)
        return loss


def test_lightning_tensorboard_logger_scalars_arrive_once(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(str(tmp_path / "tb"), name="job")
    run_id, trainer, _ = _fit(WritesItsOwnScalar(), logger=logger, max_epochs=2)
    series = mlflow_series(run_id)
    for name, points in series.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)) or name == "epoch", f"{name} arrived twice: {steps}"
    tensorboard = _tensorboard_scalars(Path(trainer.logger.log_dir))
    # what Lightning's logger wrote (captured through Lightning) and what the module wrote itself
    assert [(s, _float32(v)) for s, v in series["train/loss_step"]] == tensorboard["train/loss_step"]
    assert [(s, _float32(v)) for s, v in series["direct/loss"]] == tensorboard["direct/loss"]
    assert len(series["direct/loss"]) == 16
    assert "hp_metric" not in series


def test_tensorboard_capture_off(monkeypatch, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    monkeypatch.setenv("TRACELET_TRACK_TENSORBOARD", "0")
    exp = tracelet.start_logging()
    with SummaryWriter(str(tmp_path / "tb")) as writer:
        writer.add_scalar("loss", 1.0, 0)
    report = tracelet.stop_logging()
    assert report.backends["mlflow"].sent == 0 and exp.locations
