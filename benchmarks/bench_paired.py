"""Tracking overhead measured in pairs, in one process: untracked fit, tracked fit, repeat.

On a shared machine whose speed drifts by tens of percent from minute to minute, fresh
processes minutes apart (``bench_overhead.py``) can hide a few percent of overhead. Here
each tracked fit runs right after an untracked one of the same job in the same process
(``start_logging`` before it, ``stop_logging`` after it), and the ratio of each pair is
taken; the median pair ratio and the ratio of the fastest runs are printed.

    python benchmarks/bench_paired.py                   # 2000 steps, 8 pairs, everything on
    python benchmarks/bench_paired.py --config '{"journal": false}'
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--config", default="{}", help="tracelet config as JSON")
    args = parser.parse_args()
    os.chdir(tempfile.mkdtemp(prefix="tracelet-paired-"))

    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import tracelet

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

    x = torch.randn(args.steps * 8, 8, generator=torch.Generator().manual_seed(0))
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)

    def fit() -> float:
        trainer = pl.Trainer(
            max_steps=args.steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            log_every_n_steps=1,
        )
        started = time.perf_counter()
        trainer.fit(Tiny(), data)
        return time.perf_counter() - started

    config = json.loads(args.config)
    fit()  # warm-up
    untracked, tracked = [], []
    for _ in range(args.pairs):
        untracked.append(fit())
        tracelet.start_logging(project="paired", config=config)
        tracked.append(fit())
        tracelet.stop_logging()
    ratios = [t / u for t, u in zip(tracked, untracked, strict=True)]
    print(f"\n{args.pairs} pairs of {args.steps}-step fits, tracelet config {config}")
    print("untracked (s): " + " ".join(f"{t:.2f}" for t in untracked))
    print("tracked   (s): " + " ".join(f"{t:.2f}" for t in tracked))
    print(
        f"median pair ratio {statistics.median(ratios):.3f}x; "
        f"fastest runs {min(tracked) / min(untracked):.3f}x"
    )


if __name__ == "__main__":
    main()
