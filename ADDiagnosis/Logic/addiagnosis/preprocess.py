"""Preprocessing chosen by the model card, with the transform recorded so relevance can go back.

Kinds (``card["preprocessing"]["kind"]``):
- ``seed-raw``: bit-faithful to the original web app: raw voxels as nibabel returns them, reshaped
  (C order) to (-1, 256, 256), first ``input_grid.shape[0]`` slices, float32. No reorientation.
- ``physical``: resample (trilinear) onto the model grid, an RAS-aligned grid of the card's shape and
  spacing whose centre sits on the centre of the head (or of the field of view), then normalise
  intensities with percentiles inside the head.
More kinds (template alignment) register themselves with :func:`register`. A kind may also define a
reference input (:func:`register_reference`): what a healthy scan looks like after that preprocessing,
the root point of the ``lrp-reference`` explanation method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .volume import Volume


@dataclass
class Prepared:
    """The network input plus the way back onto the input grid."""

    tensor: torch.Tensor  # (1,1,D,H,W) float32
    to_input: Callable[[np.ndarray], np.ndarray]  # relevance on model grid -> array on input grid
    info: dict = field(default_factory=dict)  # every transform, as plain data (goes into report.json)
    grid_affine: np.ndarray | None = None  # model grid IJK->RAS (None for seed-raw)
    input_mask: np.ndarray | None = None  # head/brain mask on the input grid, when known
    mask_name: str = "head"  # what input_mask outlines ("head" or "brain"), for the relevance summary


Preprocessor = Callable[[Volume, dict, dict], Prepared]
Reference = Callable[[dict, dict], torch.Tensor]
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


def prepare(volume: Volume, card: dict) -> Prepared:
    spec = dict(card.get("preprocessing") or {})
    kind = spec.get("kind")
    if kind not in _REGISTRY:
        _load_optional_kinds()
    if kind not in _REGISTRY:
        raise InputError(f"model card asks for unknown preprocessing {kind!r}; known: {', '.join(kinds())}")
    return _REGISTRY[kind](volume, spec, dict(card["input_grid"]))


def reference_input(card: dict) -> torch.Tensor | None:
    """The reference network input of the card's preprocessing (1,1,D,H,W), or None if it defines none."""
    spec = dict(card.get("preprocessing") or {})
    kind = spec.get("kind")
    if kind not in _REGISTRY:
        _load_optional_kinds()
    fn = _REFERENCES.get(kind)
    return None if fn is None else fn(spec, dict(card["input_grid"]))


def _load_optional_kinds() -> None:
    try:  # template alignment lives in its own module (needs SimpleITK)
        from . import align  # noqa: F401
    except ImportError:
        pass


# ---------------------------------------------------------------------------------------- seed-raw
@register("seed-raw")
def seed_raw(volume: Volume, spec: dict, grid: dict) -> Prepared:
    depth, rows, cols = (int(s) for s in grid["shape"])
    data = volume.array
    plane = rows * cols
    if data.size % plane or data.size // plane < depth:
        raise InputError(
            f"this model ({spec.get('kind')}) needs a scan of at least {depth} slices of {rows}x{cols} "
            f"voxels; got shape {volume.shape}",
            volume.meta.get("source", volume.name),
        )
    stack = np.ascontiguousarray(data.reshape(-1, rows, cols)[:depth], dtype=np.float32)
    tensor = torch.from_numpy(stack).reshape(1, 1, depth, rows, cols)
    n_slices = data.size // plane
    shape = volume.shape

    def to_input(rel: np.ndarray) -> np.ndarray:
        full = np.zeros((n_slices, rows, cols), dtype=np.float32)
        full[:depth] = rel
        return full.reshape(shape)

    info = {"kind": "seed-raw", "reshape": [-1, rows, cols], "slices_used": [0, depth],
            "slices_in_scan": n_slices, "normalisation": None, "reorientation": None}
    return Prepared(tensor, to_input, info)


# ---------------------------------------------------------------------------------------- physical
def grid_affine(shape, spacing, centre_ras) -> np.ndarray:
    """IJK->RAS of an RAS-aligned grid whose centre is at ``centre_ras``."""
    shape = np.asarray(shape, dtype=np.float64)
    spacing = np.asarray(spacing, dtype=np.float64)
    aff = np.eye(4)
    aff[:3, :3] = np.diag(spacing)
    aff[:3, 3] = np.asarray(centre_ras, dtype=np.float64) - spacing * (shape - 1) / 2.0
    return aff


