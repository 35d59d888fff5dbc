"""User-facing errors: one line, naming the file and the problem."""

from __future__ import annotations


class AddiagnosisError(Exception):
    """An error a user can act on; front ends print ``str(err)`` and nothing more."""

    def __init__(self, message: str, path: str | None = None):
        self.path = None if path is None else str(path)
        self.problem = " ".join(str(message).split())  # always one line
        super().__init__(f"{self.path}: {self.problem}" if self.path else self.problem)


class InputError(AddiagnosisError):
    """The scan cannot be used (not a NIfTI, corrupt, wrong dimensionality, ...)."""


class ModelError(AddiagnosisError):
    """A model package is missing, unreadable, tampered with or unsafe."""


class OutputError(AddiagnosisError):
    """Results cannot be written where asked."""
