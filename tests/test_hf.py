"""Hugging Face Trainer and Accelerate: captured with no code, equal to the Trainer's own integrations."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from helpers import assert_same_series, mlflow_series, remove_symbol, wandb_series
from mlflow.tracking import MlflowClient

from tracelet import journal
from tracelet.events import Metric, Metrics

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hf_trainer.py"
TRACELET_ONLY = ("system/", "checkpoint/")  # series tracelet adds beside what the Trainer logs


def _run(tmp_path: Path, *command: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        list(command), capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **env}, timeout=300
    )
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def _only_run(uri: str):
    client = MlflowClient(tracking_uri=uri)
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    return run


def _merged_series(uri: str) -> dict[str, list[tuple[int, float]]]:
    """Every run's series in the store, merged. MLflowCallback ends its run at the end of
    ``train``; the ``evaluate`` after it logs into a run MLflow starts on its own."""
    client = MlflowClient(tracking_uri=uri)
    merged: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            for key, points in mlflow_series(run.info.run_id, uri).items():
                merged[key].extend(points)
    return {k: sorted(v) for k, v in merged.items()}


def _journal_series(tmp_path: Path) -> dict[str, list[tuple[int, float]]]:
    (record,) = journal.find(tmp_path / "tracelet-runs")
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for event in journal.events(record):
        points = zip(event.names, event.values, strict=True) if isinstance(event, Metrics) else []
        if isinstance(event, Metric):
            points = [(event.name, event.value)]
        for name, value in points:
            series[name].append((event.step, value))
    return {k: sorted(v) for k, v in series.items()}


def _trainer_part(series: dict) -> dict:
    return {k: v for k, v in series.items() if not k.startswith(TRACELET_ONLY)}


def test_trainer_under_tracelet_run_records_what_its_own_mlflow_callback_records(tmp_path, store_at):
    """The example, unchanged, under ``tracelet run`` with the Trainer's MLflowCallback and
    TensorBoardCallback on: tracelet's MLflow run, W&B offline run and journal hold, key by key
    and step by step, what MLflowCallback stored; TensorBoard's copies are not captured again."""
    assert "tracelet" not in EXAMPLE.read_text().split('"""', 2)[2]
    oracle, tracked = store_at(tmp_path / "oracle.db"), store_at(tmp_path / "tracelet.db")
    command = [sys.executable, "-m", "tracelet", "run", "--backend", "mlflow,wandb", "--backend-url", tracked]
    _run(
        tmp_path,
        *command,
        "--",
        sys.executable,
        str(EXAMPLE),
        "--max-steps",
        "60",
        "--eval-steps",
        "20",
        "--report-to",
        "mlflow",
        "tensorboard",
        "--output-dir",
        "out",
        MLFLOW_TRACKING_URI=oracle,
        MLFLOW_EXPERIMENT_NAME="hf",
        TRACELET_TRACK_TENSORBOARD="1",
    )
    assert list((tmp_path / "out" / "runs").rglob("events.out.tfevents.*")), (
        "TensorBoardCallback wrote nothing"
    )
    expected = _merged_series(oracle)
    assert {"loss", "grad_norm", "learning_rate", "epoch", "eval_loss", "train_runtime"} <= set(expected)
    assert [step for step, _ in expected["loss"]] == list(range(1, 61))
    # the last: evaluate() after train()
    assert [step for step, _ in expected["eval_loss"]] == [20, 40, 60, 60]

    run = _only_run(tracked)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.runName"].startswith("hf_trainer-")
    stored = mlflow_series(run.info.run_id, tracked)
    assert_same_series(_trainer_part(stored), expected)
    assert_same_series(
        _trainer_part(wandb_series(str(next((tmp_path / "wandb").glob("offline-run-*"))))[0]), expected
    )
    assert_same_series(_trainer_part(_journal_series(tmp_path)), expected)

    params = run.data.params
    assert params["learning_rate"] == "0.001" and params["max_steps"] == "60"  # TrainingArguments
    assert params["hidden_size"] == "32" and params["num_hidden_layers"] == "2"  # the model's config
    assert params["metric_for_best_model"] == "eval_loss"
    tags = run.data.tags
    best = [value for _, value in expected["eval_loss"][:3]]
    assert tags["checkpoint.best_path"] == f"out/checkpoint-{20 * (1 + best.index(min(best)))}"
    assert tags["checkpoint.monitor"] == "eval_loss" and tags["checkpoint.last_path"] == "out/checkpoint-60"
    assert stored["checkpoint/best_score"] == [(60, min(best))]