def robust_range(data: np.ndarray) -> tuple[float, float]:
    """(1st, 99.5th) intensity percentiles from a strided sample: display window and head threshold."""
    sample = np.asarray(data).ravel()[:: max(1, data.size // 500_000)]
    lo, hi = (float(v) for v in np.percentile(sample, [1.0, 99.5]))
    return lo, hi


def head_mask(data: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Voxels brighter than a small fraction of the robust maximum (the head, not the background)."""
    lo, hi = robust_range(data) if value_range is None else value_range
    return data > lo + 0.1 * (hi - lo)


def head_centre_ras(volume: Volume, mask: np.ndarray | None = None) -> np.ndarray:
    mask = head_mask(volume.array) if mask is None else mask
    idx = np.argwhere(mask[::2, ::2, ::2]) * 2.0
    centre_ijk = idx.mean(axis=0) if len(idx) else (np.asarray(volume.shape) - 1) / 2.0
    return (volume.ijk_to_ras @ np.append(centre_ijk, 1.0))[:3]


def resample(data: np.ndarray, out_to_in: np.ndarray, out_shape, order: str = "trilinear") -> np.ndarray:
    """Sample ``data`` at ``out_to_in @ ijk`` for every voxel of a grid of ``out_shape`` (zeros outside).

    ``out_to_in`` maps output voxel indices to input voxel indices (4x4). Runs on torch (threads).
    """
    in_shape = np.asarray(data.shape, dtype=np.float64)
    out_shape_a = np.asarray(out_shape, dtype=np.float64)

    def norm(shape):  # voxel index (i,j,k) -> align_corners normalised (x=k, y=j, z=i)
        m = np.zeros((4, 4))
        for axis, col in zip((2, 1, 0), (0, 1, 2)):
            size = shape[axis]
            m[col, axis] = 2.0 / max(size - 1, 1)
            m[col, 3] = -1.0
        m[3, 3] = 1.0
        return m

    theta = norm(in_shape) @ out_to_in @ np.linalg.inv(norm(out_shape_a))
    theta_t = torch.from_numpy(theta[:3]).to(torch.float32)[None]
    size = [1, 1, *(int(s) for s in out_shape)]
    grid = F.affine_grid(theta_t, size, align_corners=True)
    src = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None, None]
    mode = "bilinear" if order == "trilinear" else "nearest"
    out = F.grid_sample(src, grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out[0, 0].numpy()


def normalise_percentiles(data: np.ndarray, mask: np.ndarray, low: float, high: float,
                          clip: tuple[float, float] | None = (0.0, 1.5)) -> tuple[np.ndarray, dict]:
    vals = data[mask] if mask.any() else data.ravel()
    lo, hi = (float(v) for v in np.percentile(vals, [low, high]))
    if hi <= lo:
        hi = lo + 1.0
    out = (data - lo) / (hi - lo)
    if clip is not None:
        np.clip(out, clip[0], clip[1], out=out)
    return out.astype(np.float32, copy=False), {"method": "percentile", "low": low, "high": high,
                                                "low_value": lo, "high_value": hi,
                                                "clip": None if clip is None else list(clip)}


@register("physical")
def physical(volume: Volume, spec: dict, grid: dict) -> Prepared:
    shape = [int(s) for s in grid["shape"]]
    spacing = [float(s) for s in grid.get("spacing", [1.0, 1.0, 1.0])]
    mask_in = head_mask(volume.array)
    if spec.get("centre", "head") == "head":
        centre = head_centre_ras(volume, mask_in)
    else:
        centre = (volume.ijk_to_ras @ np.append((np.asarray(volume.shape) - 1) / 2.0, 1.0))[:3]
    g_aff = grid_affine(shape, spacing, centre)
    grid_to_input = np.linalg.inv(volume.ijk_to_ras) @ g_aff
    resampled = resample(volume.array, grid_to_input, shape)
    grid_mask = resample(mask_in.astype(np.float32), grid_to_input, shape) > 0.5
    norm_spec = spec.get("normalise", {"low": 0.5, "high": 99.5})
    clip = norm_spec.get("clip", [0.0, 1.5])
    data, norm_info = normalise_percentiles(resampled, grid_mask, float(norm_spec.get("low", 0.5)),
                                            float(norm_spec.get("high", 99.5)),
                                            None if clip is None else tuple(clip))
    tensor = torch.from_numpy(data).reshape(1, 1, *shape)
    in_shape = volume.shape
    volume_ratio = abs(np.linalg.det(volume.ijk_to_ras[:3, :3])) / abs(np.linalg.det(g_aff[:3, :3]))
    input_to_grid = np.linalg.inv(grid_to_input)

    def to_input(rel: np.ndarray) -> np.ndarray:
        # relevance is a per-voxel quantity: interpolate its density, then scale by the voxel volume ratio
        return resample(rel, input_to_grid, in_shape) * np.float32(volume_ratio)

    info = {"kind": "physical", "grid_affine": g_aff.tolist(), "grid_to_input_ijk": grid_to_input.tolist(),
            "centre_ras": [float(c) for c in centre], "interpolation": "trilinear",
            "normalisation": norm_info}
    return Prepared(tensor, to_input, info, grid_affine=g_aff, input_mask=mask_in)
