"""The run's project and name when none is given: one of each, the same in every backend.

project: ``MLFLOW_EXPERIMENT_NAME`` or ``WANDB_PROJECT`` when the environment sets one (the
user's existing setup), else the working directory's name. Run name: the program's name and
the first characters of the run's id, e.g. ``train-1f3c9a``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

_PROJECT_VARIABLES = ("MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT")


def default_project() -> str:
    return project_from_environment() or os.path.basename(os.path.abspath(os.getcwd())) or "tracelet"


def project_from_environment() -> str | None:
    """The project the user's existing MLflow or W&B setup names, if any."""
    for variable in _PROJECT_VARIABLES:
        value = os.environ.get(variable, "").strip()
        if value:
            return value
    return None


def default_run_name(run_uid: str, argv: Sequence[str] | None = None) -> str:
    return f"{program_name(argv)}-{run_uid[:6]}"


def program_argv() -> list[str]:
    """The program's arguments: ``sys.argv``, or the interpreter's (``sys.orig_argv[1:]``) when
    the program has not set it yet (at start-up, under ``tracelet run``)."""
    argv = list(getattr(sys, "argv", None) or [])
    if (not argv or argv[0] in ("-m", "-c", "")) and getattr(sys, "orig_argv", None):
        argv = list(sys.orig_argv[1:])
    return argv


def program_name(argv: Sequence[str] | None = None) -> str:
    """``train`` for ``python train.py`` and ``python -m pkg.train``; ``python`` for ``-c`` and the REPL.

    ``argv`` as ``program_argv()`` gives it (its default).
    """
    if argv is None:
        argv = program_argv()
    args = iter(argv)
    for arg in args:
        if arg == "-m":
            return next(args, "python").rsplit(".", 1)[-1] or "python"
        if arg == "-c" or arg == "-":
            return "python"
        if arg in ("-W", "-X"):
            next(args, None)
        elif not arg.startswith("-"):
            stem = os.path.splitext(os.path.basename(arg))[0]
            return "python" if stem in ("__main__", "") else stem
    return "python"
