"""Shared test helpers: a tiny Lightning job for either namespace and readers for what it wrote."""

from __future__ import annotations

import csv
import importlib
import math
import os
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

Series = dict[str, list[tuple[int, float]]]


def tiny_module_class(namespace: str = "lightning.pytorch"):
    """A LightningModule that logs the shapes of metrics people log: on_step+on_epoch, epoch-only
    validation, a logger=False value and a progress-bar-only value."""
    import torch

    pl = importlib.import_module(namespace)

    class TinyModule(pl.LightningModule):
        def __init__(self, lr: float = 0.05, hidden: int = 4, fail_at_step: int = -1):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(3, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
            )

        def training_step(self, batch, batch_idx):
            if self.global_step == self.hparams.fail_at_step:
                raise RuntimeError("boom in training_step")
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train/loss", loss, on_step=True, on_epoch=True)
            self.log("train_abs", loss.abs().sqrt(), on_step=True, on_epoch=False)
            self.log("not_for_loggers", loss * 2, logger=False)
            self.log("bar_only", loss * 3, prog_bar=True, logger=False)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return TinyModule


def tiny_loaders(n: int = 64, batch_size: int = 8):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=generator)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=generator)
    data = TensorDataset(x, y)
    return DataLoader(data, batch_size=batch_size), DataLoader(data, batch_size=batch_size)


def make_trainer(namespace: str = "lightning.pytorch", logger=False, tmp: Path | None = None, **kwargs):
    pl = importlib.import_module(namespace)
    options = dict(
        max_epochs=2,
        logger=logger,
        log_every_n_steps=3,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(tmp) if tmp else None,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def run_tiny_job(
    namespace: str = "lightning.pytorch", logger=False, trainer=None, test: bool = True, **model_kwargs
):
    """fit (and test) the tiny module with a fixed seed; returns the trainer."""
    pl = importlib.import_module(namespace)
    pl.seed_everything(7, verbose=False)
    model = tiny_module_class(namespace)(**model_kwargs)
    train, val = tiny_loaders()
    trainer = trainer or make_trainer(namespace, logger=logger)
    trainer.fit(model, train, val)
    if test:
        trainer.test(model, val, verbose=False)
    return trainer


def csv_series(metrics_csv: Path) -> Series:
    """Every non-empty cell of Lightning's CSVLogger metrics.csv as series: key -> [(step, value)]."""
    series: Series = defaultdict(list)
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            step = int(row["step"])
            for key, cell in row.items():
                if key != "step" and cell != "":
                    series[key].append((step, float(cell)))
    return {k: sorted(v) for k, v in series.items()}


def mlflow_series(run_id: str, uri: str | None = None, keys: list[str] | None = None) -> Series:
    """Each metric's history as (step, value) pairs: every key of the run, or ``keys``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri or f"sqlite:///{Path('mlflow.db').resolve()}")
    if keys is None:
        keys = list(client.get_run(run_id).data.metrics)
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in keys}


def mlflow_run(run_id: str, uri: str | None = None):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri or f"sqlite:///{Path('mlflow.db').resolve()}")
    return client.get_run(run_id)


def assert_same_series(actual: Series, expected: Series) -> None:
    assert sorted(actual) == sorted(expected), f"keys differ: {sorted(actual)} vs {sorted(expected)}"
    for key in expected:
        got, want = actual[key], expected[key]
        assert [s for s, _ in got] == [s for s, _ in want], f"{key}: steps differ {got} vs {want}"
        for (step, a), (_, b) in zip(got, want, strict=True):
            assert a == b or (math.isnan(a) and math.isnan(b)), f"{key} at step {step}: {a} != {b}"


WANDB_INTERNAL = {"_step", "_runtime", "_timestamp", "trainer/global_step", "system/sample"}


def wandb_series(run_dir: str) -> tuple[Series, dict]:
    """Series (by trainer/global_step) and the whole parsed run from a W&B offline run directory."""
    from wandb_reader import read_run

    run = read_run(Path(run_dir))
    series: Series = defaultdict(list)
    for row in run["history"]:
        for key, value in row.items():
            if key not in WANDB_INTERNAL:
                axis = "system/sample" if key.startswith("system/") else "trainer/global_step"
                series[key].append((row[axis], float(value)))
    return {k: sorted(v) for k, v in series.items()}, run


def clearml_series(offline_dir: str) -> tuple[Series, dict]:
    """Series (``title/series``, or the title where both are the same) and task.json of an offline session."""
    import json

    folder = Path(offline_dir)
    series: Series = defaultdict(list)
    metrics = folder / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        for event in json.loads(line):
            if event.get("type") == "training_stats_scalar":
                name = (
                    event["metric"]
                    if event["metric"] == event["variant"]
                    else f"{event['metric']}/{event['variant']}"
                )
                series[name].append((event["iter"], float(event["value"])))
    task = json.loads((folder / "task.json").read_text())
    return {k: sorted(v) for k, v in series.items()}, task


SWEEP_JOB = textwrap.dedent(
    """
    import sys, tracelet
    exp = tracelet.start_logging(project="sweep", exp_name=f"job{sys.argv[1]}")
    for step in range(int(sys.argv[2])):
        exp.log_metric("loss", step / 50, iteration=step)
    report = tracelet.stop_logging(timeout=120)
    print("complete" if report.backends["mlflow"].complete else report.lines())
    """
)


def sweep(directory: Path, jobs: int, points: int = 50, **environ: str) -> list[str]:
    """``jobs`` processes started at once in ``directory`` (each logs ``points`` points to the
    MLflow store ``environ`` names, ``./mlflow.db`` by default); what each printed."""
    env = {**os.environ, "TRACELET_JOURNAL": "0", **environ}
    started = [
        subprocess.Popen(
            [sys.executable, "-c", SWEEP_JOB, str(i), str(points)],
            cwd=directory,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(jobs)
    ]
    return [process.communicate(timeout=240)[0].strip() for process in started]


def remove_symbol(monkeypatch, owner, attribute: str) -> None:
    """tracelet's patches find ``owner.attribute`` missing, as after a release that removed it."""
    from tracelet.instrumentation import base

    find = base._find

    def find_after_the_release(where, name):
        if where is owner and name == attribute:
            raise AttributeError(f"{getattr(where, '__qualname__', where)} has no attribute {name!r}")
        return find(where, name)

    monkeypatch.setattr(base, "_find", find_after_the_release)
