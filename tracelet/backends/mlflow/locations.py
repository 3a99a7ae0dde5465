"""Where an MLflow run lives, and how to look at it."""

from __future__ import annotations

import os

from tracelet import commands


def default_tracking_uri(backend_url: str | None) -> str:
    """tracelet's ``backend_url``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    uri = backend_url or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return "sqlite:///" + os.path.abspath("mlflow.db")


UI_ADDRESS = "http://127.0.0.1:5000"  # where ``mlflow ui`` serves by default
# One person viewing a local store needs one web worker: MLflow's default four (and its job
# runner) take ~30 s and ~50 s of CPU to start on a 2-vCPU machine, one worker ~18 s and ~31 s.
UI_OPTIONS = "--workers 1"


def view_hint(uri: str, experiment_id: str, run_id: str) -> tuple[str, str | None]:
    """How to see the run: a command and the page it then serves, or the server's page."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    if uri.startswith(("http://", "https://")):
        url = f"{uri.rstrip('/')}/{page}"
        return url, url
    if uri.startswith("databricks"):
        return f"the Databricks workspace ({uri}), experiment {experiment_id}", None
    return f"{commands.script('mlflow')} ui --backend-store-uri {uri} {UI_OPTIONS}", f"{UI_ADDRESS}/{page}"
