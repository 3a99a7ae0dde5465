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
    python benchmarks/bench_overhead.py --server        # against a team's MLflow server
    python benchmarks/bench_overhead.py --busy 2 --steps 3000 --rounds 3    # every core busy
    python benchmarks/bench_overhead.py --busy 0 --loader-workers 2         # DataLoader workers on every core
    python benchmarks/bench_overhead.py --busy 2 --before ../old-checkout   # old and new code in one run

``--before PATH`` measures each tracelet configuration a second time (``NAME@before``) with the
``tracelet`` package of another checkout (e.g. ``git worktree add ../old-checkout REV``) first on
``PYTHONPATH``, so a change's before/after figures come from the same minutes of the machine.

``--server`` starts the test suite's team server (PostgreSQL + ``mlflow server`` with proxied
artifacts on 127.0.0.1, ``tests/team_server.py``), compares tracelet and Lightning's
``MLFlowLogger`` writing into it, and then measures the sustained points/s tracelet's writer
puts into the server and the server's own ``log_batch`` rate, which bounds it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

from ratios import print_pairs
from tiny import byte_compile_tracelet

CONFIGS = {
    "logger=False": "the baseline: Lightning computes and reduces every self.log, nobody records it",
    "CSVLogger": "Lightning's CSVLogger",
    "MLFlowLogger": "Lightning's MLFlowLogger on a local SQLite store",
    "WandbLogger": "Lightning's WandbLogger, W&B offline",
    "tracelet-mlflow": "logger=False + tracelet.start_logging() -> MLflow on a local SQLite store",
    "tracelet-mlflow-warm": "the same, waiting for the backends to open before the fit (steady state)",
    "tracelet-3": "logger=False + tracelet -> MLflow + W&B + ClearML (offline), system metrics every 1 s",
    "tracelet-3-warm": "the same, waiting for the backends to open before the fit (only with --configs)",
    "MLFlowLogger-server": "Lightning's MLFlowLogger against the team's MLflow server (PostgreSQL)",
    "tracelet-server": "logger=False + tracelet.start_logging() -> the team's MLflow server (PostgreSQL)",
}
SERVER_CONFIGS = ["logger=False", "MLFlowLogger-server", "tracelet-server"]
ONLY_WHEN_NAMED = {"tracelet-3-warm"}  # a diagnosis of tracelet-3, not a configuration to compare
TRACELET_BACKENDS = {
    "tracelet-mlflow": ["mlflow"],
    "tracelet-mlflow-warm": ["mlflow"],
    "tracelet-3": ["mlflow", "wandb", "clearml"],
    "tracelet-3-warm": ["mlflow", "wandb", "clearml"],
    "tracelet-server": ["mlflow"],
}
TRACELET_CONFIG = {
    "tracelet-mlflow": {},
    "tracelet-mlflow-warm": {},
    "tracelet-3": {"metrics_interval": 1},
    "tracelet-3-warm": {"metrics_interval": 1},
    "tracelet-server": {},
}
SERVER_URL = "TRACELET_BENCH_SERVER"  # the measurement processes find the team server here
LOADER_ENV = "TRACELET_BENCH_LOADER"  # "<workers>,<CPU microseconds per sample>" for the measurement
BEFORE_SUFFIX = "@before"  # a tracelet configuration measured with the --before checkout's package
BUSY_DEFAULT = ["logger=False", "CSVLogger", "WandbLogger", "tracelet-mlflow", "tracelet-3"]


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
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    workers, item_cost_us = (int(v) for v in os.environ.get(LOADER_ENV, "0,0").split(","))

    class Augmented(Dataset):
        """Samples that cost CPU to make, as augmentation does: DataLoader workers stay busy."""

        def __init__(self, data: TensorDataset) -> None:
            self.data = data

        def __len__(self) -> int:
            return len(self.data)

        def __getitem__(self, index: int):
            until = time.thread_time() + item_cost_us / 1e6
            while time.thread_time() < until:
                pass
            return self.data[index]

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
        if workers:
            loader = DataLoader(Augmented(data), batch_size=4, num_workers=workers, persistent_workers=True)
        else:
            loader = DataLoader(data, batch_size=4)
        started, cpu = time.perf_counter(), time.thread_time()
        trainer.fit(Tiny(), loader)
        thread_cpu[0] = time.thread_time() - cpu
        return time.perf_counter() - started

    thread_cpu = [0.0]  # the training thread's CPU time in the last fit

    fit(20, False)  # warm up imports and caches the same way for every configuration
    result: dict = {}
    if config == "logger=False":
        result["fit"] = fit(steps, False)
    elif config == "CSVLogger":
        result["fit"] = fit(steps, pl.loggers.CSVLogger("csv"))
    elif config == "MLFlowLogger":
        logger = pl.loggers.MLFlowLogger(tracking_uri=f"sqlite:///{os.path.abspath('mlflow.db')}")
        result["fit"] = fit(steps, logger)
    elif config == "MLFlowLogger-server":
        result["fit"] = fit(steps, pl.loggers.MLFlowLogger(tracking_uri=os.environ[SERVER_URL]))
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
            backend_url=os.environ.get(SERVER_URL) if config.endswith("-server") else None,
            config=TRACELET_CONFIG[config],
        )
        result["start"] = time.perf_counter() - started
        if config.endswith("-warm"):  # the writer's start-up (MLflow's import: ~2 s of CPU) ends first
            tracelet.get_active_experiment().flush()
        result["fit"] = fit(steps, False)
        started = time.perf_counter()
        tracelet.get_active_experiment().flush(300)
        result["drain"] = time.perf_counter() - started
        result["writer_cpu"] = _writer_cpu(tracelet.get_active_experiment())
        started = time.perf_counter()
        report = tracelet.stop_logging()
        result["stop"] = time.perf_counter() - started
        result["sent"] = {name: stats.sent for name, stats in report.backends.items()}
        result["dropped"] = sum(stats.dropped + stats.failed for stats in report.backends.values())
        result["peak_queue"] = max(stats.high_water for stats in report.backends.values())
        result["done"] = report.done
        result["tracelet"] = os.path.dirname(os.path.dirname(os.path.abspath(tracelet.__file__)))
    result["thread_cpu"] = thread_cpu[0]
    return result


