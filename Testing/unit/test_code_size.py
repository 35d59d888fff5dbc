"""Every engine unit can be held in one's head: no module over 500 lines, no function over 60 (issue 16).

Measured on the syntax tree (a function's first to last line, docstring included), for every module of the
``addiagnosis`` package and the Slicer module file's helpers. Tables of data are module-level assignments, not
functions, so they do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import addiagnosis

PACKAGE = Path(addiagnosis.__file__).resolve().parent
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def oversized(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(root).as_posix()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            found.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text, name)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{name}: {node.name}() {lines} lines")
    return found


def test_the_checker_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def long():\n{body}\n")
    (tmp_path / "short.py").write_text("def short():\n    return 1\n")
    assert oversized(tmp_path) == [f"long.py: long() {MAX_FUNCTION_LINES + 1} lines"]


def test_no_engine_module_or_function_is_too_big():
    assert oversized() == []
