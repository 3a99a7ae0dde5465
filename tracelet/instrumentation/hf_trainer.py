"""Hugging Face ``transformers.Trainer``: what it reports, in every backend, without ``report_to``.

While tracking is on, every ``Trainer`` (and subclass: ``Seq2SeqTrainer``, TRL's trainers)
gets one tracelet ``TrainerCallback`` through its public extension point, first in its list so
that no other callback's changes to ``logs`` reach it. It is added when the Trainer is built,
or, for one built before ``start_logging``, when it starts ``train``/``evaluate``/``predict``,
and removed from every Trainer at ``stop_logging``. It records, on the world's process zero:

- ``on_log``: what ``Trainer.log`` reports (``loss``, ``grad_norm``, ``learning_rate``,
  ``epoch``, ``eval_*``, ``test_*``, ``train_runtime``...) at ``state.global_step``, under the
  Trainer's own names, as its ``MLflowCallback`` logs them; values that are not numbers are
  skipped, as there (one warning).
- ``on_train_begin``: ``TrainingArguments.to_dict()`` (tokens masked by transformers, other
  secret-looking names by tracelet) over the model's config, as params: the built-in
  integrations' merge.
- ``on_save`` and ``on_train_end``: the last and best checkpoint paths as tags, the metric that
  chose the best (``checkpoint.monitor``) and its value as ``checkpoint/best_score``.
- ``Trainer.train/evaluate/predict`` raising marks the run FAILED (KILLED for Ctrl+C).

The user's own ``report_to`` integrations are left as they are. When ``report_to`` includes
TensorBoard, its ``SummaryWriter`` calls are not captured a second time by the TensorBoard
instrumentation (``tensorboard.captured_elsewhere``).
"""

from __future__ import annotations

import importlib
import sys
import time
import weakref
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tracelet import _log
from tracelet.events import FAILED, KILLED
from tracelet.instrumentation.base import Instrumentor, Safety, guarded, the_instance
from tracelet.instrumentation.tensorboard import captured_elsewhere

if TYPE_CHECKING:
    from tracelet.sink import Sink

_ENTRY_POINTS = ("train", "evaluate", "predict")
_TENSORBOARD_WRITES = ("on_train_begin", "on_log")
_LOGS = "transformers Trainer.log"


