"""Turning whatever users log into the plain values that events carry.

Runs on the training thread, so it never imports torch or numpy: it recognises them by
duck typing (``.item()``, ``.tolist()``), which also covers any array library.
"""

from __future__ import annotations

import enum
import math
import operator
import os
from argparse import Namespace
from collections.abc import Iterator, Mapping
from typing import Any

_MAX_PLAIN_DEPTH = 8
_MAX_SEQUENCE_ITEMS = 1000


class Unusable(ValueError):
    """A metric value or step with no number in it; ``cause`` names the kind, for counting."""

    def __init__(self, cause: str, detail: str = "") -> None:
        super().__init__(f"{cause} ({detail})" if detail else cause)
        self.cause = cause


_INT64 = 2**63


def to_float(value: Any) -> float:
    """A metric value as a Python float; raises ``Unusable`` when there is none.

    Accepts Python numbers and bools, ``Decimal``/``Fraction``, and one-element tensors/arrays
    of any dtype. Never lets a user object's own exception through: it becomes ``Unusable``.
    """
    if isinstance(value, float):
        return value
    try:
        if isinstance(value, (int, bool)):
            return float(value)
        item = getattr(value, "item", None)
        if item is not None and not isinstance(value, (str, bytes)):
            numel = getattr(value, "numel", None) or getattr(value, "size", None)
            count = numel() if callable(numel) else numel
            if count is not None and count != 1:
                raise Unusable("not one number", f"a tensor/array of {count} values")
            try:
                value = item()
            except Exception as err:  # a meta tensor, a freed buffer, a broken array type
                raise Unusable("unreadable tensor", f"{type(err).__name__}: {err}") from None
            if isinstance(value, float):
                return value
        if value is None or isinstance(value, (str, bytes)):
            raise Unusable("not a number", f"{type(value).__name__} {safe_repr(value)[:40]}")
        return float(value)
    except Unusable:
        raise
    except OverflowError:
        raise Unusable("out of float range") from None
    except Exception as err:
        raise Unusable("not a number", f"{type(value).__name__}: {err}") from None


def read_cpu_scalar(tensor: Any) -> Any:
    """A zero-dimensional CPU tensor's number (what ``.item()`` gives), read with ``.tolist()``;
    any other tensor, and one that cannot be read so, as it is (``to_float`` says why later).

    For the training thread, at capture: a tensor kept in the bus's buffer until the sender
    thread reads it holds ~600 bytes where its number holds 24 (the buffer's memory is bounded
    by ``queue_size`` only if its events are small), and a few hundred live between the
    sender's wakes may slow training (docs/lightning.md).
    ``.tolist()`` of a CPU tensor reads its memory without giving the GIL up; ``.item()`` gives
    it up and takes it back, which costs 82 µs instead of 1 µs while another thread runs Python.
    """
    try:
        return tensor.tolist() if tensor.is_cpu and tensor.dim() == 0 else tensor
    except Exception:  # e.g. a tensor subclass that refuses
        return tensor


def to_step(step: Any) -> int | None:
    """A step as an int (None stays None); integer types and whole floats, within int64."""
    if step is None:
        return None
    try:
        whole = operator.index(step)  # ints, NumPy integers, integer 0-dim tensors: exact
    except Exception:
        try:
            number = to_float(step)
        except Unusable:
            raise Unusable("step not a number", safe_repr(step)[:40]) from None
        if math.isnan(number) or math.isinf(number) or number != int(number):
            raise Unusable("step not a whole number", safe_repr(step)) from None
        whole = int(number)
    if not -_INT64 <= whole < _INT64:
        raise Unusable("step out of int64 range", str(whole))
    return whole


def safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # a user object whose __repr__ fails must not break logging
        return f"<{type(value).__qualname__} (repr failed)>"


def to_plain(value: Any, _depth: int = 0) -> Any:
    """A JSON-like copy of ``value``: dicts with str keys, lists, str, int, float, bool, None.

    Namespaces and mappings become dicts, tuples and sets lists, enums their value, paths their text,
    tensors/arrays their ``tolist()`` (scalars their item), anything else its repr.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if _depth >= _MAX_PLAIN_DEPTH:
        return safe_repr(value)
    if isinstance(value, enum.Enum):
        return to_plain(value.value, _depth + 1)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        try:
            items = list(value.items())
        except Exception:  # a mapping that cannot be iterated: keep what can be shown
            return safe_repr(value)
        return {_key(k): to_plain(v, _depth + 1) for k, v in items}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)[:_MAX_SEQUENCE_ITEMS]
        return [to_plain(v, _depth + 1) for v in items]
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and hasattr(value, "shape"):
        try:
            numel = getattr(value, "numel", None)
            count = numel() if callable(numel) else getattr(value, "size", 0)
            if count <= _MAX_SEQUENCE_ITEMS:
                return to_plain(tolist(), _depth + 1)
        except Exception:  # an exotic array type: fall back to its repr
            pass
    return safe_repr(value)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    try:
        return str(key)
    except Exception:
        return safe_repr(key)


def flatten(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested dicts become ``outer/inner`` keys, as Lightning's MLFlowLogger writes them."""
    for key, value in values.items():
        full = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            yield from flatten(value, full)
        else:
            yield full, value
