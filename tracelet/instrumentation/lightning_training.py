"""What a Lightning fit does beyond ``self.log``: optimizer state, trainer configuration,
checkpoints, early stopping and training efficiency — read right after the steps of the fit
that run the callback hooks named below (``lightning.py`` says where), never changing them.

- ``on_fit_start``: trainer configuration, model size and optimizer defaults -> params.
- ``on_train_epoch_start`` and every ``on_train_batch_start`` where a value changed (a
  scheduler stepped): ``train/lr``, ``train/momentum``, ``train/beta1``/``train/beta2`` per
  param group, at the step of the batch that uses them (as Lightning's ``LearningRateMonitor``).
- ``on_train_batch_start/end``: ``perf/`` step time, samples per second and the share of the
  step spent waiting for the DataLoader, averaged over the batches since the last point and
  logged at a step where Lightning logs (``log_every_n_steps``) once at least a second has
  passed; ``perf/epoch_time_s`` per epoch.
  ``time.perf_counter`` only: no device synchronization.
- after ``on_train_epoch_end``/``on_validation_end`` (where ``ModelCheckpoint`` saves): best and
  last checkpoint paths as tags, the best score as ``checkpoint/best_score``; at
  ``on_fit_end`` the best checkpoint file as an artifact (``log_checkpoints``, size-capped)
  and, where ``EarlyStopping`` stopped the fit, its epoch and reason.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tracelet import _log

if TYPE_CHECKING:
    from tracelet.sink import Sink

log = _log.get_logger(__name__)

_GROUP_SCALARS = ("lr", "momentum")  # param-group keys recorded as train/<key>
PERF_MIN_WINDOW_S = 1.0  # perf/ points average at least this much time (and land on logging steps)


class TrainingObserver:
    def __init__(
        self,
        sink: Sink,
        optimizer: bool,
        perf: bool,
        log_checkpoints: bool,
        checkpoint_max_mb: float,
        extract_batch_size: Callable[[Any], int],
        training_stage: Any,
    ) -> None:
        self._sink = sink
        self._training_stage = training_stage
        self._extract_batch_size = extract_batch_size
        self._optimizer = optimizer
        self._perf = perf
        self._log_checkpoints = log_checkpoints
        self._checkpoint_max_bytes = checkpoint_max_mb * 2**20
        self._optimizer_signature: list[tuple[Any, Any, Any]] = []
        self._checkpoint_state: dict[str, Any] = {}
        self._window = _PerfWindow()

    # -- fit start: configuration ----------------------------------------------------------
    def fit_start(self, trainer: Any, _args: tuple) -> None:
        self._optimizer_signature = []
        self._checkpoint_state.clear()
        params: dict[str, Any] = {"trainer": _trainer_config(trainer)}
        module = trainer.lightning_module
        if module is not None:
            total = sum(p.numel() for p in module.parameters())
            trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
            params["model"] = {
                "class": type(module).__name__,
                "params_total": total,
                "params_trainable": trainable,
            }
        if self._optimizer and trainer.optimizers:
            optimizers = [_optimizer_params(o) for o in trainer.optimizers]
            params["optimizer"] = optimizers[0] if len(optimizers) == 1 else dict(enumerate(optimizers))
        self._sink.params(params)

    # -- optimizer state -------------------------------------------------------------------
    def epoch_start(self, trainer: Any, _args: tuple) -> None:
        self._window.epoch_started = time.perf_counter()
        self._window.last_end = self._window.epoch_started
        if self._optimizer:
            self._emit_optimizer_state(trainer, always=True)

    def _emit_optimizer_state(self, trainer: Any, always: bool) -> None:
        optimizers = trainer.optimizers
        signature = [  # cheap to compare at every batch; the series are built only when it changed
            (group.get("lr"), group.get("momentum"), group.get("betas"))
            for optimizer in optimizers
            for group in optimizer.param_groups
        ]
        if not always and signature == self._optimizer_signature:
            return
        self._optimizer_signature = signature
        self._sink.metrics(_optimizer_state(optimizers), _step(trainer), time.time())

    # -- efficiency ------------------------------------------------------------------------
    def batch_start(self, trainer: Any, args: tuple) -> None:
        """After the logger connector's ``on_batch_start`` of any batch; a training batch's on
        global rank 0 is observed."""
        if trainer.state.stage is not self._training_stage or not trainer.is_global_zero:
            return
        if self._optimizer:
            self._emit_optimizer_state(trainer, always=False)
        if self._perf:
            window = self._window
            window.waiting += time.perf_counter() - window.last_end
            window.batch_size = self._batch_size(args[0] if args else None, window.batch_size)

    def batch_end(self, trainer: Any, _args: tuple) -> None:
        """After the logger connector's ``on_batch_end`` of any batch (as ``batch_start``)."""
        if not self._perf or trainer.state.stage is not self._training_stage or not trainer.is_global_zero:
            return
        window = self._window
        now = time.perf_counter()
        window.elapsed += now - window.last_end
        window.last_end = now
        window.steps += 1
        window.samples += window.batch_size or 0
        if now - window.emitted >= PERF_MIN_WINDOW_S and trainer._logger_connector.should_update_logs:
            values = {
                "perf/step_time_s": window.elapsed / window.steps,
                "perf/dataloader_wait_share": window.waiting / window.elapsed if window.elapsed > 0 else 0.0,
            }
            if window.samples and window.elapsed > 0:
                values["perf/samples_per_s"] = window.samples / window.elapsed
            self._sink.metrics(values, _step(trainer), time.time())
            window.emitted = now
            window.reset()

    # -- checkpoints and the end of the fit -----------------------------------------------
    def epoch_end(self, trainer: Any, _args: tuple) -> None:
        step = max(_step(trainer) - 1, 0)  # where Lightning puts epoch-end metrics: the epoch's last step
        if self._perf and self._window.epoch_started:
            seconds = time.perf_counter() - self._window.epoch_started
            self._window.epoch_started = 0.0
            self._sink.metrics({"perf/epoch_time_s": seconds}, step, time.time())
        self._record_checkpoints(trainer, step)

    def validation_end(self, trainer: Any, _args: tuple) -> None:
        self._window.last_end = time.perf_counter()  # validation inside an epoch is not data waiting
        self._record_checkpoints(trainer, _step(trainer))

    def _record_checkpoints(self, trainer: Any, step: int) -> None:
        callbacks = [c for c in trainer.checkpoint_callbacks if hasattr(c, "best_model_path")]
        for index, callback in enumerate(callbacks):
            prefix = "checkpoint" if len(callbacks) == 1 else f"checkpoint/{index}"
            state = (callback.best_model_path, _number(callback.best_model_score), callback.last_model_path)
            if state == self._checkpoint_state.get(prefix) or not any(state[::2]):
                continue
            self._checkpoint_state[prefix] = state
            best, score, last = state
            tags = {f"{prefix}.best_path": best, f"{prefix}.last_path": last}
            if callback.monitor:
                tags[f"{prefix}.monitor"] = callback.monitor
            self._sink.tags({k: v for k, v in tags.items() if v})
            if score is not None:
                self._sink.metrics({f"{prefix}/best_score": score}, step, time.time())

    def fit_end(self, trainer: Any, _args: tuple) -> None:
        self._record_checkpoints(trainer, max(_step(trainer) - 1, 0))
        if self._log_checkpoints:
            for callback in trainer.checkpoint_callbacks:
                self._upload_best(getattr(callback, "best_model_path", ""))
        stopper = trainer.early_stopping_callback
        if stopper is not None and stopper.stopped_epoch:
            reason = getattr(stopper, "stopping_reason_message", None) or getattr(
                getattr(stopper, "stopping_reason", None), "value", ""
            )
            self._sink.tags(
                {"early_stopping.stopped_epoch": stopper.stopped_epoch, "early_stopping.reason": reason or ""}
            )

    def _upload_best(self, path: str) -> None:
        if not path or not os.path.isfile(path):
            return
        size = os.path.getsize(path)
        if size > self._checkpoint_max_bytes:
            _log.warn_once(
                f"checkpoint-size:{path}",
                "best checkpoint %s is %.0f MB, over checkpoint_max_mb=%g: its path is recorded, the file is "
                "not uploaded",
                path,
                size / 2**20,
                self._checkpoint_max_bytes / 2**20,
                log=log,
            )
            return
        self._sink.artifact(path, artifact_path="checkpoints")

    def _batch_size(self, batch: Any, previous: int | None) -> int | None:
        """The batch size as Lightning infers it; the previous one when it cannot tell."""
        if batch is None:
            return previous
        first = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
        shape = getattr(first, "shape", None)
        if shape:  # a tensor, or a list/tuple starting with one: the common case, without a walk
            return int(shape[0])
        try:
            return int(self._extract_batch_size(batch))
        except Exception:  # Lightning raises when no tensor is found; not ours to report
            return previous


