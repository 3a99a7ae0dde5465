"""The sink: where the manual API, the instrumentations and the collectors put what they capture.

Every metric value passes one check (``read_metrics``); every input that is not logged is
counted once, in the bus's ``Ledger``, under its reason, and warned about the first time its
cause is seen. The sink also keeps the run's status (the most severe one seen).
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tracelet import _log
from tracelet.events import FAILED, FINISHED, KILLED, Artifact, Metric, Metrics, Params, Tags
from tracelet.pending import DeferredMetrics, HostMetrics
from tracelet.secrets import redact_params
from tracelet.values import Unusable, safe_repr, to_float, to_plain, to_step

if TYPE_CHECKING:
    from tracelet.bus import EventBus

log = _log.get_logger(__name__)

RUNNING = "RUNNING"
_SEVERITY = {RUNNING: 0, FINISHED: 1, KILLED: 2, FAILED: 3}


class Sink:
    """The run's input. With no bus (a non-zero rank) every call is a no-op."""

    def __init__(self, bus: EventBus | None) -> None:
        self._bus = bus
        self.status = RUNNING
        self.failure: str | None = None  # the end of the traceback that failed the run
        self._exit_code: object = None

    # -- metrics --------------------------------------------------------------------------
    def metric(self, name: Any, value: Any, step: Any) -> None:
        """One point from the user's own call: checked now, on the caller's thread."""
        if self._bus is None:
            return
        try:
            name = name if type(name) is str else str(name)
            point = Metric(name, to_float(value), to_step(step), time.time())
        except Exception as err:  # whatever the user handed us, the training loop never sees it
            self._reject(name, err)
            return
        self._bus.emit(point)

    def metrics(self, values: Mapping[str, Any], step: int | None, timestamp: float) -> None:
        """The points of one logging call, as one event; checked now."""
        if self._bus is not None:
            metrics = self.read_metrics(tuple(values), tuple(values.values()), step, timestamp)
            if metrics is not None:
                self._bus.emit(metrics)

    def host_metrics(
        self, names: tuple[str, ...], values: tuple[Any, ...], step: int | None, timestamp: float
    ) -> None:
        """Points whose values (numbers) are checked later, on the bus's sender thread."""
        if self._bus is not None:
            self._bus.emit(HostMetrics(names, values, step, timestamp, self.read_metrics))

    def deferred_metrics(
        self, names: tuple[str, ...], values: Callable[[], list[float]], step: int | None, timestamp: float
    ) -> None:
        """Points whose values are still on their way from a device; read on the sender thread."""
        if self._bus is not None:
            self._bus.emit(DeferredMetrics(names, values, step, timestamp))

    def read_metrics(
        self, names: tuple[str, ...], values: tuple[Any, ...], step: int | None, timestamp: float
    ) -> Metrics | None:
        """The check: the usable points as floats; each unusable one is counted, warned once."""
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

    # -- everything else --------------------------------------------------------------------
    def params(self, params: Mapping[str, Any]) -> None:
        """Hyperparameters, nested dicts kept; secret-looking values stored as ``***``."""
        if self._bus is None or not params:
            return
        plain = to_plain(params)  # never raises: what cannot be shown becomes its repr
        if not isinstance(plain, dict):
            self._not_a_mapping(f"params must be a mapping or a Namespace, not {type(params).__name__}")
            return
        self._bus.emit(Params(redact_params(plain)))

    def tags(self, tags: Mapping[str, Any]) -> None:
        if self._bus is None or not tags:
            return
        plain = to_plain(tags)
        if not isinstance(plain, dict):
            self._not_a_mapping(f"tags must be a mapping, not {type(tags).__name__}")
            return
        self._bus.emit(Tags({k: str(v) for k, v in plain.items()}))

    def artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        if self._bus is None:
            return
        full = os.path.abspath(os.fspath(path))
        if not os.path.exists(full):
            message = "artifact %r does not exist; not logged"
            self._drop("artifact not found", f"artifact:{full}", message, full)
            return
        self._bus.emit(Artifact(full, artifact_path))

    def mark_status(self, status: str, exc: BaseException | None = None) -> None:
        """Keep the most severe status seen: FAILED > KILLED > FINISHED."""
        if _SEVERITY[status] > _SEVERITY[self.status]:
            self.status = status
            if exc is not None and status == FAILED:
                tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
                self.failure = tail[-2000:]

    def note_exit(self, code: object) -> None:
        """The program called ``sys.exit(code)``: a non-zero code fails the run, unless what
        ended it says more (an interrupt: Lightning exits 1 after Ctrl+C; an exception)."""
        if code not in (None, 0):
            self._exit_code = code

    def final_status(self) -> str:
        """The status the run ends with, kept from now on: FINISHED unless something said otherwise."""
        if self.status == RUNNING and self._exit_code is not None:
            self.mark_status(FAILED, SystemExit(self._exit_code))
        if self.status == RUNNING:
            self.status = FINISHED
        return self.status

    def lose(self, points: int, reason: str) -> None:
        """Count points a capture lost (it failed before they became events): every backend
        lacks them, so the delivery is incomplete."""
        if self._bus is not None:
            self._bus.count_dropped(points, reason)

    # -- internals ----------------------------------------------------------------------------
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

    def _not_a_mapping(self, message: str) -> None:
        self._drop("invalid params", f"invalid-params:{message}", "%s; not logged", message)

    def _drop(self, reason: str, cause: str, message: str, *args: object) -> None:
        """Count one input that is not logged under ``reason``; warn the first time ``cause`` is seen."""
        if self._bus is not None:
            self._bus.ledger.reject(1, reason)
        _log.warn_once(cause, message, *args, log=log)


def _name_for_message(name: Any) -> str:
    text = name if isinstance(name, str) else safe_repr(name)
    return repr(text[:80] + "..." if len(text) > 80 else text)
