"""Start tracking in a program that does not import tracelet (``tracelet run``, or
``TRACELET_AUTOSTART=1`` with ``tracelet/bootstrap`` on ``PYTHONPATH``).

One run per job: the first process that starts tracking marks the environment it passes
to its children, so DataLoader workers, helper scripts and Lightning's DDP workers do not
start runs of their own; distributed launchers (``torchrun``) leave the run to their rank-0
worker; non-zero ranks get a no-op run as always.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tracelet.backends.base import WRITER_ENV

AUTOSTART_ENV = "TRACELET_AUTOSTART"
OWNER_ENV = "TRACELET_AUTOSTART_OWNER"  # pid of the process of this job that tracks
_LAUNCHER_MODULES = {"torch.distributed.run", "torch.distributed.launch"}
_LAUNCHER_SCRIPTS = {"torchrun"}


def bootstrap_dir() -> str:
    """The directory to put first on ``PYTHONPATH`` for autostart."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "bootstrap")


def should_start(environ: Any = None, orig_argv: list[str] | None = None, pid: int | None = None) -> bool:
    environ = os.environ if environ is None else environ
    argv = list(sys.orig_argv if orig_argv is None else orig_argv)
    if environ.get(AUTOSTART_ENV, "").strip().lower() not in ("1", "true", "yes", "on"):
        return False
    if environ.get(WRITER_ENV):
        return False
    owner = environ.get(OWNER_ENV)
    if owner and owner != str(os.getpid() if pid is None else pid):
        return False  # a parent process of this job tracks it
    if "--multiprocessing-fork" in argv:
        return False  # a multiprocessing (e.g. DataLoader) worker
    return not _is_launcher(argv)


def _is_launcher(argv: list[str]) -> bool:
    if len(argv) > 2 and argv[1] == "-m" and argv[2] in _LAUNCHER_MODULES:
        return True
    return len(argv) > 1 and os.path.basename(argv[1]) in _LAUNCHER_SCRIPTS


def maybe_start() -> None:
    if not should_start():
        return
    os.environ[OWNER_ENV] = str(os.getpid())  # before the writer and any child starts
    from tracelet.api import start_for_program
    from tracelet.config import ConfigError

    try:
        start_for_program()
    except ConfigError as err:
        print(f"[tracelet] not tracking this program: {err}", file=sys.stderr)
        return
