"""The ``tracelet`` command (also ``python -m tracelet``).

tracelet run [--backend mlflow,wandb] [--project P] [--exp-name N] [--config KEY=VALUE ...] -- PROGRAM ...
tracelet runs [--dir DIR]
tracelet replay RUN_DIR [RUN_DIR ...] --backend NAME [--backend-url URL]
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import unicodedata
from collections.abc import Sequence

from tracelet import autostart, config, journal
from tracelet.backends import base
from tracelet.config import ConfigError

# settings with a flag of their own in `tracelet run` (--exp-name ...); any other: --config KEY=VALUE
_RUN_FLAGS = ("backend", "project", "exp_name", "backend_url")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.handler(args))
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracelet", description="Zero-code experiment tracking.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run a program with tracking on from its first line",
        description="Run PROGRAM with tracelet active from its first line: no change to its code. "
        "Every flag has a TRACELET_* twin (see the README's configuration table).",
        usage="tracelet run [options] -- PROGRAM [ARGS ...]",
    )
    run.add_argument("--backend", help="backend name or comma list (default: mlflow)")
    run.add_argument("--project", help="project / MLflow experiment")
    run.add_argument("--exp-name", help="run name")
    run.add_argument("--backend-url", help="tracking URI or host")
    run.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting, e.g. --config metrics_interval=5 --config journal=false",
    )
    run.add_argument("program", nargs=argparse.REMAINDER, help="the command to run, after --")
    run.set_defaults(handler=_run)

    runs = commands.add_parser("runs", help="list journaled runs")
    runs.add_argument("--dir", help="journal directory (default: TRACELET_JOURNAL_DIR or ./tracelet-runs)")
    runs.set_defaults(handler=_runs)

    replay = commands.add_parser("replay", help="re-send journaled runs to a backend")
    replay.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run directory of the journal")
    replay.add_argument("--backend", required=True, help="backend name or comma list")
    replay.add_argument(
        "--backend-url",
        help="tracking URI or host (default: where the run was meant to go: "
        "its backend_url, or the MLflow store it used)",
    )
    replay.set_defaults(handler=_replay)
    return parser


def _run(args: argparse.Namespace) -> int:
    program = list(args.program)
    if program and program[0] == "--":
        program = program[1:]
    if not program:
        raise ConfigError("tracelet run: no program given. Usage: tracelet run [options] -- python train.py")
    env = _tracking_environment(args)
    try:
        child = subprocess.Popen(program, env=env)
    except OSError as err:
        print(f"tracelet run: cannot start {program[0]!r}: {err}", file=sys.stderr)
        return 127
    return _wait_forwarding_signals(child)


def _tracking_environment(args: argparse.Namespace) -> dict[str, str]:
    """The child's environment: the settings as TRACELET_* variables, validated now."""
    by_key = {option.key: option for option in config.OPTIONS}
    env = dict(os.environ)
    settings: dict[str, str] = {}
    for pair in args.config:
        key, equals, value = pair.partition("=")
        if not equals:
            raise ConfigError(f"tracelet run: --config expects KEY=VALUE, got {pair!r}")
        settings[key.strip()] = value
    flags = {key for key in _RUN_FLAGS if getattr(args, key) is not None}
    for key in flags:
        settings[key] = getattr(args, key)
    flag_or_config = lambda key: f"--{key.replace('_', '-')}" if key in flags else f"--config {key}="  # noqa: E731
    # unknown keys and bad values fail here, before the program starts
    config.resolve(config=settings, config_label=flag_or_config)
    for key, value in settings.items():
        env[by_key[key].env] = value
    source = flag_or_config("backend") if "backend" in settings else config.source_of("backend", environ=env)
    base.resolve(config.resolve(environ=env).backends, source)  # unknown or uninstalled backends, too
    env[autostart.AUTOSTART_ENV] = "1"
    env.pop(autostart.OWNER_ENV, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (autostart.bootstrap_dir(), env.get("PYTHONPATH")) if p)
    return env


def _wait_forwarding_signals(child: subprocess.Popen) -> int:
    """Ctrl+C reaches the child from the terminal itself; SIGTERM is passed on. The child's exit
    code is ours (128 + N when a signal N ended it, as a shell reports it)."""
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        code = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
    return code if code >= 0 else 128 - code


def _journal_dir(explicit: str | None) -> str:
    return explicit or config.resolve().journal_dir


def _runs(args: argparse.Namespace) -> int:
    directory = _journal_dir(args.dir)
    found = journal.find(directory)
    if not found:
        print(f"no journaled runs in {os.path.abspath(directory)}")
        return 0
    rows = [("started", "name", "project", "status", "events", "delivered to", "directory")]
    for record in found:
        meta = record.run
        started = datetime.datetime.fromtimestamp(meta.get("started_at") or 0).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(
            (
                started,
                str(meta.get("exp_name") or "-"),
                str(meta.get("project") or "-"),
                record.status,
                str(journal.count_events(record)),
                _delivery_summary(record),
                os.path.relpath(record.path),
            )
        )
    widths = [max(_width(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell + " " * (width - _width(cell)) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def _width(text: str) -> int:
    """Columns ``text`` takes in a terminal: wide (CJK) characters two, combining marks none."""
    return sum(
        0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1
        for char in text
    )


def _delivery_summary(record: journal.Journal) -> str:
    if not record.delivery:
        return "unknown"
    parts = []
    for name, entry in sorted(record.delivery.items()):
        if name == "journal":
            continue
        parts.append(journal.delivery_summary(name, entry))
    return ", ".join(parts) or "-"


def _replay(args: argparse.Namespace) -> int:
    from tracelet import _log
    from tracelet.replay import replay, stderr_if_terminal

    _log.ensure_visible()  # backends' warnings (a failed open, refused values) reach the terminal
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    names = config.resolve(config={"backend": args.backend}).backend
    base.resolve(names)  # an unknown or uninstalled backend fails before any run is read
    worst = 0
    for run_dir in args.run_dirs:
        try:
            stats = replay(run_dir, names, backend_url=args.backend_url, progress=stderr_if_terminal())
        except (FileNotFoundError, ValueError) as err:
            print(f"tracelet replay: {run_dir}: not a journaled run ({err})", file=sys.stderr)
            worst = 1
            continue
        for name, s in stats.items():
            where = f": {s.location.view}" if s.location else f" (failed: {s.error})" if s.error else ""
            print(f"{run_dir} -> {name}: {s.sent} events sent, {s.dropped} dropped, {s.failed} failed{where}")
            if s.state != "closed" or s.failed:
                worst = 1
    return worst
