"""What must never be stored: values under secret-looking names."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"
_SECRET_NAME = re.compile(r"(key|token|secret|passw(or)?d|credential|auth)", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    """KEY, TOKEN, SECRET, PASSWORD (and CREDENTIAL, AUTH) anywhere in the name, any case."""
    return bool(_SECRET_NAME.search(name))


def redact_params(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with the values of secret-looking names (at any depth) replaced by ``***``."""
    return {
        key: REDACTED
        if is_secret_name(str(key)) and value is not None
        else redact_params(value)
        if isinstance(value, Mapping)
        else value
        for key, value in values.items()
    }
