"""Every test runs in its own working directory (so ./mlflow.db is its own store), in strict
mode (tracelet's own errors are raised, not swallowed), and leaves no active run behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("PYTHONWARNINGS", "ignore")


# Test files by their time on a 2-vCPU machine, longest first (`pytest --durations=0`, summed
# per file). `make test` gives each file whole to one worker (--dist loadfile) in collection
# order (--no-loadscope-reorder): dealing out the long files first keeps both workers busy to
# the end, where a long file dealt last ran alone. Files not named keep their usual order.
LONGEST_FIRST = (
    "test_cli.py",
    "test_team_server.py",
    "test_examples.py",
    "test_readme.py",
    "test_hardening.py",
    "test_hf.py",
    "test_backends.py",
    "test_journal.py",
    "test_lightning.py",
    "test_store_changes.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def _template_store(tmp_path_factory) -> Path:
    """An MLflow store MLflow created and migrated once (3-10 s each time it is done), copied
    into every test's directory as ``./mlflow.db``: what MLflow would have made there."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("template-store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def _copy_store(template: Path, target: Path) -> None:
    directory = target.parent
    shutil.copyfile(template, target)
    with contextlib.closing(sqlite3.connect(target)) as db, db:
        # MLflow stores the Default experiment's artifact directory under the working directory
        db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(directory / "mlruns" / "0"),),
        )


@pytest.fixture
def store_at(_template_store):
    """``store_at(path)``: the template store copied to ``path`` (a database file), its URI
    returned. For a test whose store lies elsewhere than ``./mlflow.db`` and whose subject is not
    the store's creation: MLflow creating and migrating one costs its process ~5 s of CPU."""

    def copy(path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        _copy_store(_template_store, path)
        return f"sqlite:///{path}"

    return copy


@pytest.fixture(autouse=True)
def _isolated_run(request, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if request.node.get_closest_marker("fresh_store") is None:
        _copy_store(request.getfixturevalue("_template_store"), tmp_path / "mlflow.db")
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
