"""Stability of relevance maps: the same scan stored differently, or with a little noise, must give the same map.

For one subject and any number of methods (``stability.subject_stability``), Pearson correlation between the
subject's map and the map of
- ``flip``: the same voxels stored with the first axis reversed (an identical physical image);
- ``pad``: the scan with 20 voxels of empty background on every side;
- ``resample``: the scan resampled (trilinear) onto an oblique grid (rotated 4/-6/10 degrees) of other voxels;
- ``noise_1pct``, ``noise_2pct``: Gaussian noise of 1 % and 2 % of the input's 99th percentile added to the
  network input (inside the non-zero input, the brain of a skull-stripped model; seeded);
each map taken back onto its own input grid by the preprocessing, then resampled onto the subject's input grid:
the correlation is in physical space, inside the brain (or head) mask the preprocessing gives for the input.
All maps explain the same class (the subject's true class, or the prediction for the unchanged scan).

Also ``input_randomisation``: correlation (on the model grid, inside the non-zero input) between the map of the
real input and the map of the same input with its non-zero voxels randomly permuted (same intensities, no
anatomy). A map that still looks like the real one reflects the network's architecture, not the evidence
(the input-side counterpart of the model-parameter randomisation check of Adebayo et al. 2018); |r| should be small.

:func:`summarise` reduces many subjects to the median and 5th percentile per method and twin.
``addiagnosis evaluate ... --stability N`` runs this on the first N scans (:func:`evaluate_stability`).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from addiagnosis.io.volume import Volume
from addiagnosis.metrics import pearson
from addiagnosis.prep.physical import resample

TWINS = ("flip", "pad", "resample")
NOISE = (0.01, 0.02)
KINDS = (*TWINS, *(f"noise_{round(f * 100)}pct" for f in NOISE), "input_randomisation")


# ------------------------------------------------------------------------------------------ twins
def flip_axis(vol: Volume, axis: int = 0) -> Volume:
    """The same voxels stored with one axis reversed (exactly the same physical image)."""
    m = np.eye(4)
    m[axis, axis] = -1.0
    m[axis, 3] = vol.shape[axis] - 1
    return Volume(np.ascontiguousarray(np.flip(vol.array, axis)), vol.ijk_to_ras @ m, vol.name + "-flip")


def pad(vol: Volume, n: int = 20) -> Volume:
    """The scan with ``n`` voxels of empty (zero) background on every side."""
    shift = np.eye(4)
    shift[:3, 3] = -n
    return Volume(np.pad(vol.array, n), vol.ijk_to_ras @ shift, vol.name + f"-pad{n}")


def regrid(vol: Volume, rotation_deg=(4.0, -6.0, 10.0), spacing=None) -> Volume:
    """The scan resampled (trilinear) onto an oblique grid covering the same field of view."""
    from addiagnosis.research.synth import rotation

    spacing = np.asarray(spacing if spacing is not None else [min(vol.spacing) * 1.1] * 3, dtype=np.float64)
    R = rotation(rotation_deg)
    centre = vol.ijk_to_ras @ np.append((np.asarray(vol.shape) - 1) / 2.0, 1.0)
    extent = np.asarray(vol.shape) * np.asarray(vol.spacing)
    shape = np.ceil(extent / spacing).astype(int)
    aff = np.eye(4)
    aff[:3, :3] = R @ np.diag(spacing)
    aff[:3, 3] = centre[:3] - aff[:3, :3] @ ((shape - 1) / 2.0)
    data = resample(np.asarray(vol.array, dtype=np.float32), np.linalg.inv(vol.ijk_to_ras) @ aff, shape)
    return Volume(data, aff, vol.name + "-resampled")


def twins(vol: Volume) -> dict[str, Volume]:
    return {"flip": flip_axis(vol, 0), "pad": pad(vol, 20), "resample": regrid(vol)}


def onto(rel: np.ndarray, src: Volume, dst: Volume) -> np.ndarray:
    """A map on ``src``'s grid resampled onto ``dst``'s grid (same physical space)."""
    return resample(np.asarray(rel, dtype=np.float32), np.linalg.inv(src.ijk_to_ras) @ dst.ijk_to_ras, dst.shape)


def noisy(x: torch.Tensor, fraction: float, rng: np.random.Generator) -> torch.Tensor:
    """Gaussian noise of ``fraction`` of the input's 99th percentile, inside the non-zero input when the input
    is mostly zero outside (skull-stripped), else everywhere."""
    a = x[0, 0].numpy()
    nz = a != 0
    region = nz if nz.mean() < 0.8 else np.ones_like(nz)
    level = float(np.percentile(np.abs(a[nz]), 99)) if nz.any() else 1.0
    noise = rng.normal(0.0, fraction * level, a.shape).astype(np.float32) * region
    return torch.from_numpy(a + noise).reshape(x.shape)


def permuted(x: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """The input with its non-zero voxels randomly permuted (same histogram, no anatomy); and that region."""
    a = x[0, 0].numpy().copy()
    nz = a != 0
    region = nz if 0.05 < nz.mean() < 0.8 else np.ones_like(nz)
    a[region] = rng.permutation(a[region])
    return torch.from_numpy(a).reshape(x.shape), region


# ------------------------------------------------------------------------------------------ one subject
def subject_stability(diagnoser, volume: Volume, methods, target: int | str | None = None, seed: int = 0,
                      timings: dict | None = None, keep: dict | None = None) -> dict:
    """{method: {kind: Pearson r}} for one scan (kinds: :data:`KINDS`); ``target`` None: the prediction.

    ``diagnoser`` is an :class:`addiagnosis.engine.Diagnoser` (its methods resolved, references set).
    ``timings`` (optional) collects seconds per relevance map, per method; ``keep`` (optional) receives the
    unchanged scan's preparation, probabilities, target and maps (model grid and input grid), per method.
    """
    from addiagnosis.prep.registry import prepare

    methods = [diagnoser.resolve_method(m) for m in methods]
    engine, card = diagnoser.engine, diagnoser.package.card
    prep = prepare(volume, card)
    cache = engine.forward(prep.tensor)
    tgt = diagnoser.target_index(target, int(torch.argmax(cache.logits[0]).item()))
    mask = prep.input_mask if prep.input_mask is not None and prep.input_mask.any() else None
    region_in = mask if mask is not None else np.ones(volume.shape, bool)

    def maps(c, p=None):
        out = {}
        for m in methods:
            t = time.perf_counter()
            g = engine.relevance(c, tgt, m).float().cpu().numpy()
            if timings is not None:
                timings.setdefault(m, []).append(time.perf_counter() - t)
            out[m] = (g, None if p is None else p.to_input(g))
        return out

    base = maps(cache, prep)
    if keep is not None:
        keep.update({"prepared": prep, "target": tgt, "maps": {m: v[1] for m, v in base.items()},
                     "grid_maps": {m: v[0] for m, v in base.items()},
                     "probabilities": torch.softmax(cache.logits[0].double().cpu(), 0).numpy()})
    del cache
    res: dict[str, dict] = {m: {} for m in methods}
    for name, twin in twins(volume).items():
        tp = prepare(twin, card)
        tc = engine.forward(tp.tensor)
        for m, (_, rel) in maps(tc, tp).items():
            back = onto(rel, twin, volume)
            res[m][name] = pearson(base[m][1][region_in], back[region_in])
        del tc
    rng = np.random.default_rng([int(seed), 11])
    for frac in NOISE:
        nc = engine.forward(noisy(prep.tensor, frac, rng))
        for m, (_, rel) in maps(nc, prep).items():
            res[m][f"noise_{round(frac * 100)}pct"] = pearson(base[m][1][region_in], rel[region_in])
        del nc
    x_perm, region = permuted(prep.tensor, rng)
    pc = engine.forward(x_perm)
    for m, (g, _) in maps(pc).items():
        res[m]["input_randomisation"] = pearson(base[m][0][region], g[region])
    return res


def summarise(per_subject: list[dict]) -> dict:
    """{method: {kind: {"median", "p5", "n"}}} (for input randomisation: the median of |r| as well)."""
    out: dict[str, dict] = {}
    for res in per_subject:
        for m, kinds in res.items():
            for k, r in kinds.items():
                out.setdefault(m, {}).setdefault(k, []).append(float(r))
    summary = {}
    for m, kinds in out.items():
        summary[m] = {}
        for k, vals in kinds.items():
            v = np.asarray(vals)
            s = {"n": len(v), "median": float(np.median(v)), "p5": float(np.percentile(v, 5))}
            if k == "input_randomisation":
                s["median_abs"] = float(np.median(np.abs(v)))
            summary[m][k] = s
    return summary


def evaluate_stability(diagnoser, items, methods, target: str = "true", n: int = 5, seed: int = 0,
                       log=print) -> dict:
    """Stability of ``methods`` on the first ``n`` scans of ``items`` (``dataset.load_items`` rows)."""
    from addiagnosis.io.volume import read_nifti

    per_subject, t0 = [], time.time()
    for k, it in enumerate(items[: int(n)], 1):
        vol = read_nifti(it.path)
        per_subject.append(subject_stability(diagnoser, vol, methods, it.label if target == "true" else None,
                                             seed=seed + k))
        if log:
            log(f"stability: {k}/{min(int(n), len(items))} scans, {time.time() - t0:.0f} s")
    return {"n_scans": len(per_subject), "twins": list(TWINS), "noise": list(NOISE),
            "region": "brain mask on the input grid (physical space); input randomisation on the model grid",
            "per_method": summarise(per_subject)}
