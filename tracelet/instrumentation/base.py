"""The instrument/uninstrument contract and the safety wrapper every patch goes through.

Safety contract (as MLflow autologging's ``safe_patch``): the user's original function runs
exactly once; its exceptions propagate unchanged; an exception inside tracelet's own code
is caught, warned once and never reaches the user — unless strict mode is on
(``TRACELET_STRICT=1``, as in the test suite), where it is re-raised so tests see it.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import wrapt

from tracelet import _log

log = _log.get_logger(__name__)

Before = Callable[[Any, tuple, dict], Any]
After = Callable[[Any, Any], None]
OnError = Callable[[Any, BaseException], None]


class TraceletInternalError(RuntimeError):
    """Raised in strict mode when tracelet's own code fails inside a patch."""


Lose = Callable[[int, str], None]  # (points, reason): what a failed capture cost, counted as dropped


class Safety:
    """Runs tracelet's code inside patches: counts its failures (strict mode re-raises them) and
    the time it takes, which is tracelet's cost on the user's thread (self-telemetry).

    A capture that fails loses what it would have logged: ``lose(points, "capture failed:
    <where>")`` counts it, so the stop summary, the report and ``delivery.json`` show the loss
    (never "0 dropped"). ``points_of(where, count)`` tells how many points a failed capture at
    ``where`` held, from its arguments (default: one).
    """

    def __init__(self, strict: bool, lose: Lose | None = None) -> None:
        self.strict = strict
        self.errors = 0
        self.calls = 0
        self.seconds = 0.0
        self._lose = lose
        self._points: dict[str, Callable[..., int]] = {}

    def points_of(self, where: str, count: Callable[..., int]) -> None:
        self._points[where] = count

    def run(self, where: str, fn: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args)
        except Exception as err:  # tracelet's own bug, or a Lightning that changed: never the user's problem
            self.errors += 1
            self._count_loss(where, args)
            if self.strict:
                raise TraceletInternalError(f"tracelet failed in {where}: {err!r}") from err
            _log.warn_once(
                f"patch:{where}:{type(err).__name__}",
                "tracelet failed in %s (%s: %s); training goes on, what it captures there is lost "
                "(counted in the stop summary as 'capture failed: %s')",
                where,
                type(err).__name__,
                err,
                where,
                log=log,
            )
            return None
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - started

    def _count_loss(self, where: str, args: tuple) -> None:
        if self._lose is None:
            return
        points = 1
        count = self._points.get(where)
        if count is not None:
            try:
                points = max(1, int(count(*args)))
            except Exception:  # the arguments themselves changed shape: at least one point
                points = 1
        self._lose(points, f"capture failed: {where}")


def the_instance(instance: Any, _args: tuple, _kwargs: dict) -> Any:
    """A ``before`` hook whose context is the patched method's instance (the Trainer)."""
    return instance


def guarded(
    where: str,
    safety: Safety,
    active: Callable[[], bool],
    before: Before | None = None,
    after: After | None = None,
    on_error: OnError | None = None,
) -> Callable[..., Any]:
    """A wrapt wrapper that runs tracelet's hooks around the original under the safety contract.

    ``before(instance, args, kwargs)`` returns a context for ``after(context, result)`` and
    ``on_error(context, exception)``; a None context skips them.
    """

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        if not active():
            return wrapped(*args, **kwargs)
        context = safety.run(where, before, instance, args, kwargs) if before else True
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            if on_error is not None and context is not None:
                safety.run(where, on_error, context, exc)
            raise
        if after is not None and context is not None:
            safety.run(where, after, context, result)
        return result

    return wrapper


# wrapt cannot unregister a post-import hook, so each module gets one hook for the life
# of the process, and it asks which instrumentor (if any) is active for it now.
_hooked_modules: set[str] = set()
_active_for_module: dict[str, Instrumentor] = {}
_hooks_lock = threading.RLock()


def _on_import(module: ModuleType) -> None:
    instrumentor = _active_for_module.get(module.__name__)
    if instrumentor is not None:
        instrumentor._apply_to(module)


