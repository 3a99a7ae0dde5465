"""Settings: explicit arguments > ``config={...}`` > ``TRACELET_*`` environment > defaults, all
validated here, at ``start_logging``, so a typo fails before training starts, not during it."""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class ConfigError(ValueError):
    """A setting has a value tracelet cannot use; the message names the setting and its source."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("expected a boolean (true/false, 1/0, yes/no, on/off)")


def _parse_optional_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value.strip() or None


def _parse_path(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a directory path")
    return value.strip()


def _parse_backends(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        names = value.split(",")
    elif isinstance(value, Sequence):
        names = list(value)
    else:
        raise ValueError("expected a backend name, a comma-separated list or a list of names")
    if not all(isinstance(n, str) for n in names):
        raise ValueError("expected backend names as strings")
    # explicit "package.module:Class" targets keep their case; plain names do not
    cleaned = [n.strip() if ":" in n else n.strip().lower() for n in names if n.strip()]
    if not cleaned:
        raise ValueError("expected at least one backend name")
    return tuple(dict.fromkeys(cleaned))  # keep order, drop duplicates


def _positive(kind: Callable[[Any], Any], name: str) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected a positive {name}")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a positive {name}") from None
        if number <= 0:
            raise ValueError(f"expected a positive {name}")
        return number

    return parse


def _at_least(minimum: float, unit: str) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number of {unit}, at least {minimum:g}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number of {unit}, at least {minimum:g}") from None
        if not number >= minimum:
            raise ValueError(f"expected a number of {unit}, at least {minimum:g}")
        return number

    return parse


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise ValueError(f"expected one of: {', '.join(choices)}")

    return parse


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting: its ``config`` key, environment variable, default, parser and meaning."""

    key: str
    env: str
    default: Any
    parse: Callable[[Any], Any]
    help: str


OPTIONS: tuple[Option, ...] = (
    Option(
        "project",
        "TRACELET_PROJECT",
        None,
        _parse_optional_str,
        "Project: MLflow experiment, W&B project, ClearML project. None: MLFLOW_EXPERIMENT_NAME or "
        "WANDB_PROJECT if set, else the working directory's name.",
    ),
    Option(
        "exp_name",
        "TRACELET_EXPERIMENT_NAME",
        None,
        _parse_optional_str,
        "Run name, the same in every backend. None: the program's name and the run id's head.",
    ),
    Option(
        "backend",
        "TRACELET_BACKEND",
        ("mlflow",),
        _parse_backends,
        "Backend name, comma-separated names or a list.",
    ),
    Option(
        "api_key",
        "TRACELET_API_KEY",
        None,
        _parse_optional_str,
        "API key handed to backends that take one; never logged.",
    ),
    Option(
        "backend_url",
        "TRACELET_BACKEND_URL",
        None,
        _parse_optional_str,
        "Tracking URI/host. MLflow default: sqlite:///<cwd>/mlflow.db unless MLFLOW_TRACKING_URI is set.",
    ),
    Option(
        "track_lightning",
        "TRACELET_TRACK_LIGHTNING",
        True,
        _parse_bool,
        "Capture PyTorch Lightning metrics and hyperparameters.",
    ),
    Option(
        "track_optimizer",
        "TRACELET_TRACK_OPTIMIZER",
        True,
        _parse_bool,
        "Lightning: train/lr, train/momentum, train/beta1/2 per param group; optimizer defaults as params.",
    ),
    Option(
        "track_perf",
        "TRACELET_TRACK_PERF",
        True,
        _parse_bool,
        "Lightning: perf/step_time_s, perf/samples_per_s, perf/dataloader_wait_share, perf/epoch_time_s.",
    ),
    Option(
        "log_checkpoints",
        "TRACELET_LOG_CHECKPOINTS",
        True,
        _parse_bool,
        "Lightning: upload the best ModelCheckpoint file at the end of fit (paths are recorded regardless).",
    ),
    Option(
        "checkpoint_max_mb",
        "TRACELET_CHECKPOINT_MAX_MB",
        1024.0,
        _positive(float, "number of megabytes"),
        "Best checkpoints larger than this are not uploaded (a warning says so).",
    ),
    Option(
        "track_tensorboard",
        "TRACELET_TRACK_TENSORBOARD",
        True,
        _parse_bool,
        "Capture SummaryWriter.add_scalar/add_scalars/add_hparams (torch and tensorboardX).",
    ),
    Option(
        "track_transformers",
        "TRACELET_TRACK_TRANSFORMERS",
        True,
        _parse_bool,
        "Capture Hugging Face Trainer logs, arguments and checkpoints, and Accelerator.log/init_trackers.",
    ),
    Option(
        "track_system",
        "TRACELET_TRACK_SYSTEM",
        True,
        _parse_bool,
        "Sample CPU, memory, disk, network, the training process and GPUs (system/... metrics).",
    ),
    Option(
        "metrics_interval",
        "TRACELET_METRICS_INTERVAL",
        10.0,
        _at_least(1.0, "seconds"),
        "Seconds between system metric samples (at least 1).",
    ),
    Option(
        "track_git",
        "TRACELET_TRACK_GIT",
        True,
        _parse_bool,
        "Record the git commit, branch, dirty flag, remote (credentials removed) and uncommitted diff.",
    ),
    Option(
        "track_env",
        "TRACELET_TRACK_ENV",
        True,
        _parse_bool,
        "Record Python, platform, host, command line, framework versions, packages and argparse args.",
    ),
    Option(
        "track_console",
        "TRACELET_TRACK_CONSOLE",
        True,
        _parse_bool,
        "Keep what the process prints (stdout/stderr) as the run's console.log artifact.",
    ),
    Option(
        "journal",
        "TRACELET_JOURNAL",
        True,
        _parse_bool,
        "Also append every event to a local journal, replayable into any backend (`tracelet replay`).",
    ),
    Option(
        "journal_dir",
        "TRACELET_JOURNAL_DIR",
        "tracelet-runs",
        _parse_path,
        "Where journals go: a directory per run (`tracelet runs` lists them).",
    ),
    Option(
        "self_telemetry",
        "TRACELET_SELF_TELEMETRY",
        True,
        _parse_bool,
        "Send tracelet's own cost on the training thread as tracelet/hook_time_s and tracelet/hook_calls.",
    ),
    Option(
        "strict",
        "TRACELET_STRICT",
        False,
        _parse_bool,
        "Re-raise tracelet's own errors instead of warning (for tests).",
    ),
    Option(
        "queue_size",
        "TRACELET_QUEUE_SIZE",
        200_000,
        _positive(int, "integer"),
        "Events buffered per backend before new ones are dropped (and counted).",
    ),
    Option(
        "stop_timeout",
        "TRACELET_STOP_TIMEOUT",
        30.0,
        _positive(float, "number of seconds"),
        "Seconds stop_logging waits for all backends together to finish.",
    ),
    Option(
        "writer",
        "TRACELET_WRITER",
        "process",
        _choice("process", "thread"),
        "Where backends run: a separate writer process (fast) or threads in this process.",
    ),
)
_BY_KEY = {o.key: o for o in OPTIONS}


