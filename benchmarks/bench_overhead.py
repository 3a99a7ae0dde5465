"""Overhead of tracking on a tiny Lightning fit, against ``logger=False`` measured in the same run.

Each measurement is a fresh Python process (so no configuration inherits another's imports
or patches) that warms up, then times ``trainer.fit`` of a tiny model logging 3 metrics
every step (``log_every_n_steps=1``). Configurations are interleaved round by round and
reported as medians and ratios to ``logger=False``: machines are shared and noisy. Beside the
ratio of the medians, each configuration's runs are paired with the baseline's run of the
same round (minutes closer than the runs of other rounds) and the median pair ratio is
printed with a bootstrap interval.

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

from ratios import describe
from tiny import byte_compile_tracelet

CONFIGS = {
    "logger=False": "the baseline: Lightning computes and reduces every self.log, nobody records it",
    "CSVLogger": "Lightning's CSVLogger",
    "MLFlowLogger": "Lightning's MLFlowLogger on a local SQLite store",
    "WandbLogger": "Lightning's WandbLogger, W&B offline",
    "tracelet-mlflow": "logger=False + tracelet.start_logging() -> MLflow on a local SQLite store",
    "tracelet-mlflow-warm": "the same, waiting for the backends to open before the fit (steady state)",
    "tracelet-3": "logger=False + tracelet -> MLflow + W&B + ClearML (offline), system metrics every 1 s",
}
TRACELET_BACKENDS = {
    "tracelet-mlflow": ["mlflow"],
    "tracelet-mlflow-warm": ["mlflow"],
    "tracelet-3": ["mlflow", "wandb", "clearml"],
}
TRACELET_CONFIG = {"tracelet-mlflow": {}, "tracelet-mlflow-warm": {}, "tracelet-3": {"metrics_interval": 1}}


def _job(config: str, steps: int, workdir: str) -> dict:
    """Runs inside the measurement process."""
    os.chdir(workdir)
    os.environ.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        CLEARML_OFFLINE_MODE="1",
        CLEARML_CACHE_DIR=os.path.join(workdir, "clearml"),
    )
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
    elif config == "WandbLogger":
        result["fit"] = fit(steps, pl.loggers.WandbLogger(project="bench", save_dir=workdir))
        import wandb

        wandb.finish()
    elif config in TRACELET_BACKENDS:
        import tracelet

        started = time.perf_counter()
        tracelet.start_logging(
            exp_name="bench",
            project="bench",
            backend=TRACELET_BACKENDS[config],
            config=TRACELET_CONFIG[config],
        )
        result["start"] = time.perf_counter() - started
        if config.endswith("-warm"):  # the writer's start-up (MLflow's import: ~2 s of CPU) ends first
            tracelet.get_active_experiment().flush()
        result["fit"] = fit(steps, False)
        started = time.perf_counter()
        report = tracelet.stop_logging()
        result["stop"] = time.perf_counter() - started
        result["sent"] = {name: stats.sent for name, stats in report.backends.items()}
        result["dropped"] = sum(stats.dropped + stats.failed for stats in report.backends.values())
        result["done"] = report.done
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
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        default=list(CONFIGS),
        help="measure only these (logger=False is always measured)",
    )
    parser.add_argument("--one", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_job(args.one, args.steps, args.workdir)))
        return

    byte_compile_tracelet()
    chosen = ["logger=False", *(c for c in args.configs if c != "logger=False")]
    samples: dict[str, list[dict]] = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory() as root:
        for name in CONFIGS:
            os.makedirs(os.path.join(root, name))
        for round_index in range(args.rounds):
            order = list(chosen)
            random.Random(round_index).shuffle(order)
            for name in order:
                workdir = os.path.join(root, name)
                samples[name].append(_measure(name, args.steps, workdir))
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)

    baseline = statistics.median(s["fit"] for s in samples["logger=False"])
    print(
        f"\ntrainer.fit of {args.steps} steps, 3 metrics/step, log_every_n_steps=1; "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"{'configuration':<18} {'fit median (s)':>15} {'ratio':>7}   runs (s)")
    for name in chosen:
        fits = [s["fit"] for s in samples[name]]
        median = statistics.median(fits)
        runs = " ".join(f"{f:.2f}" for f in fits)
        print(f"{name:<18} {median:>15.3f} {median / baseline:>6.2f}x   {runs}")
    print("\npaired with the baseline run of the same round:")
    for name in chosen[1:]:
        pairs = [s["fit"] / b["fit"] for s, b in zip(samples[name], samples["logger=False"], strict=True)]
        print(f"{name:<18} {describe(pairs)}")
    for name in (n for n in TRACELET_BACKENDS if n in samples):
        runs = samples[name]
        lifecycle = [s["start"] + s["stop"] for s in runs]
        print(
            f"\n{name}: start_logging median {statistics.median(s['start'] for s in runs):.3f}s, "
            f"stop_logging median {statistics.median(s['stop'] for s in runs):.3f}s, together median "
            f"{statistics.median(lifecycle):.3f}s (max {max(lifecycle):.3f}s); all flushed in time: "
            f"{all(s['done'] for s in runs)}"
        )
        sent = sorted({tuple(sorted(s["sent"].items())) for s in runs})
        print(
            f"  events sent per run: {sent}; dropped or failed in all runs: {sum(s['dropped'] for s in runs)}"
        )


if __name__ == "__main__":
    main()
