"""The caller's side: a long-lived worker process and the jobs it runs, polled from the GUI's timer.

:class:`WorkerProcess` starts ``python -m addiagnosis.worker`` (PythonSlicer inside Slicer) as the head of its own
process group, sends it tasks and reads its messages without ever waiting. :class:`WorkerJob` is one diagnosis
on it: ``poll()`` (never blocks), ``cancel()`` (ends the worker's whole tree; the next job starts a new worker),
a wall-clock time limit. A job given no worker starts one for itself and ends it when done.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time

from addiagnosis.io.volume import Volume
from addiagnosis.worker import process, protocol

TIME_LIMIT_S = 600.0  # a diagnosis that has not finished by then is stopped (registration can never hang)
IDLE_S = 600.0  # a worker with nothing to do leaves after this long, giving its memory back
LOGIC_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def seconds_text(seconds: float) -> str:
    """1.5 -> "1.5", 600.0 -> "600", 0.25 -> "0.25" (never rounded to a whole second)."""
    return f"{round(float(seconds), 2):g}"


class WorkerProcess:
    """One worker (``PythonSlicer -m addiagnosis.worker``) for many jobs; one job at a time."""

    def __init__(self, python: str | None = None, env: dict | None = None, idle_s: float = IDLE_S):
        python = process.find_python(python)
        run_env = dict(os.environ if env is None else env)
        run_env["PYTHONPATH"] = LOGIC_DIR + (os.pathsep + run_env["PYTHONPATH"] if run_env.get("PYTHONPATH") else "")
        run_env.setdefault("PYTHONUNBUFFERED", "1")
        # OpenMP threads that wait sleep instead of spinning: with another busy process on a 2-core machine the
        # spinning doubled a warm job's CPU time (2.0 vs 1.2 CPU-s, LRP 0.7 s vs 0.1 s); the arithmetic is the same
        run_env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.idle_s = float(idle_s)
        self.proc = process.start([python, "-m", "addiagnosis.worker", "--parent", str(os.getpid()),
                                   "--idle", seconds_text(idle_s)], run_env, cwd=tempfile.gettempdir())
        self.started = self.last_used = time.monotonic()
        self.ready: protocol.Ready | None = None  # the worker's first message (its own pid)
        self.bye: protocol.Bye | None = None
        self.loaded = None  # what the last Load asked for
        self.job_ids = itertools.count(1)
        self._out, self._err = b"", b""
        self._inbox: dict = {}  # job id -> its messages not yet taken (two callers may share one worker)

    @property
    def group(self) -> int:
        """The process group (POSIX) / tree root (Windows) id: the launcher's PID, or Python's own."""
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None and self.bye is None

    def usable(self) -> bool:
        """Alive and not about to leave for being idle (a task sent then could meet a worker on its way out)."""
        return self.alive() and time.monotonic() - self.last_used < self.idle_s - 1.0

    def send(self, message) -> None:
        self.last_used = time.monotonic()
        try:
            self.proc.stdin.write(protocol.encode(message))
            self.proc.stdin.flush()
        except (OSError, ValueError):  # gone: the job notices it on its next poll
            pass

    def load(self, model: str | None, method: str = "auto", device: str = "cpu") -> None:
        """Ask the worker to import torch and load ``model`` now, ahead of the first Diagnose (once per choice)."""
        if (model, method, device) != self.loaded:
            self.loaded = (model, method, device)
            self.send(protocol.Load(model, method, device))

    def read(self) -> list:
        """The messages the worker sent since the last call (never waits)."""
        self._err = (self._err + process.read_available(self.proc.stderr))[-20000:]
        self._out += process.read_available(self.proc.stdout)
        *lines, self._out = self._out.split(b"\n")
        if self.proc.poll() is not None and self._out:
            lines, self._out = [*lines, self._out], b""
        messages = [m for m in (protocol.decode(line) for line in lines if line.strip()) if m is not None]
        for message in messages:
            if isinstance(message, protocol.Ready):
                self.ready = message
            elif isinstance(message, protocol.Bye):
                self.bye = message
            elif getattr(message, "job", -1) >= 0:
                self._inbox.setdefault(message.job, []).append(message)
        return messages

    def take(self, job: int) -> list:
        """The messages about ``job`` read so far (reading the pipes first), each handed out once."""
        self.read()
        return self._inbox.pop(job, [])

    def log(self) -> str:
        """The end of what the worker wrote to stderr (tracebacks, library warnings)."""
        return self._err.decode("utf-8", "replace")

    def stop(self) -> None:
        """End the worker and everything it started, now."""
        process.kill_tree(self.proc)


class WorkerJob:
    """One diagnosis on a worker, polled from the GUI's timer; never blocks the caller."""

    def __init__(self, volume: Volume, model=None, method="auto", target=None, device="cpu",
                 python: str | None = None, time_limit: float = TIME_LIMIT_S, env: dict | None = None,
                 worker: WorkerProcess | None = None):
        self.owns_worker = worker is None
        self.worker = worker if worker is not None else WorkerProcess(python, env)  # first: a failed start
        self.id = next(self.worker.job_ids)  # leaves no job folder behind
        self.progress = ("starting", 0.0)
        self.result = self.error = None
        self.code = 0  # the worker's status for a failed job: 2 = the input was refused, 1 = anything else
        self.details = ""
        self.done = self.cancelled = False
        self.time_limit = float(time_limit)
        self.started = time.monotonic()
        self.dir = tempfile.mkdtemp(prefix="addiagnosis-job-")
        try:
            protocol.write_request(self.dir, volume)
        except BaseException:
            self._cleanup()
            raise
        self.worker.send(protocol.Diagnose(self.id, self.dir, volume.name, None if model is None else str(model),
                                           method or "auto", target or None, device or "cpu"))

    @property
    def proc(self):
        return self.worker.proc

    def poll(self) -> bool:
        """Read what the worker sent so far (never waits); returns ``done``."""
        if self.done:
            return True
        for message in self.worker.take(self.id):
            self._on(message)
        if self.done:
            return True
        if not self.worker.alive():
            self._unexpected_exit()
        elif time.monotonic() - self.started > self.time_limit:
            self.worker.stop()
            self.error = TimeoutError(f"the diagnosis took longer than {seconds_text(self.time_limit)} s "
                                      "and was stopped")
            self._finish()
        return self.done

    def _on(self, message) -> None:
        if isinstance(message, protocol.Progress):
            self.progress = (message.stage, float(message.fraction))
        elif isinstance(message, protocol.Failed):
            self.error, self.code = RuntimeError(message.message), message.code
            self._finish()
        elif isinstance(message, protocol.Done):
            try:
                self.result = protocol.read_result(self.dir, message.worker)
            except Exception as exc:
                self.error = RuntimeError(f"the worker's result could not be read ({exc})")
            self._finish()

    def _unexpected_exit(self) -> None:
        status = self.worker.proc.poll()
        last = ([line for line in self.worker.log().splitlines() if line.strip()] or [""])[-1].strip()
        if self.worker.ready is None:
            msg = f"Slicer's Python started but the diagnosis worker did not (exit status {status})"
        else:
            msg = f"the diagnosis worker stopped unexpectedly (exit status {status})"
        self.error = RuntimeError(msg + (f": {last[:200]}" if last else ""))
        self.worker.stop()
        self._finish()

    def cancel(self) -> None:
        """Stop now: the worker's whole process tree ends (the scene is never touched by it)."""
        if self.done:
            return
        self.cancelled = True
        self.worker.stop()
        self._finish()

    def _finish(self) -> None:
        self.details = self.worker.log()
        self.done = True
        self.worker.last_used = time.monotonic()
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.owns_worker:
            self.worker.stop()
