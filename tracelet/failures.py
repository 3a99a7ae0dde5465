"""One readable line for a backend's failure: what failed and where, without the HTTP library's
text (hundreds of characters of urllib3 pool reprs). The whole error goes to the DEBUG log."""

from __future__ import annotations

import re

MAX_CHARS = 200
_URL = re.compile(r"https?://[^\s/'\"),]+")
# the cause, by what the networking libraries say (first match wins)
_CAUSES = (
    (re.compile(r"connection refused|errno 111\b|errno 61\b", re.I), "connection refused"),
    (
        re.compile(
            r"name or service not known|nodename nor servname|getaddrinfo failed|name resolution", re.I
        ),
        "host name not found",
    ),
    (re.compile(r"timed? ?out", re.I), "timed out"),
    (re.compile(r"certificate verify failed|ssl", re.I), "TLS/SSL error"),
    (re.compile(r"connection (?:reset|aborted)|remote ?disconnected|broken pipe", re.I), "connection lost"),
    (re.compile(r"\b(?:status(?: code)?|http)[ :]*([45]\d\d)\b", re.I), "HTTP {0}"),
    (re.compile(r"\b([45]\d\d) (?:client|server) error", re.I), "HTTP {0}"),
)


def describe(err: BaseException) -> str:
    """``cannot reach http://host:5000 (connection refused)``, or the error's first line, shortened."""
    text = " ".join(str(e) for e in _chain(err))
    for pattern, label in _CAUSES:
        found = pattern.search(text)
        if found is not None:
            cause = label.format(*found.groups())
            url = _URL.search(text)
            where = f" {url.group(0)}" if url else ""
            verb = "HTTP error from" if cause.startswith("HTTP") else "cannot reach"
            return f"{verb}{where or ' the server'} ({cause})"
    first = (str(err).strip().splitlines() or [""])[0]
    line = f"{type(err).__name__}: {first}" if first else type(err).__name__
    return line if len(line) <= MAX_CHARS else line[: MAX_CHARS - 3] + "..."


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
