"""One run, three backends: MLflow (local SQLite), Weights & Biases and ClearML, both offline.

The same Lightning job as the quickstart; ``backend=[...]`` is the only difference. Nothing
leaves this machine: W&B writes ``./wandb/offline-run-*`` (upload later with ``wandb sync``),
ClearML an offline session (import it into a server with ``Task.import_offline_session``).

    python examples/multi_backend.py

QUICKSTART_EPOCHS sets the length (the test suite uses 1).
"""

from __future__ import annotations

import os

from quickstart import train

import tracelet


def main() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("CLEARML_OFFLINE_MODE", "1")
    backends = ["mlflow", "wandb", "clearml"]
    tracelet.start_logging(exp_name="multi-backend", project="tracelet-examples", backend=backends)
    train(default_epochs=3)  # the quickstart's job, unchanged
    report = tracelet.stop_logging()
    for name, stats in report.backends.items():
        print(f"{name}: {stats.sent} events -> {stats.location.view if stats.location else stats.error}")


if __name__ == "__main__":
    main()
