"""User-facing errors: one line, naming the file and the problem."""

from __future__ import annotations

import os


def display_name(path) -> str:
    """A file name made safe for one message line: control characters (newline, tab, ...) and bytes that
    are not valid UTF-8 are written as backslash escapes (``\\n``, ``\\xff``)."""
    if isinstance(path, bytes):
        raw = path
    else:
        try:
            raw = os.fsencode(path)
        except (TypeError, UnicodeEncodeError):
            raw = str(path).encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    out = []
    for ch in text:
        if ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 or ch in "\u2028\u2029":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


class AddiagnosisError(Exception):
    """An error a user can act on; front ends print ``str(err)`` and nothing more."""

    def __init__(self, message: str, path: str | None = None):
        self.path = None if path is None else display_name(path)
        self.problem = " ".join(str(message).split())  # always one line
        super().__init__(f"{self.path}: {self.problem}" if self.path else self.problem)


class InputError(AddiagnosisError):
    """The scan cannot be used (not a NIfTI, corrupt, wrong dimensionality, ...)."""


class ModelError(AddiagnosisError):
    """A model package is missing, unreadable, tampered with or unsafe."""


class OutputError(AddiagnosisError):
    """Results cannot be written where asked."""
