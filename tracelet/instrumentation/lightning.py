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
- ``trainer.call._call_callback_hooks`` — after the callbacks ran, ``TrainingObserver``
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
from tracelet.instrumentation.tensorboard import captured_elsewhere, capturing_elsewhere

if TYPE_CHECKING:
    from tracelet.experiment import Experiment

NAMESPACES = ("lightning.pytorch", "pytorch_lightning")
_CONNECTOR = "trainer.connectors.logger_connector.logger_connector"
_ENTRY_POINTS = ("fit", "validate", "test", "predict")
_LOG_METRICS = "lightning log_metrics"
perf_counter = time.perf_counter  # a module global: one lookup less on every step
_READ_CPU_TENSORS_AT_ONCE = True  # device tensors are copied to the host asynchronously


class LightningInstrumentor(Instrumentor):
    name = "lightning"
    modules = tuple(f"{ns}.trainer.trainer" for ns in NAMESPACES)

    def __init__(self, experiment: Experiment, safety: Safety) -> None:
        super().__init__(safety)
        self._experiment = experiment

    def _apply(self, trainer_module: ModuleType) -> None:
        namespace = trainer_module.__name__[: -len(".trainer.trainer")]
        connector_module = sys.modules[f"{namespace}.{_CONNECTOR}"]
        active = lambda: self.active  # noqa: E731
        self._wrap(connector_module._LoggerConnector, "log_metrics", self._on_log_metrics)
        self._wrap(
            trainer_module,
            "_log_hyperparams",
            captured_elsewhere(
                guarded("lightning hyperparameters", self.safety, active, before=self._capture_hyperparams)
            ),
        )
        self._observe_training(namespace)
        for entry_point in _ENTRY_POINTS:
            self._wrap(
                trainer_module.Trainer,
                entry_point,
                guarded(f"lightning Trainer.{entry_point}", self.safety, active, on_error=self._on_error),
            )

    def _observe_training(self, namespace: str) -> None:
        from tracelet.instrumentation.lightning_training import TrainingObserver

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

        safety = self.safety
        handlers = observer.handlers

        def dispatch(wrapped: Callable[..., Any], _instance: Any, args: tuple, kwargs: dict) -> Any:
            # 6 hooks run per training step; 2 interest us, and only after they ran: the rest
            # pass straight through, the observed ones cost one call of their handler
            result = wrapped(*args, **kwargs)
            handler = handlers.get(args[1] if len(args) > 1 else kwargs.get("hook_name"))
            if handler is not None and self._active:
                started = perf_counter()
                try:
                    trainer = args[0] if args else kwargs["trainer"]
                    if trainer.is_global_zero:
                        handler(trainer, args[2:])
                except Exception as err:
                    safety.failed("lightning hooks", err)
                safety.calls += 1
                safety.seconds += perf_counter() - started
            return result

        call_module = importlib.import_module(f"{namespace}.trainer.call")
        self._wrap(call_module, "_call_callback_hooks", dispatch)

    # -- metrics ----------------------------------------------------------------------------
    def _on_log_metrics(self, wrapped: Callable[..., Any], connector: Any, args: tuple, kwargs: dict) -> Any:
        """The wrapper of ``_LoggerConnector.log_metrics``, under the safety contract.

        It runs at every logging step, so it is one function rather than layered wrappers
        (each layer cost ~0.4 us): capture before the call, emit after it, TensorBoard calls
        made inside marked as captured here.
        """
        if not self._active:
            return wrapped(*args, **kwargs)
        safety = self.safety
        started = perf_counter()
        try:
            context = self._before_log_metrics(connector, args, kwargs)
        except Exception as err:
            context = None
            safety.failed(_LOG_METRICS, err)
        spent = perf_counter() - started
        capturing_elsewhere.depth += 1
        try:
            result = wrapped(*args, **kwargs)
        finally:
            capturing_elsewhere.depth -= 1
        if context is not None:
            started = perf_counter()
            try:
                self._after_log_metrics(context)
            except Exception as err:
                safety.failed(_LOG_METRICS, err)
            spent += perf_counter() - started
        safety.calls += 1
        safety.seconds += spent
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
