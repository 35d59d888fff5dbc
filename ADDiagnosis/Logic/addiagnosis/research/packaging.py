"""Tools that rewrite a finished model package in place (``addiagnosis package ...``).

- :func:`record_evaluations`: the card keeps :func:`addiagnosis.research.evaluate.summary` of each test cohort
  (``evaluation.by_cohort``); :func:`record_summary` merges one summary into ``evaluation``.
- :func:`write_calibrated`: folds a temperature into the weights and records the ``calibration`` and
  ``conformal`` blocks (issue 19; ``scripts/experiments/calibrate_bundled.py``).
- :func:`add_template`: writes the registration template into a template-preprocessed package and lists it,
  with its SHA-256, in the card (so the package runs without nilearn).

Every rewrite goes through :func:`rewrite_card`: the package must be intact before (weights match the card),
the new card must validate, new files and the card are written atomically, and all checksums are verified
again after the rewrite. A failure is one line and leaves the package as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from addiagnosis.errors import AddiagnosisError, ModelError
from addiagnosis.files import sha256_file, write_text_atomic
from addiagnosis.models.card import CARD, ModelCard, read_card
from addiagnosis.prep.template import ASSETS_KEY


def verify_checksums(folder: str | os.PathLike, card: ModelCard | None = None, template: bool = True) -> None:
    """The package's weights (and, with ``template``, its template and OOD files) match their SHA-256 in the card."""
    folder = Path(folder)
    card = card or read_card(folder)
    files = [(folder / card.weights.file, card.weights.sha256, "weights file")]
    entry = (card.raw.get("preprocessing") or {}).get(ASSETS_KEY)
    if template and isinstance(entry, dict):
        files.append((folder / str(entry.get("file", "")), str(entry.get("sha256", "")), "template file"))
    ood = card.raw.get("ood")  # the OOD fit (issue 18), when the package has one
    if template and isinstance(ood, dict):
        files.append((folder / str(ood.get("file", "")), str(ood.get("sha256", "")), "OOD file"))
    for path, want, what in files:
        if not path.is_file():
            raise ModelError(f"the model package's {what} is missing", path)
        if sha256_file(path) != want.lower():
            raise ModelError(f"the model package's {what} does not match its SHA-256 in the card", path)


def rewrite_card(folder: str | os.PathLike, change: Callable[[dict, Path], None]) -> ModelCard:
    """Apply ``change(card_dict, staging_folder)`` to a package's card; files it writes into the staging folder
    are moved into the package just before the new card is written. Returns the new, re-read card."""
    folder = Path(folder)
    card = read_card(folder)
    verify_checksums(folder, card, template=False)  # never re-sign a package whose weights were changed
    data = card.to_dict()
    with tempfile.TemporaryDirectory(prefix=".rewrite-", dir=folder) as staging:
        change(data, Path(staging))
        ModelCard.from_dict(data, folder)  # the new card must be valid before anything is replaced
        for staged in sorted(Path(staging).iterdir()):
            os.replace(staged, folder / staged.name)
        write_text_atomic(folder / CARD, json.dumps(data, indent=2) + "\n")
    new = read_card(folder)
    verify_checksums(folder, new)
    return new


def _summary_of(path: str | os.PathLike) -> dict:
    from addiagnosis.research.evaluate import summary

    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
        s = summary(result)
    except OSError as exc:
        raise AddiagnosisError(f"cannot read ({exc.strerror or type(exc).__name__})", path) from None
    except (ValueError, UnicodeDecodeError):
        raise AddiagnosisError("not a JSON file", path) from None
    except (KeyError, TypeError, AttributeError, IndexError):
        raise AddiagnosisError("not the metrics.json of `addiagnosis evaluate`", path) from None
    s["data"] = Path(str(s["data"])).name  # the cohort folder, not this machine's path
    return s


def record_evaluations(folder: str | os.PathLike, metrics: dict[str, str | os.PathLike],
                       command: str = "addiagnosis package record-evaluation") -> list[str]:
    """Replace the card's ``evaluation`` with ``{"by_cohort": {NAME: summary}, "command": command}``."""
    by_cohort = {name: _summary_of(path) for name, path in metrics.items()}

    def change(card: dict, staging: Path) -> None:
        card["evaluation"] = {"by_cohort": by_cohort, "command": command}

    rewrite_card(folder, change)
    return list(by_cohort)


def record_summary(folder: str | os.PathLike, summary: dict) -> None:
    """Merge one evaluation summary into the card's ``evaluation`` (notes recorded by hand stay)."""

    def change(card: dict, staging: Path) -> None:
        card["evaluation"] = {**(card.get("evaluation") or {}), **summary}

    rewrite_card(folder, change)


def add_template(folder: str | os.PathLike) -> dict:
    """Write the registration template into a template-preprocessed package; returns its card entry."""
    from addiagnosis.prep.template import write_assets

    entry = {}

    def change(card: dict, staging: Path) -> None:
        pre = card.get("preprocessing")
        if not isinstance(pre, dict) or pre.get("kind") != "template":
            raise ModelError("not a template-preprocessed model package", folder)
        entry.update(write_assets(staging))
        pre[ASSETS_KEY] = dict(entry)

    rewrite_card(folder, change)
    return entry


def write_calibrated(folder, temperature: float, calibration: dict, conformal: dict) -> None:
    """Fold ``temperature`` into an existing package's weights and record both blocks, in one checked
    rewrite (:func:`rewrite_card`: the weights must match the card before,
    the new weights' SHA-256 goes into the card, every checksum is verified after)."""
    import torch

    from addiagnosis.models.package import find_package
    from addiagnosis.research.calibration import fold_temperature

    pkg = find_package(str(folder))
    if pkg.card.calibration is not None:
        raise AddiagnosisError(f"the package is calibrated already (temperature {pkg.card.calibration['temperature']})",
                               pkg.path)
    state = fold_temperature(pkg.load_state_dict(), temperature)

    def change(card: dict, staging) -> None:
        staged = staging / pkg.card.weights.file
        torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(staged))
        card["weights"]["sha256"] = sha256_file(staged)
        card["calibration"], card["conformal"] = calibration, conformal

    rewrite_card(pkg.path, change)
