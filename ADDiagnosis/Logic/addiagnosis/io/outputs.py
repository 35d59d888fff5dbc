"""The one output writer: a result set is staged in a hidden folder inside the output folder and moved into
place whole when (and only when) everything was written.

    with OutputSet(out_dir, replaces=RESULT_FILES) as out:
        write_nifti(..., out.path("relevance.nii.gz"))
        with out.entry("subject-01") as sub:          # a staged sub-folder (batch: one per scan)
            sub.write_text("report.json", text)
    # here: out_dir holds the new set; the previous set's files (``replaces``) are gone

Promises (each has a test in Testing/test_hostile_inputs.py):

- nothing is written outside ``out_dir`` (names are single path components, checked);
- on any failure (an exception, disk full, Ctrl-C) everything this run created is removed: the staging
  folder and the output folder and its parents when this run created them and they are empty;
- the previous result set is replaced whole: entries of the old set (``replaces``) that the new set does
  not have are removed at commit, under an exclusive lock on the output folder, so concurrent runs into
  one folder do not fail and the last one to commit wins with a complete set;
- staging folders left by killed runs (process gone, or older than a day on another host) are removed.

:func:`unique_names` gives collision-proof folder names for many inputs (batch, cohorts).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import shutil
import socket
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path

from addiagnosis.errors import AddiagnosisError, OutputError, display_name

try:
    import fcntl
except ImportError:  # Windows: no lock (commits are still staged and moved entry by entry)
    fcntl = None

STAGING_PREFIX = ".addiagnosis-tmp-"
STALE_AGE_S = 24 * 3600
# the files of one diagnosis (``diagnose``); a new result set replaces all of these
RESULT_FILES = ("relevance.nii.gz", "report.json", "overview.png", "view_*.png")
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
_MAX_NAME_BYTES = 200


def _host() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"


def check_component(name: str) -> str:
    """Refuse a name that is not one plain path component (no separators, not '.', '..' or empty)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or os.sep in name:
        raise OutputError(f"invalid output name {display_name(name)!r}")
    return name


class _Folder:
    """A staged folder: ``path(name)`` inside it, moved to ``final`` on commit."""

    def __init__(self, folder: Path | None, final: Path):
        self.folder = folder
        self.final = final

    def path(self, name: str) -> Path:
        if self.folder is None:
            raise RuntimeError("use OutputSet as a context manager")
        return self.folder / check_component(name)

    def write_text(self, name: str, text: str) -> Path:
        path = self.path(name)
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        return path

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.path(name)
        path.write_bytes(data)
        return path


