"""``start_logging`` / ``stop_logging``: the run lifecycle.

start: settings -> backends resolved (fail fast) -> writer started -> instrumentation ->
exit hooks. stop: in reverse, then every backend flushed and closed within one deadline.
``atexit`` stops a run the user forgot; an uncaught exception marks it FAILED, a
KeyboardInterrupt or SIGTERM KILLED.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from tracelet import _log, naming
from tracelet.backends import base as backends
from tracelet.bus import EventBus
from tracelet.config import Settings, resolve, source_of
from tracelet.experiment import Experiment, RunReport
from tracelet.run import Run

log = _log.get_logger("tracelet")

_lock = threading.RLock()  # held while the active run changes, never across backend I/O
_active: Run | None = None
# the active run when `tracelet run` started it and no start_logging has adopted it yet
_launched: Run | None = None
# settings fixed once the writer has opened the run's backends
_WHERE_THE_RUN_LIVES = ("project", "exp_name", "backend", "backend_url", "api_key", "journal", "journal_dir")


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
    while True:  # the check and the start under one lock: two threads never both start a run
        with _lock:
            active = _active
            if active is None:
                return _begin(settings, specs).experiment
        log.warning(
            "start_logging: run %r is still active; it is ended now (its summary follows) and a "
            "new run starts. Call tracelet.stop_logging() first to end a run yourself.",
            active.experiment.name,
        )
        stop_logging()  # outside the lock: it waits on the backends


def start_for_program() -> Experiment:
    """The run ``tracelet run`` starts before the program's first line.

    It ships nothing until training starts (see ``bus.HOLD_MAX_S``), so that the program's own
    ``start_logging``, if it calls it, continues this run with its names and settings filling in
    what the command line did not give, instead of starting a second one.
    """
    global _launched
    settings = resolve()
    specs = backends.resolve(settings.backends, source_of("backend"))
    run = _launched = _begin(settings, specs, hold=True)
    return run.experiment


def _begin(settings: Settings, specs: list[backends.BackendSpec], hold: bool = False) -> Run:
    global _active
    _log.ensure_visible()
    _log.forget_warnings()
    recording = _is_global_zero()
    console = _new_console() if recording and settings.track_console else None
    info = _run_info(settings, uuid.uuid4().hex, time.time(), console)
    bus = EventBus(info, specs, settings.queue_size, settings.writer, hold=hold) if recording else None
    run = Run(Experiment(settings, info, bus), bus, console, stop_logging, _name_project)
    with _lock:
        _active = run
        run.start()
    return run


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


def _adopt(launched: Run, arguments: Mapping[str, Any], config: Mapping[str, Any] | None) -> Experiment:
    """The program's ``start_logging`` under ``tracelet run``: continue the run already started.

    What the launch environment sets (``tracelet run``'s flags, ``TRACELET_*``) wins; the
    arguments and ``config`` fill in the rest. While nothing has been shipped, the run is
    re-opened with the merged settings; later, only what does not change where it lives applies.
    """
    global _launched
    _launched = None
    experiment = launched.experiment
    settings = resolve(arguments, config, environment_first=True)
    specs = backends.resolve(
        settings.backends, source_of("backend", arguments, config, environment_first=True)
    )
    bus = launched.bus
    if bus is None:  # a non-zero rank records nothing either way
        experiment.settings = settings
        return experiment
    console = launched.console if settings.track_console else None
    run = _run_info(settings, experiment.run_uid, experiment.run.started_at, console)
    if bus.reconfigure(run, specs, settings.queue_size):
        experiment.settings, experiment.run = settings, run
        launched.restart()
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
            launched.restart()
    bus.release()
    return experiment


def _name_project(project: str) -> None:
    """A framework's own project name (Accelerate's ``init_trackers``) names the run's project when
    nobody else did, while the run has not reached its backends (``tracelet run`` holds it)."""
    active = _active
    if active is None or active.bus is None or not project:
        return
    experiment = active.experiment
    if experiment.settings.project is not None or naming.project_from_environment() is not None:
        return
    settings = dataclasses.replace(experiment.settings, project=project)
    run = experiment.run._replace(project=project, settings={**experiment.run.settings, "project": project})
    if active.bus.rename(run):
        experiment.settings, experiment.run = settings, run
        log.info("the run's project is %r, as the program's init_trackers names it", project)
    else:
        log.debug("init_trackers(%r) came after the run reached its backends; project kept", project)


def stop_logging(timeout: float | None = None) -> RunReport | None:
    """End the active run: undo every patch, then flush and close every backend.

    Waits at most ``timeout`` seconds (default: the ``stop_timeout`` setting) for all
    backends together, logs one summary line per backend and returns the report. Calling it
    again, or with no active run, does nothing and returns None.
    """
    global _active, _launched
    with _lock:
        run = _active
        if run is None:
            return None
        _active = None
        if _launched is run:
            _launched = None
    experiment = run.experiment
    report = run.stop(experiment.settings.stop_timeout if timeout is None else timeout)
    if experiment.is_recording or report.backends:
        for line in report.lines():
            log.info(line)
    return report


def get_active_experiment() -> Experiment | None:
    """The run started by ``start_logging``, or None."""
    run = _active
    return run.experiment if run is not None else None


def _new_console() -> Any:
    from tracelet.collectors.console import ConsoleCapture

    return ConsoleCapture()


def _command_line() -> tuple[str, ...]:
    """The program's command line, secrets removed (every backend and the journal get this one).

    At interpreter start-up (autostart) ``sys.argv`` is not final yet: see ``naming.program_argv``.
    """
    from tracelet.collectors.environment import redact_argv

    return tuple(redact_argv(naming.program_argv()))


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
