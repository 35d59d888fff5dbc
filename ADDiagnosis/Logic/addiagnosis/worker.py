"""Diagnosis in a separate process, the way Slicer's AI extensions run inference.

Inside 3D Slicer, PythonQt keeps the GIL in the main thread while Qt's event loop runs, so a Python
thread doing inference is starved. The module therefore starts ``python -m addiagnosis.worker JOBDIR``
(``sys.executable`` is PythonSlicer there) and only moves data in and out of MRML itself.

Protocol (all files in JOBDIR, exact: ``.npy`` keeps dtype, shape and every bit of the matrix):

- in:  ``volume.npy`` (voxels in IJK order, as the node holds them), ``ijk_to_ras.npy`` (4x4 float64),
  ``request.json`` (``model``, ``method``, ``target``, ``device``, ``name``);
- stdout: ``PROGRESS <fraction> <stage>`` lines while it runs, then ``DONE`` or ``ERROR <one line>``;
- out: ``relevance.npy`` (float32, the input's grid) and ``result.json`` (probabilities, classes, report
  fields), written under temporary names and renamed, ``result.json`` last.

:class:`WorkerJob` is the caller's side: start, ``poll()`` without blocking (non-blocking pipe reads),
``cancel()`` (kills the process; returns within a second), a wall-clock time limit. This module imports
no torch and no Slicer at import time: the GUI process can use it before torch is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from addiagnosis import RESEARCH_USE
from addiagnosis.files import atomic_file
from addiagnosis.io.checks import check_volume  # the one input check (the module calls it from here too)
from addiagnosis.io.volume import Volume

TIME_LIMIT_S = 600.0  # a diagnosis that has not finished by then is killed (registration can never hang)
RESULT_FIELDS = ("model_name", "model_version", "class_names", "logits", "probabilities", "predicted", "target",
                 "method", "summary", "preprocessing", "timings", "device", "warnings", "model_notice",
                 "model_intended_use", "research_use")


@dataclass
class WorkerResult:
    """What the worker sends back: the fields of engine.DiagnosisResult that the scene and the panel use."""

    model_name: str
    model_version: str
    class_names: list
    logits: list
    probabilities: dict
    predicted: str
    target: str
    method: str
    relevance: Volume
    summary: dict = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    device: str = "cpu"
    warnings: list = field(default_factory=list)
    model_notice: str | None = None
    model_intended_use: str | None = None
    research_use: str = RESEARCH_USE
    worker: dict = field(default_factory=dict)  # pid, peak memory, wall time


def write_request(job_dir: str, volume: Volume, model=None, method="auto", target=None, device="cpu") -> None:
    np.save(os.path.join(job_dir, "volume.npy"), np.ascontiguousarray(volume.array), allow_pickle=False)
    np.save(os.path.join(job_dir, "ijk_to_ras.npy"), np.asarray(volume.ijk_to_ras, dtype=np.float64),
            allow_pickle=False)
    with open(os.path.join(job_dir, "request.json"), "w") as fh:
        json.dump({"model": None if model is None else str(model), "method": method, "target": target,
                   "device": device, "name": volume.name}, fh)


def read_result(job_dir: str) -> WorkerResult:
    with open(os.path.join(job_dir, "result.json")) as fh:
        data = json.load(fh)
    rel = np.load(os.path.join(job_dir, "relevance.npy"), allow_pickle=False)
    aff = np.load(os.path.join(job_dir, "ijk_to_ras.npy"), allow_pickle=False)
    fields = {k: data[k] for k in RESULT_FIELDS if k in data}
    return WorkerResult(relevance=Volume(rel, aff, data.get("relevance_name", "relevance")),
                        worker=data.get("worker", {}), **fields)


# ------------------------------------------------------------------------------------------ worker side
def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run(job_dir: str) -> int:
    """The worker process: read the request, diagnose, write the result. Returns the exit status."""
    t0 = time.perf_counter()
    try:
        with open(os.path.join(job_dir, "request.json")) as fh:
            req = json.load(fh)
        array = np.load(os.path.join(job_dir, "volume.npy"), allow_pickle=False)
        aff = np.load(os.path.join(job_dir, "ijk_to_ras.npy"), allow_pickle=False)
        volume = Volume(array, aff, req.get("name") or "volume")
        check_volume(volume)
        _say("PROGRESS 0.02 loading the model")
        t_import = time.perf_counter()
        from addiagnosis.engine import diagnose

        import_s = time.perf_counter() - t_import
        result = diagnose(volume, req.get("model"), req.get("method") or "auto", req.get("target") or None,
                          req.get("device") or "cpu",
                          lambda stage, frac: _say(f"PROGRESS {float(frac):.3f} {stage}"))
        data = {k: getattr(result, k) for k in RESULT_FIELDS}
        data["relevance_name"] = result.relevance.name
        data["worker"] = {"pid": os.getpid(), "seconds": round(time.perf_counter() - t0, 3),
                          "import_s": round(import_s, 3), "engine_s": round(sum(result.timings.values()), 3),
                          "peak_rss_mb": peak_rss_mb()}
        with atomic_file(os.path.join(job_dir, "relevance.npy")) as tmp:
            np.save(tmp, np.asarray(result.relevance.array, dtype=np.float32), allow_pickle=False)
        with atomic_file(os.path.join(job_dir, "result.json")) as tmp:
            tmp.write_text(json.dumps(data, default=_plain))
    except Exception as exc:  # one line for the user; the traceback goes to stderr for the log
        import traceback

        from addiagnosis.errors import AddiagnosisError

        msg = str(exc) if isinstance(exc, AddiagnosisError) else f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
        _say("ERROR " + " ".join(msg.split()))
        return 2 if isinstance(exc, AddiagnosisError) else 1
    _say("DONE")
    return 0


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process (MB), where the platform tells."""
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(kb / (1024.0 * 1024.0) if sys.platform == "darwin" else kb / 1024.0, 1)
    except Exception:
        return None


