"""``start_logging`` / ``stop_logging``: the run lifecycle.

start: settings -> backends resolved (fail fast) -> writer started -> instrumentation ->
exit hooks. stop: in reverse, then every backend flushed and closed within one deadline.
``atexit`` stops a run the user forgot; an uncaught exception marks it FAILED, a
KeyboardInterrupt or SIGTERM KILLED.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from tracelet import _log, naming
from tracelet.backends import base as backends
from tracelet.bus import EventBus
from tracelet.config import Settings, resolve, source_of
from tracelet.events import FAILED, KILLED
from tracelet.experiment import Experiment, RunReport

log = _log.get_logger("tracelet")

_lock = threading.RLock()
_active: Experiment | None = None
# the active run when `tracelet run` started it and no start_logging has adopted it yet
_launched: Experiment | None = None
# settings fixed once the writer has opened the run's backends
_WHERE_THE_RUN_LIVES = ("project", "exp_name", "backend", "backend_url", "api_key", "journal", "journal_dir")
_instrumentors: list[Any] = []  # Instrumentor; imported lazily (wrapt) to keep `import tracelet` cheap
_collectors: list[Any] = []
_console: Any = None  # ConsoleCapture of the active run
_safety: Any = None  # the active run's instrumentation Safety: its failures and its cost
_atexit_registered = False
_previous_excepthook: Any = None
_previous_sigterm: Any = None


def start_logging(
    exp_name: str | None = None,
    project: str | None = None,
    backend: str | Sequence[str] | None = None,
    api_key: str | None = None,
    backend_url: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Experiment:
    """Start tracking: every metric your training computes goes to every configured backend.

    ``backend`` takes a name (``"mlflow"``), a comma list (``"mlflow,wandb"``) or a list;
    the default is MLflow in a local SQLite store (``./mlflow.db``). Settings come from the
    arguments, then ``config``, then ``TRACELET_*`` environment variables. A bad setting
    raises ``tracelet.ConfigError`` here, before training starts::

        import tracelet
        tracelet.start_logging(exp_name="resnet-lr3", project="cifar")
        trainer.fit(model, data)          # every self.log(...) reaches MLflow
        tracelet.stop_logging()
    """
    arguments = {
        "exp_name": exp_name,
        "project": project,
        "backend": backend,
        "api_key": api_key,
        "backend_url": backend_url,
    }
    with _lock:
        if _active is not None and _active is _launched:
            return _adopt(_active, arguments, config)
    settings = resolve(arguments, config)
    specs = backends.resolve(settings.backends, source_of("backend", arguments, config))
    with _lock:
        if _active is not None:
            log.warning(
                "start_logging: run %r is still active; it is ended now (its summary follows) and a "
                "new run starts. Call tracelet.stop_logging() first to end a run yourself.",
                _active.name,
            )
            stop_logging()
        return _begin(settings, specs)


def start_for_program() -> Experiment:
    """The run ``tracelet run`` starts before the program's first line.

    It ships nothing until training starts (see ``bus.HOLD_MAX_S``), so that the program's own
    ``start_logging``, if it calls it, continues this run with its names and settings filling in
    what the command line did not give, instead of starting a second one.
    """
    global _launched
    settings = resolve()
    specs = backends.resolve(settings.backends, source_of("backend"))
    with _lock:
        _launched = _begin(settings, specs, hold=True)
        return _launched


def _begin(settings: Settings, specs: list[backends.BackendSpec], hold: bool = False) -> Experiment:
    _log.ensure_visible()
    _log.forget_warnings()
    recording = _is_global_zero()
    console = _new_console() if recording and settings.track_console else None
    run = _run_info(settings, uuid.uuid4().hex, time.time(), console)
    bus = EventBus(run, specs, settings.queue_size, settings.writer, hold=hold) if recording else None
    experiment = Experiment(settings, run, bus)
    _activate(experiment, console)
    return experiment


def _run_info(settings: Settings, run_uid: str, started_at: float, console: Any) -> backends.RunInfo:
    argv = _command_line()
    return backends.RunInfo(
        run_uid=run_uid,
        project=settings.project or naming.default_project(),
        exp_name=settings.exp_name or naming.default_run_name(run_uid, argv),
        api_key=settings.api_key,
        backend_url=settings.backend_url,
        started_at=started_at,
        settings={**settings.public(), "env_extra": _torch_runtime() if settings.track_env else {}},
        pid=os.getpid(),
        argv=argv,
        console_path=console.path if console is not None else None,
    )


def _adopt(
    experiment: Experiment, arguments: Mapping[str, Any], config: Mapping[str, Any] | None
) -> Experiment:
    """The program's ``start_logging`` under ``tracelet run``: continue the run already started.

    What the launch environment sets (``tracelet run``'s flags, ``TRACELET_*``) wins; the
    arguments and ``config`` fill in the rest. While nothing has been shipped, the run is
    re-opened with the merged settings; later, only what does not change where it lives applies.
    """
    global _launched
    _launched = None
    settings = resolve(arguments, config, environment_first=True)
    specs = backends.resolve(
        settings.backends, source_of("backend", arguments, config, environment_first=True)
    )
    bus = experiment._bus
    if bus is None:  # a non-zero rank records nothing either way
        experiment.settings = settings
        return experiment
    console = _console if settings.track_console else None
    run = _run_info(settings, experiment.run_uid, experiment.run.started_at, console)
    if bus.reconfigure(run, specs, settings.queue_size):
        experiment.settings, experiment.run = settings, run
        _restart_parts(experiment)
        log.info(
            "start_logging: continuing the run `tracelet run` started, as %r in %r", run.exp_name, run.project
        )
    else:
        opened = {key: getattr(experiment.settings, key) for key in _WHERE_THE_RUN_LIVES}
        ignored = [key for key, value in opened.items() if getattr(settings, key) != value]
        if ignored:
            log.warning(
                "start_logging: continuing the run `tracelet run` started, which already sends to its "
                "backends: %s from start_logging not applied. Give them to `tracelet run` instead "
                "(--project, --exp-name, --backend, --backend-url).",
                ", ".join(ignored),
            )
        settings = dataclasses.replace(settings, **opened)
        if settings != experiment.settings:  # what the training side does can still change
            experiment.settings = settings
            _restart_parts(experiment)
    bus.release()
    return experiment


def _name_project(project: str) -> None:
    """A framework's own project name (Accelerate's ``init_trackers``) names the run's project when
    nobody else did, while the run has not reached its backends (``tracelet run`` holds it)."""
    experiment = _active
    if experiment is None or experiment._bus is None or not project:
        return
    if experiment.settings.project is not None or naming.project_from_environment() is not None:
        return
    settings = dataclasses.replace(experiment.settings, project=project)
    run = experiment.run._replace(project=project, settings={**experiment.run.settings, "project": project})
    if experiment._bus.rename(run):
        experiment.settings, experiment.run = settings, run
        log.info("the run's project is %r, as the program's init_trackers names it", project)
    else:
        log.debug("init_trackers(%r) came after the run reached its backends; project kept", project)


def _restart_parts(experiment: Experiment) -> None:
    """Instrumentation, collectors and console capture again, with the run's new settings."""
    console = _console
    _deactivate()
    if console is not None and not experiment.settings.track_console:
        console.stop()
        console.cleanup()
        console = None
    _activate(experiment, console, console_running=console is not None)


