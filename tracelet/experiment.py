"""The run handle: the manual logging API and the run's status and whereabouts."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from tracelet.backends.base import RunInfo, RunLocation
from tracelet.bus import EventBus, Outcome
from tracelet.config import Settings
from tracelet.events import FAILED, FINISHED, KILLED
from tracelet.sink import RUNNING, Sink
from tracelet.wire import BackendStats


@dataclasses.dataclass
class RunReport:
    """What ``stop_logging`` returns: the final status and, per backend, what was delivered."""

    status: str
    done: bool
    backends: dict[str, BackendStats]
    hook_seconds: float = 0.0  # time spent in tracelet's code inside patched functions
    hook_calls: int = 0

    def lines(self) -> list[str]:
        lines = [_summary_line(stats, self.done) for stats in self.backends.values()]
        if self.hook_calls:
            lines.append(
                f"cost on the training thread: {self.hook_seconds * 1e3:.1f} ms in {self.hook_calls} "
                f"captures ({self.hook_seconds / self.hook_calls * 1e6:.1f} us each)"
            )
        return lines


class Experiment:
    """A tracked run. Returned by ``tracelet.start_logging``; also ``tracelet.get_active_experiment()``.

    Metrics captured automatically (Lightning) and logged here travel the same way::

        exp = tracelet.start_logging(exp_name="baseline", project="cifar")
        exp.log_params({"lr": 1e-3, "model": {"depth": 18}})
        exp.log_metric("val/acc", 0.91, iteration=1200)
        exp.log_artifact("confusion.png", artifact_path="plots")
        print(exp.locations["mlflow"].view)   # where to look
    """

    def __init__(self, settings: Settings, run: RunInfo, bus: EventBus | None) -> None:
        self.settings = settings
        self.run = run
        self._bus = bus
        self.sink = Sink(bus)  # what instrumentation and collectors capture goes in here
        self._report: RunReport | None = None

    # -- identity --------------------------------------------------------------------------
    @property
    def name(self) -> str | None:
        return self.run.exp_name

    @property
    def project(self) -> str | None:
        return self.run.project

    @property
    def run_uid(self) -> str:
        """tracelet's id of this run (stored as the tag ``tracelet.run_uid`` in every backend)."""
        return self.run.run_uid

    @property
    def status(self) -> str:
        return self.sink.status

    @property
    def is_recording(self) -> bool:
        """False on non-zero ranks of a distributed job and once the run has ended."""
        return self._bus is not None and self._report is None

    @property
    def locations(self) -> dict[str, RunLocation]:
        """Backend name -> where that backend keeps this run (known once the backend has opened)."""
        return {name: s.location for name, s in self.stats().items() if s.location is not None}

    def stats(self) -> dict[str, BackendStats]:
        if self._report is not None:
            return self._report.backends
        return self._bus.stats() if self._bus is not None else {}

    # -- manual logging ---------------------------------------------------------------------
    def log_metric(self, name: str, value: Any, iteration: Any = None) -> None:
        """Record one point of the series ``name`` at step ``iteration``.

        Accepts Python numbers, one-element tensors and arrays. A value or step that is not a
        number is dropped and counted (``invalid metric: <cause>``) with one warning per cause;
        it never raises.
        """
        self.sink.metric(name, value, iteration)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record hyperparameters; nested dicts are kept, each backend flattens them its own way.

        Values under secret-looking names (``api_key``, ``hf_token``, ``db_password``...) are stored
        as ``***``.
        """
        self.sink.params(params)

    def set_tag(self, key: str, value: Any) -> None:
        self.sink.tags({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.sink.tags(tags)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy a local file or directory into the run (under ``artifact_path`` when given).

        The file is read by the backend later, on its own worker: keep it in place until
        ``flush`` or ``stop_logging`` returns.
        """
        self.sink.artifact(path, artifact_path)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every backend has written everything logged so far; False if ``timeout`` passed."""
        if self._bus is None or self._report is not None:
            return self._report is None or self._report.done
        return self._bus.flush(self.settings.stop_timeout if timeout is None else timeout).done

    def _end(self, timeout: float) -> RunReport:
        if self._report is not None:
            return self._report
        status = self.sink.final_status()
        if self._bus is None:
            self._report = RunReport(status, True, {})
            return self._report
        if self.sink.failure:
            self.set_tag("tracelet.failure", self.sink.failure)
        outcome: Outcome = self._bus.shutdown(status, timeout)
        self._report = RunReport(status, outcome.done, outcome.stats)
        return self._report


def _summary_line(stats: BackendStats, all_done: bool) -> str:
    """``mlflow: complete, 8000 events sent, peak queue 812 - run 1f3c…: <how to view it>``; an
    incomplete delivery names what is missing, by reason."""
    parts = [f"{stats.name}: {'complete' if stats.complete else 'INCOMPLETE'}, {stats.sent} events sent"]
    for label, count in (
        ("dropped", stats.dropped),
        ("refused", stats.refused),
        ("failed", stats.failed),
        ("pending", stats.pending),
        ("invalid inputs", stats.invalid),
    ):
        if count:
            parts.append(f"{count} {label}")
    text = ", ".join(parts) + f", peak queue {stats.high_water}"
    if stats.reasons:
        text += " (" + ", ".join(f"{reason}: {n}" for reason, n in sorted(stats.reasons.items())) + ")"
    if stats.state == "failed":
        text += f" - disabled: {stats.error}"
    elif stats.state == "unclosed":
        text += f" - {stats.error}"
    elif stats.state == "lost":
        text += " - tracelet's writer process exited"
    elif stats.state not in ("closed",) and not all_done:
        text += f" - did not finish in time ({stats.pending} events pending, state {stats.state})"
    location = stats.location
    if location is not None:
        text += f" - run {location.run_id}: {location.view}"
        if location.url and location.url != location.view:
            text += f", then open {location.url}"
    return text


__all__ = ["FAILED", "FINISHED", "KILLED", "RUNNING", "Experiment", "RunReport"]
