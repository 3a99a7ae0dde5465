"""Overhead of tracking on a tiny Lightning fit, against ``logger=False`` measured in the same run.

Each measurement is a fresh Python process (so no configuration inherits another's imports
or patches) that warms up, then times ``trainer.fit`` of a tiny model logging 3 metrics
every step (``log_every_n_steps=1``). Configurations are interleaved round by round and
reported as medians and ratios to ``logger=False``: machines are shared and noisy.

    python benchmarks/bench_overhead.py                 # 2000 steps, 5 rounds
    python benchmarks/bench_overhead.py --steps 200 --rounds 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

CONFIGS = {
    "logger=False": "the baseline: Lightning computes and reduces every self.log, nobody records it",
    "CSVLogger": "Lightning's CSVLogger",
    "MLFlowLogger": "Lightning's MLFlowLogger on a local SQLite store",
    "tracelet-mlflow": "logger=False + tracelet.start_logging() -> MLflow on a local SQLite store",
}


def _job(config: str, steps: int, workdir: str) -> dict:
    """Runs inside the measurement process."""
    os.chdir(workdir)
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(16, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train/loss", loss)
            self.log("train/abs", loss.abs())
            self.log("train/scaled", loss * 0.5)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def fit(n_steps: int, logger) -> float:
        pl.seed_everything(0, verbose=False)
        data = TensorDataset(torch.randn(n_steps * 4, 16), torch.randn(n_steps * 4, 1))
        trainer = pl.Trainer(
            max_epochs=1,
            logger=logger,
            log_every_n_steps=1,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            devices=1,
        )
        started = time.perf_counter()
        trainer.fit(Tiny(), DataLoader(data, batch_size=4))
        return time.perf_counter() - started

    fit(20, False)  # warm up imports and caches the same way for every configuration
    result = {}
    if config == "logger=False":
        result["fit"] = fit(steps, False)
    elif config == "CSVLogger":
        result["fit"] = fit(steps, pl.loggers.CSVLogger("csv"))
    elif config == "MLFlowLogger":
        logger = pl.loggers.MLFlowLogger(tracking_uri=f"sqlite:///{os.path.abspath('mlflow.db')}")
        result["fit"] = fit(steps, logger)
    elif config == "tracelet-mlflow":
        import tracelet

        started = time.perf_counter()
        tracelet.start_logging(exp_name="bench", project="bench")
        result["start"] = time.perf_counter() - started
        result["fit"] = fit(steps, False)
        started = time.perf_counter()
        report = tracelet.stop_logging()
        result["stop"] = time.perf_counter() - started
        stats = report.backends["mlflow"]
        result["sent"], result["dropped"] = stats.sent, stats.dropped
    return result


def _measure(config: str, steps: int, workdir: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", config, "--steps", str(steps), "--workdir", workdir],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--one", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_job(args.one, args.steps, args.workdir)))
        return

    samples: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as root:
        for store in ("mlflow-logger", "tracelet"):
            os.makedirs(os.path.join(root, store))
        for round_index in range(args.rounds):
            order = list(CONFIGS)
            random.Random(round_index).shuffle(order)
            for name in order:
                workdir = os.path.join(root, "tracelet" if name == "tracelet-mlflow" else "mlflow-logger")
                samples[name].append(_measure(name, args.steps, workdir))
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)

    baseline = statistics.median(s["fit"] for s in samples["logger=False"])
    print(
        f"\ntrainer.fit of {args.steps} steps, 3 metrics/step, log_every_n_steps=1; "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"{'configuration':<18} {'fit median (s)':>15} {'ratio':>7}   runs (s)")
    for name in CONFIGS:
        fits = [s["fit"] for s in samples[name]]
        median = statistics.median(fits)
        runs = " ".join(f"{f:.2f}" for f in fits)
        print(f"{name:<18} {median:>15.3f} {median / baseline:>6.2f}x   {runs}")
    lifecycle = [s["start"] + s["stop"] for s in samples["tracelet-mlflow"]]
    starts = [s["start"] for s in samples["tracelet-mlflow"]]
    stops = [s["stop"] for s in samples["tracelet-mlflow"]]
    print(
        f"\ntracelet start_logging median {statistics.median(starts):.3f}s, stop_logging median "
        f"{statistics.median(stops):.3f}s, together median {statistics.median(lifecycle):.3f}s "
        f"(max {max(lifecycle):.3f}s)"
    )
    sent = {s["sent"] for s in samples["tracelet-mlflow"]}
    dropped = sum(s["dropped"] for s in samples["tracelet-mlflow"])
    print(f"tracelet events sent per run: {sorted(sent)}, dropped in all runs: {dropped}")


if __name__ == "__main__":
    main()
