"""TensorBoard: plain PyTorch loops that write scalars with a ``SummaryWriter`` are tracked.

Patched: ``add_scalar``, ``add_scalars`` and ``add_hparams`` of
``torch.utils.tensorboard.SummaryWriter`` and, when installed, ``tensorboardX.SummaryWriter``.
``add_scalar(tag, value, global_step)`` becomes the metric ``tag`` at step ``global_step``;
``add_scalars(main, {k: v}, step)`` the metrics ``main/k``; ``add_hparams(hparams, metrics)``
params and metrics (not the ``add_scalar`` calls it makes itself). The writer runs unchanged.

No double counting: what Lightning's ``TensorBoardLogger`` writes is written from inside
Lightning's logger connector, which the Lightning instrumentation already captures; those
calls run under ``captured_elsewhere`` and are skipped here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tracelet.instrumentation.base import Instrumentor, Safety, guarded
from tracelet.values import to_step

if TYPE_CHECKING:
    from tracelet.sink import Sink


class _Capturing(threading.local):
    """How deep this thread is inside code whose SummaryWriter calls are captured elsewhere."""

    depth = 0  # each thread starts at 0, no getattr default needed on the hot path


capturing_elsewhere = _Capturing()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    capturing_elsewhere.depth += 1
    try:
        yield
    finally:
        capturing_elsewhere.depth -= 1


def captured_elsewhere(wrapper: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a wrapt wrapper: SummaryWriter calls made while it runs are not captured again."""

    def quiet(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        with _quiet():
            return wrapper(wrapped, instance, args, kwargs)

    return quiet


def _suppressed() -> bool:
    return capturing_elsewhere.depth > 0


def _argument(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


class TensorBoardInstrumentor(Instrumentor):
    name = "tensorboard"
    modules = ("torch.utils.tensorboard.writer", "tensorboardX.writer")

    def __init__(self, sink: Sink, safety: Safety) -> None:
        super().__init__(safety)
        self._sink = sink

    def _apply(self, module: ModuleType) -> None:
        active = lambda: self.active and not _suppressed()  # noqa: E731
        writer = module.SummaryWriter
        for method, before in (("add_scalar", self._scalar), ("add_scalars", self._scalars)):
            self._wrap(writer, method, guarded(f"tensorboard {method}", self.safety, active, before, _emit))
        self._wrap(writer, "add_hparams", self._add_hparams)

    def _add_hparams(self, wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        """Params and metrics once: the ``add_scalar`` calls ``add_hparams`` makes itself are not captured."""
        if self.active and not _suppressed():
            self.safety.run("tensorboard add_hparams", self._hparams, args, kwargs)
        with _quiet():
            return wrapped(*args, **kwargs)

    def _scalar(self, _writer: Any, args: tuple, kwargs: dict) -> Any:
        tag = _argument(args, kwargs, 0, "tag")
        value = _argument(args, kwargs, 1, "scalar_value")
        step = _argument(args, kwargs, 2, "global_step")
        return self._sink, {str(tag): value}, _step(step)

    def _scalars(self, _writer: Any, args: tuple, kwargs: dict) -> Any:
        main = _argument(args, kwargs, 0, "main_tag")
        values = _argument(args, kwargs, 1, "tag_scalar_dict") or {}
        step = _argument(args, kwargs, 2, "global_step")
        return self._sink, {f"{main}/{key}": value for key, value in values.items()}, _step(step)

    def _hparams(self, args: tuple, kwargs: dict) -> None:
        params = _argument(args, kwargs, 0, "hparam_dict") or {}
        metrics = _argument(args, kwargs, 1, "metric_dict") or {}
        step = _argument(args, kwargs, 4, "global_step")
        self._sink.params(dict(params))
        _emit((self._sink, dict(metrics), _step(step)), None)


def _step(step: Any) -> int | None:
    try:
        return to_step(step)
    except (TypeError, ValueError):
        return None


def _emit(context: Any, _result: Any) -> None:
    sink, values, step = context
    sink.metrics(values, step, time.time())