class _PerfWindow:
    def __init__(self) -> None:
        self.epoch_started = 0.0
        self.last_end = time.perf_counter()
        self.emitted = 0.0  # perf_counter() of the last perf/ point
        self.batch_size: int | None = None
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.samples = 0
        self.elapsed = 0.0
        self.waiting = 0.0


def _step(trainer: Any) -> int:
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _trainer_config(trainer: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "max_epochs": trainer.max_epochs,
        "max_steps": trainer.max_steps,
        "precision": str(trainer.precision),
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "gradient_clip_val": trainer.gradient_clip_val,
        "gradient_clip_algorithm": trainer.gradient_clip_algorithm,
        "accelerator": type(trainer.accelerator).__name__,
        "strategy": type(trainer.strategy).__name__,
        "num_devices": trainer.num_devices,
        "num_nodes": trainer.num_nodes,
        "world_size": trainer.world_size,
        "log_every_n_steps": trainer.log_every_n_steps,
        "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
        "val_check_interval": trainer.val_check_interval,
    }
    return {k: v for k, v in config.items() if v is not None}


def _optimizer_params(optimizer: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"class": type(optimizer).__name__}
    for key, value in sorted(getattr(optimizer, "defaults", {}).items()):
        if isinstance(value, (bool, int, float, str)) or value is None:
            params[key] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value):
            params[key] = list(value)
    params["param_groups"] = len(optimizer.param_groups)
    return params


def _optimizer_state(optimizers: list[Any]) -> dict[str, float]:
    """``train/lr`` etc. per param group; suffixed ``/<optimizer>`` and ``/pg<group>`` where several."""
    values: dict[str, float] = {}
    several_optimizers = len(optimizers) > 1
    for index, optimizer in enumerate(optimizers):
        groups = optimizer.param_groups
        for group_index, group in enumerate(groups):
            suffix = (f"/{index}" if several_optimizers else "") + (
                f"/pg{group_index}" if len(groups) > 1 else ""
            )
            for key in _GROUP_SCALARS:
                value = _number(group.get(key))
                if value is not None:
                    values[f"train/{key}{suffix}"] = value
            betas = group.get("betas")
            if isinstance(betas, (tuple, list)) and len(betas) == 2:
                values[f"train/beta1{suffix}"] = float(betas[0])
                values[f"train/beta2{suffix}"] = float(betas[1])
    return values
