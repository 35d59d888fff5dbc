"""Model packages (contract): a folder with ``card.json`` and the weights it names, checked by SHA-256.

Weights are a plain ``state_dict`` read with ``torch.load(..., weights_only=True)`` only: a file that
needs to unpickle code is refused. Packages are found, in order, in ``$ADDIAGNOSIS_MODEL_PATH``
(``os.pathsep``-separated folders), the user folder (``$ADDIAGNOSIS_HOME/models``, default
``$XDG_DATA_HOME/addiagnosis/models``) and the bundled ``ADDiagnosis/Resources/Models``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelError
from .model import ClassificationModel3D, input_shape_from_state_dict

CARD = "card.json"
FORMAT = "addiagnosis-model/1"
BUNDLED_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models"
REQUIRED = ("name", "version", "class_names", "input_grid", "preprocessing", "intended_use",
            "training_data", "weights")

SEED_CLASSES = ["AD", "CN", "MCI", "EMCI", "LMCI"]  # output order of the original checkpoints


def user_dir() -> Path:
    home = os.environ.get("ADDIAGNOSIS_HOME")
    if home:
        return Path(home) / "models"
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "addiagnosis" / "models"


def search_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("ADDIAGNOSIS_MODEL_PATH", "").split(os.pathsep) if p]
    return dirs + [user_dir(), BUNDLED_DIR]


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ModelPackage:
    path: Path
    card: dict

    @property
    def name(self) -> str:
        return self.card["name"]

    @property
    def version(self) -> str:
        return str(self.card["version"])

    @property
    def class_names(self) -> list[str]:
        return list(self.card["class_names"])

    @property
    def weights_path(self) -> Path:
        return self.path / self.card["weights"]["file"]

    @property
    def bundled(self) -> bool:
        return BUNDLED_DIR in self.path.resolve().parents

    def class_index(self, name: str) -> int:
        for i, c in enumerate(self.class_names):
            if c.lower() == str(name).lower():
                return i
        raise ModelError(f"unknown class {name!r}; this model knows {', '.join(self.class_names)}", self.name)

    def summary(self) -> str:
        grid = self.card["input_grid"]
        return (f"{self.name} {self.version}: classes {'/'.join(self.class_names)}, grid "
                f"{'x'.join(str(s) for s in grid['shape'])}, preprocessing {self.card['preprocessing']['kind']}")

    def load_state_dict(self) -> dict:
        path = self.weights_path
        if not path.is_file():
            raise ModelError("weights file is missing", path)
        want = str(self.card["weights"].get("sha256", "")).lower()
        have = sha256_file(path)
        if want != have:
            raise ModelError(f"SHA-256 mismatch (card {want[:12]}..., file {have[:12]}...): refusing to load",
                             path)
        return safe_load_state_dict(path)

    def load_model(self, device: str | torch.device = "cpu") -> ClassificationModel3D:
        state = self.load_state_dict()
        shape = self.card["input_grid"]["shape"]
        model = ClassificationModel3D(shape, n_classes=len(self.class_names))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "mismatch"
            raise ModelError(f"weights do not fit the card's architecture ({first})", self.weights_path) from None
        return model.eval().to(device)


def safe_load_state_dict(path: str | os.PathLike) -> dict:
    """Load a plain state_dict (tensors only); anything that needs code to unpickle is refused."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the user gets one line
            warnings.simplefilter("ignore")
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError("is not a plain state_dict (it needs code to unpickle; refused)", path) from None
    except Exception as exc:
        raise ModelError(f"cannot read weights ({' '.join(str(exc).split())[:120]})", path) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelError("is not a plain state_dict of tensors", path)
    return state


def read_card(folder: Path) -> dict:
    try:
        card = json.loads((folder / CARD).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"unreadable model card ({exc})", folder / CARD) from None
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise ModelError(f"model card lacks {', '.join(missing)}", folder / CARD)
    return card


