"""The ``mlflow`` backend: the run's lifecycle and writes, by the direct path or ``MlflowClient``."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from tracelet import _log
from tracelet.backends.base import RunGone, RunInfo, RunLocation, WriteInterrupted, count_refused_artifact
from tracelet.backends.mlflow import batches
from tracelet.backends.mlflow.batches import Pending, chunks
from tracelet.backends.mlflow.keys import (
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    KeyNamer,
    truncate,
)
from tracelet.backends.mlflow.locations import default_tracking_uri, view_hint
from tracelet.backends.mlflow.rest import batch_sender
from tracelet.backends.mlflow.schema import Point, file_identity, store_lock, store_path
from tracelet.backends.mlflow.sqlite import LocalRun, LocalStore
from tracelet.events import Artifact, Event, Metric, Params, RunEnd, Tags
from tracelet.values import flatten

log = logging.getLogger(__name__)

_INFINITIES = (math.inf, -math.inf)


class MLflowBackend:
    """The ``mlflow`` backend."""

    def __init__(self) -> None:
        self._uri = ""
        self._client_instance: Any = None
        self._run_id = ""
        self._local: LocalRun | None = None
        self._metric_keys = KeyNamer("metric")
        self._param_keys = KeyNamer("param")
        self._tag_keys = KeyNamer("tag")
        self._params_sent: dict[str, str] = {}
        self._last_point: dict[str, tuple[int, int, float]] = {}
        self._store_file: str | None = None  # a local SQLite store: it must still be there to be written
        self._store_identity: tuple[int, int] | None = None
        self._ended_at: float | None = None

    def open(self, run: RunInfo) -> RunLocation:
        uri = self._uri = default_tracking_uri(run.backend_url)
        self._ended_at = run.ended_at
        path = self._store_file = store_path(uri)
        if path is None:
            return self._open(run, uri)
        with store_lock(path):  # one process at a time creates, migrates or adds to a new store
            location = self._open(run, uri)
        self._store_identity = file_identity(path)
        return location

    def _open(self, run: RunInfo, uri: str) -> RunLocation:
        experiment_name = run.project or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
        tags = {"tracelet.run_uid": run.run_uid, **_native_tags(run)}
        start_ms = int(run.started_at * 1000)
        store = LocalStore.connect(uri)
        if store is not None:
            experiment = store.experiment(experiment_name) or store.create_experiment(experiment_name)
            if experiment is not None:
                self._local = store.create_run(experiment, run.exp_name, start_ms, tags)
                if self._local is not None:
                    self._run_id = self._local.run_id
                    return self._location(experiment.experiment_id)
        # MLflow itself: it creates a new store's schema and new experiments
        if run.api_key and not os.environ.get("MLFLOW_TRACKING_TOKEN"):
            os.environ["MLFLOW_TRACKING_TOKEN"] = run.api_key  # this process only: the writer
        if uri.startswith(("http://", "https://")):
            # MLflow's own HTTP retries take minutes on a dead server; the worker retries briefly
            # itself, then gives the backend up and points to the journal (this process only)
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        experiment_id = self._experiment_id(experiment_name)
        created = self._client.create_run(
            experiment_id, start_time=start_ms, tags=tags, run_name=run.exp_name
        )
        self._run_id = created.info.run_id
        if store is None:
            store = LocalStore.connect(uri)  # MLflow has just created it
        if store is not None:
            self._local = store.attach(self._run_id)
        return self._location(experiment_id)

    @functools.cached_property
    def _rest_send(self) -> Any:
        """``rest.py``'s sender where the client talks to a tracking server, else None."""
        return batch_sender(self._client)

    @property
    def _client(self) -> Any:
        """MLflow's client, imported and built the first time something needs it."""
        if self._client_instance is None:
            from mlflow.tracking import MlflowClient

            self._client_instance = MlflowClient(tracking_uri=self._uri)
        return self._client_instance

    def _location(self, experiment_id: str) -> RunLocation:
        return RunLocation(
            "mlflow", self._run_id, self._uri, *view_hint(self._uri, experiment_id, self._run_id)
        )

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self._client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self._client.create_experiment(name)
        except MlflowException:  # another process created it between our two calls
            found = self._client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def write(self, batch: list[Event]) -> dict[str, int]:
        committed: Counter[str] = Counter()  # refusals among the events already stored
        pending = Pending()
        done = 0  # events of the batch stored for good: a retry starts after them
        try:
            for index, event in enumerate(batch):
                if type(event) is Metric:
                    key = self._metric_keys(event.name)
                    step = event.step if event.step is not None else 0
                    if event.value in _INFINITIES:
                        _log.warn_once(
                            "mlflow-inf",
                            "MLflow stores +/-inf as +/-%g (its own rule); first seen in metric %r",
                            sys.float_info.max,
                            event.name,
                            log=log,
                        )
                    pending.metrics.append(
                        Point(key, event.value, self._timestamp_ms(key, event, step), step)
                    )
                    # a metric changes only the total: has_room(1) held for params and tags before it
                    if (
                        len(pending.metrics) + len(pending.params) + len(pending.tags)
                        < batches.MAX_ENTITIES_PER_BATCH
                    ):
                        continue
                elif isinstance(event, Params):
                    self._add_params(event.values, pending, committed)
                elif isinstance(event, Tags):
                    self._flush_if_no_room(pending, len(event.values), committed)
                    pending.tags.extend(
                        (self._tag_keys(k), truncate(str(v), MAX_TAG_VALUE, "tag", k))
                        for k, v in event.values.items()
                    )
                elif isinstance(event, Artifact):
                    self._flush(pending, committed)
                    done = index
                    self._log_artifact(event, committed)
                    done = index + 1
                elif not isinstance(event, RunEnd):
                    pending.reject("unknown event type")
                if not pending.has_room(1):  # full: send it, and the events so far are stored
                    self._flush(pending, committed)
                    done = index + 1
            self._flush(pending, committed)
        except Exception as err:
            raise WriteInterrupted(done, committed, err) from err
        return committed

    def close(self, status: str) -> None:
        end_ms = int((self._ended_at or time.time()) * 1000)
        if self._local is not None:
            ended = self._local.terminate(status, end_ms)
            self._local.close()
            if ended:
                return
        self._check_store()
        self._client.set_terminated(self._run_id, status, end_time=end_ms)

    def _check_store(self) -> None:
        """Before MLflow's client touches a local store: a deleted database file is the run gone,
        never a fresh empty store silently created at the same path."""
        if self._store_file is not None and file_identity(self._store_file) != self._store_identity:
            raise RunGone(f"the MLflow store {self._store_file} was deleted or replaced during the run")

    # -- internals ----------------------------------------------------------------------
    def _timestamp_ms(self, key: str, event: Metric, step: int) -> int:
        """MLflow stores (key, timestamp, step, value) once: a repeated point within the same
        millisecond (Lightning logs ``epoch`` at a train and a validation end in a row) would
        vanish, so it moves by a millisecond."""
        timestamp = int(event.timestamp * 1000)
        last = self._last_point.get(key)
        if last is not None and last[1] == step and last[2] == event.value and last[0] >= timestamp:
            timestamp = last[0] + 1
        self._last_point[key] = (timestamp, step, event.value)
        return timestamp

    def _add_params(self, values: Mapping[str, Any], pending: Pending, committed: Counter[str]) -> None:
        """Flattened, stringified params; MLflow params are write-once, so changes are refused here."""
        entries = [(self._param_keys(name), name, value) for name, value in flatten(values)]
        self._flush_if_no_room(pending, len(entries), committed)
        for key, name, value in entries:
            text = truncate(str(value), MAX_PARAM_VALUE, "param", name)
            previous = pending.new_params.get(key, self._params_sent.get(key))
            if previous == text:
                continue
            if previous is not None:
                pending.reject("param value changed")
                _log.warn_once(
                    f"mlflow-param-changed:{key}",
                    "MLflow params cannot change within a run: %r keeps %r, the new value %r is dropped",
                    key,
                    previous[:100],
                    text[:100],
                    log=log,
                    family="MLflow changed-param",
                )
                continue
            pending.new_params[key] = text
            pending.params.append((key, text))

    def _flush_if_no_room(self, pending: Pending, entries: int, committed: Counter[str]) -> None:
        """Params and tags that would overflow one ``log_batch`` go out after what is pending, so
        a call that fails part-way never holds metrics already stored (params and tags may be
        sent twice: MLflow takes an identical value again)."""
        if not pending.has_room(entries):
            self._flush(pending, committed)

    def _flush(self, pending: Pending, committed: Counter[str]) -> None:
        self._send(pending.metrics, pending.params, pending.tags, pending.rejected)
        self._params_sent.update(pending.new_params)
        for reason, count in pending.rejected.items():
            committed[reason] += count
        pending.clear()

    def _send(
        self,
        metrics: list[Point],
        params: list[tuple[str, str]],
        tags: list[tuple[str, str]],
        rejected: Counter[str],
    ) -> None:
        """Straight into the local store where it takes the batch, else ``log_batch`` within
        MLflow's limits; a refused batch is retried item by item."""
        for points, chunk_params, chunk_tags in chunks(metrics, params, tags):
            if self._local is not None and self._local.write(points, chunk_params, chunk_tags):
                continue
            from mlflow.exceptions import MlflowException  # MLflow only where the direct path declined

            self._check_store()
            try:
                self._log_batch(points, chunk_params, chunk_tags)
            except MlflowException as err:
                self._raise_if_gone(err)
                if not _is_refusal(err) or len(points) + len(chunk_params) + len(chunk_tags) == 1:
                    raise  # the server is unreachable or failing: the worker retries, then gives up
                log.debug("log_batch refused (%s); isolating the bad entries", err)
                self._send_one_by_one(points, chunk_params, chunk_tags, rejected)

    def _log_batch(
        self, points: list[Point], params: list[tuple[str, str]], tags: list[tuple[str, str]]
    ) -> None:
        """One ``log_batch``: a JSON request to a tracking server (``rest.py``), else MLflow's
        client with its entities."""
        if self._rest_send is not None:
            self._rest_send(self._run_id, points, params, tags)
            return
        from mlflow.entities import Metric as MlflowMetric
        from mlflow.entities import Param, RunTag

        self._client.log_batch(
            self._run_id,
            metrics=[MlflowMetric(*point) for point in points],
            params=[Param(k, v) for k, v in params],
            tags=[RunTag(k, v) for k, v in tags],
        )

    def _send_one_by_one(
        self,
        points: list[Point],
        params: list[tuple[str, str]],
        tags: list[tuple[str, str]],
        rejected: Counter[str],
    ) -> None:
        from mlflow.exceptions import MlflowException

        singles = (
            [([m], [], []) for m in points] + [([], [p], []) for p in params] + [([], [], [t]) for t in tags]
        )
        for m, p, t in singles:
            try:
                self._log_batch(m, p, t)
            except MlflowException as err:
                self._raise_if_gone(err)
                if not _is_refusal(err):
                    raise
                rejected["refused by MLflow"] += 1
                key = (m or p or t)[0][0]
                _log.warn_once(
                    f"mlflow-refused:{key}",
                    "MLflow refused %r: %s",
                    key,
                    err,
                    log=log,
                    family="MLflow refused-entry",
                )

    def _raise_if_gone(self, err: Exception) -> None:
        """MLflow's answer for a deleted or purged run (or experiment) becomes ``RunGone``."""
        message = str(err)
        if getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST" or (
            "must be in the 'active' state" in message
        ):
            raise RunGone(f"the MLflow run {self._run_id} no longer takes writes ({message[:200]})") from err

    def _log_artifact(self, event: Artifact, rejected: Counter[str]) -> None:
        """Upload one artifact; a store that refuses it costs that artifact only (counted, warned
        once), a store that cannot be reached raises (the worker retries, then gives up)."""
        if not os.path.exists(event.path):
            rejected["artifact missing"] += 1
            _log.warn_once(
                f"mlflow-artifact:{event.path}",
                "artifact %r no longer exists; not uploaded",
                event.path,
                log=log,
            )
            return
        if self._local is not None and self._local.copy_artifact(event.path, event.artifact_path):
            return
        self._check_store()
        try:
            if os.path.isdir(event.path):
                self._client.log_artifacts(self._run_id, event.path, event.artifact_path)
            else:
                self._client.log_artifact(self._run_id, event.path, event.artifact_path)
        except Exception as err:  # the store's failure goes up, a refusal is counted
            self._raise_if_gone(err)
            count_refused_artifact("MLflow", event, err, rejected)


def _is_refusal(err: Exception) -> bool:
    """MLflow refused the data itself (a 4xx: bad key, bad value), as opposed to failing to store it."""
    try:
        return 400 <= int(err.get_http_status_code()) < 500  # type: ignore[attr-defined]
    except Exception:
        return False


def _native_tags(run: RunInfo) -> dict[str, str]:
    """MLflow's own source and git tags, as its fluent API would set them."""
    import getpass

    tags = {"mlflow.source.type": "LOCAL"}
    if run.argv and run.argv[0]:
        tags["mlflow.source.name"] = run.argv[0]
    with contextlib.suppress(Exception):  # no user name in this container: no tag
        tags["mlflow.user"] = getpass.getuser()
    git = run.git
    if git is not None:
        if git.commit:
            tags["mlflow.source.git.commit"] = git.commit
        if git.branch:
            tags["mlflow.source.git.branch"] = git.branch
        if git.remote:
            tags["mlflow.source.git.repoURL"] = git.remote
    return tags
