"""How a person runs a command-line tool installed beside this Python, from a fresh shell.

``make demo`` and the tests run ``.venv/bin/python`` without activating the venv, so ``mlflow``
and ``tracelet`` are not on the PATH a new terminal has: commands tracelet prints name the
script beside ``sys.executable`` (relative to the working directory when under it), unless a
plain name finds that same script outside a virtual environment.
"""

from __future__ import annotations

import os
import shutil
import sys


def script(name: str) -> str:
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(beside):
        return name
    found = shutil.which(name)
    in_venv = sys.prefix != sys.base_prefix
    if found and not in_venv and os.path.samefile(found, beside):
        return name
    relative = os.path.relpath(beside)
    return relative if not relative.startswith("..") else beside
