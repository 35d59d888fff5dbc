"""The batch: many scans through the engine into one results table; overlapped, resumable, shardable.

Reading, decompression and the model card's preprocessing (template registration for the bundled model) run in
worker processes (:mod:`.pool`) while the network and LRP run in this process (model loaded once). Per-scan
files (``--save relevance,report,overview``) are mapped back onto the input grid and written by the workers too;
without them only summaries computed on the model grid are kept.

Every finished scan (ok or error) is one record of the journal (:mod:`.journal`), keyed by the file's SHA-256;
``results.tsv`` (:mod:`.table`) is rebuilt from the journal(s) at the end, on Ctrl-C/SIGTERM, and by every re-run,
which skips what is done (same content, same settings). A bad scan is a row with its one-line error; a worker
that dies (crash, out of memory) is replaced and the scans it held are retried one at a time, the culprit
becoming an error row. Shards and merging: :mod:`.shards`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from addiagnosis.cohort import pool
from addiagnosis.cohort.inputs import Scan
from addiagnosis.cohort.journal import JOURNAL, Done, Journal, all_records, error_record, new_record, stat_key
from addiagnosis.cohort.progress import Ticker
from addiagnosis.cohort.regions import load_regions, model_grid_affine
from addiagnosis.cohort.shards import (
    DONE,
    Settings,
    check_run_file,
    part_dir,
    shard_of,
    wait_and_merge,
    write_manifest,
    write_part_results,
)
from addiagnosis.cohort.table import table_columns
from addiagnosis.errors import InputError, OutputError, display_name
from addiagnosis.files import write_text_atomic

SAVE_CHOICES = ("relevance", "report", "overview")


@dataclass
class Options:
    out: Path
    model: str | None = None
    device: str = "cpu"
    method: str | None = "auto"
    target: str | None = None
    save: tuple = ()
    labels: str | None = None
    label_names: str | None = None
    workers: int | None = None
    threads: int = 1
    shard: tuple = (1, 1)
    strict: bool = False
    retry_errors: bool = False
    progress: bool | None = None
    window: int = 2  # prepared scans waiting per worker (keeps the model busy; bounds memory)
    merge_wait_s: float = 3600.0
    shard_given: bool = False  # --shard named: no automatic merge by rank 0 (torchrun only)


@dataclass
class RunSummary:
    total: int
    ok: int
    failed: int
    pending: int
    skipped: int
    seconds: float
    table: Path
    scans_per_min: float
    interrupted: bool = False
    merged: Path | None = None
    notice: str | None = None


@dataclass
class InFlight:
    """A job given to the workers: which step (``prepare`` or ``write``), for which scan."""

    step: str
    scan: Scan
    job: pool.PrepareJob | pool.WriteJob
    alone: bool = False  # submitted by itself after a worker died: if the pool breaks now, this scan did it


def run(scans: list[Scan], opts: Options, log=None) -> RunSummary:
    """Diagnose ``scans`` (this shard's share of them) into ``opts.out``; see the module docstring."""
    return Batch(scans, opts, log).run()


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (a scheduler's stop) ends the batch as Ctrl-C does: finished scans kept, the table written."""
    old = None
    if hasattr(signal, "SIGTERM"):
        try:
            old = signal.signal(signal.SIGTERM, _raise_interrupt)
        except ValueError:  # not the main thread
            old = None
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


class Batch:
    """One run of :func:`run`: its steps in order are :meth:`open_output`, :meth:`load_model`, :meth:`plan`,
    :meth:`pipeline` (the worker loop) and :meth:`finish`."""

    def __init__(self, scans: list[Scan], opts: Options, log=None):
        self.scans, self.opts, self.log = scans, opts, log or _stderr
        self.out = Path(opts.out)
        self.k, self.n = opts.shard
        self.pdir = part_dir(self.out, self.k, self.n)
        self.mine = shard_of(scans, self.k, self.n)
        self.save: tuple = ()
        self.done = self.failed = self.skipped = 0
        self.interrupted = self.broken = False
        self.t_start = time.perf_counter()
        self.queue: deque = deque()  # InFlight items not yet submitted
        self.suspects: deque = deque()  # in flight when a worker died: retried one at a time
        self.inflight: dict = {}  # future -> InFlight
        self.executor = None

    def run(self) -> RunSummary:
        self.open_output()
        with _torch_threads(self.opts.threads):
            self.load_model()
            todo = self.plan()
            try:
                self.pipeline(todo)
            finally:
                self.journal.close()
        return self.finish()

    # ---------------------------------------------------------------------------------------------- set-up
    def open_output(self) -> None:
        """The output folder exists and is writable; the per-scan files asked for are known."""
        if self.out.exists() and not self.out.is_dir():
            raise OutputError("exists and is not a directory", self.out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"output directory is not writable ({exc.strerror or exc})", self.out) from None
        self.save = tuple(self.opts.save or ())
        bad = [s for s in self.save if s not in SAVE_CHOICES]
        if bad:
            raise InputError(f"--save {','.join(bad)}: choose from {', '.join(SAVE_CHOICES)}")

    def load_model(self) -> None:
        """The model, method, target and regions; run.json checked (same settings) and this part's manifest."""
        from addiagnosis.engine import get_diagnoser
        from addiagnosis.models.card import SYNTHETIC_NOTICE

        opts = self.opts
        self.diagnoser = d = get_diagnoser(opts.model, opts.device)
        self.card, self.classes = d.package.card, d.package.class_names
        self.method = d.resolve_method(opts.method)
        self.target_idx = d.package.class_index(opts.target) if opts.target else None
        self.regions = load_regions(self.card, opts.labels, opts.label_names, any(s.labels for s in self.scans))
        check_run_file(self.out, self.settings(), self.classes, self.n, self.pdir)
        self.pdir.mkdir(parents=True, exist_ok=True)
        write_manifest(self.pdir, self.k, self.n, table_columns(self.scans, self.classes, self.regions), self.mine)
        (self.pdir / DONE).unlink(missing_ok=True)
        self.notice = SYNTHETIC_NOTICE if self.card.get("synthetic") else None
        self.model_info = {"name": d.package.name, "version": d.package.version, "class_names": self.classes,
                           "notice": self.notice, "intended_use": self.card.get("intended_use")}

    def settings(self) -> Settings:
        pkg, regions = self.diagnoser.package, self.regions
        return Settings(model=pkg.name, model_version=pkg.version,
                        weights_sha256=str(pkg.card.get("weights", {}).get("sha256", "")), method=self.method,
                        target=self.opts.target or "predicted", labels_sha256=regions.sha256 if regions else "",
                        regions=list(regions.names) if regions else [], save=sorted(self.save))

    def plan(self) -> list[Scan]:
        """This part's scans that are not done yet (a scan done under another name gets an alias record)."""
        done = Done(all_records(self.out, self.log))
        self.journal = Journal(self.pdir / JOURNAL).open()
        todo = []
        for s in self.mine:
            rec = done.find(s.path)
            if rec is not None and (rec.get("status") == "ok" or not self.opts.retry_errors):
                self.skipped += 1
                alias = done.alias(rec, s.scan_id, s.path)  # the same content under this scan's name
                if alias is not None:
                    self.journal.append(alias)
                continue
            todo.append(s)
        return todo

    def brain_grid(self) -> np.ndarray | None:
        """The template's brain mask on the model grid (for ``brain_share``), when the grid is in template space."""
        if model_grid_affine(self.card) is None:
            return None
        from addiagnosis.prep.align import model_grid, template_on_grid

        return template_on_grid(*model_grid(dict(self.card["preprocessing"]), dict(self.card["input_grid"])))[1]

    # ---------------------------------------------------------------------------------------------- the loop
    def pipeline(self, todo: list[Scan]) -> None:
        """Prepare in the workers, explain here, write in the workers, until every scan is a record."""
        self.brain = self.brain_grid()
        workers = pool.default_workers() if self.opts.workers is None else max(0, int(self.opts.workers))
        self.workers = min(workers, max(1, len(todo))) if workers else 0
        show = self.opts.progress if self.opts.progress is not None else sys.stderr.isatty()
        self.ticker = Ticker(len(todo), bool(show))
        if self.skipped:
            self.log(f"addiagnosis: {self.skipped} scan(s) already done in {self.out} (skipped)")
        self.t_start = time.perf_counter()
        self.limit = max(1, self.workers * max(1, self.opts.window)) if self.workers else 1
        with _sigterm_interrupts():
            try:
                dev = str(self.diagnoser.device)
                self.executor = pool.make_pool(self.workers, self.card, 1, dev) if todo else \
                    pool.InlineExecutor(self.card, 1)
                self.queue = deque(InFlight("prepare", s, pool.PrepareJob(
                    str(s.path), None if s.labels is None else str(s.labels))) for s in todo)
                while self.queue or self.inflight or self.suspects:
                    self.step()
                self.ticker(self.done, self.failed, final=True)
            except KeyboardInterrupt:
                self.interrupted = True
            finally:
                self.stop_workers()

    def step(self) -> None:
        """Fill the workers, wait for one job at least, take in what finished; a dead worker's pool is replaced."""
        serial = bool(self.suspects) or any(f.alone for f in self.inflight.values())
        while not serial and self.queue and self.preparing() < self.limit:
            self.submit(self.queue.popleft())
        if self.suspects and not self.inflight and not self.broken:
            item = self.suspects.popleft()
            item.alone = True
            self.submit(item)
        finished = wait(list(self.inflight), return_when=FIRST_COMPLETED)[0] if self.inflight else ()
        for fut in finished:
            self.collect(self.inflight.pop(fut), fut)
        if self.broken:
            self.replace_workers()

    def preparing(self) -> int:
        return sum(1 for f in self.inflight.values() if f.step == "prepare")

    def submit(self, item: InFlight) -> None:
        fn = pool.prepare_job if item.step == "prepare" else pool.finish_job  # looked up now: tests patch them
        try:
            fut = self.executor.submit(fn, item.job)
        except BrokenProcessPool:
            self.broken = True
            self.suspects.append(item)
            return
        self.inflight[fut] = item

    def collect(self, item: InFlight, fut) -> None:
        try:
            res = fut.result()
        except BrokenProcessPool:
            self.broken = True
            if item.alone:  # it broke the pool by itself: this scan is the culprit
                s = item.scan
                self.commit(error_record(new_record(s.scan_id, s.path, "", stat_key(s.path)),
                                         "the worker process died on this scan (crash or out of memory)"))
            else:
                self.suspects.append(item)
            return
        if item.step == "prepare":
            self.prepared(item.scan, res)
        else:
            self.written(item.job.record, res)

    def replace_workers(self) -> None:
        """A worker died: every job the pool may have held is retried alone, in a new pool."""
        for fut in list(self.inflight):
            self.suspects.append(self.inflight.pop(fut))
        pool.kill_pool(self.executor)
        self.executor = pool.make_pool(self.workers, self.card, 1, str(self.diagnoser.device))
        self.broken = False

    def stop_workers(self) -> None:
        if self.executor is None:
            return
        if self.interrupted:
            pool.kill_pool(self.executor)
        else:
            self.executor.shutdown(wait=True)

    # ---------------------------------------------------------------------------------------------- per scan
    def prepared(self, s: Scan, res: pool.PrepareResult) -> None:
        """A scan came back prepared (or failed): explain it here, then its files go to a worker, or it is done."""
        rec = new_record(s.scan_id, s.path, res.sha256, res.stat)
        if not res.ok:
            self.commit(error_record(rec, res.error, t_total=round(res.t_worker, 4)))
            return
        rec, rel = self.explain(s, res, rec)
        if rec["status"] == "ok" and self.save:
            rec["output"] = f"scans/{s.name}"
            job = pool.WriteJob(save=self.save, record=rec, folder=str(self.out / "scans" / s.name),
                                path=str(s.path), notice=self.notice, model=self.model_info, rel_grid=rel,
                                info=res.info, in_shape=res.in_shape, ijk_to_ras=res.ijk_to_ras)
            self.submit(InFlight("write", s, job))
        else:
            self.commit(rec)

    def explain(self, s: Scan, res: pool.PrepareResult, rec: dict) -> tuple[dict, np.ndarray | None]:
        """Network + LRP on the model grid; summaries (and regional sums) from the grid. The record and the map."""
        import torch

        from addiagnosis.metrics import share_inside

        t0 = time.perf_counter()
        try:
            g = self.diagnoser.explain_tensor(torch.from_numpy(res.tensor)[None, None], self.method,
                                              self.target_idx)
        except Exception as exc:
            return {**rec, "status": "error", "error": pool.error_line(exc)}, None
        names, rel = self.classes, g.relevance
        reg = (res.info.get("registration") or {})
        rec.update({
            "status": "ok", "error": "", "probabilities": {c: float(p) for c, p in zip(names, g.probabilities)},
            "predicted": names[g.predicted], "target": names[g.target], "method": self.method,
            "registration_correlation": reg.get("correlation"), "registration_quality": reg.get("quality"),
            "brain_share": share_inside(rel, self.brain) if self.brain is not None else None,
            "relevance_sum": float(rel.sum(dtype=np.float64)),
            "relevance_positive_sum": float(np.clip(rel, 0, None).sum(dtype=np.float64)),
            "warnings": [str(w) for w in res.info.get("warnings", [])],
        })
        self.quality(rec, res, g)
        conformal = self.diagnoser.package.card.conformal  # issue 19: the card's prediction set, comma-separated
        if conformal is not None:
            rec["prediction_set"] = ",".join(conformal.classes(rec["probabilities"]))
        if self.regions is not None:
            labels = res.labels_grid if res.labels_grid is not None else self.regions.grid
            if labels is not None:
                rec["regions"] = self.regions.values(rel, labels)
        t_model = time.perf_counter() - t0
        rec.update(t_read=round(res.t_read, 4), t_prepare=round(res.t_prepare, 4), t_model=round(t_model, 4),
                   t_write=0.0, t_total=round(res.t_worker + t_model, 4))
        return rec, rel

    def quality(self, rec: dict, res: pool.PrepareResult, g) -> None:
        """The scan's QC record with the model's OOD score (issue 18): in the record, its columns, one stderr line."""
        from addiagnosis.prep import qc

        ood = self.diagnoser.ood
        rec["qc"] = qc.with_ood(res.qc or {"verdict": "pass", "reasons": []},
                                None if ood is None or g.features is None else ood.score(g.features))
        rec.update(qc.columns(rec["qc"]))
        if rec["qc"]["verdict"] != "pass":
            self.log(f"addiagnosis: {display_name(rec['path'])}: {display_name(qc.summary_line(rec['qc']))}")

    def written(self, rec: dict, res: pool.WriteResult) -> None:
        rec["t_write"] = round(res.t_write, 4)
        rec["t_total"] = round(rec["t_total"] + res.t_write, 4)
        if res.ok:
            rec["files"] = res.files
        else:
            rec.update(status="error", error=res.error)
        self.commit(rec)

    def commit(self, rec: dict) -> None:
        """A scan is done: its record is in the journal (fsync'ed) before it counts."""
        self.journal.append(rec)
        self.done += 1
        self.failed += rec["status"] != "ok"
        if rec["status"] != "ok":
            self.log(f"addiagnosis: error: {display_name(rec['path'])}: {display_name(rec['error'])}")
        self.ticker(self.done, self.failed)

    # ---------------------------------------------------------------------------------------------- the end
    def finish(self) -> RunSummary:
        """This part's table (also when interrupted), its done.json, and the merge by rank 0 under torchrun."""
        seconds = time.perf_counter() - self.t_start
        table, counts = write_part_results(self.out, self.pdir)
        if not self.interrupted:
            write_text_atomic(self.pdir / DONE, json.dumps({"finished": time.time(), "counts": counts}) + "\n")
        merged = None
        if self.n > 1 and self.k == 1 and not self.interrupted and os.environ.get("WORLD_SIZE") \
                and not self.opts.shard_given:
            merged = wait_and_merge(self.out, self.n, self.opts.merge_wait_s, self.log)
        return RunSummary(total=len(self.mine), ok=counts["ok"], failed=counts["error"], pending=counts["pending"],
                          skipped=self.skipped, seconds=seconds, table=table,
                          scans_per_min=self.done / seconds * 60.0 if seconds > 0 else 0.0,
                          interrupted=self.interrupted, merged=merged, notice=self.notice)
