"""The worker's side: ``python -m addiagnosis.worker --parent PID [--idle SECONDS]``.

Reads tasks (JSON lines, :mod:`~addiagnosis.worker.protocol`) from stdin and runs them one after another in the
main thread, keeping torch and the loaded model (``engine.get_diagnoser`` caches it; a change of model or
device replaces it, a change of method is prepared on the same model). It leaves on its own:

- when its stdin reaches end-of-file or the ``--parent`` process is gone (a watchdog thread, every 0.25 s): a
  Slicer that crashed or was killed leaves no worker behind, even in the middle of a job (whose folder it
  removes, as the GUI would have);
- after ``--idle`` seconds without a task, to give its memory back;
- on :class:`~addiagnosis.worker.protocol.Quit`.

Its stdout carries only messages: file descriptor 1 is pointed at stderr at start, so a library that prints
cannot corrupt them.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import sys
import threading
import time

from addiagnosis.worker import protocol
from addiagnosis.worker.process import alive

WATCH_S = 0.25  # how often the watchdog looks at the parent


class Server:
    def __init__(self, out_fd: int, parent: int | None, idle_s: float):
        self.out_fd, self.parent, self.idle_s = out_fd, parent, float(idle_s)
        self.tasks: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.current = None  # the job folder being worked on (removed if the parent dies meanwhile)
        self.jobs = 0
        self.imported = False

    def say(self, message) -> None:
        with self.lock:
            os.write(self.out_fd, protocol.encode(message))

    def leave(self, reason: str) -> None:
        """The parent is gone: clean up its job folder and exit now, whatever the main thread is doing."""
        if self.current:
            shutil.rmtree(self.current, ignore_errors=True)
        try:
            self.say(protocol.Bye(reason))
        except OSError:
            pass
        os._exit(0)

    def read_stdin(self) -> None:
        for line in sys.stdin.buffer:
            message = protocol.decode(line)
            if message is not None:
                self.tasks.put(message)
        self.leave("stdin closed")

    def watch_parent(self) -> None:
        while True:
            time.sleep(WATCH_S)
            if self.parent and not alive(self.parent):
                self.leave("parent gone")

    def serve(self, started: float) -> int:
        threading.Thread(target=self.read_stdin, daemon=True).start()
        threading.Thread(target=self.watch_parent, daemon=True).start()
        self.say(protocol.Ready(pid=os.getpid(), seconds=round(time.perf_counter() - started, 3)))
        while True:
            try:
                task = self.tasks.get(timeout=self.idle_s)
            except queue.Empty:
                self.say(protocol.Bye("idle"))
                return 0
            if isinstance(task, protocol.Quit):
                self.say(protocol.Bye("quit"))
                return 0
            if isinstance(task, protocol.Load):
                self.load(task)
            elif isinstance(task, protocol.Diagnose):
                self.diagnose(task)

    def engine(self):
        """The engine module (torch and the network code are imported on the first task)."""
        t = time.perf_counter()
        from addiagnosis import engine

        seconds, self.imported = (0.0 if self.imported else time.perf_counter() - t), True
        return engine, seconds

    def load(self, task: protocol.Load) -> None:
        try:
            engine, _ = self.engine()
            engine.get_diagnoser(task.model, task.device).resolve_method(task.method)
        except Exception as exc:  # the job that follows reports it to the user
            self.say(protocol.Failed(-1, _one_line(exc)))

    def diagnose(self, task: protocol.Diagnose) -> None:
        t0, cpu0 = time.perf_counter(), time.process_time()
        self.current = task.folder
        try:
            from addiagnosis.io.checks import check_volume

            volume = protocol.read_request(task)
            check_volume(volume)
            self.say(protocol.Progress(task.job, 0.02, "loading the model"))
            engine, import_s = self.engine()
            result = engine.diagnose(volume, task.model, task.method or "auto", task.target or None,
                                     task.device or "cpu",
                                     lambda stage, frac: self.say(protocol.Progress(task.job, float(frac), stage)))
            protocol.write_result(task.folder, result)
        except Exception as exc:  # one line for the user; the traceback goes to stderr for the log
            import traceback

            from addiagnosis.errors import AddiagnosisError

            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            self.say(protocol.Failed(task.job, _one_line(exc), 2 if isinstance(exc, AddiagnosisError) else 1))
            return
        finally:
            self.current = None
        self.jobs += 1
        self.say(protocol.Done(task.job, {
            "pid": os.getpid(), "seconds": round(time.perf_counter() - t0, 3), "import_s": round(import_s, 3),
            "cpu_s": round(time.process_time() - cpu0, 3),  # all threads: what a quiet machine would need
            "engine_s": round(sum(result.timings.values()), 3), "jobs": self.jobs, "peak_rss_mb": peak_rss_mb()}))


def _one_line(exc: Exception) -> str:
    from addiagnosis.errors import AddiagnosisError

    msg = str(exc) if isinstance(exc, AddiagnosisError) else f"{type(exc).__name__}: {exc}"
    return " ".join(msg.split())


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process (MB), where the platform tells."""
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(kb / (1024.0 * 1024.0) if sys.platform == "darwin" else kb / 1024.0, 1)
    except Exception:
        return None


def main(argv: list) -> int:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(prog="python -m addiagnosis.worker")
    parser.add_argument("--parent", type=int, default=None, help="leave when this process is gone")
    parser.add_argument("--idle", type=float, default=600.0, help="leave after this many seconds without a task")
    args = parser.parse_args(argv)
    out_fd = os.dup(1)  # the message channel; fd 1 (print, C libraries) goes to stderr from here on
    sys.stdout.flush()
    os.dup2(2, 1)
    code = Server(out_fd, args.parent, args.idle).serve(started)
    sys.stderr.flush()
    os._exit(code)  # now: the interpreter's teardown with torch loaded took another 1-2 s on a busy machine