class OutputSet(_Folder):
    """Context manager staging one result set inside ``out_dir`` and committing it whole (see module doc).

    ``replaces``: the entries of a previous result set (exact names, ``fnmatch`` patterns, or a predicate on
    the name) that the new set replaces; other entries in ``out_dir`` (the user's own files) are kept.
    """

    def __init__(self, out_dir: str | os.PathLike,
                 replaces: Iterable[str] | Callable[[str], bool] = RESULT_FILES):
        self.out = Path(out_dir)
        if callable(replaces):
            self._replaces = replaces
        else:
            patterns = tuple(replaces)
            self._replaces = lambda name: any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)
        self._created: list[Path] = []  # folders this run created, deepest first
        self.staging: Path | None = None
        super().__init__(None, self.out)

    # ---------------------------------------------------------------------------------------- enter
    def __enter__(self) -> OutputSet:
        out = self.out
        missing, p = [], out
        while not p.exists() and not p.is_symlink() and p != p.parent:
            missing.append(p)
            p = p.parent
        if out.exists() and not out.is_dir():
            raise OutputError("exists and is not a directory", out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            self._created = [m for m in missing if m.is_dir()]
            clean_stale_staging(out)
            self.staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{_host()}-{os.getpid()}-", dir=out))
        except OSError as exc:
            self._created = [m for m in missing if m.is_dir()]
            self._remove_created()
            raise OutputError(f"output directory is not writable ({exc.strerror or exc})", out) from None
        self.folder = self.staging
        return self

    @contextlib.contextmanager
    def entry(self, name: str):
        """A staged sub-folder ``name``; removed again if the block raises (the rest of the set stays)."""
        assert self.staging is not None, "use OutputSet as a context manager"
        path = self.path(name)
        path.mkdir()
        try:
            yield _Folder(path, self.out / name)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise

    # ----------------------------------------------------------------------------------------- exit
    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self._commit()
            except OSError as err:
                self._rollback()
                raise OutputError(f"cannot move results into place ({err.strerror or err})", self.out) from None
            self._drop_staging()
            return False
        self._rollback()
        if isinstance(exc, AddiagnosisError) and exc.path and self.staging is not None:
            staged = display_name(self.staging)
            if exc.path.startswith(staged):  # name the final place, not the hidden staging folder
                mapped = display_name(self.out) + exc.path[len(staged):]
                raise type(exc)(exc.problem, mapped) from None
        if isinstance(exc, OSError) and not isinstance(exc, AddiagnosisError) and (
                exc.errno in _WRITE_ERRNOS or str(exc.filename or "").startswith(str(self.staging))):
            raise OutputError(f"cannot write results ({exc.strerror or exc})", self.out) from None
        return False

    def _commit(self) -> None:
        with _locked(self.out):
            trash = Path(tempfile.mkdtemp(prefix=".replaced-", dir=self.staging))
            new = sorted(p.name for p in self.staging.iterdir() if p != trash)
            old = [n for n in os.listdir(self.out)
                   if not n.startswith(STAGING_PREFIX) and (n in new or self._replaces(n))]
            moved_old, installed = [], []
            try:
                for name in old:
                    os.rename(self.out / name, trash / name)
                    moved_old.append(name)
                for name in new:
                    os.rename(self.staging / name, self.out / name)
                    installed.append(name)
            except OSError:
                for name in installed:
                    with contextlib.suppress(OSError):
                        os.rename(self.out / name, self.staging / name)
                for name in moved_old:
                    with contextlib.suppress(OSError):
                        os.rename(trash / name, self.out / name)
                raise

    def _drop_staging(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def _rollback(self) -> None:
        self._drop_staging()
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first; stops at the first that is not empty (another run)
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []


@contextlib.contextmanager
def _locked(folder: Path):
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def clean_stale_staging(out_dir: Path, now: float | None = None) -> list[str]:
    """Remove staging folders of runs that were killed: same host and process gone, or older than a day."""
    removed = []
    now = time.time() if now is None else now
    host = _host()
    try:
        names = [n for n in os.listdir(out_dir) if n.startswith(STAGING_PREFIX)]
    except OSError:
        return removed
    for name in names:
        parts = name[len(STAGING_PREFIX):].rsplit("-", 2)
        path = out_dir / name
        try:
            age = now - path.lstat().st_mtime
        except OSError:
            continue
        stale = age > STALE_AGE_S
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
            stale = not _alive(int(parts[1]))
        if stale and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


# --------------------------------------------------------------------------------------------- names
def safe_name(text: str, default: str = "scan") -> str:
    """One portable path component from any text: control characters, separators and characters that are
    not valid UTF-8 (or not portable to Windows/macOS file systems) become '_'; never hidden, never '.'/'..'."""
    text = display_name(text)  # newlines, control characters and undecodable bytes as visible escapes
    text = unicodedata.normalize("NFC", text)
    out = "".join("_" if (c in '\\/:*?"<>|' or ord(c) < 32) else c for c in text).strip(" ")
    if not out or out.startswith("."):
        out = "_" + out
    while len(out.encode("utf-8")) > _MAX_NAME_BYTES:
        out = out[:-1]
    return out or default


def unique_names(items: Iterable[str | os.PathLike], reserved: Iterable[str] = (),
                 stem: Callable[[Path], str] | None = None) -> list[str]:
    """One folder name per input, unique even on case-insensitive file systems and never equal to another
    input's own name or a ``reserved`` name: ``x.nii.gz``, ``x-2.nii.gz`` and ``sub/x.nii.gz`` become
    ``x``, ``x-2`` and ``x-3``; ``...nii.gz`` becomes ``_..``."""
    if stem is None:
        from addiagnosis.files import scan_stem

        stem = scan_stem
    bases = [safe_name(stem(Path(p))) for p in items]
    taken = {r.casefold() for r in reserved}
    natural = {b.casefold() for b in bases}  # names other inputs have by themselves: never handed out as n-k
    names = []
    for base in bases:
        name = base
        if name.casefold() in taken:
            k = 2
            while f"{base}-{k}".casefold() in taken or f"{base}-{k}".casefold() in natural:
                k += 1
            name = f"{base}-{k}"
        taken.add(name.casefold())
        names.append(name)
    return names