class TrainerInstrumentor(Instrumentor):
    name = "transformers"
    modules = ("transformers.trainer",)

    def __init__(self, sink: Sink, safety: Safety) -> None:
        super().__init__(safety)
        self._sink = sink
        self._callback: Any = None
        self._trainers: weakref.WeakSet[Any] = weakref.WeakSet()
        safety.points_of(_LOGS, lambda _state, logs: len(logs))

    def library_version(self) -> str:
        module = sys.modules.get("transformers")
        return f"transformers {getattr(module, '__version__', '(version unknown)')}"

    def uninstrument(self) -> None:
        for trainer in list(self._trainers):
            callbacks = getattr(getattr(trainer, "callback_handler", None), "callbacks", [])
            if self._callback in callbacks:
                callbacks.remove(self._callback)
        self._trainers = weakref.WeakSet()
        super().uninstrument()

    def _apply(self, module: ModuleType) -> None:
        active = lambda: self.active  # noqa: E731

        def callback() -> None:
            self._callback = _callback_class(module.TrainerCallback)(self)
            self._wrap(
                module.Trainer,
                "__init__",
                guarded(
                    "transformers Trainer()", self.safety, active, before=the_instance, after=self._attach
                ),
            )

        self._patch_point("Trainer metrics, params and checkpoints", callback)
        for entry_point in _ENTRY_POINTS:
            self._patch_point(
                f"run status when Trainer.{entry_point} fails",
                lambda entry_point=entry_point: self._wrap(
                    module.Trainer,
                    entry_point,
                    guarded(
                        f"transformers Trainer.{entry_point}",
                        self.safety,
                        active,
                        before=self._attached,
                        on_error=self._on_error,
                    ),
                ),
            )
        self._patch_point(
            "TensorBoard scalars without a second copy (report_to tensorboard)", self._tensorboard
        )

    def _tensorboard(self) -> None:
        integrations = importlib.import_module("transformers.integrations.integration_utils")
        for method in _TENSORBOARD_WRITES:
            self._wrap(integrations.TensorBoardCallback, method, captured_elsewhere(_unchanged))

    # -- the callback's place in each Trainer ------------------------------------------------
    def _attach(self, trainer: Any, _result: Any) -> None:
        if self._callback is None:
            return
        callbacks = trainer.callback_handler.callbacks
        if self._callback not in callbacks:
            callbacks.insert(0, self._callback)
            self._trainers.add(trainer)

    def _attached(self, trainer: Any, _args: tuple, _kwargs: dict) -> Any:
        self._attach(trainer, None)
        return trainer

    def _on_error(self, _trainer: Any, exc: BaseException) -> None:
        interrupted = isinstance(exc, KeyboardInterrupt) or isinstance(exc.__context__, KeyboardInterrupt)
        self._sink.mark_status(KILLED if interrupted else FAILED, exc)

    # -- what the callback records -------------------------------------------------------------
    def log(self, state: Any, logs: Mapping[str, Any]) -> None:
        names: list[str] = []
        values: list[Any] = []
        for key, value in logs.items():
            if not isinstance(value, (int, float)):
                if getattr(value, "numel", None) is None or value.numel() != 1:
                    _log.warn_once(
                        f"transformers-log:{key}",
                        "Trainer.log reported %r as %s, not a number: not a metric, not recorded "
                        "(as the Trainer's MLflowCallback does)",
                        key,
                        type(value).__name__,
                        log=_log.get_logger(__name__),
                    )
                    continue
                value = value.item()
            names.append(str(key))
            values.append(value)
        if names:
            self._sink.host_metrics(tuple(names), tuple(values), int(state.global_step), time.time())

    def params(self, args: Any, model: Any) -> None:
        params = dict(args.to_dict())
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            params = {**config.to_dict(), **params}
        self._sink.params(params)

    def checkpoints(self, args: Any, state: Any, final: bool) -> None:
        tags: dict[str, Any] = {}
        if not final and args.output_dir:
            tags["checkpoint.last_path"] = f"{args.output_dir.rstrip('/')}/checkpoint-{state.global_step}"
        if state.best_model_checkpoint:
            tags["checkpoint.best_path"] = state.best_model_checkpoint
            if args.metric_for_best_model:
                tags["checkpoint.monitor"] = args.metric_for_best_model
        if tags:
            self._sink.tags(tags)
        if final and state.best_metric is not None:
            best = {"checkpoint/best_score": state.best_metric}
            self._sink.metrics(best, int(state.global_step), time.time())


def _callback_class(base: type) -> type:
    """A ``TrainerCallback`` (the base class comes from the transformers being patched)."""

    class TraceletCallback(base):  # type: ignore[misc, valid-type]
        def __init__(self, instrumentor: TrainerInstrumentor) -> None:
            self._instrumentor = instrumentor

        def _recording(self, state: Any) -> bool:
            return self._instrumentor.active and state.is_world_process_zero

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and self._recording(state):
                self._instrumentor.safety.run(_LOGS, self._instrumentor.log, state, logs)

        def on_train_begin(
            self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
        ) -> None:
            if self._recording(state):
                self._instrumentor.safety.run("transformers params", self._instrumentor.params, args, model)

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self._recording(state):
                self._instrumentor.safety.run(
                    "transformers checkpoints", self._instrumentor.checkpoints, args, state, False
                )

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self._recording(state):
                self._instrumentor.safety.run(
                    "transformers checkpoints", self._instrumentor.checkpoints, args, state, True
                )

    return TraceletCallback


def _unchanged(wrapped: Any, _instance: Any, args: tuple, kwargs: dict) -> Any:
    return wrapped(*args, **kwargs)
