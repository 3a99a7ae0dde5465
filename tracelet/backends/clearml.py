"""ClearML: ``Task.init(project_name=project, task_name=exp_name)`` honouring ClearML's own
configuration (``clearml.conf``, ``CLEARML_*`` variables, offline mode).

tracelet already captures the frameworks, the machine and the code, so ClearML's own
automation is switched off: no framework patching (it would double-count every metric),
no resource monitoring, no repository detection and package analysis (minutes on a large
repository), no argparse or console capture. The task reports in-process (ClearML's
reporting subprocess costs ~6 ms per scalar; tracelet's writer already is the separate
process). ``train/loss`` becomes title ``train``, series ``loss``; params go to the
``General`` section, tags to user properties, artifacts through ``upload_artifact``.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from typing import Any

from tracelet import _log
from tracelet.backends.base import WRITER_ENV, RunInfo, RunLocation, WriteInterrupted, count_refused_artifact
from tracelet.events import Artifact, Event, Metric, Params, RunEnd, Tags
from tracelet.values import flatten

log = logging.getLogger(__name__)

_NO_AUTOMATION = {
    name: False
    for name in (
        "matplotlib",
        "tensorflow",
        "tensorboard",
        "pytorch",
        "xgboost",
        "scikit",
        "fastai",
        "lightgbm",
        "hydra",
        "detect_repository",
        "tfdefines",
        "joblib",
        "megengine",
        "catboost",
        "gradio",
        "jsonargparse",
    )
}


def title_and_series(name: str) -> tuple[str, str]:
    """``train/loss`` -> (``train``, ``loss``); ``a/b/c`` -> (``a``, ``b/c``); ``loss`` -> twice ``loss``."""
    title, _, series = name.partition("/")
    if not title or not series:
        plain = name.strip("/") or "unnamed"
        return plain, plain
    return title, series


def _scalar_or_text(value: Any) -> Any:
    """ClearML keeps the type of plain values; lists and the like go as their text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


_MASTER_ID_VARIABLES = ("CLEARML_PROC_MASTER_ID", "TRAINS_PROC_MASTER_ID")


