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
is stored twice. Raising ``RunGone`` (the run or the store was deleted under it) gives the
backend up for the run at once. An entry the backend cannot store (an artifact its store
refuses, a param it rejects) is a refusal counted in the return value, never an exception:
one bad entry must not cost the metrics around it. Backends adapt names and values to their
own limits and warn once per cause through ``logging``. Third-party backends register the
class under the entry-point group ``tracelet.backends``.

Backends are imported only from installed packages and from directories the user put on
``PYTHONPATH``: never from the working directory, the home directory or the running script's
directory, which Python puts on the path by itself (``import_path``). So a file that happens
to be called ``mlflow.py`` or ``wandb.py`` beside the script, or a planted one, is never
executed by tracelet.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections import Counter
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from tracelet import _log
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
    ended_at: float | None = None  # set by replay: close the run with its original end time


class RunLocation(NamedTuple):
    """Where a backend keeps the run, and how a person gets to see it."""

    backend: str
    run_id: str
    uri: str
    view: str  # a command or URL
    url: str | None = None  # the page that shows the run, once ``view`` (a command) serves it


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


class RunGone(Exception):
    """The backend's run, or its whole store, no longer exists (deleted, purged, the database file
    removed): nothing more can be written there. The worker gives the backend up at once, with
    one warning, instead of retrying or having every later entry refused one by one."""


def count_refused_artifact(store: str, event: Any, err: Exception, rejected: Counter[str]) -> None:
    """Inside ``except``: an artifact the store refused is counted in ``rejected`` with one
    warning; a store that cannot be reached re-raises ``err`` (the worker retries, then gives up)."""
    if store_unreachable(err):
        raise err
    rejected["artifact refused"] += 1
    _log.warn_once(
        f"artifact-refused:{store}",
        "%s did not store the artifact %r (%s); metrics and the rest go on, the journal keeps the "
        "file. Later refused artifacts are counted in the stop summary ('artifact refused')",
        store,
        os.path.basename(str(event.path).rstrip("/")),
        short_error(err),
        log=_log.get_logger(__name__),
    )


_NETWORK_ERRORS = {
    "ConnectionError",
    "Timeout",
    "TimeoutError",
    "ConnectTimeout",
    "ReadTimeout",
    "MaxRetryError",
    "NewConnectionError",
    "ProtocolError",
}


def store_unreachable(err: BaseException) -> bool:
    """The store could not be reached or failed itself (network error, HTTP 5xx or 429), as opposed
    to refusing this one entry. MLflow wraps a failed request in ``MlflowException("API request to
    ... failed")``, so the whole cause chain is looked at."""
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            return False
        if {kind.__name__ for kind in type(seen).__mro__} & _NETWORK_ERRORS:
            return True
        response = getattr(seen, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int) and (status >= 500 or status == 429):
            return True
        if str(seen).startswith("API request to"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def short_error(err: BaseException) -> str:
    """The first line of an error, within 200 characters (the details are at DEBUG)."""
    _log.get_logger(__name__).debug("full error", exc_info=err)
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return first if len(first) <= 200 else first[:197] + "..."


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


def import_path() -> list[str]:
    """This process's ``sys.path`` without the directories Python adds on its own that tracelet
    never imports code from: the working directory, the home directory and the running
    script's directory. Directories the user put on ``PYTHONPATH`` stay. The writer process
    imports backends from this path."""
    unsafe = {_real(os.getcwd()), _real(os.path.expanduser("~"))}
    script = sys.argv[0] if sys.argv else ""
    if script and os.path.isfile(script):
        unsafe.add(_real(os.path.dirname(os.path.abspath(script))))
    unsafe -= {_real(entry) for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry}
    return [entry for entry in sys.path if entry and _real(entry) not in unsafe]


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _entry_points() -> dict[str, str]:
    import importlib.metadata  # ~20 ms: only when a run starts, not at `import tracelet`

    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions(path=import_path()):
        for ep in dist.entry_points.select(group=ENTRY_POINT_GROUP):
            found.setdefault(ep.name.lower(), ep.value)
    return found


def available() -> list[str]:
    return sorted(set(BUILTINS) | set(_entry_points()))


def resolve(names: tuple[str, ...], source: str | None = None) -> list[BackendSpec]:
    """Map configured names to importable targets, failing with a clear message before training.

    A name is a built-in, an installed entry point, or an explicit ``package.module:Class``;
    ``source`` (``environment variable TRACELET_BACKEND``...) is named in the message.
    """
    plugins = _entry_points()
    given = f" (from {source})" if source else ""
    specs = []
    for name in names:
        if name in BUILTINS:
            builtin = BUILTINS[name]
            if not _findable(builtin.sdk_module):
                raise ConfigError(
                    f"tracelet: backend {name!r}{given} needs the {builtin.sdk_module!r} package, which is "
                    f"not installed. Install it with: pip install 'tracelet[{builtin.extra}]'"
                )
            specs.append(BackendSpec(name, builtin.target))
        elif name in plugins:
            specs.append(BackendSpec(name, plugins[name]))
        elif ":" in name:
            _check_importable(name)
            specs.append(BackendSpec(name.rsplit(":", 1)[1], name))
        else:
            close = difflib.get_close_matches(name, available(), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"tracelet: unknown backend {name!r}{given}.{hint} Available backends: "
                f"{', '.join(available())} (third-party backends register under the entry-point group "
                f"{ENTRY_POINT_GROUP!r})."
            )
    return specs


def _findable(module: str) -> bool:
    """Whether the writer process can import ``module``: the path-based finder looks only in
    ``import_path()``; the other finders (built-ins, editable installs) stay. Nothing is run."""
    import importlib.machinery

    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        try:
            if finder is importlib.machinery.PathFinder:
                spec = find_spec(module, import_path())
            else:
                spec = find_spec(module, None)
        except Exception:  # a third-party finder that cannot answer
            spec = None
        if spec is not None:
            return True
    return False


def _check_importable(target: str) -> None:
    """An explicit ``module:Class`` must be importable from ``import_path()``, as in the writer."""
    top = target.partition(":")[0].split(".")[0]
    if _findable(top):
        return
    raise ConfigError(
        f"tracelet: the backend module {top!r} of {target!r} is not installed. tracelet imports "
        "backends only from installed packages and PYTHONPATH, not from the working directory, "
        "the home directory or the script's directory: install it (a package can register the "
        f"backend under the entry-point group {ENTRY_POINT_GROUP!r}) or put its directory on PYTHONPATH."
    )


def load(spec: BackendSpec) -> Backend:
    """Import and instantiate a backend; runs on its worker, never on the training thread."""
    module_name, _, attribute = spec.target.partition(":")
    factory: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        factory = getattr(factory, part)
    return factory()
