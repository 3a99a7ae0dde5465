"""The journal: every event on local disk, listed by `tracelet runs`, replayable into any backend."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import mlflow_series, wandb_series
from mlflow.tracking import MlflowClient

import tracelet
from tracelet import journal
from tracelet.cli import main as cli
from tracelet.events import Metric, Params, Tags
from tracelet.replay import replay


def _log_a_run(points: int = 300):
    exp = tracelet.start_logging(project="journal", exp_name="first")
    exp.log_params({"lr": 0.1, "model": {"depth": 3}})
    exp.set_tag("team", "vision")
    for i in range(points):
        exp.log_metric("train/loss", 1.0 / (i + 1), iteration=i)
        if i % 50 == 0:
            exp.log_metric("val/acc", i / points, iteration=i)
    exp.log_metric("weird", float("nan"), iteration=3)
    Path("notes.txt").write_text("artifact body")
    exp.log_artifact("notes.txt", artifact_path="extra")
    report = tracelet.stop_logging()
    return exp, report


def _only_journal(root: str = "tracelet-runs") -> journal.Journal:
    (record,) = journal.find(root)
    return record


def _mlflow_run(uri: str):
    client = MlflowClient(tracking_uri=uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    return client, runs


def test_the_journal_holds_every_event_and_what_each_backend_received():
    exp, report = _log_a_run()
    record = _only_journal()
    assert report.backends["journal"].sent == report.backends["mlflow"].sent > 300
    assert record.run["run_uid"] == exp.run_uid and record.status == "FINISHED"
    assert record.run["project"] == "journal" and record.run["exp_name"] == "first"
    assert "api_key" not in record.run["settings"]
    events = list(journal.events(record))
    metrics = [e for e in events if isinstance(e, Metric)]
    assert [(m.step, m.value) for m in metrics if m.name == "train/loss"] == [
        (i, 1.0 / (i + 1)) for i in range(300)
    ]
    assert math.isnan(next(m.value for m in metrics if m.name == "weird"))
    assert Params({"lr": 0.1, "model": {"depth": 3}}) in events and Tags({"team": "vision"}) in events
    (artifact,) = [e for e in events if type(e).__name__ == "Artifact"]
    assert Path(artifact.path).read_text() == "artifact body" and artifact.artifact_path == "extra"
    assert record.delivery["mlflow"]["state"] == "closed"
    assert record.delivery["mlflow"]["sent"] == report.backends["mlflow"].sent
    assert record.delivery["mlflow"]["run_id"] == exp.locations["mlflow"].run_id


def test_replay_makes_a_fresh_run_with_the_original_steps_values_and_timestamps(tmp_path, store_at):
    exp, _ = _log_a_run()
    original_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    target = store_at(tmp_path / "replayed.db")
    record = _only_journal()
    stats = replay(record.path, ["mlflow"], backend_url=target)
    assert stats["mlflow"].state == "closed" and stats["mlflow"].failed == 0
    client, (replayed,) = _mlflow_run(target)
    original_client, (original,) = _mlflow_run(original_uri)
    assert replayed.info.run_id != original.info.run_id
    assert replayed.info.status == "FINISHED" and replayed.info.run_name == "first"
    assert replayed.info.start_time == original.info.start_time
    original_series = mlflow_series(original.info.run_id, original_uri)
    replayed_series = mlflow_series(replayed.info.run_id, target)
    assert sorted(original_series) == sorted(replayed_series)
    for key in original_series:
        want = [
            (m.step, m.timestamp, m.value)
            for m in original_client.get_metric_history(original.info.run_id, key)
        ]
        got = [(m.step, m.timestamp, m.value) for m in client.get_metric_history(replayed.info.run_id, key)]
        assert sorted(map(repr, got)) == sorted(map(repr, want)), key  # repr: nan == nan
    assert replayed.data.params == original.data.params
    assert replayed.data.tags["tracelet.run_uid"] == exp.run_uid
    assert replayed.data.tags["tracelet.replayed_from"] == record.path
    path = client.download_artifacts(replayed.info.run_id, "extra/notes.txt", str(tmp_path / "dl"))
    assert Path(path).read_text() == "artifact body"
    assert _only_journal().delivery["mlflow"]["replayed_at"] > 0


def test_replay_into_wandb_offline_keeps_the_trainer_steps(tmp_path):
    _log_a_run(points=60)
    stats = replay(_only_journal().path, ["wandb"])
    series, run = wandb_series(stats["wandb"].location.uri)
    assert series["train/loss"] == [(i, 1.0 / (i + 1)) for i in range(60)]
    assert run["config"]["lr"] == 0.1


def test_a_torn_last_record_is_skipped_and_the_rest_replays(tmp_path, store_at):
    _log_a_run(points=20)
    record = _only_journal()
    with open(os.path.join(record.path, journal.EVENTS_FILE), "a", encoding="utf-8") as handle:
        handle.write('["m","train/loss",0.5,9')  # a write cut short by a crash
    events = list(journal.events(record))
    assert sum(1 for e in events if isinstance(e, Metric) and e.name == "train/loss") == 20
    target = store_at(tmp_path / "replayed.db")
    progress = io.StringIO()
    stats = replay(record.path, ["mlflow"], backend_url=target, progress=progress)
    assert stats["mlflow"].failed == stats["mlflow"].dropped == 0
    _, (run,) = _mlflow_run(target)
    assert len(mlflow_series(run.info.run_id, target)["train/loss"]) == 20
    total = journal.count_events(record)
    assert "replaying: 100%" in progress.getvalue() and f"{total}/{total}" in progress.getvalue()


def test_journal_off_writes_nothing(monkeypatch):
    monkeypatch.setenv("TRACELET_JOURNAL", "false")
    tracelet.start_logging().log_metric("a", 1.0, iteration=0)
    report = tracelet.stop_logging()
    assert "journal" not in report.backends and not Path("tracelet-runs").exists()


def test_journal_dir_setting_is_honoured(tmp_path):
    tracelet.start_logging(config={"journal_dir": str(tmp_path / "elsewhere")}).log_metric("a", 1.0)
    tracelet.stop_logging()
    assert len(journal.find(tmp_path / "elsewhere")) == 1 and not Path("tracelet-runs").exists()


def test_tracelet_runs_lists_runs_with_status_counts_and_delivery(capsys):
    _log_a_run(points=10)
    assert cli(["runs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["started", "name", "project", "status"]
    row = out[1]
    assert "first" in row and "journal" in row and "FINISHED" in row and "mlflow complete" in row
    count = journal.count_events(_only_journal())
    assert f" {count} " in row


def test_tracelet_runs_columns_line_up_with_wide_and_combining_names(capsys):
    from tracelet.cli import _width

    for name in ("学習-実験", "ünï\u0301code", "a"):
        tracelet.start_logging(exp_name=name, project="プロジェクト", backend="journal").log_metric("x", 1.0)
        tracelet.stop_logging()
    assert cli(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    status_column = {
        _width(line[: line.index(word)])
        for line, word in zip(lines, ["status", *["FINISHED"] * 3], strict=True)
    }
    assert len(status_column) == 1  # every row's status starts in the same terminal column


def test_replay_cli_reports_and_rejects_what_is_not_a_journal(tmp_path, store_at, capsys):
    _log_a_run(points=10)
    record = _only_journal()
    target = store_at(tmp_path / "cli.db")
    assert cli(["replay", record.path, "--backend", "mlflow", "--backend-url", target]) == 0
    assert "mlflow: " in capsys.readouterr().out
    assert cli(["replay", str(tmp_path), "--backend", "mlflow"]) == 1
    assert "not a journaled run" in capsys.readouterr().err
    assert cli(["replay", record.path, "--backend", "nosuch"]) == 2
    assert "unknown backend 'nosuch'" in capsys.readouterr().err


KILLED_FIT = textwrap.dedent("""
    import os, signal, time, sys
    sys.path.insert(0, {tests!r})
    import lightning.pytorch as pl
    from helpers import make_trainer, tiny_loaders, tiny_module_class
    import tracelet

    class KillAt(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 12:
                time.sleep(1.5)  # everything logged so far is now more than a second old
                with open("killed_at", "w") as handle:
                    handle.write(str(time.time()))
                os.kill(os.getpid(), signal.SIGKILL)

    tracelet.start_logging(project="killed")
    pl.seed_everything(7, verbose=False)
    train, val = tiny_loaders()
    trainer = make_trainer(log_every_n_steps=1, callbacks=[KillAt()], max_epochs=5)
    trainer.fit(tiny_module_class()(), train, val)
""")


def test_kill_9_mid_fit_leaves_a_journal_with_every_event_up_to_a_second_before(tmp_path, store_at):
    (tmp_path / "job.py").write_text(KILLED_FIT.format(tests=str(Path(__file__).parent)))
    out = subprocess.run([sys.executable, "job.py"], cwd=tmp_path, capture_output=True, timeout=300)
    assert out.returncode == -9, out.stderr[-3000:]
    killed_at = float((tmp_path / "killed_at").read_text())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _only_journal(tmp_path / "tracelet-runs").status == "RUNNING":
        time.sleep(0.2)  # the writer closes the journal on its own after EOF
    record = _only_journal(tmp_path / "tracelet-runs")
    assert record.status == "KILLED"
    losses = [e for e in journal.events(record) if isinstance(e, Metric) and e.name == "train/loss_step"]
    # the kill came in the hook of the 12th batch, before Lightning logged that batch (step 11)
    assert [m.step for m in losses] == list(range(11))
    assert all(m.timestamp < killed_at - 1.0 for m in losses)
    target = store_at(tmp_path / "replayed.db")
    stats = replay(record.path, ["mlflow"], backend_url=target)
    assert stats["mlflow"].failed == stats["mlflow"].dropped == 0
    _, (run,) = _mlflow_run(target)
    assert run.info.status == "KILLED"
    assert [s for s, _ in mlflow_series(run.info.run_id, target)["train/loss_step"]] == list(range(11))


@pytest.mark.parametrize("garbage", ["", "{not json"])
def test_a_directory_without_a_valid_run_file_is_not_a_journal(tmp_path, garbage):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / journal.RUN_FILE).write_text(garbage)
    with pytest.raises(ValueError):
        journal.load(tmp_path / "run")
    assert journal.find(tmp_path) == []


def test_records_round_trip_through_the_line_format(tmp_path):
    events = [Metric("a/b", -0.5, None, 12.25), Params({"x": [1, 2], "y": None}), Tags({"k": "ünï"})]
    lines = [journal.encode(e) for e in events]
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    assert [journal.decode(line, str(tmp_path)) for line in lines] == events
    assert json.loads(journal.encode(Metric("inf", math.inf, 1, 0.0)))[2] == math.inf


@pytest.mark.parametrize("name", ["a/b", "ünï", 'q"x\\y\n', "😀", ""])
@pytest.mark.parametrize("value", [0.5, -0.0, 1e300, 5e-324, 1 / 3, math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("step", [None, 0, -5, 2**62, True])
def test_a_metric_line_is_exactly_what_json_dumps_writes(name, value, step):
    metric = Metric(name, value, step, 1_700_000_000.125)
    written = json.dumps(
        ["m", name, value, step, metric.timestamp], separators=(",", ":"), ensure_ascii=False
    )
    assert journal.encode(metric) == written + "\n"
    decoded = journal.decode(journal.encode(metric), "/")
    assert decoded.name == name and decoded.step == step and (decoded.value == value or math.isnan(value))
