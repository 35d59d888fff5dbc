"""Options shared by several commands (``diagnose`` and ``batch`` hand the same ones to the engine)."""

from __future__ import annotations

import argparse

from addiagnosis.models.card import AUTO_METHOD, DEFAULT_METHOD, METHOD_CHOICES

METHOD_HELP = ("relevance method (default auto: the model card's recommended one, lrp-reference-alpha1.25beta0.25 "
               f"for the bundled model, else {DEFAULT_METHOD})")


def engine_options(p: argparse.ArgumentParser) -> None:
    """--model, --method and --device: what `diagnose` and `batch` hand to the engine."""
    p.add_argument("--model", help="model package name or folder (default: the bundled model)")
    p.add_argument("--method", default=AUTO_METHOD, choices=METHOD_CHOICES, help=METHOD_HELP)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")


def name_value(text: str) -> tuple[str, str]:
    """An argparse type: ``NAME=VALUE`` (both non-empty) -> (NAME, VALUE)."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, value
