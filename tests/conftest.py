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
        if name.startswith(("TRACELET_", "MLFLOW_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TRACELET_STRICT", "1")
    yield
    import tracelet

    tracelet.stop_logging(timeout=30)
