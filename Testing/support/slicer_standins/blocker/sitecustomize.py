"""Test helper, imported at start-up when this folder is on PYTHONPATH (the worker inherits it):

- makes the packages named in $ADDIAGNOSIS_BLOCK (comma-separated) unimportable, as in a Slicer without them
  (``install()`` does the same in a running process);
- with $ADDIAGNOSIS_OPEN_LOG set, logs every file the process opens (what the packaging test compares with
  the files the extension's CMake installs)."""

import importlib.abc
import os
import sys


class Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked for this test)", name=fullname)
        return None


def install(names=None):
    names = [n for n in (names if names is not None else os.environ.get("ADDIAGNOSIS_BLOCK", "").split(",")) if n]
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, Blocker)]
    if names:
        sys.meta_path.insert(0, Blocker(names))
        for mod in [m for m in sys.modules if m.split(".")[0] in names]:
            del sys.modules[mod]


install()


def _log_opened_files():
    """With $ADDIAGNOSIS_OPEN_LOG set: append every file this process opens (audit hook) to that log."""
    log = os.environ.get("ADDIAGNOSIS_OPEN_LOG")
    if not log:
        return
    seen = set()

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if path not in seen and not path.startswith("/proc"):
                seen.add(path)
                with open(log, "a") as fh:
                    fh.write(os.path.abspath(path) + "\n")

    sys.addaudithook(hook)


_log_opened_files()
