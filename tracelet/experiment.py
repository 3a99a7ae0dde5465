"""The run handle: the manual logging API and the run's status and whereabouts."""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from tracelet import _log
from tracelet.backends.base import RunInfo, RunLocation
from tracelet.bus import EventBus, Outcome
from tracelet.config import Settings
from tracelet.events import FAILED, FINISHED, KILLED, Artifact, Metric, Metrics, Params, Tags
from tracelet.pending import DeferredMetrics, HostMetrics
from tracelet.secrets import redact_params
from tracelet.values import Unusable, safe_repr, to_float, to_plain, to_step
from tracelet.wire import BackendStats

log = _log.get_logger(__name__)

RUNNING = "RUNNING"
_SEVERITY = {RUNNING: 0, FINISHED: 1, KILLED: 2, FAILED: 3}


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
        self._status = RUNNING
        self._failure: str | None = None
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
        return self._status

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
        if self._bus is None:
            return
        try:
            point = Metric(_name(name), to_float(value), to_step(iteration), time.time())
        except Exception as err:  # whatever the user handed us, the training loop never sees it
            self._reject(name, err)
            return
        self._bus.emit(point)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record hyperparameters; nested dicts are kept, each backend flattens them its own way.

        Values under secret-looking names (``api_key``, ``hf_token``, ``db_password``...) are stored
        as ``***``.
        """
        if self._bus is None or not params:
            return
        plain = to_plain(params)  # never raises: what cannot be shown becomes its repr
        if not isinstance(plain, dict):
            message = f"params must be a mapping or a Namespace, not {type(params).__name__}"
            self._drop("invalid params", f"invalid-params:{message}", "%s; not logged", message)
            return
        self._bus.emit(Params(redact_params(plain)))

    def set_tag(self, key: str, value: Any) -> None:
        self.set_tags({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self._bus is None or not tags:
            return
        plain = to_plain(tags)
        if not isinstance(plain, dict):
            message = f"tags must be a mapping, not {type(tags).__name__}"
            self._drop("invalid params", f"invalid-params:{message}", "%s; not logged", message)
            return
        self._bus.emit(Tags({k: str(v) for k, v in plain.items()}))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy a local file or directory into the run (under ``artifact_path`` when given).

        The file is read by the backend later, on its own worker: keep it in place until
        ``flush`` or ``stop_logging`` returns.
        """
        if self._bus is None:
            return
        full = os.path.abspath(os.fspath(path))
        if not os.path.exists(full):
            self._drop(
                "artifact not found", f"artifact:{full}", "artifact %r does not exist; not logged", full
            )
            return
        self._bus.emit(Artifact(full, artifact_path))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every backend has written everything logged so far; False if ``timeout`` passed."""
        if self._bus is None or self._report is not None:
            return self._report is None or self._report.done
        return self._bus.flush(self.settings.stop_timeout if timeout is None else timeout).done

    # -- used by instrumentation and the lifecycle -----------------------------------------
    def _emit_metrics(self, values: Mapping[str, Any], step: int | None, timestamp: float) -> None:
        """The points of one logging call, as one event (``Metrics``)."""
        if self._bus is not None:
            metrics = self._read_metrics(tuple(values), tuple(values.values()), step, timestamp)
            if metrics is not None:
                self._bus.emit(metrics)

    def _emit_host(
        self, names: tuple[str, ...], values: tuple[Any, ...], step: int | None, timestamp: float
    ) -> None:
        """Points whose values (numbers) are checked later, on the sender thread."""
        if self._bus is not None:
            self._bus.emit(HostMetrics(names, values, step, timestamp, self._read_metrics))

    def _read_metrics(
        self, names: tuple[str, ...], values: tuple[Any, ...], step: int | None, timestamp: float
    ) -> Metrics | None:
        """The usable points as floats; each unusable one is counted and warned about once."""
        kept: list[str] = []
        numbers: list[float] = []
        for name, value in zip(names, values, strict=True):
            if type(value) is not float:
                try:
                    value = to_float(value)
                except Exception as err:
                    self._reject(name, err)
                    continue
            kept.append(name)
            numbers.append(value)
        return Metrics(tuple(kept), tuple(numbers), step, timestamp) if kept else None

    def _emit_deferred(
        self, names: tuple[str, ...], values: Callable[[], list[float]], step: int | None, timestamp: float
    ) -> None:
        """Points whose values are still on their way from a device; read on the sender thread."""
        if self._bus is not None:
            self._bus.emit(DeferredMetrics(names, values, step, timestamp))

    def _reject(self, name: Any, err: Exception) -> None:
        """Count a point that has no usable value or step; warn once per kind of problem."""
        cause = err.cause if isinstance(err, Unusable) else f"{type(err).__name__} while reading it"
        self._drop(
            f"invalid metric: {cause}",
            f"invalid-metric:{cause}",
            "metric %s: %s; the point is dropped. Later points with this problem are dropped "
            "without a warning and counted in the stop summary ('invalid metric: %s').",
            _name_for_message(name),
            err,
            cause,
        )

    def _lose(self, points: int, reason: str) -> None:
        """Count points a capture lost (it failed before they became events): every backend
        lacks them, so the delivery is incomplete."""
        if self._bus is not None:
            self._bus.count_dropped(points, reason)

    def _drop(self, reason: str, cause: str, message: str, *args: object) -> None:
        """Count one input that is not logged under ``reason``; warn the first time ``cause`` is seen."""
        if self._bus is not None:
            self._bus.count_invalid(1, reason)
        _log.warn_once(cause, message, *args, log=log)

    def _mark_status(self, status: str, exc: BaseException | None = None) -> None:
        """Keep the most severe status seen: FAILED > KILLED > FINISHED."""
        if _SEVERITY[status] > _SEVERITY[self._status]:
            self._status = status
            if exc is not None and status == FAILED:
                tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
                self._failure = tail[-2000:]

    def _end(self, timeout: float) -> RunReport:
        if self._report is not None:
            return self._report
        status = FINISHED if self._status == RUNNING else self._status
        self._status = status
        if self._bus is None:
            self._report = RunReport(status, True, {})
            return self._report
        if self._failure:
            self.set_tag("tracelet.failure", self._failure)
        outcome: Outcome = self._bus.shutdown(status, timeout)
        self._report = RunReport(status, outcome.done, outcome.stats)
        return self._report


def _name(name: Any) -> str:
    return name if type(name) is str else str(name)


def _name_for_message(name: Any) -> str:
    text = name if isinstance(name, str) else safe_repr(name)
    return repr(text[:80] + "..." if len(text) > 80 else text)


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
