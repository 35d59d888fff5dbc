"""Model packages (contract): a folder with ``card.json`` and the weights it names, checked by SHA-256.

The card, its validation and where packages are found (and which wins when names collide) live in
:mod:`addiagnosis.models.card`, torch-free; this file adds what needs torch: reading and writing the weights.
Weights are a plain ``state_dict`` read with ``torch.load(..., weights_only=True)`` only, after the
SHA-256 check: a file that needs to unpickle code is refused.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from addiagnosis.errors import ModelError
from addiagnosis.files import sha256_file
from addiagnosis.models import card as cards
from addiagnosis.models import discovery
from addiagnosis.models.card import CARD, FORMAT, ModelCard, read_card
from addiagnosis.models.discovery import PackageInfo, user_dir
from addiagnosis.models.network import ClassificationModel3D, input_shape_from_state_dict

SEED_CLASSES = ["AD", "CN", "MCI", "EMCI", "LMCI"]  # output order of the original checkpoints


class ModelPackage(PackageInfo):
    """A package whose weights can be loaded (SHA-256 checked, ``weights_only``, strict state_dict)."""

    @classmethod
    def of(cls, info: PackageInfo) -> ModelPackage:
        return info if isinstance(info, cls) else cls(info.path, info.card, info.origin, info.shadows,
                                                      info.shadowed_by)

    @property
    def weights_sha256(self) -> str:
        return self.card.weights.sha256

    def load_state_dict(self) -> dict:
        path = self.weights_path
        if not path.is_file():
            raise ModelError("weights file is missing", path)
        want = self.card.weights.sha256
        have = sha256_file(path)
        if want != have:
            raise ModelError(f"SHA-256 mismatch (card {want[:12]}..., file {have[:12]}...): refusing to load",
                             path)
        return safe_load_state_dict(path)

    def load_model(self, device: str | torch.device = "cpu") -> ClassificationModel3D:
        state = self.load_state_dict()
        check_outputs(state, self.class_names, self.weights_path)
        model = ClassificationModel3D(self.card.input_grid.shape, n_classes=len(self.class_names))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "mismatch"
            raise ModelError(f"weights do not fit the card's architecture ({first})", self.weights_path) from None
        return model.eval().to(device)


def check_outputs(state: dict, class_names, where=None) -> None:
    """The network's output count must equal the number of class names on the card."""
    out = state.get("dense_2.weight")
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] != len(class_names):
        raise ModelError(f"the card names {len(class_names)} classes but the weights output {out.shape[0]}", where)


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


def list_packages() -> list[ModelPackage]:
    """Packages ``--model NAME`` can reach, each name once, in precedence order (see :mod:`addiagnosis.models.card`)."""
    return [ModelPackage.of(p) for p in discovery.list_packages()]


def default_package() -> ModelPackage:
    """What a plain ``diagnose`` runs: the bundled default package."""
    return ModelPackage.of(discovery.default_package())


def find_package(name: str | None = None) -> ModelPackage:
    """A package by name, by folder path, or the default (bundled) one."""
    return ModelPackage.of(discovery.find_package(name))


def _umask() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it the old way (set and restore)
    os.umask(mask)
    return mask


def _replaceable(folder: Path) -> bool:
    """May ``--force`` replace this path? Only an empty folder or a model package (a valid card.json)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    if not any(folder.iterdir()):
        return True
    try:
        read_card(folder)
    except ModelError:
        return False
    return True


def check_destination(folder: str | os.PathLike, overwrite: bool = False) -> bool:
    """Refuse, in one line, a destination :func:`write_package` would refuse (call it before long work);
    returns whether something is there to replace."""
    folder = Path(folder)
    try:
        exists = os.path.lexists(folder)
        if exists and not overwrite:
            raise ModelError("already exists (choose another name, or --force to replace a model package)", folder)
        if exists and not _replaceable(folder):
            raise ModelError("exists and is not a model package (no valid card.json): refusing to replace it",
                             folder)
    except OSError as exc:
        raise ModelError(f"cannot use this destination ({exc.strerror or type(exc).__name__})", folder) from None
    return exists


def write_package(folder: str | os.PathLike, state_dict: dict, card: dict, overwrite: bool = False) -> ModelPackage:
    """Write weights + card into a new folder, atomically (temporary sibling, then rename).

    ``overwrite`` replaces only an existing model package (or an empty folder); the new folder and files get
    the user's usual permissions (umask), as any other file they create."""
    folder = Path(folder)
    card = dict(card)
    card.setdefault("format", FORMAT)
    ModelCard.from_dict(card, require_weights=False)  # refuse a bad card before anything is written
    check_outputs(state_dict, card["class_names"])
    exists = check_destination(folder, overwrite)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    except OSError as exc:
        raise ModelError(f"cannot create the package here ({exc.strerror or type(exc).__name__})", folder) from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700: other users could not read the package
        weights = tmp / "weights.pt"
        torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, weights)
        card["weights"] = {"file": weights.name, "sha256": sha256_file(weights), "format": "torch-state-dict"}
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        written = read_card(tmp)
        if exists:  # two renames: the old package is set aside and removed only once the new one is in place
            old = folder.parent / f".{folder.name}.old-{secrets.token_hex(4)}"
            os.rename(folder, old)
            try:
                os.rename(tmp, folder)
            except BaseException:
                os.rename(old, folder)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"cannot write the package ({exc.strerror or type(exc).__name__})", folder) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ModelPackage(folder, written, "path")


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
    cards.check_name(name, "package name")
    dest = Path(dest_root) if dest_root else user_dir()
    check_destination(dest / name, overwrite)  # before reading a large checkpoint
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
    return write_package(dest / name, model.state_dict(), seed_card(name, source, state, shape), overwrite)
