"""Worker processes of a batch: reading, hashing and the model card's preprocessing of each scan (the prepare
step) and the per-scan files mapped back onto the input grid (the write step) run here, while the network and
LRP run in the main process. Every job and result is a small picklable dataclass.

On Linux with the model on the CPU the workers are forked once the card's preprocessing is warm (imports,
template atlas): no start-up per worker, pages shared. ``--workers 0`` runs the same steps in the main process
(:class:`InlineExecutor`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from addiagnosis import RESEARCH_USE
from addiagnosis.cohort.journal import stat_key
from addiagnosis.cohort.regions import labels_onto, read_labelmap
from addiagnosis.errors import AddiagnosisError, InputError, display_name
from addiagnosis.files import sha256_file

_WORKER: dict = {}  # this process's model card (set once per worker, or by InlineExecutor)


@dataclass
class PrepareJob:
    path: str
    labels: str | None = None  # a per-scan label map, taken onto the model grid with the scan


@dataclass
class PrepareResult:
    """A prepared scan (``ok``) or its one-line ``error``; ``stat`` and ``sha256`` identify the file either way."""

    ok: bool = False
    sha256: str = ""
    stat: str | None = None
    error: str = ""
    tensor: np.ndarray | None = None  # the network's input on the model grid (D, H, W)
    info: dict = field(default_factory=dict)  # the preprocessing's record (transforms, registration, warnings)
    in_shape: list = field(default_factory=list)
    ijk_to_ras: list = field(default_factory=list)
    labels_grid: np.ndarray | None = None
    qc: dict | None = None  # input quality control (prep.qc.assess) of the scan, before the model
    t_read: float = 0.0
    t_prepare: float = 0.0
    t_worker: float = 0.0


@dataclass
class WriteJob:
    """Per-scan files of a diagnosed scan: ``save`` names them, ``record`` is its journal record."""

    save: tuple
    record: dict
    folder: str
    path: str
    notice: str | None
    model: dict
    rel_grid: np.ndarray
    info: dict
    in_shape: list
    ijk_to_ras: list


@dataclass
class WriteResult:
    ok: bool
    files: dict = field(default_factory=dict)
    error: str = ""
    t_write: float = 0.0


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a killed batch not yet reaped by its parent is a zombie: dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _init_worker(card: dict, threads: int, parent: int | None = None) -> None:
    if parent:  # die with the batch: a killed batch leaves no orphans (a pool worker never sees EOF by itself)
        import threading

        def watch():
            while _alive(parent):
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, name="addiagnosis-parent-watch", daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker must not inherit the batch's handler
    import torch

    torch.set_num_threads(max(1, int(threads)))
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))
    except ImportError:
        pass
    _WORKER["card"] = card


def error_line(exc: BaseException) -> str:
    """The one-line error of a scan's row (the error family's problem text, else the exception in brief)."""
    if isinstance(exc, AddiagnosisError):
        return exc.problem
    if isinstance(exc, MemoryError):
        return "out of memory"
    text = display_name(" ".join(str(exc).split()))[:200]
    return f"unexpected error ({type(exc).__name__}{': ' + text if text else ''})"


def prepare_job(job: PrepareJob) -> PrepareResult:
    """Worker step: hash, read, validate and preprocess one scan (everything picklable comes back)."""
    from addiagnosis.io.volume import read_scan
    from addiagnosis.prep.physical import prepare

    path = Path(job.path)
    res = PrepareResult(stat=stat_key(path))
    t0 = time.perf_counter()
    try:
        if not path.exists():
            raise InputError("no such file")
        res.sha256 = sha256_file(path) if path.is_file() else ""
        vol = read_scan(path)  # a NIfTI file or a DICOM series folder (its hash: its files in slice order)
        res.sha256 = vol.meta.get("sha256") or res.sha256
        t1 = time.perf_counter()
        prep = prepare(vol, _WORKER["card"])
        from addiagnosis.prep.qc import assess

        res.qc = assess(vol, prep.info, _WORKER["card"])  # needs the scan itself: here, in the worker
        t2 = time.perf_counter()
        res.ok, res.tensor, res.info = True, prep.tensor.numpy().reshape(prep.tensor.shape[2:]), prep.info
        res.in_shape, res.ijk_to_ras = list(vol.shape), vol.ijk_to_ras.tolist()
        res.t_read, res.t_prepare = t1 - t0, t2 - t1
        if job.labels:
            data, aff = read_labelmap(Path(job.labels))
            if "grid_to_input_ijk" not in prep.info:
                raise InputError("this model's preprocessing gives no map onto the scan for its label map")
            g2i = np.asarray(prep.info["grid_to_input_ijk"])
            res.labels_grid = labels_onto(data, np.linalg.inv(aff) @ vol.ijk_to_ras @ g2i, res.tensor.shape)
    except BaseException as exc:  # noqa: B902 - one bad scan is a row, never the end of the run
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        res.ok, res.error = False, error_line(exc)
    res.t_worker = time.perf_counter() - t0
    return res


def map_to_input(rel_grid: np.ndarray, info: dict, in_shape) -> np.ndarray:
    """Relevance on the model grid -> the input grid, from the recorded transform (as ``Prepared.to_input``)."""
    from addiagnosis.prep.physical import resample_back, seed_raw_back

    if "grid_to_input_ijk" in info:
        return resample_back(np.asarray(info["grid_to_input_ijk"], dtype=np.float64), in_shape)(rel_grid)
    if info.get("kind") == "seed-raw":
        return seed_raw_back(info["slices_in_scan"], info["reshape"][1:], in_shape)(rel_grid)
    raise AddiagnosisError(f"cannot map relevance back for preprocessing {info.get('kind')!r}")


def _write_files(job: WriteJob, out) -> dict:
    """The files ``job.save`` names, into the open output set ``out``; their names by kind."""
    from types import SimpleNamespace

    from addiagnosis.io.report import overview_png
    from addiagnosis.io.volume import Volume, read_scan, write_nifti

    save, record, files = set(job.save), job.record, {}
    rel = None
    if save & {"relevance", "overview"}:
        rel = Volume(map_to_input(job.rel_grid, job.info, job.in_shape), job.ijk_to_ras,
                     f"{record['scan_id']} relevance")
    if "relevance" in save:
        write_nifti(rel, out.path("relevance.nii.gz"),
                    f"ADDiagnosis {record['method']} relevance for {record['target']}")
        files["relevance"] = "relevance.nii.gz"
    if "overview" in save:
        result = SimpleNamespace(relevance=rel, probabilities=record["probabilities"], predicted=record["predicted"],
                                 target=record["target"], method=record["method"], research_use=RESEARCH_USE,
                                 model_notice=job.notice, qc=record.get("qc"))
        overview_png(read_scan(job.path), result, out.path("overview.png"))
        files["overview"] = "overview.png"
    if "report" in save:
        files["report"] = "report.json"
        report = {"research_use": RESEARCH_USE, "scan": record, "model": job.model, "preprocessing": job.info,
                  "qc": record.get("qc"), "files": files}
        out.path("report.json").write_text(json.dumps(report, indent=2) + "\n")
    return files


def finish_job(job: WriteJob) -> WriteResult:
    """Worker step: per-scan files (relevance on the input grid, report.json, overview.png), atomically."""
    from addiagnosis.io.outputs import RESULT_FILES, OutputSet

    t0 = time.perf_counter()
    try:
        with OutputSet(job.folder, replaces=RESULT_FILES) as out:
            files = _write_files(job, out)
        return WriteResult(True, files, t_write=time.perf_counter() - t0)
    except BaseException as exc:  # noqa: B902
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return WriteResult(False, error=f"writing per-scan files failed: {error_line(exc)}",
                           t_write=time.perf_counter() - t0)


class InlineExecutor:
    """``--workers 0``: the same jobs, run in this process (debugging, platforms without fork)."""

    def __init__(self, card: dict, threads: int):
        _WORKER["card"] = card

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: B902
            fut.set_exception(exc)
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, n)


def make_pool(workers: int, card: dict, threads: int, device: str = "cpu"):
    """Worker processes. On Linux with the model on the CPU they are forked from this process once the model
    card's preprocessing is warm (imports, template atlas): no start-up per worker, pages shared. With a GPU
    in this process (fork after CUDA is unsafe) and elsewhere they start fresh (forkserver or spawn)."""
    if workers <= 0:
        return InlineExecutor(card, threads)
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    if sys.platform.startswith("linux") and str(device).startswith("cpu") and "fork" in methods:
        ctx = mp.get_context("fork")
    else:
        ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if ctx.get_start_method() == "forkserver":
            ctx.set_forkserver_preload(["addiagnosis.cohort.pool", "addiagnosis.prep.physical",
                                        "addiagnosis.io.volume"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(card, threads, os.getpid()))


def kill_pool(pool) -> None:
    """Stop the workers now (an interrupted batch, or a pool broken by a dead worker)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    try:
        pool.shutdown(wait=False, cancel_futures=True)
    except Exception:
        pass
    for p in procs:
        try:
            p.terminate()
        except Exception:
            pass
    for p in procs:
        try:
            p.join(2)
        except Exception:
            pass
