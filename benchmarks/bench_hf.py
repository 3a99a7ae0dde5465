"""Hugging Face ``Trainer``: fit time with tracelet against ``report_to="none"``, beside the
Trainer's own MLflow and W&B integrations, measured in the same run.

Each measurement is a fresh Python process that builds the example's model and data
(``examples/hf_trainer.py``: a two-layer BERT from a config, random tokens), warms up with a
few steps, then times ``trainer.train()`` of ``--steps`` steps, logging every
``--logging-steps`` and evaluating every ``--eval-steps``. Configurations are interleaved round
by round; the figures are medians, ratios to ``report_to="none"`` and the median of the ratios
to the baseline run of the same round.

    python benchmarks/bench_hf.py                       # 400 steps, logging every step, 5 rounds
    python benchmarks/bench_hf.py --steps 20 --rounds 1 # a smoke run
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
from pathlib import Path

from ratios import print_pairs
from tiny import byte_compile_tracelet

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CONFIGS = {
    "none": 'report_to="none": the baseline, nobody records the logs',
    "mlflow": 'report_to="mlflow": the Trainer\'s MLflowCallback into a local SQLite store',
    "wandb": 'report_to="wandb": the Trainer\'s WandbCallback, W&B offline',
    "tracelet": 'report_to="none" + tracelet.start_logging() -> MLflow (SQLite) + journal',
    "tracelet-warm": "the same, waiting for the backends to open before train() (steady state)",
}
TRACELET = ("tracelet", "tracelet-warm")


def _job(config: str, steps: int, logging_steps: int, eval_steps: int) -> dict:
    """Runs inside the measurement process, in its own directory."""
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", MLFLOW_TRACKING_URI="sqlite:///oracle.db")
    sys.path.insert(0, str(EXAMPLES))
    from hf_trainer import build_trainer, parse_args

    def trainer(max_steps: int, report_to: str):
        arguments = ["--max-steps", str(max_steps), "--logging-steps", str(logging_steps)]
        arguments += ["--eval-steps", str(eval_steps), "--report-to", report_to, "--output-dir", "out"]
        return build_trainer(parse_args(arguments))

    trainer(5, "none").train()  # warm-up: imports, first kernels, the data pipeline
    result: dict = {}
    if config in TRACELET:
        import tracelet

        tracelet.start_logging(exp_name="bench", project="bench", backend=["mlflow"])
        if config == "tracelet-warm":  # a new store: the writer imports MLflow to create it (~2 s of CPU)
            tracelet.get_active_experiment().flush()
    job = trainer(steps, "none" if config in TRACELET else config)
    started = time.perf_counter()
    job.train()
    result["fit"] = time.perf_counter() - started
    if config in TRACELET:
        started = time.perf_counter()
        report = tracelet.stop_logging()
        result["stop"] = time.perf_counter() - started
        result["sent"] = report.backends["mlflow"].sent
        result["lost"] = sum(stats.dropped + stats.failed for stats in report.backends.values())
    elif config == "wandb":
        import wandb

        wandb.finish()
    return result


def _measure(config: str, args: argparse.Namespace, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    command = [sys.executable, __file__, "--one", config, "--steps", str(args.steps)]
    command += ["--logging-steps", str(args.logging_steps), "--eval-steps", str(args.eval_steps)]
    out = subprocess.run(command, capture_output=True, text=True, check=False, cwd=workdir)
    if out.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--logging-steps", type=int, default=1)
    parser.add_argument("--eval-steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--configs", nargs="+", choices=list(CONFIGS), help="measure only these (none is always measured)"
    )
    parser.add_argument("--one", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_job(args.one, args.steps, args.logging_steps, args.eval_steps)))
        return

    byte_compile_tracelet()
    chosen = ["none", *(c for c in args.configs or CONFIGS if c != "none")]
    samples: dict[str, list[dict]] = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory() as root:
        for round_index in range(args.rounds):
            order = list(chosen)
            random.Random(round_index).shuffle(order)
            for name in order:
                samples[name].append(_measure(name, args, os.path.join(root, f"{name}-{round_index}")))
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    baseline = statistics.median(s["fit"] for s in samples["none"])
    print(
        f"\nTrainer.train of {args.steps} steps, logging every {args.logging_steps}, evaluating every "
        f"{args.eval_steps}; median of {args.rounds} interleaved rounds"
    )
    print(f"{'configuration':<10} {'fit median (s)':>15} {'ratio':>7}   runs (s)")
    for name in chosen:
        fits = [s["fit"] for s in samples[name]]
        median, runs = statistics.median(fits), " ".join(f"{f:.2f}" for f in fits)
        print(f"{name:<10} {median:>15.3f} {median / baseline:>6.2f}x   {runs}")
    print_pairs(samples, 10)
    for name in (n for n in TRACELET if n in samples):
        runs = samples[name]
        lost = sum(s["lost"] for s in runs)
        print(
            f"\n{name}: stop_logging median {statistics.median(s['stop'] for s in runs):.3f}s; points sent "
            f"per run {sorted({s['sent'] for s in runs})}; dropped or failed in all runs: {lost}"
        )


if __name__ == "__main__":
    main()