def list_packages() -> list[ModelPackage]:
    seen, out = set(), []
    for root in search_dirs():
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if (p / CARD).is_file()):
            try:
                card = read_card(folder)
            except ModelError:
                continue
            if card["name"] in seen:
                continue
            seen.add(card["name"])
            out.append(ModelPackage(folder, card))
    return out


def default_package() -> ModelPackage:
    packages = list_packages()
    bundled = [p for p in packages if p.bundled]
    for p in bundled:
        if p.card.get("default"):
            return p
    if bundled:
        return bundled[0]
    if packages:
        return packages[0]
    raise ModelError("no model package installed (import one with 'addiagnosis import-checkpoint' "
                     "or train one with 'addiagnosis train')")


def find_package(name: str | None = None) -> ModelPackage:
    """A package by name, by folder path, or the default (bundled) one."""
    if not name:
        return default_package()
    as_path = Path(name)
    if (as_path / CARD).is_file():
        return ModelPackage(as_path, read_card(as_path))
    for p in list_packages():
        if p.name == name:
            return p
    known = ", ".join(p.name for p in list_packages()) or "none installed"
    raise ModelError(f"unknown model {name!r} (installed: {known})")


def write_package(folder: str | os.PathLike, state_dict: dict, card: dict, overwrite: bool = False) -> ModelPackage:
    """Write weights + card atomically (temporary folder, then rename)."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise ModelError("a model package already exists here (use another name)", folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        weights = tmp / "weights.pt"
        torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, weights)
        card = dict(card)
        card.setdefault("format", FORMAT)
        card["weights"] = {"file": weights.name, "sha256": sha256_file(weights), "format": "torch-state-dict"}
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")
        read_card(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ModelPackage(folder, card)


def seed_card(name: str, source: Path, state: dict, input_shape) -> dict:
    return {
        "format": FORMAT,
        "name": name,
        "version": "seed-import-1",
        "architecture": "seed-cnn3d",
        "class_names": list(SEED_CLASSES),
        "input_grid": {"shape": list(input_shape), "spacing": None, "orientation": "native (no reorientation)"},
        "preprocessing": {"kind": "seed-raw"},
        "intended_use": ("Compatibility with the original Image_Recognition_WebGUI checkpoints. Research use "
                         "only, not a medical device: the original model was trained on about 253 raw ADNI "
                         "scans without normalisation and with no published validation accuracy."),
        "training_data": "About 253 ADNI MPRAGE scans (original project); raw voxels, no preprocessing.",
        "source": {"file": source.name, "sha256": sha256_file(source), "preset": "seed"},
        "license": "MIT (Image_Recognition_WebGUI, copyright 2023 bytesc)",
    }


def import_checkpoint(file: str | os.PathLike, name: str, preset: str = "seed",
                      dest_root: str | os.PathLike | None = None, overwrite: bool = False) -> ModelPackage:
    """Turn a seed state_dict into a package in the user folder (refuses anything but a plain state_dict)."""
    source = Path(file)
    if not source.is_file():
        raise ModelError("no such checkpoint file", source)
    if preset != "seed":
        raise ModelError(f"unknown preset {preset!r} (known: seed)")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ModelError(f"invalid package name {name!r}")
    state = safe_load_state_dict(source)
    try:
        shape = input_shape_from_state_dict(state, [(160, 256, 256), (166, 256, 256)])
    except (KeyError, ValueError) as exc:
        raise ModelError(f"not a seed-architecture state_dict ({exc})", source) from None
    model = ClassificationModel3D(shape, n_classes=int(state["dense_2.weight"].shape[0]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"does not fit the seed architecture ({str(exc).splitlines()[0]})", source) from None
    if model.dense_2.out_features != len(SEED_CLASSES):
        raise ModelError(f"seed preset needs 5 outputs, checkpoint has {model.dense_2.out_features}", source)
    dest = Path(dest_root) if dest_root else user_dir()
    return write_package(dest / name, model.state_dict(), seed_card(name, source, state, shape), overwrite)
