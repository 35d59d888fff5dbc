"""Stand-in for Slicer's ``PythonSlicer``: a launcher (CTK AppLauncher) with the real one's process structure.

In an installed Slicer, ``PythonSlicer`` sets up the environment, starts the real Python (``python-real``) as
its CHILD with the same arguments and standard streams, waits for it and exits with its status. It forwards no
signal: killing the launcher leaves the child running. ``make_launcher`` writes such a ``PythonSlicer`` (a
Python script: the parent process) into a folder; put the folder first on PATH and the module finds it as it
finds Slicer's. ``group_processes`` lists the live processes of a process group (Linux /proc), what the tests
use to show that nothing of a job is left.
"""

import os
import stat
import sys
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
