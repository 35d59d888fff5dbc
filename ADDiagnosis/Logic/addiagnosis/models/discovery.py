"""Where model packages are found: the search path (``$ADDIAGNOSIS_MODELS``, the user folder, the bundled ones),
precedence and shadowing, and lookup by name or folder. Torch-free: listing models never loads weights.

The card schema itself is :mod:`addiagnosis.models.card`; see docs/models.md for the precedence rules.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from addiagnosis.errors import ModelError
from addiagnosis.models.architecture import feature_shape
from addiagnosis.models.card import BUNDLED_DIR, CARD, ORIGINS, ModelCard, read_card  # noqa: F401

log = logging.getLogger("addiagnosis")

@dataclass(frozen=True)
class PackageInfo:
    """A package found on disk: its folder, validated card, where it was found and what it shadows."""

    path: Path
    card: ModelCard
    origin: str = "path"  # one of ORIGINS
    shadows: tuple[Path, ...] = ()  # same-named packages later in the precedence, hidden by this one
    shadowed_by: Path | None = None  # the same-named package that ``--model NAME`` picks instead

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def class_names(self) -> list[str]:
        return list(self.card.class_names)

    @property
    def weights_path(self) -> Path:
        if self.card.weights is None:
            raise ModelError("model card names no weights file", self.path / CARD)
        return self.path / self.card.weights.file

    @property
    def bundled(self) -> bool:
        return self.origin == "bundled" or BUNDLED_DIR in self.path.resolve().parents

    def class_index(self, name: str) -> int:
        for i, c in enumerate(self.card.class_names):
            if c.lower() == str(name).lower():
                return i
        raise ModelError(f"unknown class {name!r}; this model knows {', '.join(self.card.class_names)}", self.name)

    def summary(self) -> str:
        return (f"{self.name} {self.version}: classes {'/'.join(self.card.class_names)}, grid "
                f"{'x'.join(str(s) for s in self.card.input_grid.shape)}, preprocessing "
                f"{self.card.preprocessing.kind}")


def user_dir() -> Path:
    home = os.environ.get("ADDIAGNOSIS_HOME")
    if home:
        return Path(home) / "models"
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "addiagnosis" / "models"


def search_path() -> list[tuple[Path, str]]:
    """(folder, origin) in order of precedence."""
    env = [(Path(p), "env") for p in os.environ.get("ADDIAGNOSIS_MODEL_PATH", "").split(os.pathsep) if p]
    return env + [(user_dir(), "user"), (BUNDLED_DIR, "bundled")]


_WARNED: set = set()


def _one_line(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text)


def _warn_skipped(exc: ModelError) -> None:
    msg = _one_line(f"addiagnosis: warning: skipping model package: {exc}")
    if msg not in _WARNED:  # once per process, however often the folders are listed
        _WARNED.add(msg)
        log.warning(msg)


def _candidates(root: Path) -> list[Path]:
    try:
        if not root.is_dir():
            return []
        subs = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        _warn_skipped(ModelError(f"cannot list this folder ({exc.strerror or type(exc).__name__})", root))
        return []
    out = []
    for sub in subs:
        try:
            if sub.name.startswith(".") or not sub.is_dir():  # hidden: temporary folders of an import
                continue
            if (sub / CARD).exists() or (sub / CARD).is_symlink():
                out.append(sub)
        except OSError as exc:
            _warn_skipped(ModelError(f"cannot read this folder ({exc.strerror or type(exc).__name__})", sub))
    return out


def read_package(folder: str | os.PathLike, origin: str = "path") -> PackageInfo:
    """One package folder, validated: a readable card, an input grid the network can take, and a weights file
    that exists inside the folder."""
    folder = Path(folder)
    card = read_card(folder)
    try:  # a grid the network cannot take would fail only when the weights load, as a traceback
        feature_shape(card.input_grid.shape)
    except ValueError as exc:
        raise ModelError(f"model card: {exc}", folder / CARD) from None
    wpath = folder / card.weights.file
    try:
        ok = wpath.is_file()
    except OSError:
        ok = False
    if not ok:
        raise ModelError("weights file is missing", wpath)
    return PackageInfo(folder, card, origin)


def scan_packages() -> list[PackageInfo]:
    """Every usable package on the search path, in precedence order, with shadowing marked.

    Bad packages are skipped with a one-line warning; the same folder listed twice counts once."""
    found: list[PackageInfo] = []
    seen_dirs: set = set()
    for root, origin in search_path():
        for folder in _candidates(root):
            try:
                key = folder.resolve()
            except OSError:
                key = folder.absolute()
            if key in seen_dirs:
                continue
            seen_dirs.add(key)
            try:
                found.append(read_package(folder, origin))
            except ModelError as exc:
                _warn_skipped(exc)
    winners: dict[str, int] = {}
    shadows: dict[str, list[Path]] = {}
    for i, p in enumerate(found):
        if p.name in winners:
            shadows.setdefault(p.name, []).append(p.path)
            found[i] = PackageInfo(p.path, p.card, p.origin, (), found[winners[p.name]].path)
        else:
            winners[p.name] = i
    for name, paths in shadows.items():
        p = found[winners[name]]
        found[winners[name]] = PackageInfo(p.path, p.card, p.origin, tuple(paths), None)
    return found


def list_packages(include_shadowed: bool = False) -> list[PackageInfo]:
    """The packages ``--model NAME`` can reach (each name once), in precedence order."""
    return [p for p in scan_packages() if include_shadowed or p.shadowed_by is None]


def default_package(packages: list[PackageInfo] | None = None) -> PackageInfo:
    """What a plain ``diagnose`` runs: the bundled default, whatever else shares its name (module docstring)."""
    packages = scan_packages() if packages is None else packages
    bundled = [p for p in packages if p.origin == "bundled"]
    for p in bundled:
        if p.card.default:
            return p
    if bundled:
        return bundled[0]
    active = [p for p in packages if p.shadowed_by is None]
    for p in active:
        if p.card.default:
            return p
    if active:
        return active[0]
    raise ModelError("no model package installed (import one with 'addiagnosis import-checkpoint' "
                     "or train one with 'addiagnosis train')")


def _looks_like_path(name: str) -> bool:
    return (os.sep in name or (os.altsep is not None and os.altsep in name) or name.startswith(("~", "."))
            or Path(name).is_absolute())


def find_package(name: str | os.PathLike | None = None) -> PackageInfo:
    """A package by name (precedence in the module docstring), by folder path, or the default one."""
    if name is None or str(name) == "":
        return default_package()
    name = str(name)
    if _looks_like_path(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise ModelError("no such model package folder", folder)
        if not ((folder / CARD).exists() or (folder / CARD).is_symlink()):
            raise ModelError(f"not a model package (no {CARD})", folder)
        return read_package(folder)
    packages = scan_packages()
    for p in packages:
        if p.name == name and p.shadowed_by is None:
            return p
    if (Path(name) / CARD).exists():
        return read_package(Path(name))
    known = ", ".join(p.name for p in packages if p.shadowed_by is None) or "none installed"
    raise ModelError(f"unknown model {name!r} (installed: {known})")
