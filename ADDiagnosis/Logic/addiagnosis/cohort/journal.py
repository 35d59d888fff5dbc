"""The batch's journal: one JSON line per finished scan (ok or error), append-only and fsync'ed, so a killed batch
loses at most the scan in hand; a re-run reads every journal under the output folder and skips what is done.

A record is the scan's row in the making, kept as the dict that goes to disk (its keys, in this order):
``scan_id, path, sha256, stat, finished, status, error``, then for a diagnosed scan ``probabilities, predicted,
target, method``, the summaries, ``regions``, the timings ``t_*``, ``output`` and ``files``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from addiagnosis.errors import display_name
from addiagnosis.files import sha256_file

JOURNAL = "journal.jsonl"


class Journal:
    """Append-only JSON lines, one per finished scan, flushed and fsync'ed before the next scan counts."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    @staticmethod
    def read(path: Path) -> list[dict]:
        """The records of a journal (lines that are not records are skipped: :meth:`scan` counts them)."""
        return Journal.scan(path)[0]

    @staticmethod
    def scan(path: Path) -> tuple[list[dict], int]:
        """The records of a journal and how many of its lines are not records (skipped). The unterminated end a
        kill leaves (a record is committed by its newline) is neither: that scan is simply not done."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return [], 0
        out, bad = [], 0
        for line in data.split(b"\n")[:-1]:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:  # torn, binary, not JSON
                rec = None
            if is_record(rec):
                out.append(rec)
            else:
                bad += 1
        return out, bad

    def open(self) -> Journal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # cut a torn last line so the next record starts on its own line
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(self.path, "r+b") as fh:
                    fh.truncate(data.rfind(b"\n") + 1)
        self.fh = open(self.path, "a", encoding="utf-8")
        return self

    def append(self, record: dict) -> None:
        self.fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def is_record(obj) -> bool:
    """Whether a parsed journal line is a record this engine can use (valid JSON such as ``null``, ``[1,2]``,
    ``{}`` or a record without its scan id is not, nor one whose fields have the wrong types)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("scan_id"), str) or not obj["scan_id"]:
        return False
    if obj.get("status") not in ("ok", "error"):
        return False
    if not _number(obj.get("finished", 0)) or any(not isinstance(obj.get(k), (str, type(None)))
                                                  for k in ("stat", "sha256")):
        return False
    if any(not isinstance(obj.get(k, {}), dict) for k in ("probabilities", "regions", "files")):
        return False
    return all(_number(p) for p in obj.get("probabilities", {}).values())


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def all_records(out: Path, log=None) -> list[dict]:
    """Records of every journal under ``out`` (single process and every shard), oldest first; ``log`` gets one
    warning line when some lines are not records."""
    paths = [out / JOURNAL] + sorted((out / "parts").glob(f"*/{JOURNAL}"))
    recs, bad = [], 0
    for p in paths:
        got, n = Journal.scan(p)
        recs += got
        bad += n
    if bad and log is not None:
        log(f"addiagnosis: warning: {bad} line(s) of the journal(s) in {display_name(out)} are not scan records "
            "(skipped)")
    recs.sort(key=lambda r: r.get("finished", 0))
    return recs


def stat_key(path: Path) -> str | None:
    """The file's identity (resolved path, size, modification time): an unchanged file is found without hashing."""
    try:
        st = path.stat()
        if path.is_dir():  # a DICOM series folder: the names, sizes and times of its files
            files = sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                           for p in path.rglob("*") if p.is_file())
            return f"{path.resolve()}|dir|{hashlib.sha256(repr(files).encode()).hexdigest()[:32]}"
    except OSError:
        return None
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def new_record(scan_id: str, path, sha256: str, stat: str | None) -> dict:
    """The head every record starts with (the scan, its content hash and identity, when it finished)."""
    return {"scan_id": scan_id, "path": str(path), "sha256": sha256, "stat": stat, "finished": time.time()}


def error_record(head: dict, error: str, **more) -> dict:
    """A scan that failed: its one-line error (``more``: e.g. the time it took)."""
    return {**head, "status": "error", "error": error, **more}


class Done:
    """What earlier runs finished (any journal under the output folder), found by file identity, else by content."""

    def __init__(self, records: list[dict]):
        self.records = records
        self.by_stat = {r["stat"]: r for r in records if r.get("stat")}
        self.by_sha = {r["sha256"]: r for r in records if r.get("sha256")}
        self.by_id = {r["scan_id"]: r for r in records}

    def find(self, path: Path) -> dict | None:
        """The record of this file: by identity, else (if anything was done) by its content hash."""
        rec = self.by_stat.get(stat_key(path) or "")
        if rec is None and self.records and path.is_file():
            try:
                rec = self.by_sha.get(sha256_file(path))
            except OSError:  # unreadable now: it is run again and becomes a row with its one-line error
                rec = None
        return rec

    def alias(self, rec: dict, scan_id: str, path: Path) -> dict | None:
        """A record for ``scan_id`` reusing ``rec`` (the same content under another name), unless it is its own."""
        if self.by_id.get(scan_id) is rec:
            return None
        return {**rec, "scan_id": scan_id, "stat": stat_key(path), "finished": time.time()}