def _writer_cpu(experiment) -> float:
    """CPU seconds of tracelet's writer process and its children (W&B's service) so far,
    measured once everything the fit logged is written."""
    import psutil

    experiment.flush(300)
    writer = psutil.Process(experiment._bus._transport.pid)
    return sum(sum(p.cpu_times()[:2]) for p in [writer, *writer.children(recursive=True)])


@contextlib.contextmanager
def _busy_loops(count: int):
    """``count`` processes spinning beside every measurement, as other jobs on the node would."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def _measure(name: str, steps: int, workdir: str, before: str | None) -> dict:
    config = name.removesuffix(BEFORE_SUFFIX)
    env = dict(os.environ)
    if config != name:  # the other checkout's tracelet comes first on the path
        env["PYTHONPATH"] = os.pathsep.join(p for p in (before, env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, __file__, "--one", config, "--steps", str(steps), "--workdir", workdir],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _server_rates(url: str, points: int) -> None:
    """The sustained points/s tracelet's writer puts into the server, and what bounds it."""
    import psutil
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    import tracelet

    exp = tracelet.start_logging(project="bench-rate", exp_name="sustained", backend_url=url)
    assert exp.flush(120), "the MLflow backend did not open"
    writer = psutil.Process(exp._bus._transport.pid)
    cpu_before = sum(writer.cpu_times()[:2])
    started = time.perf_counter()
    for step in range(points // 4):
        for name in ("train/loss", "train/abs", "train/scaled", "epoch"):
            exp.log_metric(name, step * 1e-3, iteration=step)
    emitted = time.perf_counter() - started
    assert exp.flush(600)
    drained = time.perf_counter() - started
    writer_cpu = sum(writer.cpu_times()[:2]) - cpu_before
    stats = tracelet.stop_logging().backends["mlflow"]
    print(
        f"\nsustained: {points} points emitted in {emitted:.2f}s, in the server after {drained:.2f}s: "
        f"{stats.sent / drained:,.0f} points/s (sent {stats.sent}, dropped {stats.dropped}, "
        f"peak queue {stats.high_water}); writer CPU {writer_cpu:.2f}s = "
        f"{writer_cpu / drained:.0%} of that time"
    )

    client = MlflowClient(url)
    run_id = client.create_run(client.get_experiment_by_name("bench-rate").experiment_id).info.run_id
    timings = []
    for call in range(20):
        batch = [Metric("probe", float(i), int(time.time() * 1000), call * 1000 + i) for i in range(1000)]
        began = time.perf_counter()
        client.log_batch(run_id, metrics=batch)
        timings.append(time.perf_counter() - began)
    per_call = statistics.median(timings)
    print(
        f"the server alone: log_batch of 1000 metrics median {per_call * 1000:.0f} ms = "
        f"{1000 / per_call:,.0f} points/s for one client (MLflow's log_batch limit is 1000 metrics)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        help="measure only these (logger=False is always measured); "
        "default: all but the server ones, or with --server the server ones",
    )
    parser.add_argument("--server", action="store_true", help="start a team's MLflow server and use it")
    parser.add_argument("--rate-points", type=int, default=200_000, help="points of the --server rate probe")
    parser.add_argument("--busy", type=int, default=0, help="busy-loop processes running beside every fit")
    parser.add_argument(
        "--loader-workers",
        type=int,
        default=0,
        help="DataLoader workers whose samples cost --item-cost-us of CPU each (0: no workers)",
    )
    parser.add_argument("--item-cost-us", type=int, default=1200, help="CPU microseconds per sample")
    parser.add_argument(
        "--before",
        metavar="PATH",
        type=os.path.abspath,  # the measurement processes run in their own directories
        help="a checkout whose tracelet package each tracelet configuration is also measured with",
    )
    parser.add_argument("--one", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_job(args.one, args.steps, args.workdir)))
        return

    byte_compile_tracelet()
    if args.loader_workers:
        os.environ[LOADER_ENV] = f"{args.loader_workers},{args.item_cost_us}"
    default = (
        SERVER_CONFIGS
        if args.server
        else [c for c in CONFIGS if c not in SERVER_CONFIGS[1:] and c not in ONLY_WHEN_NAMED]
    )
    if args.busy or args.loader_workers:
        default = BUSY_DEFAULT
    chosen = ["logger=False", *(c for c in args.configs or default if c != "logger=False")]
    if args.before:
        chosen += [c + BEFORE_SUFFIX for c in chosen if c in TRACELET_BACKENDS]
    samples: dict[str, list[dict]] = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory() as root, contextlib.ExitStack() as stack:
        if args.server or any(c in SERVER_CONFIGS[1:] for c in chosen):
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
            from team_server import TeamServer

            server = stack.enter_context(TeamServer(os.path.join(root, "team-server"), workers=4))
            os.environ[SERVER_URL] = server.url
            print(f"team server up at {server.url} (PostgreSQL)", file=sys.stderr)
        for name in chosen:
            os.makedirs(os.path.join(root, name))
        stack.enter_context(_busy_loops(args.busy))
        for round_index in range(args.rounds):
            order = list(chosen)
            random.Random(round_index).shuffle(order)
            for name in order:
                workdir = os.path.join(root, name)
                samples[name].append(_measure(name, args.steps, workdir, args.before))
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
        _report(args, chosen, samples)
        if args.server:
            _server_rates(os.environ[SERVER_URL], args.rate_points)


