"""The backend contract, as a check a plugin's own test suite can call::

    from tracelet.testing import check_backend

    def test_my_backend_keeps_the_contract(tmp_path):
        check_backend(MyBackend, workdir=tmp_path)

It drives the backend the way tracelet's worker does — ``open``, ``write`` with every kind of
event in batches (including values a backend may refuse), ``close`` — and fails with a
message naming the broken rule. What the backend stored is for the plugin's own tests to read
back; this checks the protocol: return types, no exception for valid input, counted refusals.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from tracelet.backends.base import RunInfo, RunLocation
from tracelet.events import FINISHED, Artifact, Event, Metric, Params, Tags


def sample_run(**overrides: Any) -> RunInfo:
    fields: dict[str, Any] = {
        "run_uid": uuid.uuid4().hex,
        "project": "tracelet-contract",
        "exp_name": "contract",
        "api_key": None,
        "backend_url": None,
        "started_at": time.time(),
        "settings": {},
    }
    fields.update(overrides)
    return RunInfo(**fields)


def sample_batches(workdir: str) -> list[list[Event]]:
    """Batches a real run produces: metrics on and off a step, params, tags, an artifact."""
    artifact = os.path.join(workdir, "contract-artifact.txt")
    with open(artifact, "w", encoding="utf-8") as handle:
        handle.write("tracelet backend contract\n")
    now = time.time()
    return [
        [Params({"lr": 0.1, "model": {"depth": 3, "name": "tiny"}, "tags": ["a", "b"]}), Tags({"team": "x"})],
        [Metric("train/loss", 1.0 / (i + 1), i, now + i / 1000) for i in range(250)],
        [Metric("val/acc", 0.5, 10, now), Metric("system/cpu_percent", 12.5, 0, now)],
        [
            Metric("weird", math.nan, 3, now),
            Metric("weird", math.inf, 4, now),
            Metric("no_step", 2.0, None, now),
        ],
        [Artifact(artifact, "contract")],
    ]


def check_backend(
    factory: Callable[[], Any], workdir: str | os.PathLike[str] = ".", run: RunInfo | None = None
) -> None:
    """Raise AssertionError if the backend made by ``factory`` breaks tracelet's backend protocol."""
    workdir = os.fspath(workdir)
    backend = factory()
    for method in ("open", "write", "close"):
        assert callable(getattr(backend, method, None)), f"a backend needs a {method}() method"
    location = backend.open(run or sample_run())
    assert isinstance(location, RunLocation), (
        f"open() must return a RunLocation, got {type(location).__name__}"
    )
    assert location.run_id and location.view, "the RunLocation needs a run_id and a way to view the run"
    for batch in sample_batches(workdir):
        outcome = backend.write(batch)
        assert outcome is None or isinstance(outcome, (int, Mapping)), (
            f"write() returns None, an int or a dict reason -> count, got {type(outcome).__name__}"
        )
        refused = outcome if isinstance(outcome, int) else sum((outcome or {}).values())
        assert 0 <= refused <= len(batch), f"write() refused {refused} of {len(batch)} events"
    backend.close(FINISHED)