class ClearMLBackend:
    """The ``clearml`` backend."""

    def __init__(self) -> None:
        self._task: Any = None
        self._logger: Any = None

    def open(self, run: RunInfo) -> RunLocation:
        if run.api_key:
            os.environ.setdefault("CLEARML_API_SECRET_KEY", run.api_key)  # the writer process only
        if run.backend_url:
            os.environ.setdefault("CLEARML_API_HOST", run.backend_url)
        from clearml import Task
        from clearml.backend_interface.task.task import Task as TaskBase

        TaskBase._report_subprocess_enabled = False  # we are the background process already
        if os.environ.get(WRITER_ENV):
            # Inherited from a training process with a ClearML task of its own, these make ClearML
            # treat the writer as that task's child and hand it a do-nothing stub. The writer's task
            # is its own (in writer="thread" mode the training process's ClearML state is left alone).
            for variable in _MASTER_ID_VARIABLES:
                os.environ.pop(variable, None)
        script = os.path.basename(run.argv[0]) if run.argv and run.argv[0] else ""
        self._task = Task.init(
            project_name=run.project or "tracelet",
            task_name=run.exp_name or script or f"run-{run.run_uid[:8]}",
            reuse_last_task_id=False,
            auto_connect_frameworks=dict(_NO_AUTOMATION),
            auto_resource_monitoring=False,
            auto_connect_arg_parser=False,
            auto_connect_streams=False,
        )
        if not isinstance(self._task, TaskBase):  # a StubObject: everything sent would vanish
            raise RuntimeError(
                "ClearML returned a stub task (it believes this process is a child of another ClearML "
                "task, or it is not configured); nothing would be recorded"
            )
        self._task.set_user_properties(tracelet_run_uid=run.run_uid)
        if run.git is not None:
            self._set_repository(run)
        self._logger = self._task.get_logger()
        offline = Task.is_offline()
        where = self._task.get_offline_mode_folder() if offline else self._task.get_output_log_web_page()
        view = (
            f"offline session in {where}; import it with Task.import_offline_session('{where}.zip')"
            if offline
            else str(where)
        )
        return RunLocation("clearml", self._task.id, str(where), view)

    def _set_repository(self, run: RunInfo) -> None:
        """ClearML's repository fields, from tracelet's own git reading (its detection is off, so the
        task has no script section yet and ``set_script`` cannot be used)."""
        from clearml.backend_api.services import tasks

        git = run.git
        script = tasks.Script(
            repository=git.remote or "",
            branch=git.branch or "",
            version_num=git.commit or "",
            diff=git.diff,
            working_dir=os.path.relpath(os.getcwd(), git.root) if git.root else ".",
            entry_point=os.path.basename(run.argv[0]) if run.argv else "",
            binary="python",
        )
        self._task._update_script(script=script)

    def write(self, batch: list[Event]) -> dict[str, int]:
        rejected: Counter[str] = Counter()
        for index, event in enumerate(batch):
            try:
                self._write_one(event, rejected)
            except Exception as err:  # events before this one are reported: a retry starts here
                raise WriteInterrupted(index, rejected, err) from err
        return rejected

    def _write_one(self, event: Event, rejected: Counter[str]) -> None:
        if isinstance(event, Metric):
            if not math.isfinite(event.value):
                # ClearML would report NaN/inf as 0.0 (its server cannot store them): a lie
                rejected["non-finite value"] += 1
                _log.warn_once(
                    "clearml-nonfinite",
                    "ClearML cannot store NaN/inf (it would show 0): such points are dropped and "
                    "counted as 'non-finite value'; the first was in %r",
                    event.name,
                    log=log,
                )
                return
            title, series = title_and_series(event.name)
            step = event.step if event.step is not None else 0
            self._logger.report_scalar(title, series, event.value, iteration=step)
        elif isinstance(event, Params):
            self._task.update_parameters(
                {f"General/{k}": _scalar_or_text(v) for k, v in flatten(event.values)}
            )
        elif isinstance(event, Tags):
            self._task.set_user_properties(**{k: str(v) for k, v in event.values.items()})
        elif isinstance(event, Artifact):
            if os.path.exists(event.path):
                name = "/".join(
                    p for p in (event.artifact_path, os.path.basename(event.path.rstrip("/"))) if p
                )
                try:
                    self._task.upload_artifact(name, artifact_object=event.path, wait_on_upload=True)
                except Exception as err:  # the store's failure goes up, a refusal is counted
                    count_refused_artifact("ClearML", event, err, rejected)
            else:
                rejected["artifact missing"] += 1
        elif not isinstance(event, RunEnd):
            rejected["unknown event type"] += 1

    def close(self, status: str) -> None:
        from clearml import Task

        self._flush_scalars()
        if Task.is_offline():
            self._task.add_tags([f"status:{status.lower()}"])  # offline sessions keep no status
        # close() marks the task completed; not mark_completed(), which ends the calling process
        self._task.close()
        if status != "FINISHED":
            self._task.mark_failed(status_reason=f"tracelet: run {status.lower()}", force=True)

    def _flush_scalars(self) -> None:
        """Return once ClearML's report thread has written every scalar reported so far.

        ``Logger.flush(wait=True)`` may return while the thread still holds scalars (it says
        "empty" after the batch it was writing, with the next one queued), and ``Task.close()``
        stops waiting for them once ClearML's process-wide exit hook has seen ``sys.exit``
        (non-zero) or an uncaught exception from anything in the process.
        """
        reporter = self._task._reporter
        self._logger.flush(wait=True)
        while reporter.events_waiting() and reporter.is_alive():
            self._logger.flush(wait=True)
        if reporter.events_waiting():
            raise RuntimeError("ClearML's report thread stopped with scalars not yet written")