def _report(args: argparse.Namespace, chosen: list[str], samples: dict[str, list[dict]]) -> None:
    baseline = statistics.median(s["fit"] for s in samples["logger=False"])
    load = f"; {args.busy} busy loops beside it" if args.busy else ""
    if args.loader_workers:
        load += f"; {args.loader_workers} DataLoader workers, {args.item_cost_us} us of CPU per sample"
    print(
        f"\ntrainer.fit of {args.steps} steps, 3 metrics/step, log_every_n_steps=1{load}; "
        f"median of {args.rounds} interleaved rounds"
    )
    cpu_baseline = statistics.median(s["thread_cpu"] for s in samples["logger=False"])
    width = max(18, *(len(name) for name in chosen))
    print(f"{'configuration':<{width}} {'fit median (s)':>15} {'ratio':>7} {'thread CPU':>11}   runs (s)")
    for name in chosen:
        fits = [s["fit"] for s in samples[name]]
        median = statistics.median(fits)
        runs = " ".join(f"{f:.2f}" for f in fits)
        cpu = statistics.median(s["thread_cpu"] for s in samples[name]) / cpu_baseline
        print(f"{name:<{width}} {median:>15.3f} {median / baseline:>6.2f}x {cpu:>10.2f}x   {runs}")
    print_pairs(samples, width)
    for name in (n for n in chosen if n.removesuffix(BEFORE_SUFFIX) in TRACELET_BACKENDS):
        runs = samples[name]
        print(f"\n{name}: tracelet from {sorted({s['tracelet'] for s in runs})}")
        lifecycle = [s["start"] + s["stop"] for s in runs]
        print(
            f"  start_logging median {statistics.median(s['start'] for s in runs):.3f}s, "
            f"stop_logging median {statistics.median(s['stop'] for s in runs):.3f}s, together median "
            f"{statistics.median(lifecycle):.3f}s (max {max(lifecycle):.3f}s); all flushed in time: "
            f"{all(s['done'] for s in runs)}"
        )
        print(
            "  after the fit, the writer caught up in: median "
            f"{statistics.median(s['drain'] for s in runs):.2f}s (max {max(s['drain'] for s in runs):.2f}s)"
        )
        points = [max(s["sent"].values()) for s in runs]
        per_point = [s["writer_cpu"] / p * 1e6 for s, p in zip(runs, points, strict=True) if p]
        writer_cpu = statistics.median(s["writer_cpu"] for s in runs)
        print(
            f"  writer process CPU (with its children) median {writer_cpu:.2f}s"
            f" = {statistics.median(per_point):.0f} us per event sent"
        )
        sent = sorted({tuple(sorted(s["sent"].items())) for s in runs})
        print(
            f"  events sent per run: {sent}; "
            f"dropped or failed in all runs: {sum(s['dropped'] for s in runs)}; "
            f"peak queue median {statistics.median(s['peak_queue'] for s in runs):.0f}"
        )


if __name__ == "__main__":
    main()
