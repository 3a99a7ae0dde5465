"""Turning whatever users log into the plain values that events carry.

Runs on the training thread, so it never imports torch or numpy: it recognises them by
duck typing (``.item()``, ``.tolist()``), which also covers any array library.
"""

from __future__ import annotations

import enum
import math
from argparse import Namespace
from collections.abc import Iterator, Mapping
from typing import Any

_MAX_PLAIN_DEPTH = 8
_MAX_SEQUENCE_ITEMS = 1000


def to_float(value: Any) -> float:
    """A metric value as a Python float; raises TypeError/ValueError when there is none.

    Accepts Python numbers and bools, and one-element tensors/arrays of any dtype.
    """
    if isinstance(value, float):
        return value
    if isinstance(value, (int, bool)):
        return float(value)
    item = getattr(value, "item", None)
    if item is not None:
        numel = getattr(value, "numel", None) or getattr(value, "size", None)
        count = numel() if callable(numel) else numel
        if count is not None and count != 1:
            raise ValueError(f"a metric must hold one value, this one holds {count}")
        return float(item())
    if isinstance(value, str):
        raise TypeError("a metric value must be a number, not a string")
    return float(value)


def to_step(step: Any) -> int | None:
    """A step as an int (None stays None); floats that are whole numbers are accepted."""
    if step is None:
        return None
    number = to_float(step)
    if math.isnan(number) or math.isinf(number) or number != int(number):
        raise ValueError(f"a step must be a whole number, got {step!r}")
    return int(number)


def safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # a user object whose __repr__ fails must not break logging
        return f"<{type(value).__qualname__} (repr failed)>"


def to_plain(value: Any, _depth: int = 0) -> Any:
    """A JSON-like copy of ``value``: dicts with str keys, lists, str, int, float, bool, None.

    Namespaces and mappings become dicts, tuples and sets lists, enums their value,
    tensors/arrays their ``tolist()`` (scalars their item), anything else its repr.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if _depth >= _MAX_PLAIN_DEPTH:
        return safe_repr(value)
    if isinstance(value, enum.Enum):
        return to_plain(value.value, _depth + 1)
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, _depth + 1) for k, v in value.items()}
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


def flatten(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested dicts become ``outer/inner`` keys, as Lightning's MLFlowLogger writes them."""
    for key, value in values.items():
        full = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            yield from flatten(value, full)
        else:
            yield full, value
