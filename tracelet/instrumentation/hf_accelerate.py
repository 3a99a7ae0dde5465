"""Hugging Face Accelerate: what a custom training loop hands ``Accelerator.log``, in every backend.

Patched on ``accelerate.Accelerator``:

- ``log(values, step)``: numbers as metrics at ``step``, a dict of numbers as ``<key>/<name>``
  (as Accelerate's TensorBoard tracker writes it), on the main process. Strings (text) are not
  metrics and are left to the trackers. The user's own trackers still get everything; the
  ``SummaryWriter`` calls of Accelerate's TensorBoard tracker inside it are not captured a
  second time.
- ``init_trackers(project_name, config)``: ``config`` as params; ``project_name`` names the
  run's project when tracelet was not told one, while the run has not reached its backends yet
  (under ``tracelet run``, until training starts).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tracelet.instrumentation.base import Instrumentor, Safety, guarded
from tracelet.instrumentation.tensorboard import captured_elsewhere

if TYPE_CHECKING:
    from tracelet.sink import Sink

_LOG = "accelerate Accelerator.log"


class AccelerateInstrumentor(Instrumentor):
    name = "accelerate"
    modules = ("accelerate.accelerator",)

    def __init__(self, sink: Sink, safety: Safety, name_project: Callable[[str], None]) -> None:
        super().__init__(safety)
        self._sink = sink
        self._name_project = name_project
        safety.points_of(
            _LOG, lambda _accelerator, args, kwargs: len(_argument(args, kwargs, 0, "values") or {})
        )

    def library_version(self) -> str:
        module = sys.modules.get("accelerate")
        return f"accelerate {getattr(module, '__version__', '(version unknown)')}"

    def _apply(self, module: ModuleType) -> None:
        active = lambda: self.active  # noqa: E731
        accelerator = module.Accelerator
        self._patch_point(
            "Accelerator.log metrics",
            lambda: self._wrap(
                accelerator, "log", captured_elsewhere(guarded(_LOG, self.safety, active, before=self._log))
            ),
        )
        self._patch_point(
            "init_trackers project and config",
            lambda: self._wrap(
                accelerator,
                "init_trackers",
                guarded("accelerate init_trackers", self.safety, active, before=self._init_trackers),
            ),
        )

    def _log(self, accelerator: Any, args: tuple, kwargs: dict) -> None:
        if not accelerator.is_main_process:
            return
        values = _argument(args, kwargs, 0, "values") or {}
        step = _argument(args, kwargs, 1, "step")
        names: list[str] = []
        numbers: list[Any] = []
        for key, value in values.items():
            if isinstance(value, Mapping):
                for inner, number in value.items():
                    names.append(f"{key}/{inner}")
                    numbers.append(number)
            elif not isinstance(value, str):
                names.append(str(key))
                numbers.append(value)
        if names:
            step = None if step is None else int(step)
            self._sink.host_metrics(tuple(names), tuple(numbers), step, time.time())

    def _init_trackers(self, accelerator: Any, args: tuple, kwargs: dict) -> None:
        if not accelerator.is_main_process:
            return
        project = _argument(args, kwargs, 0, "project_name")
        config = _argument(args, kwargs, 1, "config")
        if project:
            self._name_project(str(project))
        if config:
            self._sink.params(config)


def _argument(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)
