"""Every example runs, with small settings, and its run exists in the store it names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import mlflow_run, mlflow_series

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_records_its_run_in_the_local_mlflow_store(tmp_path):
    env = dict(os.environ, QUICKSTART_EPOCHS="1")
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}" in out.stdout
    run_id = out.stdout.split("is in MLflow as run ")[1].split()[0]
    run = mlflow_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "quickstart"
    assert run.data.params == {"lr": "0.05", "hidden": "16"}
    series = mlflow_series(run_id)
    assert {"train/loss_step", "train/loss_epoch", "val/loss", "epoch"} <= set(series)
    assert [step for step, _ in series["train/loss_step"]] == [4, 9, 14, 19, 24]


def test_overhead_benchmark_runs_in_smoke_mode():
    out = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES.parent / "benchmarks" / "bench_overhead.py"),
            "--steps",
            "30",
            "--rounds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tracelet-3" in out.stdout and out.stdout.count("dropped or failed in all runs: 0") == 2
