"""A run and the parts that feed it: instrumentation, collectors, console capture, exit hooks.

``api`` keeps the active ``Run``; the run starts its parts, stops them in reverse order and
restores every global it changed (``sys.excepthook``, ``sys.exit``, the SIGTERM handler,
stdout/stderr, the ``atexit`` entry).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tracelet.bus import EventBus
from tracelet.exits import ExitHooks
from tracelet.experiment import Experiment, RunReport


class Run:
    def __init__(
        self,
        experiment: Experiment,
        bus: EventBus | None,
        console: Any,
        stop: Callable[[], object],
        name_project: Callable[[str], None],
    ) -> None:
        self.experiment = experiment
        self.bus = bus  # None on a non-zero rank: nothing is recorded there
        self.console = console  # ConsoleCapture, or None; imported lazily like every part
        self.safety: Any = None  # the instrumentation's Safety: its failures and its cost
        self._name_project = name_project
        self._instrumentors: list[Any] = []  # wrapt is imported only when something is instrumented
        self._collectors: list[Any] = []
        self._exits = ExitHooks(experiment.sink, stop)

    @property
    def instrumentors(self) -> tuple[Any, ...]:
        return tuple(self._instrumentors)

    @property
    def collectors(self) -> tuple[Any, ...]:
        return tuple(self._collectors)

    def start(self, console_running: bool = False) -> None:
        """Instrument, start the collectors and the console capture, install the exit hooks."""
        experiment = self.experiment
        settings, sink = experiment.settings, experiment.sink
        if experiment.is_recording and (
            settings.track_lightning
            or settings.track_tensorboard
            or settings.track_transformers
            or settings.track_env
        ):
            from tracelet.instrumentation.base import Safety

            safety = self.safety = Safety(settings.strict, lose=sink.lose)
            if settings.track_lightning:
                from tracelet.instrumentation.lightning import LightningInstrumentor

                self._instrumentors.append(LightningInstrumentor(sink, safety, settings))
            if settings.track_tensorboard:
                from tracelet.instrumentation.tensorboard import TensorBoardInstrumentor

                self._instrumentors.append(TensorBoardInstrumentor(sink, safety))
            if settings.track_transformers:
                from tracelet.instrumentation.hf_accelerate import AccelerateInstrumentor
                from tracelet.instrumentation.hf_trainer import TrainerInstrumentor

                self._instrumentors.append(TrainerInstrumentor(sink, safety))
                self._instrumentors.append(AccelerateInstrumentor(sink, safety, self._name_project))
            if settings.track_env:
                from tracelet.instrumentation.arguments import ArgparseInstrumentor

                self._instrumentors.append(ArgparseInstrumentor(sink, safety))
        for instrumentor in self._instrumentors:
            instrumentor.instrument()
        if experiment.is_recording and settings.track_system:
            from tracelet.collectors.system import SystemCollector

            self._collectors.append(SystemCollector(sink, settings.metrics_interval))
        for collector in self._collectors:
            collector.start()
        if self.console is not None and not console_running:
            self.console.start()
        self._exits.install()

    def stop_parts(self) -> None:
        """Everything ``start`` did, undone in reverse; the console keeps capturing."""
        self._exits.remove()
        while self._collectors:
            self._collectors.pop().stop()
        while self._instrumentors:
            self._instrumentors.pop().uninstrument()
        self.safety = None

    def restart(self) -> None:
        """The parts again, with the experiment's new settings."""
        self.stop_parts()
        if self.console is not None and not self.experiment.settings.track_console:
            self.console.stop()
            self.console.cleanup()
            self.console = None
        self.start(console_running=self.console is not None)

    def stop(self, timeout: float) -> RunReport:
        """Stop the parts, then end the experiment within ``timeout`` (backend I/O: call it
        without holding locks)."""
        experiment, console, safety = self.experiment, self.console, self.safety
        self.console = None
        if console is not None:
            experiment.log_artifact(console.stop())
        self.stop_parts()
        if safety is not None and safety.calls and experiment.settings.self_telemetry:
            experiment.sink.metrics(
                {"tracelet/hook_time_s": safety.seconds, "tracelet/hook_calls": safety.calls},
                None,
                time.time(),
            )
        report = experiment._end(timeout)
        if safety is not None:
            report.hook_seconds, report.hook_calls = safety.seconds, safety.calls
        if console is not None and report.done:
            console.cleanup()  # every backend has its copy
        return report
