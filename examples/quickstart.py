"""Quickstart: a plain Lightning training script plus two tracelet lines.

Every ``self.log`` below reaches a local MLflow store (./mlflow.db) with the same keys,
steps and values Lightning's own loggers would record -- even with ``logger=False``.

    .venv/bin/python examples/quickstart.py                                  # or: make demo
    .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --workers 1  # then open http://127.0.0.1:5000

Set QUICKSTART_EPOCHS to change the length of the run (the test suite uses 1).
"""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import tracelet


class Regressor(pl.LightningModule):
    def __init__(self, lr: float = 0.05, hidden: int = 16):
        super().__init__()
        self.save_hyperparameters()  # -> MLflow params
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def loaders() -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 8, generator=generator)
    y = x @ torch.linspace(-1, 1, 8).unsqueeze(1) + 0.1 * torch.randn(1024, 1, generator=generator)
    return (
        DataLoader(TensorDataset(x[:896], y[:896]), batch_size=32, shuffle=True),
        DataLoader(TensorDataset(x[896:], y[896:]), batch_size=64),
    )


def train(default_epochs: int = 5) -> None:
    """A plain Lightning fit, no logger: what tracelet captures is what it logs."""
    pl.seed_everything(0)
    train_data, val_data = loaders()
    trainer = pl.Trainer(
        max_epochs=int(os.environ.get("QUICKSTART_EPOCHS", str(default_epochs))),
        logger=False,
        enable_checkpointing=False,
        log_every_n_steps=5,
        accelerator="cpu",
    )
    trainer.fit(Regressor(), train_data, val_data)


def main() -> None:
    experiment = tracelet.start_logging(exp_name="quickstart", project="tracelet-examples")
    train()
    report = tracelet.stop_logging()
    location = report.backends["mlflow"].location
    print(f"\nrun {experiment.name!r} ({report.status}) is in MLflow as run {location.run_id}")
    print(f"view it: run\n    {location.view}\nthen open\n    {location.url}")


if __name__ == "__main__":
    main()
