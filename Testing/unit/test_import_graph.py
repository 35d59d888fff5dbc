"""The addiagnosis package's modules import each other in one direction: no import cycle.

The graph is read from the modules' syntax trees. Top-level imports (outside function and class bodies,
including those under a module-level ``if``/``try``) must be acyclic, and so must the graph that also counts
the imports inside functions: a lazy import from a lower layer back up (as ``preprocess`` once imported
``align``, which imports ``preprocess``) is a cycle too. Where a lower layer must load a higher one (the
preprocessing registry loading the modules of its kinds, the CLI loading its plugin commands) it does so by
module name, as data.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import addiagnosis

PACKAGE = Path(addiagnosis.__file__).resolve().parent
NAME = addiagnosis.__name__


def _module_name(path: Path) -> str:
    parts = [NAME, *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, lazy: bool):
    """Import nodes of the module body, descending into if/try/with blocks; into defs and classes if ``lazy``."""
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif lazy or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            todo.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))


def _targets(node, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package modules an import statement loads (a ``from X import name`` loads X.name if it is one)."""
    if isinstance(node, ast.Import):
        found = set()
        for alias in node.names:
            parts = alias.name.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules
        return found
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + (node.module.split(".") if node.module else []))
    else:
        source = node.module or ""
    if source not in modules:
        return set()
    found = {source}
    for alias in node.names:
        if f"{source}.{alias.name}" in modules:
            found.add(f"{source}.{alias.name}")
    return found


def import_graph(lazy: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports (at the top level; also inside functions if ``lazy``)."""
    files = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges = set()
        for node in _imports(tree, lazy):
            edges |= _targets(node, name, path.name == "__init__.py", modules)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (as a closed path of module names), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_absolute_and_lazy_imports():
    top, lazy = import_graph(), import_graph(lazy=True)
    assert f"{NAME}.prep.registry" in top[f"{NAME}.prep.physical"]  # from addiagnosis.prep.registry import (...)
    assert f"{NAME}.research.dataset" in top[f"{NAME}.research.train"]
    assert f"{NAME}.engine" not in top[f"{NAME}.research.evaluate"]  # imported inside evaluate()
    assert f"{NAME}.engine" in lazy[f"{NAME}.research.evaluate"]
    # the kinds come to the registry by name, as data
    assert top[f"{NAME}.prep.registry"] <= {f"{NAME}.errors", f"{NAME}.io", f"{NAME}.io.volume", f"{NAME}.prep"}


@pytest.mark.parametrize("lazy", [False, True], ids=["top-level", "with-lazy"])
def test_no_import_cycle_among_package_modules(lazy):
    graph = import_graph(lazy)
    assert len(graph) >= 15
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# ------------------------------------------------------------------------------------------------ layers
# The package's layers, lowest first. A module may import its own layer and the layers below it, never one above
# (lazy imports inside functions included). ``addiagnosis/__init__.py`` is the package's face: its version and
# the research-use line, importing nothing.
LAYERS = [
    ("base", ["errors", "resources", "files", "metrics", "result"]),
    ("io", ["io"]),
    ("models", ["models"]),
    ("prep", ["prep"]),
    ("explain", ["explain"]),
    ("engine", ["engine", "worker"]),
    ("research", ["research"]),
    ("cohort", ["cohort"]),
    ("mrml", ["mrml"]),
    ("web", ["web"]),
    ("cli", ["cli"]),
]


def layer_of(module: str) -> int:
    """Index in LAYERS of a package module (``addiagnosis.io.volume`` -> 1); the package itself is -1."""
    parts = module.split(".")[1:]
    if not parts:
        return -1
    for i, (_, heads) in enumerate(LAYERS):
        if parts[0] in heads:
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
                  for m, targets in graph.items() if layer_of(m) >= 0
                  for t in targets if layer_of(t) > layer_of(m))


def test_layer_checker_finds_an_upward_import():
    graph = {f"{NAME}.cohort.run": {f"{NAME}.cli.main", f"{NAME}.prep.align"}, f"{NAME}.io.volume": set()}
    assert layer_violations(graph) == [f"{NAME}.cohort.run (cohort) imports {NAME}.cli.main (cli)"]


def test_every_module_is_in_a_layer_and_imports_only_downwards():
    graph = import_graph(lazy=True)
    assert {layer_of(m) for m in graph} >= set(range(len(LAYERS)))  # every layer has modules
    assert layer_violations(graph) == []


def test_package_root_imports_nothing():
    assert import_graph(lazy=True)[NAME] == set()


def private_imports() -> list[str]:
    """``from addiagnosis.X import _name`` across modules: a private name used outside its home."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(NAME):
                found += [f"{_module_name(path)}: from {node.module} import {a.name}"
                          for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_private_name_is_imported_across_modules():
    assert private_imports() == []
