"""What the web app's gateway and session workers share: paths, download names, the access-log line."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
DOWNLOADS = ("relevance.nii.gz", "report.json", "overview.png")
COMPARE_DOWNLOADS = ("comparison.json", "difference.nii.gz")  # a comparison's files (web/session/compare.py)
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}\.(nii|nii\.gz|zip)$")  # a stored upload's name (a .zip holds a DICOM series)
DEFAULT_PORT = 8080
DEFAULT_MAX_UPLOAD_MB = 256


def page_label(name: str) -> str:
    """A user's file name reduced to a safe label for the page (never used as a path)."""
    base = re.split(r"[\\/]", str(name))[-1]
    base = re.sub(r"\.(nii(\.gz)?|zip)$", "", base, flags=re.IGNORECASE)
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip() or "scan"
    return base[:64]


def access_line(session: str, event: str, outcome: str, **fields) -> str:
    """One access-log line: UTC timestamp, anonymous session id, event, outcome and plain numbers/words."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    extra = "".join(f" {k}={v}" for k, v in fields.items() if v is not None)
    return f"{stamp} session={session} event={event} outcome={outcome}{extra}"


def write_access(path: str | None, line: str) -> None:
    """Append a line to the access log (stderr when no file is given). One write per line: safe across processes."""
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    else:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