def stop_logging(timeout: float | None = None) -> RunReport | None:
    """End the active run: undo every patch, then flush and close every backend.

    Waits at most ``timeout`` seconds (default: the ``stop_timeout`` setting) for all
    backends together, logs one summary line per backend and returns the report. Calling it
    again, or with no active run, does nothing and returns None.
    """
    global _active, _launched
    with _lock:
        experiment = _active
        if experiment is None:
            return None
        _active = None
        if _launched is experiment:
            _launched = None
        console = _stop_console(experiment)
        safety = _safety
        _deactivate()
        if safety is not None and safety.calls and experiment.settings.self_telemetry:
            experiment._emit_metrics(
                {"tracelet/hook_time_s": safety.seconds, "tracelet/hook_calls": safety.calls},
                None,
                time.time(),
            )
        report = experiment._end(experiment.settings.stop_timeout if timeout is None else timeout)
        if safety is not None:
            report.hook_seconds, report.hook_calls = safety.seconds, safety.calls
        if console is not None and report.done:
            console.cleanup()  # every backend has its copy
    if experiment.is_recording or report.backends:
        for line in report.lines():
            log.info(line)
    return report


def get_active_experiment() -> Experiment | None:
    """The run started by ``start_logging``, or None."""
    return _active


def _new_console() -> Any:
    from tracelet.collectors.console import ConsoleCapture

    return ConsoleCapture()


