"""Lightning DDP on CPU (2 processes, gloo) tracked by one ``start_logging`` call.

Lightning starts the second process itself by re-running this script; tracelet records one
run, from global rank 0, with the values Lightning reduced (``sync_dist=True``).

    python examples/lightning_ddp.py
    mlflow ui --backend-store-uri sqlite:///mlflow.db --workers 1

DDP_EXAMPLE_EPOCHS sets the length (the test suite uses 1).
"""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import tracelet


class Regressor(pl.LightningModule):
    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def loaders() -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=generator)
    y = x @ torch.linspace(-1, 1, 8).unsqueeze(1)
    return DataLoader(TensorDataset(x, y), batch_size=32), DataLoader(
        TensorDataset(x[:128], y[:128]), batch_size=64
    )


def main() -> None:
    experiment = tracelet.start_logging(exp_name="ddp-cpu", project="tracelet-examples")
    pl.seed_everything(0)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=int(os.environ.get("DDP_EXAMPLE_EPOCHS", "3")),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        log_every_n_steps=2,
    )
    trainer.fit(Regressor(), *loaders())
    report = tracelet.stop_logging()
    if trainer.is_global_zero:
        print(f"rank 0: run {experiment.name!r} in MLflow as {report.backends['mlflow'].location.run_id}")


if __name__ == "__main__":
    main()
