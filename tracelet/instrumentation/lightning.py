"""PyTorch Lightning: every metric Lightning would hand its loggers, without being a logger.

Patched, in both ``lightning.pytorch`` and ``pytorch_lightning``:

- ``_LoggerConnector.log_metrics`` — the single place where reduced metrics reach loggers
  (every ``log_every_n_steps`` in training, at epoch ends, after evaluation). Lightning
  returns early there when the trainer has no loggers, so tracelet captures *around* it and
  applies Lightning's own step rule: the ``step`` metric if logged, else ``epoch`` is added
  and the step is ``fit_loop.epoch_loop._batches_that_stepped``. When the trainer has
  loggers, the values Lightning already converted to Python numbers are reused: no extra
  device synchronization.
- ``_log_hyperparams`` (as imported into the trainer module) — ``save_hyperparameters()`` of
  the module and datamodule become params, also with ``logger=False``.
- ``Trainer.fit/validate/test/predict`` — an exception escaping them marks the run FAILED,
  a KeyboardInterrupt (which Lightning turns into ``SystemExit``) KILLED.
- after the logger connector's ``on_batch_start``/``on_batch_end`` (once per training batch),
  ``_FitLoop.on_run_start``/``on_advance_start``/``on_advance_end`` (fit and epoch hooks),
  ``_EvaluationLoop._on_evaluation_end`` and a finished ``Trainer.fit``: ``TrainingObserver``
  (``lightning_training.py``) reads optimizer state, timings and checkpoints.

TensorBoard scalars that Lightning's own ``TensorBoardLogger`` writes from inside
``log_metrics``/``_log_hyperparams`` are not captured a second time by the TensorBoard
instrumentation (``tensorboard.captured_elsewhere``).

Nothing is added to ``trainer.loggers``, so checkpoint paths, ``self.logger`` and the
progress bar are exactly what they would be without tracelet. Only global rank 0 sends.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tracelet.events import FAILED, KILLED
from tracelet.instrumentation.base import Instrumentor, Safety, guarded
from tracelet.instrumentation.lightning_training import TrainingObserver
from tracelet.instrumentation.tensorboard import captured_elsewhere, capturing_elsewhere

if TYPE_CHECKING:
    from tracelet.experiment import Experiment

NAMESPACES = ("lightning.pytorch", "pytorch_lightning")
_CONNECTOR = "trainer.connectors.logger_connector.logger_connector"
_ENTRY_POINTS = ("fit", "validate", "test", "predict")
_LOG_METRICS = "lightning log_metrics"
_READ_CPU_TENSORS_AT_ONCE = True  # device tensors are copied to the host asynchronously


class LightningInstrumentor(Instrumentor):
    name = "lightning"
    modules = tuple(f"{ns}.trainer.trainer" for ns in NAMESPACES)

    def __init__(self, experiment: Experiment, safety: Safety) -> None:
        super().__init__(safety)
        self._experiment = experiment

    def _apply(self, trainer_module: ModuleType) -> None:
        namespace = trainer_module.__name__[: -len(".trainer.trainer")]
        connector = sys.modules[f"{namespace}.{_CONNECTOR}"]._LoggerConnector
        active = lambda: self.active  # noqa: E731
        self._wrap(connector, "log_metrics", self._on_log_metrics)
        self._wrap(
            trainer_module,
            "_log_hyperparams",
            captured_elsewhere(
                guarded("lightning hyperparameters", self.safety, active, before=self._capture_hyperparams)
            ),
        )
        observer = self._observe_training(namespace, connector)
        for entry_point in _ENTRY_POINTS:
            self._wrap(
                trainer_module.Trainer,
                entry_point,
                guarded(
                    f"lightning Trainer.{entry_point}",
                    self.safety,
                    active,
                    before=_the_trainer,
                    after=_fit_ended(observer) if entry_point == "fit" else None,
                    on_error=self._on_error,
                ),
            )

    def _observe_training(self, namespace: str, connector: type) -> TrainingObserver:
        """Read what the fit does (``TrainingObserver``) right after Lightning's own steps.

        Not at ``_call_callback_hooks``: it runs 6 times per training step for the 2 we
        observe, and every pass through a patch costs time on every step. The places below run
        once per batch (the logger connector's ``on_batch_start``/``on_batch_end``, right
        around the ``on_train_batch_start``/``on_train_batch_end`` callbacks), once per epoch
        (the fit loop's ``on_advance_start``/``on_advance_end``, which run the epoch hooks) or
        once per fit (``_FitLoop.on_run_start``, after ``on_fit_start``; the end of
        ``Trainer.fit``).
        """
        settings = self._experiment.settings
        data_module = importlib.import_module(f"{namespace}.utilities.data")
        observer = TrainingObserver(
            self._experiment,
            optimizer=settings.track_optimizer,
            perf=settings.track_perf,
            log_checkpoints=settings.log_checkpoints,
            checkpoint_max_mb=settings.checkpoint_max_mb,
            extract_batch_size=data_module.extract_batch_size,
        )
        fit_loop = importlib.import_module(f"{namespace}.loops.fit_loop")._FitLoop
        evaluation_loop = importlib.import_module(f"{namespace}.loops.evaluation_loop")._EvaluationLoop
        training = lambda trainer: trainer.training  # noqa: E731  (evaluation batches pass here too)
        not_testing = lambda trainer: not trainer.testing  # noqa: E731
        for owner, method, handler, when in (
            (connector, "on_batch_start", observer.batch_start, training),
            (connector, "on_batch_end", observer.batch_end, training),
            (fit_loop, "on_run_start", observer.fit_start, None),
            (fit_loop, "on_advance_start", observer.epoch_start, None),
            (fit_loop, "on_advance_end", observer.epoch_end, None),
            (evaluation_loop, "_on_evaluation_end", observer.validation_end, not_testing),
        ):
            self._wrap(owner, method, self._observing(handler, when))
        return observer

    def _observing(
        self, handler: Callable[[Any, tuple], None], when: Callable[[Any], bool] | None
    ) -> Callable[..., Any]:
        """A wrapper that runs ``handler(trainer, args)`` after the original, on global rank 0
        and where ``when(trainer)``, under the safety contract."""
        safety = self.safety

        def observe_now(instance: Any, args: tuple) -> None:
            trainer = instance.trainer
            if trainer.is_global_zero and (when is None or when(trainer)):
                handler(trainer, args)

        def observe(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
            result = wrapped(*args, **kwargs)
            if self._active:
                safety.run("lightning training", observe_now, instance, args)
            return result

        return observe

    # -- metrics ----------------------------------------------------------------------------
    def _on_log_metrics(self, wrapped: Callable[..., Any], connector: Any, args: tuple, kwargs: dict) -> Any:
        """The wrapper of ``_LoggerConnector.log_metrics``: capture before the call, emit after
        it, TensorBoard calls made inside marked as captured here. One wrapper, not
        ``captured_elsewhere(guarded(...))``: it runs at every logging step."""
        if not self._active:
            return wrapped(*args, **kwargs)
        context = self.safety.run(_LOG_METRICS, self._before_log_metrics, connector, args, kwargs)
        capturing_elsewhere.depth += 1
        try:
            result = wrapped(*args, **kwargs)
        finally:
            capturing_elsewhere.depth -= 1
        if context is not None:
            self.safety.run(_LOG_METRICS, self._after_log_metrics, context)
        return result

    def _before_log_metrics(self, connector: Any, args: tuple, kwargs: dict) -> Any:
        metrics = args[0] if args else kwargs.get("metrics")
        step = args[1] if len(args) > 1 else kwargs.get("step")
        trainer = connector.trainer
        if not metrics or not trainer.is_global_zero:
            return None
        step_from_metrics = False
        epoch = None
        if step is None:
            raw_step = metrics.get("step")
            if raw_step is not None:
                step = int(_scalars({"step": raw_step})["step"])
                step_from_metrics = True
            else:
                epoch = trainer.current_epoch
                step = trainer.fit_loop.epoch_loop._batches_that_stepped
        return connector, metrics, int(step), step_from_metrics, epoch, bool(trainer.loggers)

    def _after_log_metrics(self, context: Any) -> None:
        connector, metrics, step, step_from_metrics, epoch, had_loggers = context
        if had_loggers:
            # Lightning converted them already (one .item() each): reuse, never sync again
            converted = connector._logged_metrics
            metrics = {k: converted.get(k, v) for k, v in metrics.items()}
        if step_from_metrics:
            metrics = {k: v for k, v in metrics.items() if k != "step"}
        values, on_device = _split_by_device(metrics)
        if epoch is not None and "epoch" not in metrics:
            values["epoch"] = epoch
        now = time.time()
        self._experiment._emit_metrics(values, step, now)
        for names, stacked in on_device:
            self._experiment._emit_deferred(names, _to_host_later(stacked), step, now)

    # -- hyperparameters -------------------------------------------------------------------
    def _capture_hyperparams(self, _instance: Any, args: tuple, kwargs: dict) -> None:
        trainer = args[0] if args else kwargs["trainer"]
        if not trainer.is_global_zero:
            return None
        hparams = _initial_hparams(trainer)
        if hparams:
            self._experiment.log_params(hparams)
        return None

    # -- run status ------------------------------------------------------------------------
    def _on_error(self, _context: Any, exc: BaseException) -> None:
        interrupted = isinstance(exc, KeyboardInterrupt) or isinstance(exc.__context__, KeyboardInterrupt)
        self._experiment._mark_status(KILLED if interrupted else FAILED, exc)


def _fit_ended(observer: TrainingObserver) -> Callable[[Any, Any], None]:
    def after_fit(trainer: Any, _result: Any) -> None:
        """Where ``on_fit_end`` ran: the fit finished (an interrupted or failed one raised)."""
        if trainer.state.finished and trainer.is_global_zero:
            observer.fit_end(trainer, ())

    return after_fit


def _the_trainer(trainer: Any, _args: tuple, _kwargs: dict) -> Any:
    return trainer


def _initial_hparams(trainer: Any) -> dict[str, Any]:
    """The hyperparameters Lightning's ``_log_hyperparams`` would hand its loggers."""
    module = trainer.lightning_module
    datamodule = trainer.datamodule
    merged: dict[str, Any] = {}
    if module is not None and module._log_hyperparams:
        merged.update(module.hparams_initial)
    if datamodule is not None and datamodule._log_hyperparams:
        merged.update(datamodule.hparams_initial)
    merged.pop("_class_path", None)  # LightningCLI's internal hparam
    return merged


def _scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Python numbers for every one-element tensor, now (for the rare explicit ``step`` tensor)."""
    values, on_device = _split_by_device(metrics)
    for names, stacked in on_device:
        values.update(zip(names, stacked.tolist(), strict=True))
    return values


def _split_by_device(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[tuple[str, ...], Any]]]:
    """Numbers and CPU tensors as Python values now; one-element device tensors stacked, one
    stack per device and dtype, for a single transfer each."""
    values: dict[str, Any] = {}
    groups: dict[tuple[Any, Any], list[tuple[str, Any]]] = {}
    read_cpu_now = _READ_CPU_TENSORS_AT_ONCE
    for key, value in metrics.items():
        on_host = getattr(value, "is_cpu", None)  # a torch tensor (cheaper than building .device)
        if on_host is None or not hasattr(value, "detach"):
            values[key] = value
        elif on_host and read_cpu_now:  # the common case on CPU: one element, read now
            try:
                values[key] = value.item()
            except RuntimeError:  # not one element: kept, and refused (counted) when emitted
                values[key] = value
        elif value.numel() != 1:
            values[key] = value
        else:
            groups.setdefault((value.device, value.dtype), []).append((key, value))
    if not groups:
        return values, []
    import torch

    stacked = [
        (tuple(k for k, _ in group), torch.stack([v.detach().reshape(()) for _, v in group]))
        for group in groups.values()
    ]
    return values, stacked


def _to_host_later(stacked: Any) -> Callable[[], list[float]]:
    """Start the device-to-host copy without waiting for it; the returned function waits.

    CUDA: a non-blocking copy into pinned memory and an event recorded behind it on the
    current stream; the bus's sender thread waits on the event, not the training thread.
    So tracking adds no synchronization to a training step. Other devices: one synchronous
    transfer here.
    """
    if stacked.device.type == "cuda":
        import torch

        host = stacked.to("cpu", non_blocking=True)  # lands in pinned memory, asynchronously
        ready = torch.cuda.Event()
        ready.record()

        def wait_and_read() -> list[float]:
            ready.synchronize()
            return host.tolist()

        return wait_and_read
    values = stacked.tolist()
    return lambda: values
