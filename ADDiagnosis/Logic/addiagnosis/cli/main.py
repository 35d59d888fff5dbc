"""Command line: ``addiagnosis COMMAND ...``; :data:`COMMANDS` is the one table of every command.

Each command is registered by one module of this package (``register_cli(subparsers)``), imported only when
its command runs: ``addiagnosis --help`` lists the table without importing any of them (and so without torch),
and ``addiagnosis models`` imports only :mod:`.models` (torch-free). A command module that cannot be imported
is a one-line error naming the reason, never a command that silently disappears.

User errors print one line on stderr (``addiagnosis: error: FILE: problem``) and exit with code 2;
nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple

from addiagnosis import RESEARCH_USE, __version__
from addiagnosis.errors import AddiagnosisError

EXIT_USER_ERROR = 2


class Command(NamedTuple):
    name: str
    module: str  # the module under addiagnosis.cli whose register_cli adds this command
    help: str


COMMANDS = (
    Command("diagnose", "diagnose", "classify one scan and explain the result with LRP"),
    Command("models", "models", "list installed model packages (where each is, which is the default, "
                                "which shadows which)"),
    Command("import-checkpoint", "models", "turn a checkpoint into a model package"),
    Command("package", "models", "rewrite a model package in place: record evaluations in its card, add its "
                                 "registration template (checksums verified)"),
    Command("batch", "cohort", "diagnose a cohort (scans, folder, BIDS, table): one results table, worker "
                               "processes, resumable, shardable"),
    Command("merge", "cohort", "join the parts of a sharded batch into one results table"),
    Command("labels", "cohort", "write a small synthetic label map of the MNI template (for --labels "
                                "demonstrations)"),
    Command("synth", "research", "generate a synthetic cohort with known atrophy"),
    Command("train", "research", "train a model package (subject-level split)"),
    Command("evaluate", "research", "classification and explanation metrics of a model package"),
    Command("compare", "research", "regional relevance by group (bootstrap intervals, AD/CN gain)"),
    Command("compare-maps", "maps", "two diagnoses' relevance maps on one grid and their difference (targets, "
                                    "methods, or a baseline and a follow-up through the template)"),
    Command("web", "web", "serve the web app (Slicer's views of a diagnosis in the browser)"),
)
BY_NAME = {c.name: c for c in COMMANDS}


class CommandUnavailable(AddiagnosisError):
    """A command's module cannot be imported (a dependency is missing or broken)."""


class _Registrar:
    """The subparsers handed to a command module: it may add only the commands the table gives it, and each
    gets the table's help text."""

    def __init__(self, subparsers, module: str):
        self.subparsers, self.module = subparsers, module

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        command = BY_NAME.get(name)
        if command is None or command.module != self.module:
            raise RuntimeError(f"addiagnosis.cli.{self.module} registers {name!r}, which COMMANDS does not give it")
        kwargs.pop("help", None)  # the table is the one place a command's help is written
        kwargs.setdefault("description", command.help)
        return self.subparsers.add_parser(name, help=command.help, **kwargs)


def load_module(command: Command):
    """The command's module, or a one-line error naming why it cannot be imported."""
    name = f"addiagnosis.cli.{command.module}"
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise CommandUnavailable(f"command '{command.name}' is unavailable: cannot import {name} "
                                 f"({type(exc).__name__}: {exc})") from None


def chosen_command(argv: list[str]) -> str | None:
    """The command named on the line (the first word that is not an option), if any."""
    for word in argv:
        if word in ("-h", "--help", "--version"):
            return None
        if not word.startswith("-"):
            return word
    return None


def build_parser(argv: list[str] | None = None, load_all: bool = False) -> argparse.ArgumentParser:
    """The parser for ``argv``: the chosen command's module registers its commands in full (all modules with
    ``load_all``); every other command is listed with its help from the table."""
    parser = argparse.ArgumentParser(prog="addiagnosis", description=(
        "Explainable Alzheimer's-disease classification of brain MRI (3D CNN + LRP). " + RESEARCH_USE))
    parser.add_argument("--version", action="version", version=f"addiagnosis {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = BY_NAME.get(chosen_command(argv or []))
    loaded = set()
    for command in COMMANDS:
        wanted = load_all or (chosen is not None and command.module == chosen.module)
        if wanted and command.module not in loaded:
            loaded.add(command.module)
            load_module(command).register_cli(_Registrar(sub, command.module))
        if command.name not in sub.choices:  # listed only: its module is imported when it is chosen
            sub.add_parser(command.name, help=command.help, description=command.help)
    return parser


def run(argv: list[str]) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    from addiagnosis.io.volume import quiet

    try:
        with quiet():  # nibabel/numpy warnings never reach stderr: problems are one-line errors
            return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:  # a dependency of this command is missing (e.g. torch, matplotlib)
        if not exc.name or exc.name.split(".")[0] == "addiagnosis":
            raise  # a bug of this package, not a missing dependency
        raise CommandUnavailable(f"'{args.command}' needs the Python package '{exc.name}', which is not "
                                 "installed") from None


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else list(argv))
    except AddiagnosisError as exc:
        print(f"addiagnosis: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("addiagnosis: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("addiagnosis: error: out of memory", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