# ------------------------------------------------------------------------------------------ caller side
class WorkerJob:
    """One diagnosis in a worker process, polled from the GUI's timer; never blocks the caller."""

    def __init__(self, volume: Volume, model=None, method="auto", target=None, device="cpu",
                 python: str | None = None, time_limit: float = TIME_LIMIT_S, env: dict | None = None):
        self.dir = tempfile.mkdtemp(prefix="addiagnosis-job-")
        write_request(self.dir, volume, model, method, target, device)
        self.progress = ("starting", 0.0)
        self.result = self.error = None
        self.details = ""
        self.done = self.cancelled = False
        self.time_limit = float(time_limit)
        self.started = time.monotonic()
        self._buf, self._err = b"", b""
        logic_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        run_env = dict(os.environ if env is None else env)
        run_env["PYTHONPATH"] = logic_dir + (os.pathsep + run_env["PYTHONPATH"] if run_env.get("PYTHONPATH") else "")
        run_env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen([python or sys.executable, "-m", "addiagnosis.worker", self.dir],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=run_env, cwd=self.dir)
        for pipe in (self.proc.stdout, self.proc.stderr):
            _nonblocking(pipe)

    def poll(self) -> bool:
        """Read what the worker wrote so far (never waits); returns ``done``."""
        if self.done:
            return True
        self._buf += _read_available(self.proc.stdout)
        self._err += _read_available(self.proc.stderr)
        *lines, self._buf = self._buf.split(b"\n")
        for raw in lines:
            self._line(raw.decode("utf-8", "replace").strip())
        if self.proc.poll() is not None:
            self._buf += _read_available(self.proc.stdout)
            self._err += _read_available(self.proc.stderr)
            for raw in self._buf.split(b"\n"):
                self._line(raw.decode("utf-8", "replace").strip())
            self._buf = b""
            self._finish()
        elif time.monotonic() - self.started > self.time_limit:
            self._kill()
            self.error = TimeoutError(f"the diagnosis took longer than {self.time_limit:.0f} s and was stopped")
            self._finish()
        return self.done

    def _line(self, line: str) -> None:
        if line.startswith("PROGRESS "):
            parts = line.split(" ", 2)
            try:
                self.progress = (parts[2] if len(parts) > 2 else "", float(parts[1]))
            except ValueError:
                pass
        elif line.startswith("ERROR ") and self.error is None:
            self.error = RuntimeError(line[6:])

    def _finish(self) -> None:
        if not self.cancelled and self.error is None:
            if self.proc.returncode == 0 and os.path.isfile(os.path.join(self.dir, "result.json")):
                try:
                    self.result = read_result(self.dir)
                except Exception as exc:
                    self.error = RuntimeError(f"the worker's result could not be read ({exc})")
            else:
                self.error = RuntimeError(f"the worker stopped unexpectedly (exit status {self.proc.returncode})")
        self.details = self._err.decode("utf-8", "replace")[-20000:]
        self.done = True
        self._cleanup()

    def cancel(self) -> None:
        """Stop the worker now (the scene is never touched by it); ``done`` is True when this returns."""
        if self.done:
            return
        self.cancelled = True
        self._kill()
        self._finish()

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:  # pragma: no cover - the OS did not reap it in time
                pass

    def _cleanup(self) -> None:
        import shutil

        for pipe in (self.proc.stdout, self.proc.stderr):
            try:
                pipe.close()
            except Exception:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def _nonblocking(pipe) -> None:
    if os.name != "nt":
        os.set_blocking(pipe.fileno(), False)


def _read_available(pipe) -> bytes:
    """Whatever is in the pipe now, without waiting (POSIX: non-blocking fd; Windows: PeekNamedPipe)."""
    if pipe is None or pipe.closed:
        return b""
    fd = pipe.fileno()
    if os.name == "nt":  # pragma: no cover - Windows
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


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
