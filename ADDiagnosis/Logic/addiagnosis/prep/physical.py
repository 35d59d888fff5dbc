"""The built-in preprocessing kinds, with the transform recorded so relevance can go back.

Kinds (``card["preprocessing"]["kind"]``; the registry and :func:`prepare` live in :mod:`.registry`):
- ``seed-raw``: bit-faithful to the original web app: raw voxels as nibabel returns them, reshaped
  (C order) to (-1, 256, 256), first ``input_grid.shape[0]`` slices, float32. No reorientation.
- ``physical``: resample (trilinear) onto the model grid, an RAS-aligned grid of the card's shape and
  spacing whose centre sits on the centre of the head (or of the field of view), then normalise
  intensities with percentiles inside the head.
Template alignment (``template``) lives in :mod:`.align`. Every resampling kind maps relevance back with
:func:`resample_back`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from addiagnosis.errors import InputError
from addiagnosis.io.intensity import head_mask
from addiagnosis.io.volume import Volume

# the registry's names stay importable from here (callers and tests use addiagnosis.prep.physical.prepare)
from addiagnosis.prep.registry import (  # noqa: F401
    Prepared,
    Preprocessor,
    Reference,
    kinds,
    prepare,
    reference_input,
    register,
    register_reference,
)


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
    to_input = seed_raw_back(n_slices, (rows, cols), volume.shape)
    info = {"kind": "seed-raw", "reshape": [-1, rows, cols], "slices_used": [0, depth],
            "slices_in_scan": n_slices, "normalisation": None, "reorientation": None}
    return Prepared(tensor, to_input, info)


def seed_raw_back(n_slices: int, plane, shape) -> Callable[[np.ndarray], np.ndarray]:
    """The inverse reshape of seed-raw: relevance of the first slices back onto the scan; unseen slices get 0."""
    rows, cols = (int(s) for s in plane)

    def to_input(rel: np.ndarray) -> np.ndarray:
        full = np.zeros((int(n_slices), rows, cols), dtype=np.float32)
        full[: rel.shape[0]] = rel
        return full.reshape(tuple(shape))

    return to_input


# ---------------------------------------------------------------------------------------- physical
def grid_affine(shape, spacing, centre_ras) -> np.ndarray:
    """IJK->RAS of an RAS-aligned grid whose centre is at ``centre_ras``."""
    shape = np.asarray(shape, dtype=np.float64)
    spacing = np.asarray(spacing, dtype=np.float64)
    aff = np.eye(4)
    aff[:3, :3] = np.diag(spacing)
    aff[:3, 3] = np.asarray(centre_ras, dtype=np.float64) - spacing * (shape - 1) / 2.0
    return aff


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


def resample_back(grid_to_input: np.ndarray, in_shape) -> Callable[[np.ndarray], np.ndarray]:
    """The way back for a kind that resampled with ``grid_to_input`` (model grid IJK -> input IJK, 4x4).

    Relevance is a per-voxel quantity: its density is interpolated onto the input grid, then scaled by the
    ratio of voxel volumes in the scan's space, 1 / |det(grid_to_input)| (an input voxel over a model-grid
    voxel mapped into the scan), so that an up- or down-sampling keeps the sum. For ``physical`` that is
    det(input IJK->RAS) / det(grid IJK->RAS); for ``template`` it also holds the registration's scaling.
    """
    input_to_grid = np.linalg.inv(grid_to_input)
    in_shape = tuple(in_shape)
    ratio = np.float32(1.0 / abs(float(np.linalg.det(np.asarray(grid_to_input)[:3, :3]))))

    def to_input(rel: np.ndarray) -> np.ndarray:
        return resample(np.asarray(rel, dtype=np.float32), input_to_grid, in_shape) * ratio

    return to_input


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
    to_input = resample_back(grid_to_input, volume.shape)
    info = {"kind": "physical", "grid_affine": g_aff.tolist(), "grid_to_input_ijk": grid_to_input.tolist(),
            "centre_ras": [float(c) for c in centre], "interpolation": "trilinear",
            "normalisation": norm_info}
    return Prepared(tensor, to_input, info, grid_affine=g_aff, input_mask=mask_in)
