"""MLflow's rules for names and values, and how tracelet meets them: the limits of MLflow's
validation, the keys it accepts (``valid_key``), a valid, stable, collision-free key for any name
(``KeyNamer``, ``sanitize``), and the ``adjective-noun-number`` names MLflow gives unnamed runs."""

from __future__ import annotations

import hashlib
import logging
import posixpath
import random
import re

from tracelet import _log

log = logging.getLogger(__name__)

MAX_KEY = 250  # MLflow's MAX_ENTITY_KEY_LENGTH
MAX_PARAM_VALUE = 6000  # MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000  # MAX_TAG_VAL_LENGTH
MAX_EXPERIMENT_NAME = 500  # MAX_EXPERIMENT_NAME_LENGTH
RUN_NAME_TAG = "mlflow.runName"
KEY_CHARACTERS = r"/\w.\- :"  # MLflow's validate_param_and_metric_name (not on Windows)
_VALID_KEY = re.compile(f"[{KEY_CHARACTERS}]*")  # as a full match
_INVALID_CHARS = re.compile(f"[^{KEY_CHARACTERS}]")


_ADJECTIVES = [
    "amber",
    "bold",
    "brave",
    "bright",
    "calm",
    "clever",
    "crisp",
    "eager",
    "fair",
    "gentle",
    "glad",
    "grand",
    "keen",
    "kind",
    "lively",
    "lucid",
    "merry",
    "mighty",
    "noble",
    "polite",
    "proud",
    "quick",
    "quiet",
    "rare",
    "sharp",
    "silent",
    "smart",
    "steady",
    "swift",
    "tidy",
    "vivid",
    "warm",
    "wise",
    "witty",
    "young",
]
_NOUNS = [
    "ant",
    "bass",
    "bear",
    "bee",
    "bird",
    "cat",
    "colt",
    "crab",
    "crow",
    "deer",
    "dove",
    "eel",
    "elk",
    "fawn",
    "finch",
    "fish",
    "fox",
    "frog",
    "goat",
    "gull",
    "hare",
    "hawk",
    "horse",
    "lark",
    "lion",
    "lynx",
    "mole",
    "moth",
    "newt",
    "owl",
    "ram",
    "seal",
    "shrew",
    "slug",
    "snail",
    "swan",
    "toad",
    "trout",
    "wasp",
    "whale",
    "wolf",
    "wren",
]


def random_run_name() -> str:
    """A name for a run started without one, in the form MLflow gives such runs."""
    choose = random.SystemRandom()
    return f"{choose.choice(_ADJECTIVES)}-{choose.choice(_NOUNS)}-{choose.randrange(1000)}"


def valid_key(key: str) -> bool:
    """MLflow's rules for metric, param and tag names (characters, path form, length)."""
    if not key or len(key) > MAX_KEY or _VALID_KEY.fullmatch(key) is None:
        return False
    norm = posixpath.normpath(key)
    return norm == key and norm != "." and not norm.startswith(("..", "/"))


class KeyNamer:
    """MLflow-valid keys for any name, stable for the run and collision-free."""

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._cache: dict[str, str] = {}
        self._owners: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        key = self._cache.get(name)
        if key is None:
            key = self._assign(name)
        return key

    def _assign(self, name: str) -> str:
        key = sanitize(name)
        owner = self._owners.get(key)
        if owner is not None and owner != name:
            key = _shorten(f"{key}_{_digest(name)}")
        self._owners[key] = name
        self._cache[name] = key
        if key != name:
            _log.warn_once(
                f"mlflow-key:{self._kind}:{name}",
                "MLflow does not accept the %s name %r; it is stored as %r",
                self._kind,
                name,
                key,
                log=log,
                family="MLflow renamed-name",
            )
        return key


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _shorten(key: str) -> str:
    if len(key) <= MAX_KEY:
        return key
    return key[: MAX_KEY - 9] + "_" + _digest(key)


def sanitize(name: str) -> str:
    key = _INVALID_CHARS.sub("_", name)
    parts = [p for p in key.split("/") if p not in ("", ".")]
    parts = ["__" if p == ".." else p for p in parts]
    key = "/".join(parts) or "_"
    if posixpath.normpath(key) != key:
        key = key.replace("/", "_")
    return _shorten(key)


def truncate(text: str, limit: int, kind: str, name: str) -> str:
    if len(text) <= limit:
        return text
    _log.warn_once(
        f"mlflow-truncate:{kind}:{name}",
        "MLflow keeps at most %d characters of a %s value: %r is truncated from %d",
        limit,
        kind,
        name,
        len(text),
        log=log,
        family="MLflow truncated-value",
    )
    return text[:limit]
