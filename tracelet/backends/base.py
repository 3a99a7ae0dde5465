"""The backend protocol and the registry that finds backends by name.

A backend is a class with three methods, called on the backend's own worker thread
(inside the writer process by default)::

    class MyBackend:
        def open(self, run: RunInfo) -> RunLocation: ...      # create the run; may take seconds
        def write(self, batch: list[Event]) -> int | dict | None: ...
        def close(self, status: str) -> None: ...              # FINISHED, FAILED or KILLED

``write`` receives events in the order they were emitted and returns how many it
rejected under its own rules (an int, or a dict reason -> count). Raising makes the worker
retry the batch after a backoff: a backend that stored part of it first raises
``WriteInterrupted(written, rejected, cause)`` so the retry sends only the rest and no point
is stored twice. Backends adapt names and values to their own limits and warn once per cause
through ``logging``. Third-party backends register the class under the entry-point group
``tracelet.backends``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from tracelet.config import ConfigError
from tracelet.events import Event

ENTRY_POINT_GROUP = "tracelet.backends"
WRITER_ENV = "TRACELET_WRITER_PROCESS"  # set in the writer process, where backends run


class RunInfo(NamedTuple):
    """What a backend needs to create its run."""

    run_uid: str  # tracelet's own id of the run, the same in every backend
    project: str | None
    exp_name: str | None
    api_key: str | None
    backend_url: str | None
    started_at: float
    settings: Mapping[str, Any]  # public settings, no secrets
    pid: int = 0  # the training process (backends run in the writer process)
    argv: tuple[str, ...] = ()  # the training process's command line
    git: Any = None  # collectors.git.GitInfo, filled in by the writer before backends open
    console_path: str | None = None  # the training process's console.log, uploaded if it dies


class RunLocation(NamedTuple):
    """Where a backend keeps the run, and how a person gets to see it."""

    backend: str
    run_id: str
    uri: str
    view: str  # a command or URL


class Backend(Protocol):
    def open(self, run: RunInfo) -> RunLocation: ...

    def write(self, batch: list[Event]) -> int | Mapping[str, int] | None: ...

    def close(self, status: str) -> None: ...


class WriteInterrupted(Exception):
    """``write`` stored the batch's first ``written`` events (``rejected``: its refusals among
    them) and then failed with ``cause``; the worker retries the rest only."""

    def __init__(self, written: int, rejected: Mapping[str, int] | None, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.written = written
        self.rejected = dict(rejected or {})
        self.cause = cause


class _Builtin(NamedTuple):
    target: str
    sdk_module: str
    extra: str


BUILTINS: dict[str, _Builtin] = {
    "mlflow": _Builtin("tracelet.backends.mlflow:MLflowBackend", "mlflow", "mlflow"),
    "wandb": _Builtin("tracelet.backends.wandb:WandbBackend", "wandb", "wandb"),
    "clearml": _Builtin("tracelet.backends.clearml:ClearMLBackend", "clearml", "clearml"),
    "journal": _Builtin("tracelet.backends.journal:JournalBackend", "json", ""),  # the standard library
}


class BackendSpec(NamedTuple):
    """A resolved backend name: its display name and the ``module:attribute`` that makes it."""

    name: str
    target: str


def _entry_points() -> dict[str, str]:
    import importlib.metadata  # ~20 ms: only when a run starts, not at `import tracelet`

    return {ep.name.lower(): ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    return sorted(set(BUILTINS) | set(_entry_points()))


def resolve(names: tuple[str, ...]) -> list[BackendSpec]:
    """Map configured names to importable targets, failing with a clear message before training.

    A name is a built-in, an installed entry point, or an explicit ``package.module:Class``.
    """
    plugins = _entry_points()
    specs = []
    for name in names:
        if name in BUILTINS:
            builtin = BUILTINS[name]
            if importlib.util.find_spec(builtin.sdk_module) is None:
                raise ConfigError(
                    f"tracelet: backend {name!r} needs the {builtin.sdk_module!r} package, which is not "
                    f"installed. Install it with: pip install 'tracelet[{builtin.extra}]'"
                )
            specs.append(BackendSpec(name, builtin.target))
        elif name in plugins:
            specs.append(BackendSpec(name, plugins[name]))
        elif ":" in name:
            specs.append(BackendSpec(name.rsplit(":", 1)[1], name))
        else:
            raise ConfigError(
                f"tracelet: unknown backend {name!r}. Available backends: {', '.join(available())} "
                f"(third-party backends register under the entry-point group {ENTRY_POINT_GROUP!r})."
            )
    return specs


def load(spec: BackendSpec) -> Backend:
    """Import and instantiate a backend; runs on its worker, never on the training thread."""
    module_name, _, attribute = spec.target.partition(":")
    factory: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        factory = getattr(factory, part)
    return factory()
