"""Where the run ran: Python, platform, host, command line, framework versions, packages.

Environment variables are never recorded wholesale, and nothing whose name looks like a
secret (KEY, TOKEN, SECRET, PASSWORD) is recorded with its value: command-line values of
such flags become ``***``, credentials in URLs are removed.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
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


def describe(
    argv: Sequence[str], extra: Mapping[str, str] | None = None, installed: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``env.*`` tags for the run (framework versions from ``installed``, else looked up)."""
    packages = installed_distributions() if installed is None else installed
    versions = {_normalize(name): version for name, version in packages.items()}
    info = {
        "env.python": platform.python_version(),
        "env.python_executable": sys.executable,
        "env.platform": platform.platform(),
        "env.hostname": socket.gethostname(),
        "env.command": " ".join(redact_argv(argv)),
    }
    for name in _FRAMEWORKS:
        version = versions.get(_normalize(name))
        if version is not None:
            info[f"env.{name}"] = version
    info.update(extra or {})
    return info


def requirements(installed: Mapping[str, str] | None = None) -> str:
    """The installed distributions, ``requirements.txt`` style, sorted."""
    packages = installed_distributions() if installed is None else installed
    return "".join(f"{name}=={packages[name]}\n" for name in sorted(packages, key=str.lower))


def installed_distributions() -> dict[str, str]:
    """Name -> version of every installed distribution; where one is installed twice, the one
    ``import`` would find (the first on ``sys.path``).

    Only the head of each metadata file is read: ``importlib.metadata``'s ``Distribution.metadata``
    parses the whole file (long descriptions included) as an e-mail, twice for name and version;
    for the few hundred packages of a training environment that was ~0.2 s of start-up.
    """
    found: dict[str, str] = {}
    seen: set[str] = set()
    for dist in importlib.metadata.distributions():
        name, version = _name_and_version(dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "")
        if not (name and version):
            continue
        key = _normalize(name)
        if key not in seen:
            seen.add(key)
            found[name] = version
    return found


def _name_and_version(metadata: str) -> tuple[str | None, str | None]:
    name = version = None
    for line in metadata.splitlines():
        if not line:  # the end of the headers
            break
        key, _, value = line.partition(":")
        key = key.lower()
        if key == "name":
            name = value.strip()
        elif key == "version":
            version = value.strip()
        if name and version:
            break
    return name, version


def _normalize(name: str) -> str:
    """PEP 503: ``Pytorch_Lightning`` and ``pytorch-lightning`` are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


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
