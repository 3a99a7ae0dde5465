"""Runs at interpreter start-up in programs launched by ``tracelet run`` (this directory is
first on ``PYTHONPATH``). It first runs the ``sitecustomize`` the environment already had, if
any, then starts tracking when ``TRACELET_AUTOSTART`` is set. It never raises."""

import importlib
import os
import sys


def _chain_to_the_original() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    ours = sys.modules.pop("sitecustomize", None)
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        importlib.import_module("sitecustomize")
    except ImportError:
        pass
    except Exception as err:  # the environment's own sitecustomize failed: as Python would, say so
        print(
            f"Error in sitecustomize; set PYTHONVERBOSE for traceback:\n{type(err).__name__}: {err}",
            file=sys.stderr,
        )
    finally:
        sys.path[:] = saved
        if ours is not None:
            sys.modules["sitecustomize"] = ours


_chain_to_the_original()
try:
    from tracelet.autostart import maybe_start

    maybe_start()
except Exception as _err:  # tracking is never worth breaking the user's program
    print(f"[tracelet] could not start tracking: {type(_err).__name__}: {_err}", file=sys.stderr)
