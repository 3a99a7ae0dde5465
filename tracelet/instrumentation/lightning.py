"""PyTorch Lightning: every metric Lightning would hand its loggers, without being a logger.

Patched, in both ``lightning.pytorch`` and ``pytorch_lightning``:

- ``_LoggerConnector.log_metrics`` — the single place where reduced metrics reach loggers
  (every ``log_every_n_steps`` in training, at epoch ends, after evaluation). Lightning
  returns early there when the trainer has no loggers, so tracelet captures *around* it and
  applies Lightning's own step rule: the ``step`` metric if logged, else ``epoch`` is added
  and the step is ``fit_loop.epoch_loop._batches_that_stepped``. The training thread reads
  CPU tensors at once with ``.tolist()`` (a tensor kept in the bus's buffer until the sender
  thread reads it holds 25 times the memory of its number); the sender thread checks the
  values. One-element device tensors are stacked and copied to the host asynchronously — no
  device synchronization, no ``.item()`` on the training thread.
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
from tracelet.instrumentation.base import Instrumentor, Safety, guarded, the_instance
from tracelet.instrumentation.lightning_training import TrainingObserver
from tracelet.instrumentation.tensorboard import captured_elsewhere, capturing_elsewhere
from tracelet.values import read_cpu_scalar

if TYPE_CHECKING:
    from tracelet.config import Settings
    from tracelet.sink import Sink

NAMESPACES = ("lightning.pytorch", "pytorch_lightning")
_CONNECTOR = "trainer.connectors.logger_connector.logger_connector"
_ENTRY_POINTS = ("fit", "validate", "test", "predict")
_LOG_METRICS = "lightning log_metrics"
_TRAINING = "lightning training"
_CPU_TENSORS_AS_DEVICE = False  # tests set it to run the device path on CPU tensors


class LightningInstrumentor(Instrumentor):
    name = "lightning"
    modules = tuple(f"{ns}.trainer.trainer" for ns in NAMESPACES)

    def __init__(self, sink: Sink, safety: Safety, settings: Settings) -> None:
        super().__init__(safety)
        self._sink = sink
        self._settings = settings
        safety.points_of(_LOG_METRICS, _metric_count)

    def library_version(self) -> str:
        for namespace in NAMESPACES:
            module = sys.modules.get(namespace)
            if module is not None:
                return f"{namespace} {getattr(module, '__version__', '(version unknown)')}"
        return "Lightning"

    def _apply(self, trainer_module: ModuleType) -> None:
        """Each patch point on its own (``_patch_point``): a Lightning release that renamed,
        moved or changed one costs only the capability named beside it."""
        namespace = trainer_module.__name__[: -len(".trainer.trainer")]
        active = lambda: self.active  # noqa: E731
        connector: Any = None

        def metrics() -> None:
            nonlocal connector
            connector = sys.modules[f"{namespace}.{_CONNECTOR}"]._LoggerConnector
            self._wrap_hot(connector, "log_metrics", self._on_log_metrics)

        def hyperparameters() -> None:
            capture = guarded(
                "lightning hyperparameters", self.safety, active, before=self._capture_hyperparams
            )
            self._wrap(trainer_module, "_log_hyperparams", captured_elsewhere(capture))

        self._patch_point("Lightning metrics (self.log)", metrics)
        self._patch_point("hyperparameters (save_hyperparameters)", hyperparameters)
        observer = self._observe_training(namespace, connector)
        for entry_point in _ENTRY_POINTS:
            self._patch_point(
                f"run status when Trainer.{entry_point} fails"
                + (" and the best checkpoint at its end" if entry_point == "fit" else ""),
                lambda entry_point=entry_point: self._wrap(
                    trainer_module.Trainer,
                    entry_point,
                    guarded(
                        f"lightning Trainer.{entry_point}",
                        self.safety,
                        active,
                        before=the_instance,
                        after=_fit_ended(observer) if entry_point == "fit" and observer else None,
                        on_error=self._on_error,
                    ),
                ),
            )

    def _observe_training(self, namespace: str, connector: type | None) -> TrainingObserver | None:
        """Read what the fit does (``TrainingObserver``) right after Lightning's own steps.

        Not at ``_call_callback_hooks``: it runs 6 times per training step for the 2 we
        observe, and every pass through a patch costs time on every step. The places below run
        once per batch (the logger connector's ``on_batch_start``/``on_batch_end``, right
        around the ``on_train_batch_start``/``on_train_batch_end`` callbacks), once per epoch
        (the fit loop's ``on_advance_start``/``on_advance_end``, which run the epoch hooks) or
        once per fit (``_FitLoop.on_run_start``, after ``on_fit_start``; the end of
        ``Trainer.fit``).
        """
        settings = self._settings
        observer: TrainingObserver | None = None

        def make_observer() -> None:
            nonlocal observer
            data_module = importlib.import_module(f"{namespace}.utilities.data")
            observer = TrainingObserver(
                self._sink,
                optimizer=settings.track_optimizer,
                perf=settings.track_perf,
                log_checkpoints=settings.log_checkpoints,
                checkpoint_max_mb=settings.checkpoint_max_mb,
                extract_batch_size=data_module.extract_batch_size,
                training_stage=importlib.import_module(f"{namespace}.trainer.states").RunningStage.TRAINING,
            )

        self._patch_point("learning rates, perf/ timings and checkpoints", make_observer)
        if observer is None:
            return None
        loops = f"{namespace}.loops"
        not_testing = lambda trainer: not trainer.testing  # noqa: E731
        batch_hooks = "learning rates per step and perf/ step timings"
        for method, handler in (
            ("on_batch_start", observer.batch_start),
            ("on_batch_end", observer.batch_end),
        ):
            self._patch_point(
                batch_hooks,
                lambda method=method, handler=handler: self._wrap_hot(
                    _required(connector), method, self._observing_batches(handler)
                ),
            )
        for module, owner, method, handler, when, capability in (
            (
                "fit_loop",
                "_FitLoop",
                "on_run_start",
                observer.fit_start,
                None,
                "trainer configuration params",
            ),
            (
                "fit_loop",
                "_FitLoop",
                "on_advance_start",
                observer.epoch_start,
                None,
                "learning rates per epoch",
            ),
            (
                "fit_loop",
                "_FitLoop",
                "on_advance_end",
                observer.epoch_end,
                None,
                "epoch times and checkpoint tags",
            ),
            (
                "evaluation_loop",
                "_EvaluationLoop",
                "_on_evaluation_end",
                observer.validation_end,
                not_testing,
                "checkpoint tags after validation",
            ),
        ):
            self._patch_point(
                capability,
                lambda module=module, owner=owner, method=method, handler=handler, when=when: self._wrap(
                    getattr(importlib.import_module(f"{loops}.{module}"), owner),
                    method,
                    self._observing(handler, when),
                ),
            )
        return observer

    def _observing_batches(
        self, handler: Callable[[Any, tuple], None]
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """``_observing`` for the logger connector's batch hooks, which run at every batch (a
        ``_wrap_hot`` patch): whether the batch is a training batch (evaluation batches pass
        here too) on global rank 0 is the handler's own first check."""
        safety = self.safety

        def patch(original: Callable[..., Any]) -> Callable[..., Any]:
            def observe_batch(connector: Any, *args: Any, **kwargs: Any) -> Any:
                result = original(connector, *args, **kwargs)
                if self._active:
                    safety.run(_TRAINING, handler, connector.trainer, args)
                return result

            return observe_batch

        return patch

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
                safety.run(_TRAINING, observe_now, instance, args)
            return result

        return observe

    # -- metrics ----------------------------------------------------------------------------
    def _on_log_metrics(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """The patch of ``_LoggerConnector.log_metrics`` (``_wrap_hot``: it runs at every logging
        step): Lightning's call, with TensorBoard calls made inside it marked as captured here,
        then the capture (``_capture_metrics``): the training thread reads CPU values, the sender
        thread checks them."""
        safety = self.safety
        capture = self._capture_metrics

        def log_metrics(connector: Any, *args: Any, **kwargs: Any) -> Any:
            if not self._active:
                return original(connector, *args, **kwargs)
            capturing_elsewhere.depth += 1
            try:
                result = original(connector, *args, **kwargs)
            finally:
                capturing_elsewhere.depth -= 1
            safety.run(_LOG_METRICS, capture, connector, args, kwargs)
            return result

        return log_metrics

    def _capture_metrics(self, connector: Any, args: tuple, kwargs: dict) -> None:
        """What ``log_metrics(metrics, step)`` hands loggers, at the step Lightning's rule gives."""
        metrics = args[0] if args else kwargs.get("metrics")
        step = args[1] if len(args) > 1 else kwargs.get("step")
        trainer = connector.trainer
        if not metrics or not trainer.is_global_zero:
            return
        epoch = None
        if step is None:
            raw_step = metrics.get("step")
            if raw_step is not None:
                step = int(_scalars({"step": raw_step})["step"])
                metrics = {k: v for k, v in metrics.items() if k != "step"}
            else:
                epoch = trainer.current_epoch
                step = trainer.fit_loop.epoch_loop._batches_that_stepped
        names, values, on_device = _split_by_device(metrics)
        if epoch is not None and "epoch" not in metrics:
            names.append("epoch")
            values.append(epoch)
        now = time.time()
        step = int(step)
        self._sink.host_metrics(tuple(names), tuple(values), step, now)
        for device_names, stacked in on_device:
            self._sink.deferred_metrics(device_names, _to_host_later(stacked), step, now)

    # -- hyperparameters -------------------------------------------------------------------
    def _capture_hyperparams(self, _instance: Any, args: tuple, kwargs: dict) -> None:
        trainer = args[0] if args else kwargs["trainer"]
        if not trainer.is_global_zero:
            return None
        hparams = _initial_hparams(trainer)
        if hparams:
            self._sink.params(hparams)
        return None

    # -- run status ------------------------------------------------------------------------
    def _on_error(self, _context: Any, exc: BaseException) -> None:
        interrupted = isinstance(exc, KeyboardInterrupt) or isinstance(exc.__context__, KeyboardInterrupt)
        self._sink.mark_status(KILLED if interrupted else FAILED, exc)


def _metric_count(_connector: Any, args: tuple, kwargs: dict) -> int:
    """The points of a ``log_metrics(metrics, step)`` call whose capture failed."""
    return len(args[0] if args else kwargs["metrics"])


def _required(found: Any) -> Any:
    if found is None:
        raise AttributeError("the logger connector (_LoggerConnector) was not found")
    return found


def _fit_ended(observer: TrainingObserver) -> Callable[[Any, Any], None]:
    def after_fit(trainer: Any, _result: Any) -> None:
        """Where ``on_fit_end`` ran: the fit finished (an interrupted or failed one raised)."""
        if trainer.state.finished and trainer.is_global_zero:
            observer.fit_end(trainer, ())

    return after_fit


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
    names, values, on_device = _split_by_device(metrics)
    pairs = zip(names, values, strict=True)
    scalars = {name: value.item() if hasattr(value, "item") else value for name, value in pairs}
    for device_names, stacked in on_device:
        scalars.update(zip(device_names, stacked.tolist(), strict=True))
    return scalars


def _split_by_device(
    metrics: Mapping[str, Any],
) -> tuple[list[str], list[Any], list[tuple[tuple[str, ...], Any]]]:
    """Names and values on the host (numbers, CPU tensors read now: ``read_cpu_scalar``),
    checked later on the sender thread, and one-element device tensors stacked, one stack per
    device and dtype, for a single transfer each."""
    names: list[str] = []
    values: list[Any] = []
    groups: dict[tuple[Any, Any], list[tuple[str, Any]]] = {}
    cpu_as_device = _CPU_TENSORS_AS_DEVICE
    for key, value in metrics.items():
        on_host = getattr(value, "is_cpu", None)  # a torch tensor (cheaper than building .device)
        if on_host is not None and hasattr(value, "detach"):
            if on_host and not cpu_as_device:
                value = read_cpu_scalar(value)
            elif value.numel() == 1:
                groups.setdefault((value.device, value.dtype), []).append((key, value))
                continue
            # else a device tensor of more values: refused (counted) on the sender thread
        names.append(key)
        values.append(value)
    if not groups:
        return names, values, []
    import torch

    stacked = [
        (tuple(k for k, _ in group), torch.stack([v.detach().reshape(()) for _, v in group]))
        for group in groups.values()
    ]
    return names, values, stacked


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
