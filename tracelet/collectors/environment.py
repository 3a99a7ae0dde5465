"""Where the run ran: Python, platform, host, command line, framework versions, packages.

Environment variables are never recorded wholesale, and nothing whose name looks like a
secret (KEY, TOKEN, SECRET, PASSWORD) is recorded with its value: command-line values of
such flags become ``***``, credentials in URLs are removed.
"""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import sys
from collections.abc import Mapping, Sequence

from tracelet.collectors.git import redact_url
from tracelet.secrets import REDACTED, is_secret_name

_FRAMEWORKS = ("torch", "lightning", "pytorch-lightning", "torchmetrics", "numpy")


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``--api-key sk-1`` and ``--token=sk-1`` lose their values; URLs lose credentials."""
    redacted: list[str] = []
    hide_next = False
    for token in argv:
        if hide_next and not token.startswith("-"):
            redacted.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        name, equals, _value = token.partition("=")
        if token.startswith("-") and is_secret_name(name):
            if equals:
                redacted.append(f"{name}={REDACTED}")
            else:
                redacted.append(token)
                hide_next = True
            continue
        redacted.append(redact_url(token) if "://" in token else token)
    return redacted


def describe(argv: Sequence[str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env.*`` tags for the run."""
    info = {
        "env.python": platform.python_version(),
        "env.python_executable": sys.executable,
        "env.platform": platform.platform(),
        "env.hostname": socket.gethostname(),
        "env.command": " ".join(redact_argv(argv)),
    }
    for name in _FRAMEWORKS:
        try:
            info[f"env.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    info.update(extra or {})
    return info


def requirements() -> str:
    """The installed distributions, ``requirements.txt`` style, sorted."""
    lines = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            lines.add(f"{name}=={dist.version}")
    return "\n".join(sorted(lines, key=str.lower)) + "\n"


def torch_runtime() -> dict[str, str]:
    """CUDA/cuDNN versions, read in the training process only if torch is already imported there."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    found = {}
    cuda = getattr(getattr(torch, "version", None), "cuda", None)
    if cuda:
        found["env.cuda"] = str(cuda)
    try:
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:  # a broken CUDA install must not stop the run from starting
        cudnn = None
    if cudnn:
        found["env.cudnn"] = str(cudnn)
    return found