class Instrumentor:
    """Patches a library when it is imported (or now, if it already is) and undoes it all.

    Subclasses name the ``modules`` whose import triggers them and implement ``_apply``,
    patching through ``_wrap`` so that ``uninstrument`` can put every original back.
    """

    name = "instrumentor"
    modules: tuple[str, ...] = ()

    def __init__(self, safety: Safety) -> None:
        self.safety = safety
        self._active = False
        self._patches: list[tuple[Any, str, Any, Any]] = []
        self._applied: set[str] = set()

    @property
    def active(self) -> bool:
        return self._active

    def instrument(self) -> None:
        if self._active:
            log.debug("%s is already instrumented", self.name)
            return
        self._active = True
        with _hooks_lock:
            for module_name in self.modules:
                _active_for_module[module_name] = self
                if module_name not in _hooked_modules:
                    _hooked_modules.add(module_name)
                    wrapt.register_post_import_hook(_on_import, module_name)
                elif module_name in sys.modules:
                    self._apply_to(sys.modules[module_name])

    def uninstrument(self) -> None:
        if not self._active:
            return
        self._active = False
        with _hooks_lock:
            for module_name in self.modules:
                if _active_for_module.get(module_name) is self:
                    del _active_for_module[module_name]
            for owner, attribute, original, wrapper in reversed(self._patches):
                if vars(owner).get(attribute) is wrapper:
                    if original is None:  # it was inherited: owner goes back to inheriting it
                        delattr(owner, attribute)
                    else:
                        setattr(owner, attribute, original)
                else:  # someone wrapped on top of us: leave theirs; ours is inert once inactive
                    log.debug("%s.%s was re-patched by someone else; left in place", owner, attribute)
            self._patches.clear()
            self._applied.clear()

    def _apply_to(self, module: ModuleType) -> None:
        with _hooks_lock:
            if not self._active or module.__name__ in self._applied:
                return
            self._applied.add(module.__name__)
        self.safety.run(f"{self.name} instrumentation of {module.__name__}", self._apply, module)

    def _apply(self, module: ModuleType) -> None:
        raise NotImplementedError

    def _patch_point(self, capability: str, apply: Callable[[], None]) -> None:
        """Apply one patch point on its own: a symbol the library no longer has (renamed, moved,
        changed) costs ``capability`` alone, named in one warning with the library's version;
        every other patch point still applies."""
        try:
            apply()
        except Exception as err:
            _log.warn_once(
                f"patch-point:{self.name}:{capability}",
                "tracelet cannot capture %s with %s (%s: %s); everything else is still tracked",
                capability,
                self.library_version(),
                type(err).__name__,
                err,
                log=log,
            )

    def library_version(self) -> str:
        """The patched library and its version, for warnings about what could not be patched."""
        return self.name

    def _wrap(self, owner: Any, attribute: str, wrapper: Callable[..., Any]) -> None:
        original, inherited = _find(owner, attribute)
        wrapt.wrap_function_wrapper(owner, attribute, wrapper)
        self._patches.append((owner, attribute, None if inherited else original, vars(owner)[attribute]))

    def _wrap_hot(
        self, owner: Any, attribute: str, patch: Callable[[Callable[..., Any]], Callable[..., Any]]
    ) -> None:
        """``_wrap`` for a plain method that runs at every training step: ``patch(original)``
        returns a plain function that calls ``original(self, *args, **kwargs)`` itself.

        A wrapt wrapper on a class attribute builds a bound wrapper object at every call
        (``__get__`` + ``__init__``): ~0.45 us and ~5,000 instructions more than a function
        per call, three times a training step. Undone the same way as ``_wrap``.
        """
        original, inherited = _find(owner, attribute)
        patched = functools.wraps(original)(patch(original))
        setattr(owner, attribute, patched)
        self._patches.append((owner, attribute, None if inherited else original, patched))


def _find(owner: Any, attribute: str) -> tuple[Any, bool]:
    """``owner``'s own ``attribute`` as stored (a function, not a bound method), or the one it
    inherits (a method moved up into a base class is still patched, on ``owner`` only), and
    whether it was inherited. AttributeError names what is missing."""
    if attribute in vars(owner):
        return vars(owner)[attribute], False
    for base in getattr(owner, "__mro__", ())[1:]:
        if attribute in vars(base):
            return vars(base)[attribute], True
    raise AttributeError(f"{getattr(owner, '__qualname__', owner)!s} has no attribute {attribute!r}")
