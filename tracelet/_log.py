"""Diagnostics for tracelet: one logger tree, warnings that are said once per cause."""

from __future__ import annotations

import logging
import sys
import threading

LOGGER_NAME = "tracelet"
logger = logging.getLogger(LOGGER_NAME)

_said: set[tuple[str, str]] = set()
_family_counts: dict[tuple[str, str], int] = {}
_said_lock = threading.Lock()
FAMILY_LIMIT = 10  # warnings of one family (one per renamed metric...) before the rest go unsaid


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def ensure_visible() -> None:
    """Give the ``tracelet`` logger a stderr handler if the application configured none.

    Lightning does the same for its own logger; without it the stop summary and the
    one-time warnings would be invisible under Python's default logging setup.
    """
    if logger.level == logging.NOTSET:  # the user's explicit level wins
        logger.setLevel(logging.INFO)
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[tracelet] %(message)s"))
    logger.addHandler(handler)


def warn_once(
    cause: str,
    message: str,
    *args: object,
    log: logging.Logger | None = None,
    family: str | None = None,
    level: int = logging.WARNING,
) -> bool:
    """Log ``message`` as a warning (or at ``level``) the first time ``cause`` is seen; returns
    whether it was logged.

    Causes of one ``family`` (a renamed metric each, say) are said ``FAMILY_LIMIT`` times; the
    last of them says that more go unsaid, so 10,000 odd names make 10 lines, not 10,000.
    """
    target = log or logger
    key = (target.name, cause)
    with _said_lock:
        if key in _said:
            return False
        _said.add(key)
        said = 0
        if family is not None:
            said = _family_counts.get((target.name, family), 0) + 1
            _family_counts[(target.name, family)] = said
    if said > FAMILY_LIMIT:
        return False
    if said == FAMILY_LIMIT:
        message += " (further %s warnings are not shown)"
        args = (*args, family)
    target.log(level, message, *args)
    return True


def forget_warnings() -> None:
    """Start a new run with a clean slate of one-time warnings."""
    with _said_lock:
        _said.clear()
        _family_counts.clear()
