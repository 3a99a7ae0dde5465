"""A training script with no tracelet line in it: run it under ``tracelet run``.

    tracelet run --backend mlflow --project tracelet-examples -- python examples/zero_code_train.py --lr 0.05
    tracelet runs                                        # the journal of what was recorded

Every ``self.log``, the argparse values (as params ``args/...``), the trainer's configuration,
the learning rate, system metrics, git state and console output are tracked.
ZERO_CODE_EPOCHS sets the length (the test suite uses 1).
"""

from __future__ import annotations

import argparse
import os

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class Classifier(pl.LightningModule):
    def __init__(self, lr: float):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        self.log("train/loss", loss)
        self.log("train/acc", (logits.argmax(1) == y).float().mean(), on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(600, 4, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    pl.seed_everything(0)
    trainer = pl.Trainer(
        max_epochs=int(os.environ.get("ZERO_CODE_EPOCHS", "3")),
        logger=False,
        enable_checkpointing=False,
        log_every_n_steps=5,
        accelerator="cpu",
    )
    trainer.fit(Classifier(args.lr), DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True))
    print("training done")


if __name__ == "__main__":
    main()
