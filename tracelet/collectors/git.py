"""The code's git state, read once per run with GitPython (in the writer process, so the
training thread never waits for ``git``).

Not a repository, no commits yet, a detached HEAD, no ``git`` binary, a repository too big
to diff in time: all normal, the missing parts are None. Credentials in a remote URL are
removed before anything is recorded.
"""

from __future__ import annotations

import logging
import os
import re
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

MAX_DIFF_BYTES = 1_000_000
GIT_TIMEOUT_S = 10.0


class GitInfo(NamedTuple):
    root: str
    commit: str | None  # None in a repository without commits
    branch: str | None  # None on a detached HEAD
    dirty: bool
    remote: str | None  # credentials removed
    diff: str  # uncommitted changes against HEAD, at most MAX_DIFF_BYTES
    diff_truncated: bool


_SCP_LIKE = re.compile(r"^(?P<user>[^@/:]+)@(?P<host>[^:/]+):(?P<path>.*)$")


def redact_url(url: str) -> str:
    """``https://user:token@host/x`` -> ``https://host/x``; ``git@host:x`` is kept (no secret)."""
    if "://" in url:
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port else host
            return urlunsplit(parts._replace(netloc=netloc))
        return url
    return url if _SCP_LIKE.match(url) or "@" not in url else url.split("@", 1)[1]


def collect(
    path: str, max_diff_bytes: int = MAX_DIFF_BYTES, timeout: float = GIT_TIMEOUT_S
) -> GitInfo | None:
    if not _inside_a_repository(path):
        return None  # the common case outside a checkout, without importing GitPython (~0.1 s)
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # a missing git binary is not an import error
    try:
        import git
    except Exception as err:  # GitPython unusable here
        log.debug("no git info: %s", err)
        return None
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None
    except Exception as err:  # e.g. no git binary
        log.debug("no git info: %s", err)
        return None
    with repo:
        try:
            commit: str | None = repo.head.commit.hexsha
        except ValueError:  # no commits yet
            commit = None
        try:
            branch: str | None = repo.active_branch.name
        except TypeError:  # detached HEAD
            branch = None
        remote = _remote(repo)
        dirty, diff, truncated = False, "", False
        try:
            dirty = repo.is_dirty(untracked_files=False)
            if dirty and commit is not None:
                diff = repo.git.diff("HEAD", kill_after_timeout=timeout)
                if len(diff.encode("utf-8", "replace")) > max_diff_bytes:
                    diff = diff.encode("utf-8", "replace")[:max_diff_bytes].decode("utf-8", "ignore")
                    truncated = True
        except Exception as err:  # git too slow (a huge repository) or missing: skip the diff
            log.debug("git status/diff skipped: %s", err)
        return GitInfo(str(repo.working_tree_dir or path), commit, branch, dirty, remote, diff, truncated)


def _inside_a_repository(path: str) -> bool:
    """Whether git would find a repository from ``path``: ``GIT_DIR`` is set, or ``path`` or a
    parent holds ``.git`` (a directory, or a file as in worktrees and submodules)."""
    if os.environ.get("GIT_DIR"):
        return True
    current = os.path.abspath(path)
    while True:
        if os.path.exists(os.path.join(current, ".git")):
            return True
        parent = os.path.dirname(current)
        if parent == current:
            return False
        current = parent


def _remote(repo: object) -> str | None:
    try:
        remotes = {r.name: r for r in repo.remotes}  # type: ignore[attr-defined]
        chosen = remotes.get("origin") or next(iter(remotes.values()), None)
        return redact_url(chosen.url) if chosen is not None else None
    except Exception as err:  # a broken remote config: record no remote
        log.debug("git remote unreadable: %s", err)
        return None
