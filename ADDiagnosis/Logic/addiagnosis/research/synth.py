"""Synthetic cohort generator: MNI152-derived subjects with known, graded Alzheimer-like atrophy.

``addiagnosis synth --n N --out DIR --seed S`` writes, per subject, ``scans/<id>.nii.gz`` (a skull-on T1-like
scan with a random pose, field of view, voxel size and storage orientation), ``masks/<id>_atrophy.nii.gz``
(where atrophy was applied, on the scan's own grid) and ``meta/<id>.json`` (every parameter, including the
true scanner<-MNI pose); plus ``participants.tsv`` (one line per subject) and ``dataset.json``.

How a subject is made (on the 2 mm template grid, then posed):
1. severity ``s`` from the class: CN 0, EMCI 0.25, MCI 0.5, LMCI 0.75, AD 1.0, plus N(0, ``sd``) per subject
   (classes overlap as in life);
2. atrophy as tissue loss (tissue replaced by CSF): medial temporal lobe (hippocampus, amygdala, entorhinal
   cortex; MNI coordinates) loses ``mtl_loss = 0.8 s`` of its tissue; ventricles (and so the temporal horns
   next to the hippocampus) widen by ``1 + 4 s`` mm plus an age term ``U(0, 1)`` mm that every class has;
3. anatomical variability: smooth random deformation (~2 mm) and head size (+-4 %);
4. contrast (gamma), random rigid pose (+-15 deg, +-15 mm), field of view, voxel size (1.4-2.4 mm,
   anisotropic), storage orientation (axis order and flips), bias field, Rician noise.

A second, independent atrophy model (``--atrophy erode``, :func:`erode_atrophy`) changes shapes instead:
hippocampus and amygdala lose an outer shell of ``2.2 s`` mm (replaced by CSF, the core intact; volume loss
about 33 / 56 / 78 % at MCI / LMCI / AD), the lateral ventricles and the temporal horns grow by dilation
(``3 s`` mm plus the same ageing term); its mask marks voxels that lost more than 30 % of their tissue to
disease. ``--atrophy mixed`` gives each subject one of the two; ``--variety wide`` widens the anatomical and
acquisition variety (:data:`WIDE_VARIETY`).

Every subject uses its own random stream ``(seed, index)``: a cohort is identical for a seed whatever the
number of worker processes.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from addiagnosis.errors import AddiagnosisError
from addiagnosis.prep.template import CSF_LEVEL, LANDMARKS_MNI, MNI_NOTICE, atlas
from addiagnosis.research.dataset import CLASSES

STAGE = {"CN": 0.0, "EMCI": 0.25, "MCI": 0.5, "LMCI": 0.75, "AD": 1.0}
DEFAULTS = {
    "severity_sd": 0.05,
    "mtl_loss_per_severity": 0.8,
    "ventricle_mm_per_severity": 4.0,
    "ventricle_base_mm": 1.0,
    "age_mm_max": 1.0,
    "deform_mm": 2.0,
    "head_scale_sd": 0.04,
    "max_rotation_deg": 15.0,
    "max_translation_mm": 15.0,
    "spacing_range": [1.4, 2.0],
    "slice_spacing_range": [1.4, 2.4],
    "noise_range": [0.015, 0.04],
    "bias_range": 0.2,
    "mask_threshold": 0.1,
    "gamma_range": [0.85, 1.15],
    "atrophy": "default",
    # second atrophy model (``atrophy: erode``): shapes shrink instead of fading
    "erode_mm_per_severity": 2.2,
    "erode_ventricle_mm_per_severity": 3.0,
    "erode_mask_threshold": 0.3,
}
ATROPHY_MODELS = ("default", "erode", "mixed")
# ``--variety wide``: more anatomical and acquisition variety than the bundled model was trained on
WIDE_VARIETY = {
    "deform_mm": 4.0,
    "head_scale_sd": 0.07,
    "spacing_range": [1.0, 2.0],
    "slice_spacing_range": [1.0, 4.0],
    "noise_range": [0.015, 0.08],
    "bias_range": 0.35,
    "gamma_range": [0.7, 1.4],
}


# ------------------------------------------------------------------------------------------ geometry
def rotation(angles_deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _orientation_matrix(rng) -> np.ndarray:
    """A random signed permutation (storage orientation: RAS, LPS, PIR, ...)."""
    perm = rng.permutation(3)
    signs = rng.choice([-1.0, 1.0], size=3)
    m = np.zeros((3, 3))
    for col, (axis, sign) in enumerate(zip(perm, signs)):
        m[axis, col] = sign
    return m


def _orientation_from_code(code: str) -> np.ndarray:
    """'RAS', 'LPS', 'PIR', ...: the direction each storage axis points to."""
    axes = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
    m = np.zeros((3, 3))
    for col, ch in enumerate(str(code).upper()):
        axis, sign = axes[ch]
        m[axis, col] = sign
    if sorted(np.abs(m).argmax(0)) != [0, 1, 2]:
        raise AddiagnosisError(f"invalid orientation code {code!r}")
    return m


def _smooth_field(rng, shape, ctrl, amplitude) -> np.ndarray:
    """Random values on a coarse control grid, interpolated (trilinear, torch: fast) to ``shape``."""
    import torch
    import torch.nn.functional as F

    coarse = torch.from_numpy(rng.normal(0.0, amplitude, size=ctrl).astype(np.float32))[None, None]
    out = F.interpolate(coarse, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=True)
    return out[0, 0].numpy()


@functools.lru_cache(maxsize=1)
def _ventricle_distance() -> np.ndarray:
    from scipy import ndimage

    return (ndimage.distance_transform_edt(~atlas().ventricles) * 2.0).astype(np.float32)


# ------------------------------------------------------------------------------------------ one subject
def subject_params(seed: int, index: int, label: str, options: dict | None = None) -> dict:
    """Draw every random parameter of one subject (no images)."""
    opt = {**DEFAULTS, **(options or {})}
    rng = np.random.default_rng([int(seed), int(index), 1])
    sev = STAGE[label] + rng.normal(0.0, opt["severity_sd"])
    sev = float(abs(sev)) if label == "CN" else float(max(sev, 0.0))
    age_mm = float(rng.uniform(0.0, opt["age_mm_max"]))
    sp = [float(rng.uniform(*opt["spacing_range"])) for _ in range(2)]
    sp.append(float(rng.uniform(*opt["slice_spacing_range"])))
    model = opt["atrophy"]
    if model not in ATROPHY_MODELS:
        raise AddiagnosisError(f"unknown atrophy model {model!r}; choose from {', '.join(ATROPHY_MODELS)}")
    if model == "mixed":  # each subject its own model, from its own stream (independent of the class)
        model = "erode" if np.random.default_rng([int(seed), int(index), 3]).random() < 0.5 else "default"
    params = {
        "class": label,
        "severity": sev,
        "mtl_loss": float(np.clip(opt["mtl_loss_per_severity"] * sev, 0.0, 0.95)),
        "ventricle_mm": float(opt["ventricle_base_mm"] + opt["ventricle_mm_per_severity"] * sev + age_mm),
        "age_mm": age_mm,
        "head_scale": float(1.0 + rng.normal(0.0, opt["head_scale_sd"])),
        "gamma": float(rng.uniform(*opt["gamma_range"])),
        "rotation_deg": [float(a) for a in rng.uniform(-opt["max_rotation_deg"], opt["max_rotation_deg"], 3)],
        "translation_mm": [float(t) for t in rng.uniform(-opt["max_translation_mm"], opt["max_translation_mm"], 3)],
        "spacing": sp,
        "fov_mm": [float(rng.uniform(190, 220)), float(rng.uniform(220, 250)), float(rng.uniform(190, 230))],
        "fov_offset_mm": [float(o) for o in rng.normal(0.0, 5.0, 3)],
        "noise": float(rng.uniform(*opt["noise_range"])),
        "deform_mm": float(opt["deform_mm"]),
        "bias": float(opt["bias_range"]),
        "mask_threshold": float(opt["mask_threshold"]),
        "seed": [int(seed), int(index)],
    }
    if model == "erode":
        params.update({
            "atrophy": "erode",
            # hippocampus and amygdala lose an outer shell this thick (mm), replaced by CSF
            "erode_mm": float(np.clip(opt["erode_mm_per_severity"] * sev, 0.0, 5.0)),
            # lateral ventricles and temporal horns grow by dilation (disease part + the same ageing term)
            "ventricle_mm": float(opt["erode_ventricle_mm_per_severity"] * sev + age_mm),
            "mtl_loss": 0.0,
            "mask_threshold": float(opt["erode_mask_threshold"]),
        })
    return params


def _default_atrophy(params: dict):
    """Medial temporal lobe fades (a fraction of its tissue becomes CSF), ventricles widen by distance."""
    A = atlas()
    tissue = np.clip(A.gm + A.wm, 0.0, 1.0)
    dist_v = _ventricle_distance()  # mm from the ventricles
    band = np.clip((params["ventricle_mm"] - dist_v) / 2.0 + 0.5, 0.0, 1.0) * (~A.ventricles)
    band *= tissue
    loss_mtl = params["mtl_loss"] * A.mtl_weight
    loss = np.maximum(band, loss_mtl).astype(np.float32)
    brain = A.head * (1.0 - loss) + CSF_LEVEL * loss * A.brain
    # the age part of ventricle widening is "normal ageing", not disease: the mask marks disease atrophy only
    disease_band = np.clip((params["ventricle_mm"] - params["age_mm"] - dist_v) / 2.0 + 0.5, 0.0, 1.0)
    disease_band *= tissue * (~A.ventricles)
    disease = np.maximum(np.clip(disease_band - np.clip((1.0 - dist_v) / 2.0 + 0.5, 0, 1), 0, 1), loss_mtl)
    disease = np.where(params["severity"] > 0.0, disease, 0.0).astype(np.float32)
    return brain, disease


@functools.lru_cache(maxsize=1)
def erode_structures():
    """Structures of the second atrophy model, on the template grid (bool): hippocampus, amygdala, the
    temporal horns (thin CSF tubes beside the hippocampus, present in every subject) and the lateral
    ventricles; plus the depth (mm) of every voxel inside hippocampus+amygdala, and the distance (mm) of
    every voxel from the ventricles+horns. Geometry of its own (not the default model's MTL weight map)."""
    from scipy import ndimage

    from addiagnosis.prep.template import capsule

    A = atlas()
    mni = A.mni_coords()
    tissue = (A.gm + A.wm) > 0.5
    hippo = np.zeros(A.shape, bool)
    amyg = np.zeros(A.shape, bool)
    horns = np.zeros(A.shape, bool)
    for sx in (-1.0, 1.0):
        hippo |= capsule(mni, (sx * 29, -10, -20), (sx * 24, -38, -4), 5.0)
        amyg |= capsule(mni, (sx * 22, -3, -19), (sx * 22, -5, -19), 6.0)
        horns |= capsule(mni, (sx * 34, -8, -16), (sx * 30, -36, -2), 1.6)
    hippo &= tissue
    amyg &= tissue & ~hippo
    mtl = hippo | amyg
    depth = (ndimage.distance_transform_edt(mtl) * 2.0).astype(np.float32)  # 2: a boundary voxel
    fluid = A.ventricles | horns
    dist = (ndimage.distance_transform_edt(~fluid) * 2.0).astype(np.float32)
    return {"hippocampus": hippo, "amygdala": amyg, "horns": horns & ~mtl, "mtl": mtl, "mtl_depth": depth,
            "fluid": fluid, "fluid_distance": dist}


def erode_atrophy(params: dict):
    """Second atrophy model: hippocampus and amygdala eroded from all sides (an outer shell of
    ``erode_mm`` becomes CSF; the core is untouched), lateral ventricles and temporal horns grown by dilation
    (``ventricle_mm``, of which ``age_mm`` is normal ageing). Returns (scan on the template grid, disease
    change fraction): its mask rule (``erode_mask_threshold``) marks voxels that lost more than 30 % of
    their tissue to disease."""
    A = atlas()
    S = erode_structures()
    tissue = np.clip(A.gm + A.wm, 0.0, 1.0)

    # a voxel 2 mm wide whose distance transform is d mm spans depths d-2 .. d from the boundary: the
    # fraction of it that a shell (or a dilation) of ``mm`` covers is clip((mm - (d - 2)) / 2, 0, 1)
    def shell(mm):
        return np.clip((mm - (S["mtl_depth"] - 2.0)) / 2.0, 0.0, 1.0) * S["mtl"]

    def grown(mm):
        return np.clip((mm - (S["fluid_distance"] - 2.0)) / 2.0, 0.0, 1.0) * (~S["fluid"])

    loss = np.maximum(shell(params["erode_mm"]), grown(params["ventricle_mm"]) * tissue)
    loss = np.maximum(loss, S["horns"] * tissue).astype(np.float32)  # the horns are CSF in everyone
    brain = A.head * (1.0 - loss) + CSF_LEVEL * loss * A.brain
    disease = np.maximum(shell(params["erode_mm"]),
                         np.clip(grown(params["ventricle_mm"]) - grown(params["age_mm"]), 0.0, 1.0) * tissue)
    disease = np.where(params["severity"] > 0.0, disease, 0.0).astype(np.float32)
    return brain.astype(np.float32), disease


def _scanner_pose(rng, params: dict):
    """Pose and field of view: scanner = R @ mni + t; output grid axes in a random storage orientation.
    Returns (scanner_from_mni, output shape, output IJK->RAS)."""
    R = rotation(params["rotation_deg"])
    t = np.asarray(params["translation_mm"])
    scanner_from_mni = np.eye(4)
    scanner_from_mni[:3, :3] = R
    # the brain centre (MNI (0, -18, 18)) lands at t, i.e. near the scanner origin and the FOV centre
    scanner_from_mni[:3, 3] = t - R @ np.array([0.0, -18.0, 18.0])
    P = _orientation_matrix(rng)
    if params.get("orientation") is not None:  # e.g. "LPS": storage axes, as a signed permutation
        P = _orientation_from_code(params["orientation"])
    if params.get("grid_rotation_deg") is not None:  # oblique acquisition grid
        P = rotation(params["grid_rotation_deg"]) @ P
    spacing = np.asarray(params["spacing"])
    out_shape = np.maximum(np.round(np.abs(P.T) @ np.asarray(params["fov_mm"]) / spacing), 16).astype(int)
    out_aff = np.eye(4)
    out_aff[:3, :3] = P @ np.diag(spacing)
    centre_scanner = np.asarray(params["fov_offset_mm"])
    out_aff[:3, 3] = centre_scanner - out_aff[:3, :3] @ ((out_shape - 1) / 2.0)
    return scanner_from_mni, out_shape, out_aff


def _bias_and_noise(rng, scan: np.ndarray, params: dict) -> np.ndarray:
    """Bias field and Rician noise on the scan grid; int16 as a scanner stores it."""
    bias = np.exp(_smooth_field(rng, scan.shape, (3, 3, 3), params["bias"] / 2.0))
    scan = scan * bias
    sigma = params["noise"]
    n1 = rng.normal(0.0, sigma, scan.shape).astype(np.float32)
    n2 = rng.normal(0.0, sigma, scan.shape).astype(np.float32)
    scan = np.sqrt((scan + n1) ** 2 + n2**2)
    return np.clip(scan * 1000.0, 0, 32000).astype(np.int16)


def make_subject(params: dict):
    """Build one subject from its parameters: returns (scan Volume, atrophy mask Volume, pose dict)."""
    from scipy import ndimage

    from addiagnosis.io.volume import Volume

    A = atlas()
    rng = np.random.default_rng([*params["seed"], 2])
    shape = A.shape
    # --- atrophy on the template grid: the scan with tissue replaced by CSF, and where disease changed it
    if params.get("atrophy", "default") == "erode":
        brain, disease = erode_atrophy(params)
    else:
        brain, disease = _default_atrophy(params)
    # --- anatomical variability: smooth deformation + head size, about the brain centre
    centre = np.array([(s - 1) / 2.0 for s in shape])
    if params["deform_mm"] > 0:
        ctrl = (5, 6, 5)
        u = [_smooth_field(rng, shape, ctrl, params["deform_mm"] / 2.0) for _ in range(3)]
    else:
        u = [np.zeros(shape, np.float32)] * 3
    grid = np.indices(shape, dtype=np.float32)
    coords = [(g - c) / params["head_scale"] + c + d for g, c, d in zip(grid, centre, u)]
    warped = ndimage.map_coordinates(brain, coords, order=1, mode="constant", cval=0.0)
    warped_disease = ndimage.map_coordinates(disease, coords, order=1, mode="constant", cval=0.0)
    warped = np.clip(warped, 0.0, None) ** params["gamma"]
    scanner_from_mni, out_shape, out_aff = _scanner_pose(rng, params)
    # output ijk -> scanner -> mni -> atlas ijk
    atlas_from_out = np.linalg.inv(A.affine) @ np.linalg.inv(scanner_from_mni) @ out_aff
    mat, off = atlas_from_out[:3, :3], atlas_from_out[:3, 3]
    scan = ndimage.affine_transform(warped, mat, off, output_shape=tuple(out_shape), order=1, cval=0.0)
    mask = ndimage.affine_transform(warped_disease, mat, off, output_shape=tuple(out_shape), order=1,
                                    cval=0.0)
    scan = _bias_and_noise(rng, scan, params)
    name = params.get("participant_id", "subject")
    vol = Volume(scan, out_aff, name)
    mvol = Volume((mask > params["mask_threshold"]).astype(np.uint8), out_aff.copy(), name + "_atrophy")
    pose = {"scanner_from_mni": scanner_from_mni.tolist(), "shape": [int(s) for s in out_shape],
            "affine": out_aff.tolist(),
            "landmarks_mni": LANDMARKS_MNI.tolist(),
            "landmarks_scanner": [list(map(float, scanner_from_mni[:3, :3] @ p + scanner_from_mni[:3, 3]))
                                  for p in LANDMARKS_MNI]}
    return vol, mvol, pose


def _write(vol, path: Path, dtype=None):
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(vol.array), vol.ijk_to_ras)
    img.header.set_xyzt_units("mm")
    img.set_qform(vol.ijk_to_ras, code=1)
    img.set_sform(vol.ijk_to_ras, code=1)
    if dtype is not None:
        img.set_data_dtype(dtype)
    nib.save(img, str(path))


