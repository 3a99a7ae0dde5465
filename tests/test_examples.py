"""Every example runs, with small settings, and its run exists in the store it names.
examples/quickstart.py is ``make demo``: tests/test_readme.py runs it as the README says."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from helpers import mlflow_series
from mlflow.tracking import MlflowClient

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example(tmp_path: Path, *command: str, **env: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        list(command), capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **env}, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def _torchrun_example(tmp_path: Path, *command: str, **env: str) -> subprocess.CompletedProcess:
    """A torchrun job, started once more if a rank aborted in gloo's C++ teardown.

    Now and then a rank dies with SIGABRT and "terminate called without an active exception"
    as its interpreter exits, after the script's last line (``destroy_process_group`` behind a
    barrier) — torch's teardown, with or without tracelet: seen in 3 of ~6 full suite runs,
    never in 62 runs of this test alone (25 of them under plain torchrun). torchrun then kills
    the other rank, so the run is incomplete: it starts again from an empty directory, once;
    any other failure, or the same one twice, fails the test.
    """
    try:
        return _example(tmp_path, *command, **env)
    except AssertionError as failure:
        if GLOO_TEARDOWN_ABORT not in str(failure):
            raise
    warnings.warn("a torchrun rank aborted in gloo's teardown; the job is started once more", stacklevel=2)
    for leftover in ("tracelet-runs", "tb", "mlruns"):
        shutil.rmtree(tmp_path / leftover, ignore_errors=True)
    (tmp_path / "mlflow.db").unlink(missing_ok=True)
    return _example(tmp_path, *command, **env)


def _runs(tmp_path: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_lightning_ddp_example_is_one_run_without_duplicated_points(tmp_path):
    _example(tmp_path, sys.executable, str(EXAMPLES / "lightning_ddp.py"), DDP_EXAMPLE_EPOCHS="1")
    (run,) = _runs(tmp_path)
    assert run.info.run_name == "ddp-cpu" and run.info.status == "FINISHED"
    series = mlflow_series(run.info.run_id)
    # 512 samples, batch 32, 2 processes: 8 steps an epoch, logged every 2nd step
    assert [s for s, _ in series["train/loss_step"]] == [1, 3, 5, 7]
    assert len(series["val/loss"]) == 1 and len(series["train/loss_epoch"]) == 1
    assert (
        run.data.params["trainer/strategy"] == "DDPStrategy" and run.data.params["trainer/world_size"] == "2"
    )


def _tensorboard(logdir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }


@pytest.mark.parametrize("launch", ["python", "tracelet run -- torchrun --nproc_per_node=2"])
def test_plain_pytorch_example_tracks_what_summary_writer_writes(tmp_path, launch):
    script = str(EXAMPLES / "plain_pytorch_tensorboard.py")
    env = {"TB_EXAMPLE_STEPS": "50", "TB_EXAMPLE_LOGDIR": str(tmp_path / "tb")}
    if launch == "python":
        _example(tmp_path, sys.executable, script, **env)
    else:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", script]
        _torchrun_example(
            tmp_path,
            sys.executable,
            "-m",
            "tracelet",
            "run",
            "--",
            *torchrun,
            **env,
        )
    (run,) = _runs(tmp_path)
    series = mlflow_series(run.info.run_id)
    import struct

    float32 = lambda v: struct.unpack("f", struct.pack("f", v))[0]  # noqa: E731 - TensorBoard keeps float32
    assert [(s, float32(v)) for s, v in series["train/loss"]] == _tensorboard(tmp_path / "tb")["train/loss"]
    assert [s for s, _ in series["train/loss"]] == list(range(0, 50, 10))  # once each, not once per rank
    assert series["lr/group0"] == [(s, 0.05) for s in range(0, 50, 10)]
    assert run.data.params["lr"] == "0.05" and len(series["hparam/final_loss"]) == 1


def test_multi_backend_example_writes_one_run_in_each_backend(tmp_path):
    out = _example(tmp_path, sys.executable, str(EXAMPLES / "multi_backend.py"), QUICKSTART_EPOCHS="1")
    (run,) = _runs(tmp_path)
    assert run.info.run_name == "multi-backend"
    lines = {line.split(":")[0]: line for line in out.stdout.splitlines() if " events -> " in line}
    assert set(lines) == {"mlflow", "wandb", "clearml", "journal"}
    assert "wandb sync" in lines["wandb"]
    sent = {name: int(line.split(": ")[1].split()[0]) for name, line in lines.items()}
    assert len(set(sent.values())) == 1 and sent["mlflow"] > 0  # every backend got every event
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))


def test_zero_code_example_runs_under_tracelet_run(tmp_path):
    script = str(EXAMPLES / "zero_code_train.py")
    assert "import tracelet" not in Path(script).read_text()
    run_command = [sys.executable, "-m", "tracelet", "run", "--project", "tracelet-examples", "--"]
    out = _example(
        tmp_path,
        *run_command,
        sys.executable,
        script,
        "--lr",
        "0.02",
        ZERO_CODE_EPOCHS="2",
        TRACELET_TRACK_ENV="1",
    )
    assert "training done" in out.stdout
    (run,) = _runs(tmp_path)
    assert run.data.params["args/lr"] == "0.02" and run.data.params["lr"] == "0.02"
    series = mlflow_series(run.info.run_id)
    assert {"train/loss", "train/acc", "epoch"} <= set(series)
    assert len(series["train/acc"]) == 2


def test_custom_backend_example_receives_every_metric(tmp_path):
    import json

    out = _example(tmp_path, sys.executable, str(EXAMPLES / "custom_backend.py"), PYTHONPATH=str(EXAMPLES))
    assert out.stdout.startswith("100 events -> ")
    records = [
        json.loads(line) for line in (tmp_path / "example-output" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records[:-1]] == list(range(100)) and records[-1] == {"status": "FINISHED"}
