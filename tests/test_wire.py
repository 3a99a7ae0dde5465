"""The training process and the writer share one wire (``tracelet/wire.py``) and import nothing
of each other: a walk over every import statement of both sides, at any depth."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tracelet"

# What runs in the training process, and what runs in the writer process (or, for replay and
# the CLI's own backends, wherever backends run). Everything else is shared by both: the wire,
# events and values, the backend plugin contract (backends/base.py), settings, logging.
TRAINING = {
    "tracelet.api",
    "tracelet.autostart",
    "tracelet.bootstrap.sitecustomize",
    "tracelet.bus",
    "tracelet.exits",
    "tracelet.experiment",
    "tracelet.pending",
    "tracelet.run",
    "tracelet.sink",
    "tracelet.transport",
    "tracelet.collectors.system",
    "tracelet.collectors.gpu",
    "tracelet.collectors.console",
}
WRITER = {
    "tracelet.writer",
    "tracelet.dispatcher",
    "tracelet.worker",
    "tracelet.replay",
    "tracelet.collectors.context",
    "tracelet.backends.journal",
    "tracelet.backends.mlflow",
    "tracelet.backends.wandb",
    "tracelet.backends.clearml",
}
# writer="thread": the dispatcher on the training process's sender thread, by request
ALLOWED = {("tracelet.transport", "tracelet.dispatcher")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path) for path in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every tracelet module ``path`` imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)  # and the modules among the names: from tracelet.backends import base
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES}


def _side(module: str) -> str | None:
    if module in TRAINING or any(module.startswith(f"{name}.") for name in TRAINING):
        return "training"
    if module in WRITER or any(module.startswith(f"{name}.") for name in WRITER):
        return "writer"
    if module.startswith("tracelet.instrumentation"):
        return "training"
    return None


def test_every_module_is_where_the_walk_looks():
    assert TRAINING | WRITER <= MODULES, sorted((TRAINING | WRITER) - MODULES)


def test_the_training_side_and_the_writer_side_import_only_the_wire_between_them():
    crossings = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        side = _side(importer)
        if side is None:
            continue
        for imported in sorted(_imports(path)):
            other = _side(imported)
            if other is not None and other != side and (importer, imported) not in ALLOWED:
                crossings.append(f"{importer} ({side}) imports {imported} ({other})")
    assert not crossings, "\n".join(crossings)


def test_the_shared_modules_import_neither_side():
    leaks = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        if _side(importer) is not None or importer in ("tracelet", "tracelet.cli", "tracelet.__main__"):
            continue  # the package's front door and the CLI start runs and replays: they may use both
        leaks += [f"{importer} imports {name}" for name in sorted(_imports(path)) if _side(name)]
    assert not leaks, "\n".join(leaks)


# A run's end is the run's business: ``Run.stop`` ends its own ``Experiment`` (the handle users
# hold has no public method that would end a run without stopping its parts).
PRIVATE_ALLOWED = {("tracelet.run", "_end")}


def _private_names_defined(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def test_no_module_reaches_into_another_tracelet_modules_private_names():
    """``obj._name`` where ``_name`` belongs to another tracelet module: the sink, the wire and the
    run's parts talk through public names only (framework internals, e.g. Lightning's, are fine)."""
    trees = {_module_name(path): ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}
    owned = {module: _private_names_defined(tree) for module, tree in trees.items()}
    reaches = []
    for module, tree in sorted(trees.items()):
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")):
                continue
            if node.attr.startswith("__") or node.attr in owned[module]:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", "os", "sys"):
                continue
            owners = sorted(other for other, names in owned.items() if node.attr in names)
            if owners and (module, node.attr) not in PRIVATE_ALLOWED:
                reaches.append(f"{module}:{node.lineno} {ast.unparse(node)} (private to {', '.join(owners)})")
    assert not reaches, "\n".join(reaches)
