"""MLflow: the embedded local default (a SQLite store in the working directory).

project -> experiment, exp_name -> run name. On a local SQLite store whose schema is the
installed MLflow's, the run is created and written straight into MLflow's own tables without
importing MLflow (``sqlite.py``: the writer starts in ~0.3 s of CPU instead of ~2 s).
Everything that path declines — a new store or experiment, a remote server,
an entry MLflow would refuse — goes through an ``MlflowClient`` (imported then) with an
explicit run id, never the fluent global run, so a user's own ``mlflow.start_run`` is
untouched; metrics, params and tags then go out in ``log_batch`` calls within MLflow's limits
(to a tracking server as plain JSON requests, ``rest.py``: a sixth of the CPU per point).
Names MLflow refuses are sanitized (one warning per name), params are flattened with
``/`` like Lightning's ``MLFlowLogger`` does and truncated at MLflow's length limit.

The package: ``backend.py`` (the ``MLflowBackend`` plugin: lifecycle, writes, the client path),
``sqlite.py`` and ``schema.py`` (the direct path into a local SQLite store), ``rest.py`` (batches
to a tracking server), ``keys.py`` (MLflow's name and value rules), ``batches.py`` (``log_batch``
limits), ``locations.py`` (the default store, how to view a run).
"""

from tracelet.backends.mlflow.backend import MLflowBackend

__all__ = ["MLflowBackend"]
