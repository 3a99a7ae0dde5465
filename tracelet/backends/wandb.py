"""Weights & Biases: ``wandb.init(project=project, name=exp_name)`` honouring W&B's own
environment (``WANDB_MODE``, ``WANDB_DIR``, ``WANDB_API_KEY``, ``WANDB_ENTITY``, ...).

W&B drops points whose ``step`` goes backwards, so — like Lightning's ``WandbLogger`` —
the trainer step is logged as its own field, ``trainer/global_step``, declared the x-axis of
every training metric with ``define_metric``; W&B's internal ``_step`` just counts rows.
System metrics (``system/...``) have their own axis, ``system/sample``. Validation,
epoch-end and late points therefore all survive. Each row keeps the original wall-clock
time (``_timestamp``). Params go to ``run.config`` (nested), tags to ``config["tags"]``,
artifacts to the run's files. W&B's console capture and code saving are off (they would see
the writer process); so is its system monitor: tracelet's system collector samples the
training process and its GPUs, once, for every backend.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from typing import Any

from tracelet import _log
from tracelet.backends.base import RunInfo, RunLocation, WriteInterrupted, count_refused_artifact
from tracelet.events import Artifact, Event, Metric, Params, RunEnd, Tags

log = logging.getLogger(__name__)

STEP_KEY = "trainer/global_step"
SYSTEM_PREFIX = "system/"
SYSTEM_STEP_KEY = "system/sample"  # system metrics count samples, never trainer steps
EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "KILLED": 255}


class WandbBackend:
    """The ``wandb`` backend."""

    def __init__(self) -> None:
        self._run: Any = None
        self._names: dict[str, str] = {}
        self._tags: dict[str, str] = {}

    def open(self, run: RunInfo) -> RunLocation:
        if run.api_key:
            os.environ.setdefault("WANDB_API_KEY", run.api_key)  # the writer process only
        if run.backend_url:
            os.environ.setdefault("WANDB_BASE_URL", run.backend_url)
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        # tracelet's system collector is the one source of system/... metrics (as with ClearML)
        settings = {"console": "off", "save_code": False, "x_disable_stats": True}
        if run.git is not None:  # W&B's own git detection keeps tokens that sit in a remote's user name
            settings.update(disable_git=True, git_root=run.git.root)
            if run.git.commit:
                settings["git_commit"] = run.git.commit
            if run.git.remote:
                settings["git_remote_url"] = run.git.remote
        if run.argv and run.argv[0]:
            settings["program"] = os.path.abspath(run.argv[0]) if os.path.exists(run.argv[0]) else run.argv[0]
        self._run = wandb.init(
            project=run.project,
            name=run.exp_name,
            dir=os.environ.get("WANDB_DIR") or os.getcwd(),
            settings=wandb.Settings(**settings),
        )
        self._run.define_metric(STEP_KEY)
        self._run.define_metric(SYSTEM_STEP_KEY)
        self._run.define_metric(SYSTEM_PREFIX + "*", step_metric=SYSTEM_STEP_KEY)
        return RunLocation("wandb", self._run.id, self._where(), self._view())

    def _where(self) -> str:
        return self._run.url or os.path.dirname(self._run.dir)

    def _view(self) -> str:
        if self._run.offline:
            return f"wandb sync {os.path.dirname(self._run.dir)}"
        return self._run.url

    def write(self, batch: list[Event]) -> dict[str, int]:
        rejected: Counter[str] = Counter()
        row: dict[str, Any] = {}
        row_key: tuple[int | None, float] | None = None
        done = 0  # events of the batch in logged rows: a retry starts after them
        try:
            for index, event in enumerate(batch):
                if isinstance(event, Metric):
                    name = self._name(event.name)
                    key = (event.step, event.timestamp)
                    if row_key != key or name in row:  # one row per Lightning log_metrics call
                        self._log_row(row, row_key)
                        done = index
                        row, row_key = {}, key
                    row[name] = event.value
                    continue
                self._log_row(row, row_key)
                done = index
                row, row_key = {}, None
                if isinstance(event, Params):
                    self._run.config.update(event.values, allow_val_change=True)
                elif isinstance(event, Tags):
                    self._tags.update(event.values)
                    self._run.config.update({"tags": dict(self._tags)}, allow_val_change=True)
                elif isinstance(event, Artifact):
                    try:
                        saved = self._save_artifact(event)
                    except Exception as err:  # the store's failure goes up, a refusal is counted
                        count_refused_artifact("W&B", event, err, rejected)
                        saved = True
                    if not saved:
                        rejected["artifact missing"] += 1
                elif not isinstance(event, RunEnd):
                    rejected["unknown event type"] += 1
                done = index + 1
            self._log_row(row, row_key)
        except Exception as err:
            raise WriteInterrupted(done, rejected, err) from err
        return rejected

    def close(self, status: str) -> None:
        self._run.summary["tracelet/status"] = status
        self._run.finish(exit_code=EXIT_CODES.get(status, 1))

    # -- internals ----------------------------------------------------------------------
    def _log_row(self, row: dict[str, Any], key: tuple[int | None, float] | None) -> None:
        if not row or key is None:
            return
        step, timestamp = key
        if step is not None:
            system = all(name.startswith(SYSTEM_PREFIX) for name in row)
            row[SYSTEM_STEP_KEY if system else STEP_KEY] = step
        row["_timestamp"] = timestamp
        self._run.log(row)

    def _name(self, name: str) -> str:
        """W&B reserves names starting with ``_`` and our step field, reads ``*`` as a wildcard,
        and has no empty names: such names are logged under another (one warning each)."""
        key = self._names.get(name)
        if key is None:
            key = name.replace("*", "_")
            if not key:
                key = "unnamed"
            elif key.startswith("_") or key in (STEP_KEY, SYSTEM_STEP_KEY):
                key = "metric" + key if key.startswith("_") else "metric/" + key
            self._names[name] = key
            if not key.startswith(SYSTEM_PREFIX):
                self._define(key)
            if key != name:
                _log.warn_once(
                    f"wandb-key:{name}",
                    "W&B cannot take the metric name %r; it is logged as %r",
                    name,
                    key,
                    log=log,
                    family="W&B renamed-name",
                )
        return key

    def _define(self, key: str) -> None:
        """Plot ``key`` against the training step: an explicit definition, which W&B prefers
        over the ``system/*`` glob."""
        try:
            self._run.define_metric(key, step_metric=STEP_KEY, step_sync=True)
        except Exception as err:  # the metric is still logged, on W&B's own step axis
            _log.warn_once(
                f"wandb-define:{key}",
                "W&B refused to define %r (%s); it is plotted against W&B's own step",
                key,
                err,
                log=log,
                family="W&B define_metric",
            )

    def _save_artifact(self, event: Artifact) -> bool:
        if not os.path.exists(event.path):
            _log.warn_once(
                f"wandb-artifact:{event.path}",
                "artifact %r no longer exists; not saved to W&B",
                event.path,
                log=log,
            )
            return False
        target_dir = os.path.join(self._run.dir, event.artifact_path or "")
        target = os.path.join(target_dir, os.path.basename(event.path.rstrip(os.sep)))
        os.makedirs(target_dir, exist_ok=True)
        if os.path.isdir(event.path):
            shutil.copytree(event.path, target, dirs_exist_ok=True)
            paths = [os.path.join(d, f) for d, _, files in os.walk(target) for f in files]
        else:
            shutil.copy2(event.path, target)
            paths = [target]
        for path in paths:
            self._run.save(path, base_path=self._run.dir, policy="now")
        return True
