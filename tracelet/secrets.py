"""What must never be stored: values under secret-looking names."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"
# a word of the name that is one of these, or ends in one of the joined forms, marks a secret
_SECRET_WORDS = frozenset(
    ("key", "token", "secret", "password", "passwd", "pwd", "passphrase", "credential", "credentials", "auth")
)
_SECRET_ENDINGS = ("apikey", "accesskey", "secretkey", "privatekey", "token", "secret", "password", "passwd")
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def is_secret_name(name: str) -> bool:
    """A word of the name (split at ``_ - . /`` spaces and camelCase) is KEY, TOKEN, SECRET, PASSWORD,
    PWD, PASSPHRASE, CREDENTIAL(S) or AUTH, or ends in APIKEY, ACCESSKEY, TOKEN, SECRET, PASSWORD...

    ``wandb_api_key``, ``HF_TOKEN``, ``apiKey``, ``db_password``, ``mytoken`` are secrets;
    ``max_tokens``, ``tokenizer``, ``keypoints``, ``author``, ``monkey`` are not.
    """
    for word in _WORDS.findall(name):
        word = word.lower()
        if word in _SECRET_WORDS or word.endswith(_SECRET_ENDINGS):
            return True
    return False


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
