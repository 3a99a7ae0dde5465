"""Every test runs in its own working directory (so ./mlflow.db is its own store), in strict
mode (tracelet's own errors are raised, not swallowed), and leaves no active run behind."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("PYTHONWARNINGS", "ignore")


@pytest.fixture(autouse=True)
def _isolated_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("TRACELET_", "MLFLOW_", "WANDB_", "CLEARML_", "TRAINS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TRACELET_STRICT", "1")
    # collectors add events that most tests count exactly; the tests of collectors turn them on
    monkeypatch.setenv("TRACELET_TRACK_SYSTEM", "0")
    monkeypatch.setenv("TRACELET_TRACK_GIT", "0")
    monkeypatch.setenv("TRACELET_TRACK_ENV", "0")
    monkeypatch.setenv("TRACELET_TRACK_CONSOLE", "0")
    # Lightning's optimizer and perf/ series are tracelet's own (no CSVLogger oracle has them)
    monkeypatch.setenv("TRACELET_TRACK_OPTIMIZER", "0")
    monkeypatch.setenv("TRACELET_TRACK_PERF", "0")
    monkeypatch.setenv("TRACELET_SELF_TELEMETRY", "0")
    # every backend stays local: W&B offline, ClearML offline, both writing under the test's directory
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("CLEARML_OFFLINE_MODE", "1")
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(tmp_path / "clearml"))
    yield
    import tracelet

    tracelet.stop_logging(timeout=30)


@pytest.fixture(scope="session")
def team_server(tmp_path_factory):
    """``mlflow server`` on PostgreSQL with proxied artifacts, started once for the tests that
    ask for it (~15 s) and stopped with its database at the end."""
    from team_server import TeamServer

    with TeamServer(tmp_path_factory.mktemp("team-server")) as server:
        yield server
