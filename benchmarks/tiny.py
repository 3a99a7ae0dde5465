"""The tiny Lightning job the in-process benchmarks time: a linear layer on batches of 8,
three ``self.log`` calls a step, no logger, nothing printed."""

from __future__ import annotations

import compileall
import os
from typing import Any


def byte_compile_tracelet() -> None:
    """Write tracelet's ``.pyc`` files, as ``pip install`` does for an installed package.

    Run from a source checkout with ``PYTHONDONTWRITEBYTECODE`` set (as on our CI machines),
    every process — the writer too — would otherwise compile tracelet from source at start-up,
    a cost no installed copy has.
    """
    import tracelet

    compileall.compile_dir(os.path.dirname(tracelet.__file__), quiet=1)


def module_and_data(steps: int) -> tuple[type, Any]:
    """The module class, and a DataLoader of ``steps`` batches (the same data every time)."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("a", loss)
            self.log("b", loss * 2)
            self.log("c", loss * 3)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x = torch.randn(steps * 8, 8, generator=torch.Generator().manual_seed(0))
    return Tiny, DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def trainer(max_steps: int) -> Any:
    """A Trainer that logs every step to no logger: the baseline tracelet is measured against."""
    import lightning.pytorch as pl

    return pl.Trainer(
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
