"""Stand-in for Slicer's ``PythonSlicer``: a launcher (CTK AppLauncher) with the real one's process structure.

In an installed Slicer, ``PythonSlicer`` sets up the environment, starts the real Python (``python-real``) as
its CHILD with the same arguments and standard streams, waits for it and exits with its status. It forwards no
signal: killing the launcher leaves the child running. ``make_launcher`` writes such a ``PythonSlicer`` (a
Python script: the parent process) into a folder; put the folder first on PATH and the module finds it as it
finds Slicer's. ``group_processes`` lists the live processes of a process group (Linux /proc), what the tests
use to show that nothing of a job is left; ``slicer_with_a_worker`` is a Slicer process that a test can kill.
"""

import contextlib
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

LAUNCHER = """#!{launcher_python} -IS
# PythonSlicer stand-in: start the real Python as a child with the same arguments, wait, pass on its status.
import os, subprocess, sys
env = dict(os.environ)
env["ADDIAGNOSIS_LAUNCHED_BY"] = str(os.getpid())
child = subprocess.Popen([{real_python!r}, *sys.argv[1:]], env=env)
while True:
    try:
        sys.exit(child.wait())
    except KeyboardInterrupt:
        pass
"""


def make_launcher(folder, real_python=None) -> Path:
    """Write an executable ``PythonSlicer`` into ``folder`` that launches ``real_python`` (default: this one)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "PythonSlicer"
    path.write_text(LAUNCHER.format(launcher_python=sys.executable, real_python=real_python or sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _stat(pid):
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[2])  # state, parent pid, process group


def group_processes(group: int) -> list:
    """Live (not zombie) processes in process group ``group``: [(pid, parent pid), ...]."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            state, ppid, pgrp = _stat(entry)
        except (OSError, ValueError, IndexError):
            continue
        if pgrp == group and state != "Z":
            found.append((int(entry), ppid))
    return sorted(found)


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` now (MB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def gone_within(group: int, limit: float = 1.0) -> float:
    """Seconds until no process of ``group`` is alive (SIGKILL goes to the group; a child is gone a moment
    later); fails after ``limit``."""
    t = time.perf_counter()
    while group_processes(group):
        assert time.perf_counter() - t < limit, f"still alive after {limit} s: {group_processes(group)}"
        time.sleep(0.005)
    return time.perf_counter() - t


SLICER_WITH_A_WORKER = """
import sys, time
from addiagnosis.worker.client import WorkerProcess
w = WorkerProcess(sys.argv[1])
while w.ready is None:
    w.read(); time.sleep(0.01)
print(w.group, flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def slicer_with_a_worker(python_slicer):
    """A stand-in Slicer process that starts a worker through ``python_slicer`` and then only waits (a test kills
    it as a crash would: no cleanup runs); yields (that process, the worker's process group)."""
    gui = subprocess.Popen([sys.executable, "-c", SLICER_WITH_A_WORKER, str(python_slicer)], stdout=subprocess.PIPE,
                           text=True)
    try:
        yield gui, int(gui.stdout.readline())
    finally:
        gui.kill()
        gui.wait()