def test_a_trainer_that_raises_marks_the_run_failed_and_loses_its_callback_at_stop(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    from hf_trainer import build_trainer, parse_args
    from transformers import Trainer

    import tracelet

    class MyTrainer(Trainer):  # a subclass, built through the patched base
        pass

    tracelet.start_logging(exp_name="hf-job", backend=["mlflow"])
    args = parse_args(["--max-steps", "20", "--eval-steps", "10", "--output-dir", str(tmp_path / "out")])
    trainer = build_trainer(args, trainer_class=MyTrainer)
    trainer.add_callback(_failing_callback())
    with pytest.raises(RuntimeError, match="a rank failed"):
        trainer.train()
    ours = [c for c in trainer.callback_handler.callbacks if type(c).__name__ == "TraceletCallback"]
    report = tracelet.stop_logging()
    left = [c for c in trainer.callback_handler.callbacks if type(c).__name__ == "TraceletCallback"]
    assert len(ours) == 1 and not left and report.status == "FAILED"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = _only_run(uri)
    assert run.info.status == "FAILED" and "a rank failed" in run.data.tags["tracelet.failure"]
    assert [step for step, _ in mlflow_series(run.info.run_id, uri)["loss"]] == list(range(1, 7))  # 7 raised


def _failing_callback():
    from transformers import TrainerCallback

    class Failing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 7:
                raise RuntimeError("a rank failed")

    return Failing()


DDP_JOB = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {examples!r})
    from hf_trainer import build_trainer, parse_args
    from transformers import TrainerCallback

    class RankOneFails(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 7 and args.process_index == 1:
                raise RuntimeError("a rank failed")

    trainer = build_trainer(parse_args(["--max-steps", "20", "--eval-steps", "10", "--output-dir", "out"]))
    trainer.add_callback(RankOneFails())
    trainer.train()
    """
)


def test_a_torchrun_trainer_job_is_one_run_from_rank_zero_failed_when_a_rank_raises(tmp_path):
    """No tracelet line in the job: ``tracelet run -- torchrun``, two ranks, rank 1 raising."""
    (tmp_path / "job.py").write_text(
        DDP_JOB.format(tests=str(Path(__file__).parent), examples=str(EXAMPLE.parent))
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "job.py"]
    out = _run(tmp_path, sys.executable, "-m", "tracelet", "run", "--", *torchrun, check=False)
    assert out.returncode != 0 and "a rank failed" in out.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = _only_run(uri)  # one run: rank 0's
    assert run.info.status == "FAILED", out.stderr[-3000:]
    steps = [step for step, _ in mlflow_series(run.info.run_id, uri)["loss"]]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 6  # each step once, up to the failure


ACCELERATE_JOB = textwrap.dedent(
    """
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, log_with="tensorboard", project_dir="tb")
    accelerator.init_trackers("accel-project", config={{"lr": 0.01, "layers": 2}})
    for step in range(5):
        values = {{"loss": 1.0 / (step + 1), "note": "text", "parts": {{"a": step, "b": 2 * step}}}}
        accelerator.log(values, step=step)
    accelerator.end_training()
    """
)


def test_accelerate_log_and_init_trackers_are_captured_under_tracelet_run(tmp_path):
    (tmp_path / "train.py").write_text(ACCELERATE_JOB.format())
    _run(
        tmp_path,
        sys.executable,
        "-m",
        "tracelet",
        "run",
        "--",
        sys.executable,
        "train.py",
        TRACELET_TRACK_TENSORBOARD="1",
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = _only_run(uri)
    assert client.get_experiment(run.info.experiment_id).name == "accel-project"
    assert run.data.params["lr"] == "0.01" and run.data.params["layers"] == "2"
    series = mlflow_series(run.info.run_id, uri)
    assert series == {
        "loss": [(step, 1.0 / (step + 1)) for step in range(5)],
        "parts/a": [(step, float(step)) for step in range(5)],
        "parts/b": [(step, float(2 * step)) for step in range(5)],
    }
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*")), "Accelerate's own tracker wrote nothing"


HF_PATCH_POINTS = [
    ("transformers.trainer", "Trainer", "__init__", "Trainer metrics, params and checkpoints"),
    ("transformers.trainer", "Trainer", "train", "run status when Trainer.train fails"),
    (
        "transformers.integrations.integration_utils",
        "TensorBoardCallback",
        "on_log",
        "TensorBoard scalars without a second copy",
    ),
    ("accelerate.accelerator", "Accelerator", "log", "Accelerator.log metrics"),
]


@pytest.mark.parametrize("point", HF_PATCH_POINTS, ids=[f"{p[1]}.{p[2]}" for p in HF_PATCH_POINTS])
def test_a_transformers_release_without_a_patch_point_costs_only_its_capability(point, monkeypatch, caplog):
    import importlib

    import tracelet

    module, owner_name, attribute, capability = point
    remove_symbol(monkeypatch, getattr(importlib.import_module(module), owner_name), attribute)
    points = [(getattr(importlib.import_module(m), o), a) for m, o, a, _ in HF_PATCH_POINTS]
    originals = {p: vars(p[0])[p[1]] for p in points}
    tracelet.start_logging(project="drift")
    try:
        unpatched = [(o.__name__, a) for (o, a), original in originals.items() if vars(o)[a] is original]
    finally:
        tracelet.stop_logging()
    assert unpatched == [(owner_name, attribute)]  # every other patch point applied
    warnings = [r.getMessage() for r in caplog.records if "tracelet cannot capture" in r.getMessage()]
    library = module.split(".")[0]
    version = importlib.import_module(library).__version__
    assert len(warnings) == 1 and capability in warnings[0] and f"{library} {version}" in warnings[0], (
        warnings
    )
    assert all(vars(o)[a] is original for (o, a), original in originals.items()), "stop_logging restores all"
