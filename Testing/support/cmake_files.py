"""Which files ADDiagnosis/CMakeLists.txt installs: a small evaluator of the commands that file uses
(``set``, ``list(APPEND)``, ``file(GLOB|GLOB_RECURSE RELATIVE ...)``, ``${VAR}``), then the SCRIPTS and
RESOURCES given to ``slicerMacroBuildScriptedModule``."""

from __future__ import annotations

import glob
import re
from pathlib import Path

COMMAND = re.compile(r"(\w+)\s*\((.*?)\)", re.S)


def _args(text: str, env: dict) -> list[str]:
    text = re.sub(r"\$\{(\w+)\}", lambda m: ";".join(env.get(m.group(1), [])) if isinstance(
        env.get(m.group(1)), list) else str(env.get(m.group(1), "")), text)
    out = []
    for tok in re.findall(r'"[^"]*"|\S+', text):
        out += [t for t in tok.strip('"').split(";") if t]
    return out


def evaluate(cmake: Path) -> dict:
    src = "\n".join(line.split("#", 1)[0] for line in cmake.read_text().splitlines())
    here = str(cmake.parent)
    env: dict = {"CMAKE_CURRENT_SOURCE_DIR": here}
    calls = []
    for name, raw in COMMAND.findall(src):
        name = name.lower()
        if name == "set":
            a = _args(raw, env)
            env[a[0]] = a[1:] if len(a) > 2 or a[0].startswith("MODULE_PYTHON") else (a[1] if len(a) > 1 else "")
        elif name == "list":
            a = _args(raw, env)
            if a[0] == "APPEND":
                env.setdefault(a[1], [])
                env[a[1]] = list(env[a[1]]) + a[2:]
        elif name == "file":
            a = _args(raw, env)
            mode, var, rest = a[0], a[1], a[2:]
            base = None
            if rest and rest[0] == "RELATIVE":
                base, rest = rest[1], rest[2:]
            found = set()
            for pattern in rest:
                if mode == "GLOB_RECURSE":
                    root, _, leaf = pattern.rpartition("/")
                    found |= {str(p) for p in Path(root).rglob(leaf) if p.is_file()}
                else:
                    found |= {p for p in glob.glob(pattern) if Path(p).is_file()}
            env[var] = sorted(str(Path(p).relative_to(base)) if base else p for p in found)
        else:
            calls.append((name, _args(raw, env)))
    env["_calls"] = calls
    return env


def installed_files(cmake: Path) -> set[str]:
    """SCRIPTS + RESOURCES of slicerMacroBuildScriptedModule, relative to the module folder."""
    env = evaluate(cmake)
    for name, args in env["_calls"]:
        if name == "slicermacrobuildscriptedmodule":
            out, key = set(), None
            for a in args:
                if a in ("NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS", "WITH_SUBDIR"):
                    key = a
                elif key in ("SCRIPTS", "RESOURCES"):
                    out.add(a)
            return out
    raise AssertionError("no slicerMacroBuildScriptedModule call")