def _generate_one(job) -> dict:
    out, params = job
    out = Path(out)
    sid = params["participant_id"]
    vol, mvol, pose = make_subject(params)
    _write(vol, out / "scans" / f"{sid}.nii.gz", np.int16)
    _write(mvol, out / "masks" / f"{sid}_atrophy.nii.gz", np.uint8)
    meta = {**params, **pose, "mask_voxels": int(mvol.array.sum()),
            "mask_ml": float(mvol.array.sum() * abs(np.linalg.det(vol.ijk_to_ras[:3, :3])) / 1000.0)}
    (out / "meta" / f"{sid}.json").write_text(json.dumps(meta, indent=1))
    return meta


def cohort_labels(n: int, seed: int, classes=CLASSES) -> list[str]:
    """Balanced labels (n // 5 each, the rest spread), shuffled with the seed."""
    labels = [classes[i % len(classes)] for i in range(n)]
    rng = np.random.default_rng([int(seed), 0])
    rng.shuffle(labels)
    return labels


def generate(n: int, out: str | os.PathLike, seed: int = 0, workers: int | None = None,
             options: dict | None = None, prefix: str = "sub", progress=print) -> list[dict]:
    out = Path(out)
    if n < 1:
        raise AddiagnosisError("--n must be at least 1")
    for sub in ("scans", "masks", "meta"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    labels = cohort_labels(n, seed)
    jobs = []
    for i, label in enumerate(labels):
        p = subject_params(seed, i, label, options)
        p["participant_id"] = f"{prefix}-s{seed}-{i:04d}"
        jobs.append((str(out), p))
    workers = max(1, int(workers or min(2, os.cpu_count() or 1)))
    t0 = time.time()
    metas = []
    if workers == 1 or n == 1:
        it = map(_generate_one, jobs)
    else:
        pool = ProcessPoolExecutor(workers)
        it = pool.map(_generate_one, jobs, chunksize=4)
    try:
        for k, meta in enumerate(it, 1):
            metas.append(meta)
            if progress and (k % 25 == 0 or k == n):
                el = time.time() - t0
                progress(f"synth: {k}/{n} subjects, {el:.0f} s elapsed, ETA {el / k * (n - k):.0f} s")
    finally:
        if workers > 1 and n > 1:
            pool.shutdown()
    cols = ["participant_id", "class", "severity", "mtl_loss", "ventricle_mm", "age_mm", "head_scale",
            "scan", "mask", "atrophy"]
    with open(out / "participants.tsv", "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(cols)
        for m in metas:
            sid = m["participant_id"]
            w.writerow([sid, m["class"], f"{m['severity']:.4f}", f"{m['mtl_loss']:.4f}",
                        f"{m['ventricle_mm']:.3f}", f"{m['age_mm']:.3f}", f"{m['head_scale']:.4f}",
                        f"scans/{sid}.nii.gz", f"masks/{sid}_atrophy.nii.gz", m.get("atrophy", "default")])
    desc = {"generator": "addiagnosis.research.synth", "n": n, "seed": seed, "classes": CLASSES, "stage": STAGE,
            "options": {**DEFAULTS, **(options or {})}, "seconds": round(time.time() - t0, 1),
            "notice": "Synthetic data. " + MNI_NOTICE}
    (out / "dataset.json").write_text(json.dumps(desc, indent=1))
    return metas


def generator_options(atrophy: str = "default", variety: str = "default") -> dict:
    """The options of :func:`generate` for an atrophy model and a variety (``default`` or ``wide``)."""
    opts = {"atrophy": atrophy}
    if variety == "wide":
        opts.update(WIDE_VARIETY)
    return opts