def _activate(experiment: Experiment, console: Any, console_running: bool = False) -> None:
    global _active, _atexit_registered, _console, _safety
    _active = experiment
    settings = experiment.settings
    if experiment.is_recording and (
        settings.track_lightning
        or settings.track_tensorboard
        or settings.track_transformers
        or settings.track_env
    ):
        from tracelet.instrumentation.base import Safety

        safety = _safety = Safety(settings.strict, lose=experiment._lose)
        if settings.track_lightning:
            from tracelet.instrumentation.lightning import LightningInstrumentor

            _instrumentors.append(LightningInstrumentor(experiment, safety))
        if settings.track_tensorboard:
            from tracelet.instrumentation.tensorboard import TensorBoardInstrumentor

            _instrumentors.append(TensorBoardInstrumentor(experiment, safety))
        if settings.track_transformers:
            from tracelet.instrumentation.hf_accelerate import AccelerateInstrumentor
            from tracelet.instrumentation.hf_trainer import TrainerInstrumentor

            _instrumentors.append(TrainerInstrumentor(experiment, safety))
            _instrumentors.append(AccelerateInstrumentor(experiment, safety, _name_project))
        if settings.track_env:
            from tracelet.instrumentation.arguments import ArgparseInstrumentor

            _instrumentors.append(ArgparseInstrumentor(experiment, safety))
    for instrumentor in _instrumentors:
        instrumentor.instrument()
    if experiment.is_recording and experiment.settings.track_system:
        from tracelet.collectors.system import SystemCollector

        _collectors.append(SystemCollector(experiment, experiment.settings.metrics_interval))
    for collector in _collectors:
        collector.start()
    if console is not None:
        _console = console
        if not console_running:
            console.start()
    if not _atexit_registered:
        atexit.register(_stop_at_exit)
        _atexit_registered = True
    _install_exit_hooks()


def _stop_console(experiment: Experiment) -> Any:
    global _console
    console, _console = _console, None
    if console is not None:
        experiment.log_artifact(console.stop())
    return console


def _deactivate() -> None:
    global _safety, _console
    _safety = None
    _console = None
    while _collectors:
        _collectors.pop().stop()
    while _instrumentors:
        _instrumentors.pop().uninstrument()
    _remove_exit_hooks()


def _command_line() -> tuple[str, ...]:
    """The program's command line, secrets removed (every backend and the journal get this one).

    At interpreter start-up (autostart) ``sys.argv`` is not final yet: see ``naming.program_argv``.
    """
    from tracelet.collectors.environment import redact_argv

    return tuple(redact_argv(naming.program_argv()))


def _mark_exit_status(code: object) -> None:
    """A program that ends with ``sys.exit(non-zero)`` failed."""
    if _active is not None:
        _active._mark_status(FAILED, SystemExit(code))


def _torch_runtime() -> dict[str, str]:
    from tracelet.collectors.environment import torch_runtime

    return torch_runtime()


def _is_global_zero() -> bool:
    """Only global rank 0 of a distributed job records; the others get a no-op run."""
    for variable in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(variable)
        if value is not None and value.strip().isdigit():
            return int(value) == 0
    local = os.environ.get("LOCAL_RANK", "0").strip()
    node = os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")).strip()
    return local in ("", "0") and node in ("", "0")


def _stop_at_exit() -> None:
    if _active is not None:
        stop_logging()


def _excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    experiment = _active
    if experiment is not None:
        experiment._mark_status(KILLED if issubclass(kind, KeyboardInterrupt) else FAILED, value)
    (_previous_excepthook or sys.__excepthook__)(kind, value, tb)


def _on_sigterm(signum: int, frame: Any) -> None:
    previous = _previous_sigterm
    experiment = _active
    if experiment is not None:
        experiment._mark_status(KILLED)
        stop_logging()
    if callable(previous):
        previous(signum, frame)
    else:  # the default action: terminate, as if we had not been here
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _install_exit_hooks() -> None:
    global _previous_excepthook, _previous_sigterm
    if sys.excepthook is not _excepthook:
        _previous_excepthook = sys.excepthook
        sys.excepthook = _excepthook
    if threading.current_thread() is threading.main_thread():
        current = signal.getsignal(signal.SIGTERM)
        if current is not signal.SIG_IGN and current is not _on_sigterm and current is not None:
            _previous_sigterm = current
            signal.signal(signal.SIGTERM, _on_sigterm)


def _remove_exit_hooks() -> None:
    global _previous_excepthook, _previous_sigterm
    if sys.excepthook is _excepthook:
        sys.excepthook = _previous_excepthook or sys.__excepthook__
        _previous_excepthook = None
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is _on_sigterm
    ):
        signal.signal(signal.SIGTERM, _previous_sigterm if _previous_sigterm is not None else signal.SIG_DFL)
        _previous_sigterm = None
