"""The run's context, gathered once in the writer before the backends open: git state and
environment, handed to backends in ``RunInfo.git`` (for their native fields) and as the
first events of the run (tags, the uncommitted diff, the package list)."""

from __future__ import annotations

import os
import shutil
import tempfile

from tracelet import _log
from tracelet.backends.base import RunInfo
from tracelet.collectors import environment, git
from tracelet.events import Artifact, Event, Tags

log = _log.get_logger(__name__)


class RunContext:
    """A run with its context, and the scratch directory holding the context's files (the
    diff, the package list) until every backend has copied them."""

    def __init__(self, run: RunInfo) -> None:
        self.scratch = tempfile.mkdtemp(prefix="tracelet-")
        try:
            self.run, self.events = gather(run, self.scratch)
        except Exception as err:  # context is a bonus; the run goes on without it
            log.warning("could not gather git/environment context: %s: %s", type(err).__name__, err)
            self.run, self.events = run, []

    def remove(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def gather(run: RunInfo, scratch: str) -> tuple[RunInfo, list[Event]]:
    events: list[Event] = []
    if run.settings.get("track_git", True):
        info = git.collect(os.getcwd())
        if info is not None:
            run = run._replace(git=info)
            tags = {
                "git.commit": info.commit or "",
                "git.branch": info.branch or "(detached HEAD)",
                "git.dirty": str(info.dirty),
                "git.remote": info.remote or "",
                "git.root": info.root,
            }
            events.append(Tags(tags))
            if info.diff:
                path = os.path.join(scratch, "uncommitted.diff")
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write(info.diff)
                    if info.diff_truncated:
                        handle.write(f"\n# tracelet: diff truncated at {git.MAX_DIFF_BYTES} bytes\n")
                events.append(Artifact(path, "git"))
    if run.settings.get("track_env", True):
        installed = environment.installed_distributions()
        events.append(Tags(environment.describe(run.argv, run.settings.get("env_extra"), installed)))
        path = os.path.join(scratch, "requirements.txt")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(environment.requirements(installed))
        events.append(Artifact(path, "environment"))
    return run, events
