"""Start a process as the head of its own process group, read its pipes without blocking, end its whole tree.

In an installed Slicer ``PythonSlicer`` is Slicer's launcher (CTK AppLauncher): it sets up the environment,
starts the real Python as its CHILD and waits. Killing the launcher's PID leaves that child running (measured:
it lived on until its next write hit a closed pipe, and a hung one forever). So the worker starts in a new
session (POSIX: ``start_new_session``, the group id is the launcher's PID and the child inherits it) and is ended
with ``killpg``; on Windows in a new process group without a console window (as ``slicer.util.launchConsoleProcess``
hides it) and ended with ``taskkill /T /F`` (the tree by parent process).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

from addiagnosis.errors import AddiagnosisError

WINDOWS = os.name == "nt"


class StartError(AddiagnosisError):
    """Slicer's Python could not be started: one line saying which and why."""


def find_python(preferred: str | None = None) -> str:
    """The interpreter for the worker: ``preferred``, else PythonSlicer on PATH, else this Python (if it is a file).

    Inside Slicer ``sys.executable`` can be empty or the GUI itself; an empty name would otherwise reach the OS
    as ``[Errno 13] Permission denied: ''``."""
    for candidate in (preferred, shutil.which("PythonSlicer"), sys.executable):
        if candidate:
            return str(candidate)
    raise StartError("Slicer's Python (PythonSlicer) was not found: reinstall Slicer, or start it from its own "
                     "folder so that PythonSlicer is on the PATH")


def start(args: list, env: dict, cwd: str | None = None) -> subprocess.Popen:
    """``args`` as the head of a new process group, stdin/stdout/stderr piped, stdout/stderr non-blocking."""
    python = shutil.which(args[0]) or args[0]
    if not os.path.isfile(python):
        raise StartError(f"Slicer's Python could not be started: {python} does not exist")
    if not os.access(python, os.X_OK):
        raise StartError(f"Slicer's Python could not be started: {python} is not executable")
    kwargs = {}
    if WINDOWS:  # pragma: no cover - Windows
        info = subprocess.STARTUPINFO()
        info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
        info.wShowWindow = 0  # SW_HIDE
        kwargs.update(startupinfo=info,
                      creationflags=subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW)
    else:
        kwargs.update(start_new_session=True)
    try:
        proc = subprocess.Popen([python, *args[1:]], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, cwd=cwd, **kwargs)
    except OSError as exc:
        raise StartError(f"Slicer's Python could not be started: {python}: {exc.strerror or exc}") from None
    for pipe in (proc.stdout, proc.stderr):
        if not WINDOWS:
            os.set_blocking(pipe.fileno(), False)
    return proc


def kill_tree(proc: subprocess.Popen, wait_s: float = 1.0) -> None:
    """End ``proc`` and every process it started (its process group / its tree); reap ``proc``."""
    if WINDOWS:  # pragma: no cover - Windows
        if proc.poll() is None:
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(proc.pid)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, creationflags=subprocess.CREATE_NO_WINDOW, check=False)
    else:
        try:  # the group outlives its head: a launcher that already exited still has its child in it
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:  # pragma: no cover - the OS did not reap it in time
        pass
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        try:
            if pipe is not None:
                pipe.close()
        except OSError:
            pass


def read_available(pipe) -> bytes:
    """Whatever is in the pipe now, without waiting (POSIX: non-blocking fd; Windows: PeekNamedPipe)."""
    if pipe is None or pipe.closed:
        return b""
    fd = pipe.fileno()
    if WINDOWS:  # pragma: no cover - Windows
        import _winapi
        import msvcrt

        try:
            avail = _winapi.PeekNamedPipe(msvcrt.get_osfhandle(fd), 0)[0]
        except OSError:
            return b""
        return os.read(fd, avail) if avail else b""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def alive(pid: int) -> bool:
    """Whether process ``pid`` is still running (a zombie, dead but not yet reaped, is not)."""
    if WINDOWS:  # pragma: no cover - Windows
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
        if not handle:
            return False
        try:
            return kernel32.WaitForSingleObject(handle, 0) == 0x102  # WAIT_TIMEOUT: still running
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): os.kill said it exists
