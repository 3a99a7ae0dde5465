"""Diagnostics for tracelet: one logger tree, warnings that are said once per cause."""

from __future__ import annotations

import logging
import sys
import threading

LOGGER_NAME = "tracelet"
logger = logging.getLogger(LOGGER_NAME)

_said: set[tuple[str, str]] = set()
_said_lock = threading.Lock()


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


def warn_once(cause: str, message: str, *args: object, log: logging.Logger | None = None) -> bool:
    """Log ``message`` as a warning the first time ``cause`` is seen; returns whether it was logged."""
    target = log or logger
    key = (target.name, cause)
    with _said_lock:
        if key in _said:
            return False
        _said.add(key)
    target.warning(message, *args)
    return True


def forget_warnings() -> None:
    """Start a new run with a clean slate of one-time warnings."""
    with _said_lock:
        _said.clear()
