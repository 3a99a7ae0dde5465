"""``argparse``: the values a script's ``parse_args`` returned become params under ``args/``.

Patched at ``ArgumentParser.parse_known_args`` (``parse_args`` goes through it); only the
outermost call of a thread is recorded, so subparsers do not log partial namespaces.
Values under secret-looking names are stored as ``***``.
"""

from __future__ import annotations

import argparse
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tracelet.instrumentation.base import Instrumentor, Safety, guarded

if TYPE_CHECKING:
    from tracelet.sink import Sink


class ArgparseInstrumentor(Instrumentor):
    name = "argparse"
    modules = ("argparse",)

    def __init__(self, sink: Sink, safety: Safety) -> None:
        super().__init__(safety)
        self._sink = sink
        self._depth = threading.local()

    def _apply(self, module: ModuleType) -> None:
        self._wrap(
            module.ArgumentParser,
            "parse_known_args",
            guarded(
                "argparse parse_args",
                self.safety,
                lambda: self.active,
                self._enter,
                self._record,
                self._leave,
            ),
        )

    def _enter(self, _parser: Any, _args: tuple, _kwargs: dict) -> int:
        depth = getattr(self._depth, "value", 0) + 1
        self._depth.value = depth
        return depth

    def _leave(self, _depth: int, _exc: BaseException) -> None:
        self._depth.value -= 1

    def _record(self, depth: int, result: Any) -> None:
        self._depth.value -= 1
        namespace = result[0] if isinstance(result, tuple) else result
        if depth == 1 and isinstance(namespace, argparse.Namespace):
            values = {k: v for k, v in vars(namespace).items() if not k.startswith("_")}
            if values:
                self._sink.params({"args": values})
