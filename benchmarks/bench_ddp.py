"""Wall time of a 2-process Lightning DDP job on CPU (gloo), with and without tracelet.

Each measurement runs the whole job as a fresh ``python job.py`` (Lightning starts the
second process itself); the two configurations are interleaved round by round and
reported as medians and the ratio. The job logs with ``sync_dist=True`` every step.

    python benchmarks/bench_ddp.py                        # 5 rounds, 3 epochs of 64 steps
    python benchmarks/bench_ddp.py --rounds 1 --epochs 1  # a smoke run
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

JOB = textwrap.dedent("""
    import os, sys
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Regressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train/loss", loss, sync_dist=True)
            self.log("train/abs", loss.sqrt(), sync_dist=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    if os.environ["BENCH_TRACELET"] == "1":
        import tracelet
        tracelet.start_logging(project="bench-ddp")
    x = torch.randn(4096, 32, generator=torch.Generator().manual_seed(0))
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=32)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=int(os.environ["BENCH_EPOCHS"]),
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(Regressor(), data)
""")


def _measure(script: str, tracked: bool, epochs: int) -> float:
    env = {**os.environ, "BENCH_TRACELET": "1" if tracked else "0", "BENCH_EPOCHS": str(epochs)}
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, script], cwd=os.path.dirname(script), env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {"without tracelet": [], "with tracelet": []}
    with tempfile.TemporaryDirectory() as root:
        script = os.path.join(root, "job.py")
        with open(script, "w") as handle:
            handle.write(JOB)
        for round_index in range(args.rounds):
            order = list(samples)
            random.Random(round_index).shuffle(order)
            for name in order:
                samples[name].append(_measure(script, name == "with tracelet", args.epochs))
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    baseline = statistics.median(samples["without tracelet"])
    print(f"\n2-process CPU DDP job, {args.epochs} epochs x 64 steps; medians of {args.rounds} rounds")
    for name, runs in samples.items():
        median = statistics.median(runs)
        listed = " ".join(f"{r:.2f}" for r in runs)
        print(f"{name:<18} {median:>8.2f} s {median / baseline:>6.2f}x   {listed}")


if __name__ == "__main__":
    main()
