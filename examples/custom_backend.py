"""A backend plugin in 30 lines: every metric as one JSON line in ``example-output/metrics.jsonl``.

A backend is a class with ``open(run)``, ``write(batch)`` and ``close(status)``; tracelet
calls them on the backend's own thread in its writer process. In a package, register it
under the entry-point group ``tracelet.backends`` and name it like a built-in::

    [project.entry-points."tracelet.backends"]
    jsonl = "my_package.backend:JsonLinesBackend"       # then backend="jsonl"

or name it ``module:Class`` (as here). Either way tracelet imports it only from installed
packages or PYTHONPATH — never from the working directory or the script's own directory, so
this example's directory goes on PYTHONPATH on purpose::

    PYTHONPATH=examples python examples/custom_backend.py
"""

from __future__ import annotations

import json
import os

import tracelet
from tracelet.backends.base import RunInfo, RunLocation
from tracelet.events import Event, Metric


class JsonLinesBackend:
    def open(self, run: RunInfo) -> RunLocation:
        self._path = os.path.abspath(os.path.join("example-output", "metrics.jsonl"))
        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        return RunLocation("jsonl", run.run_uid, self._path, f"cat {self._path}")

    def write(self, batch: list[Event]) -> dict[str, int]:
        for event in batch:  # params, tags and artifacts are not this backend's business
            if isinstance(event, Metric):
                record = {
                    "name": event.name,
                    "value": event.value,
                    "step": event.step,
                    "time": event.timestamp,
                }
                self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        return {}  # reason -> number of events refused: none

    def close(self, status: str) -> None:
        self._file.write(json.dumps({"status": status}) + "\n")
        self._file.close()


def main() -> None:
    experiment = tracelet.start_logging(
        project="tracelet-examples", backend=["custom_backend:JsonLinesBackend"]
    )
    for step in range(100):
        experiment.log_metric("loss", 1.0 / (step + 1), iteration=step)
    stats = tracelet.stop_logging().backends["JsonLinesBackend"]
    print(f"{stats.sent} events -> {stats.location.uri}")


if __name__ == "__main__":
    main()
