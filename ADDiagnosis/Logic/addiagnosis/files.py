"""Files, the one way: atomic writes, SHA-256 of a file, a scan's name without its NIfTI extension.

Torch-free and free of the other layers (it only knows the error family), so every layer can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from addiagnosis.errors import OutputError

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
_UMASK = os.umask(0o022)  # read once at import (os.umask can only be read by setting it) ...
os.umask(_UMASK)  # ... and put back at once


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a hidden temporary path beside ``path`` (same suffix, unique per process); on success it replaces
    ``path`` atomically, on failure it is removed. For single files outside a result set (caches, checkpoints,
    journals' companions, the worker's result arrays)."""
    path = Path(path)
    suffix = path.suffix  # kept last: np.save and friends append their own otherwise
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file 0600: give it the mode a plain write would (or the replaced file's own mode),
        # so packages, journals and results stay readable by the group as the user's umask intends
        try:
            mode = os.stat(path).st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_UMASK
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` all at once (readers see the old file or the new, never half); a failure is
    one ``OutputError`` line and leaves no temporary file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write ({exc.strerror or exc})", path) from None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def scan_stem(path: str | os.PathLike) -> str:
    """The file name without .nii/.nii.gz (the scan's name in reports, tables and output folders).

    >>> scan_stem("sub-01/anat/sub-01_T1w.nii.gz"), scan_stem("a.b.nii"), scan_stem("series.dcm")
    ('sub-01_T1w', 'a.b', 'series')
    """
    path = Path(path)
    for ext in NIFTI_EXTENSIONS:
        if path.name.endswith(ext):
            return path.name[: -len(ext)]
    return path.stem