@dataclasses.dataclass(frozen=True)
class Settings:
    project: str | None
    exp_name: str | None
    backend: tuple[str, ...]
    api_key: str | None = dataclasses.field(repr=False)
    backend_url: str | None
    track_lightning: bool
    track_optimizer: bool
    track_perf: bool
    log_checkpoints: bool
    checkpoint_max_mb: float
    track_tensorboard: bool
    track_transformers: bool
    track_system: bool
    metrics_interval: float
    track_git: bool
    track_env: bool
    track_console: bool
    journal: bool
    journal_dir: str
    self_telemetry: bool
    strict: bool
    queue_size: int
    stop_timeout: float
    writer: str

    @property
    def backends(self) -> tuple[str, ...]:
        """The configured backends, and the journal unless it is off."""
        if self.journal and "journal" not in self.backend:
            return (*self.backend, "journal")
        return self.backend

    def public(self) -> dict[str, Any]:
        """The settings without secrets, for logging and for backends' run records."""
        data = dataclasses.asdict(self)
        data.pop("api_key")
        return data


def resolve(
    arguments: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_label: Callable[[str], str] | None = None,
    environment_first: bool = False,
) -> Settings:
    """Merge the sources with their precedence and validate every value.

    ``arguments`` holds only the explicit ``start_logging`` arguments that are not None;
    ``config_label(key)`` names where a ``config`` entry came from in messages (default
    ``config['key']``; ``tracelet run`` says ``--config key=``). ``environment_first`` puts the
    environment before the arguments (a program's ``start_logging`` under ``tracelet run``).
    """
    environ = os.environ if environ is None else environ
    config = dict(config or {})
    if not isinstance(config, dict):
        raise ConfigError("tracelet: `config` must be a dict of setting names to values")
    unknown = [k for k in config if k not in _BY_KEY]
    if unknown:
        key = unknown[0]
        hint = difflib.get_close_matches(str(key), list(_BY_KEY), n=1)
        suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(
            f"tracelet: unknown config key {key!r}.{suggestion} Accepted keys: {', '.join(_BY_KEY)}."
        )
    values: dict[str, Any] = {}
    for option in OPTIONS:
        found = _given(option, arguments, config, environ, config_label, environment_first)
        if found is None:
            values[option.key] = option.default
            continue
        raw, source = found
        try:
            values[option.key] = option.parse(raw)
        except ValueError as err:
            raise ConfigError(
                f"tracelet: invalid value {raw!r} for {option.key!r} (from {source}): {err}"
            ) from None
    return Settings(**values)


def source_of(
    key: str,
    arguments: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    environment_first: bool = False,
) -> str:
    """Where the setting ``key`` came from, in the words of an error message."""
    environ = os.environ if environ is None else environ
    found = _given(_BY_KEY[key], arguments, dict(config or {}), environ, environment_first=environment_first)
    return found[1] if found is not None else "the default"


def _given(
    option: Option,
    arguments: Mapping[str, Any] | None,
    config: Mapping[str, Any],
    environ: Mapping[str, str],
    config_label: Callable[[str], str] | None = None,
    environment_first: bool = False,
) -> tuple[Any, str] | None:
    """The raw value of ``option`` from the first source that has it, and that source's name."""
    if environment_first and option.env in environ:
        return environ[option.env], f"environment variable {option.env}"
    if arguments and arguments.get(option.key) is not None:
        return arguments[option.key], f"argument {option.key}="
    if option.key in config:
        return config[option.key], config_label(option.key) if config_label else f"config[{option.key!r}]"
    if option.env in environ:
        return environ[option.env], f"environment variable {option.env}"
    return None
