"""The preprocessing kinds a model card may name, and the one entry to them (:func:`prepare`).

A kind is a function ``(volume, spec, grid) -> Prepared`` registered with :func:`register`; it may also
define a reference input (:func:`register_reference`): what a healthy scan looks like after that
preprocessing, the root point of the ``lrp-reference`` explanation method. The built-in kinds
(``seed-raw``, ``physical``: :mod:`.preprocess`; ``template``: :mod:`.align`) register themselves when
their module is imported; :func:`prepare` imports them the first time a card names a kind not yet known.
Imports point one way: the kinds import this module, this module imports them only lazily.

Torch-free: a kind's tensor is whatever the kind makes (a torch tensor for every kind here).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from addiagnosis.errors import InputError
from addiagnosis.io.volume import Volume

KIND_MODULES = ("physical", "align")  # where the built-in kinds live


@dataclass
class Prepared:
    """The network input plus the way back onto the input grid."""

    tensor: Any  # torch.Tensor (1,1,D,H,W) float32
    to_input: Callable[[np.ndarray], np.ndarray]  # relevance on model grid -> array on input grid
    info: dict = field(default_factory=dict)  # every transform, as plain data (goes into report.json)
    grid_affine: np.ndarray | None = None  # model grid IJK->RAS (None for seed-raw)
    input_mask: np.ndarray | None = None  # head/brain mask on the input grid, when known
    mask_name: str = "head"  # what input_mask outlines ("head" or "brain"), for the relevance summary


Preprocessor = Callable[[Volume, dict, dict], Prepared]
Reference = Callable[[dict, dict], Any]  # (spec, grid) -> torch.Tensor (1,1,D,H,W)
_REGISTRY: dict[str, Preprocessor] = {}
_REFERENCES: dict[str, Reference] = {}


def register(kind: str):
    def deco(fn: Preprocessor) -> Preprocessor:
        _REGISTRY[kind] = fn
        return fn

    return deco


def register_reference(kind: str):
    def deco(fn: Reference) -> Reference:
        _REFERENCES[kind] = fn
        return fn

    return deco


def kinds() -> list[str]:
    return sorted(_REGISTRY)


def load_kinds() -> None:
    """Import the modules of the built-in kinds (each registers its kinds on import)."""
    importlib.import_module(f"{__package__}.{KIND_MODULES[0]}")
    for name in KIND_MODULES[1:]:
        try:  # template alignment may not load where an optional dependency is missing
            importlib.import_module(f"{__package__}.{name}")
        except ImportError:
            pass


def _kind(card: dict) -> tuple[str | None, dict]:
    spec = dict(card.get("preprocessing") or {})
    kind = spec.get("kind")
    if kind not in _REGISTRY:
        load_kinds()
    return kind, spec


def prepare(volume: Volume, card: dict) -> Prepared:
    """The network input for ``volume`` as the model card's preprocessing says, and the way back."""
    kind, spec = _kind(card)
    if kind not in _REGISTRY:
        raise InputError(f"model card asks for unknown preprocessing {kind!r}; known: {', '.join(kinds())}")
    return _REGISTRY[kind](volume, spec, dict(card["input_grid"]))


def reference_input(card: dict):
    """The reference network input of the card's preprocessing (1,1,D,H,W), or None if it defines none."""
    kind, spec = _kind(card)
    fn = _REFERENCES.get(kind)
    return None if fn is None else fn(spec, dict(card["input_grid"]))
