"""A quality-control test set made by code: valid T1 scans and inputs the model was not built for.

Everything starts from the MNI152 template that nilearn ships (through :mod:`.synth`), never from the real
brains kept for evaluation. Each case is ``(name, group, kind, Volume, pose)`` (``pose``: the true
``scanner_from_mni`` of a synthetic head, else None); ``group`` is what QC should say:

- ``valid``: held-out synthetic subjects of both atrophy generators (seeds no model trained on), at several
  resolutions (1-2 mm, thick 3 mm slices), storage orientations (RAS, LPS, PIR, oblique) and intensity
  scalings (x0.01 float, x20, 12-bit);
- ``non-t1``: other contrasts made by remapping the tissue intensities of a clean synthetic subject
  (T2-, PD-, FLAIR-like) and a CT-like scan (Hounsfield units, bright skull, air at -1000);
- ``non-brain``: phantoms (two spheres, a uniform head-shaped ellipsoid with a shell), smoothed noise in the
  shape of a head, pure noise;
- ``degraded``: T1 scans the model should not be trusted on: a field of view cutting off much of the brain,
  motion ghosting (k-space lines of a moved head), very low resolution (7-8 mm slices or 4.5 mm voxels), heavy
  blur on a fine grid, and skull-stripped heads (the card decides pass or warn).

``cases(n_valid, n_each, seed)`` yields them lazily (one volume in memory at a time).
"""

from __future__ import annotations

import numpy as np

from addiagnosis.io.volume import Volume
from addiagnosis.prep.template import CSF_LEVEL, SCALP_LEVEL, SKULL_LEVEL
from addiagnosis.research import synth
from addiagnosis.research.dataset import CLASSES

# T1 levels of the synthetic head (white matter 1.0): background, skull, CSF, grey matter, scalp, white matter
T1_KNOTS = (0.0, SKULL_LEVEL, CSF_LEVEL, 0.7, SCALP_LEVEL, 1.0, 2.0)
REMAPS = {  # the same tissues at other contrasts (fractions of the brightest tissue)
    "t2": (0.0, 0.05, 1.0, 0.55, 0.5, 0.35, 0.3),
    "pd": (0.0, 0.1, 0.85, 0.8, 0.75, 0.65, 0.6),
    "flair": (0.0, 0.05, 0.08, 0.8, 0.7, 0.6, 0.55),
}
CT_KNOTS_HU = (-1000.0, 1100.0, 8.0, 40.0, 20.0, 28.0, 28.0)  # air, bone, CSF, GM, soft tissue, WM
GROUPS = ("valid", "non-t1", "non-brain", "degraded")


def subject(seed: int, index: int, atrophy: str = "default", **overrides) -> tuple[Volume, dict]:
    """A synthetic subject (wide variety) with parameters overridden (e.g. ``spacing``, ``orientation``,
    ``noise``); returns the scan and its pose (``scanner_from_mni``)."""
    rng = np.random.default_rng([seed, index, 7])
    label = CLASSES[int(rng.integers(len(CLASSES)))]
    params = synth.subject_params(seed, index, label, {**synth.WIDE_VARIETY, "atrophy": atrophy})
    params.update(overrides)
    params["participant_id"] = f"qc-s{seed}-{index:03d}"
    vol, _, pose = synth.make_subject(params)
    return vol, pose


def valid_cases(n: int, seed: int):
    """Held-out T1 scans of both generators at varied resolution, orientation and intensity scale."""
    variants = [
        ("1.5mm", {"spacing": [1.5, 1.5, 1.5]}, None),
        ("2mm-LPS", {"spacing": [2.0, 2.0, 2.0], "orientation": "LPS"}, None),
        ("1x1x3mm-PIR", {"spacing": [1.0, 1.0, 3.0], "orientation": "PIR"}, None),
        ("1.2mm-oblique", {"spacing": [1.2, 1.2, 1.2], "grid_rotation_deg": [10.0, -6.0, 4.0]}, None),
        ("native", {}, None),
        ("native-x0.01", {}, lambda a: a.astype(np.float32) * 0.01),
        ("native-x20", {}, lambda a: a.astype(np.float32) * 20.0),
        ("1mm-12bit", {"spacing": [1.0, 1.0, 1.0]}, lambda a: np.round(a * (4095.0 / max(1, a.max())))),
    ]
    for i in range(n):
        name, over, scale = variants[i % len(variants)]
        atrophy = "erode" if i % 2 else "default"
        vol, pose = subject(seed, i, atrophy, **over)
        if scale is not None:
            vol = vol.like(scale(np.asarray(vol.array)))
        yield f"t1-{atrophy}-{name}-{i}", "valid", "t1", vol, pose["scanner_from_mni"]


def _clean(seed: int, index: int, **overrides) -> tuple[Volume, np.ndarray, dict]:
    """A noise-free synthetic T1 (white matter ~1) and a generator for the noise added after remapping."""
    vol, pose = subject(seed, index, noise=0.0, **overrides)
    rng = np.random.default_rng([seed, index, 11])
    return vol, np.asarray(vol.array, dtype=np.float32) / 1000.0, {"pose": pose, "rng": rng}


def contrast_cases(n: int, seed: int):
    """T2-, PD-, FLAIR-like (tissue remaps, Rician noise) and CT-like (Hounsfield units) scans."""
    kinds = [*REMAPS, "ct"]
    for i in range(n * len(kinds)):
        kind = kinds[i % len(kinds)]
        vol, t1, extra = _clean(seed, 1000 + i, bias=0.0 if kind == "ct" else 0.2)
        rng = extra["rng"]
        if kind == "ct":
            hu = np.interp(t1, T1_KNOTS, CT_KNOTS_HU) + rng.normal(0.0, 4.0, t1.shape)
            out = np.clip(hu, -1024, 3000).astype(np.int16)
        else:
            sig = np.interp(t1, T1_KNOTS, REMAPS[kind])
            sigma = float(rng.uniform(0.015, 0.05))
            out = np.sqrt((sig + rng.normal(0, sigma, sig.shape)) ** 2 + rng.normal(0, sigma, sig.shape) ** 2)
            out = (out * 1000.0).astype(np.int16)
        yield f"{kind}-{i}", "non-t1", kind, vol.like(out), extra["pose"]["scanner_from_mni"]


def _grid(rng, spacing: float = 1.5, fov: float = 220.0) -> np.ndarray:
    """RAS mm of every voxel of a cube grid centred near the origin, and its IJK->RAS."""
    n = int(round(fov / spacing))
    aff = np.diag([spacing, spacing, spacing, 1.0])
    aff[:3, 3] = -spacing * (n - 1) / 2.0 + rng.normal(0, 5, 3)
    ijk = np.indices((n, n, n), dtype=np.float32)
    xyz = np.einsum("ij,j...->i...", aff[:3, :3].astype(np.float32), ijk) + aff[:3, 3, None, None, None]
    return xyz, aff


def phantom_cases(n: int, seed: int):
    """Two spheres, a head-shaped ellipsoid with a shell, smoothed noise in a head's shape, pure noise."""
    from scipy import ndimage

    kinds = ["spheres", "ellipsoid", "noise-head", "noise"]
    for i in range(n * len(kinds)):
        kind = kinds[i % len(kinds)]
        rng = np.random.default_rng([seed, 2000 + i])
        xyz, aff = _grid(rng)
        x, y, z = xyz
        if kind == "spheres":
            r2 = x ** 2 + z ** 2
            a = 800.0 * (r2 + (y - 30) ** 2 < 45 ** 2) + 400.0 * (r2 + (y + 40) ** 2 < 30 ** 2)
        elif kind == "ellipsoid":
            r = (x / 70) ** 2 + (y / 88) ** 2 + (z / 65) ** 2
            a = np.where(r < 0.8, 700.0, np.where(r < 1.0, 900.0, 0.0))
        else:
            head = ((x / 75) ** 2 + (y / 95) ** 2 + (z / 70) ** 2 < 1.0) if kind == "noise-head" else True
            field = ndimage.gaussian_filter(rng.normal(0, 1, x.shape).astype(np.float32), 2.0)
            a = np.where(head, 500.0 + 300.0 * field / (field.std() or 1.0), 0.0)
        a = np.abs(a + rng.normal(0, 20.0, a.shape))
        yield f"{kind}-{i}", "non-brain", kind, Volume(a.astype(np.int16), aff, f"{kind}-{i}"), None


def _crop(vol: Volume, pose: dict, rng) -> Volume:
    """Keep the part of the field of view on one side of a plane through the brain (about 40-60 % of it)."""
    centre_ras = np.asarray(pose["scanner_from_mni"]) @ np.array([0.0, -18.0, 18.0, 1.0])
    c_ijk = np.linalg.inv(vol.ijk_to_ras) @ centre_ras
    axis = int(rng.integers(3))
    cut = int(round(c_ijk[axis] + rng.uniform(-10, 10) / vol.spacing[axis]))
    sl = [slice(None)] * 3
    keep_low = bool(rng.integers(2))
    sl[axis] = slice(0, max(cut, 1)) if keep_low else slice(max(cut, 0), None)
    start = np.zeros(4)
    start[3] = 1.0
    start[axis] = sl[axis].start or 0
    aff = vol.ijk_to_ras.copy()
    aff[:3, 3] = (vol.ijk_to_ras @ start)[:3]
    return Volume(np.ascontiguousarray(np.asarray(vol.array)[tuple(sl)]), aff, vol.name + "-cropped")


def _ghost(vol: Volume, rng) -> Volume:
    """Motion between k-space lines: a share of the phase-encoding lines comes from a shifted head."""
    a = np.asarray(vol.array, dtype=np.float32)
    axis = int(rng.integers(3))
    k = np.fft.fftn(a)
    n = a.shape[axis]
    moved = rng.random(n) < rng.uniform(0.3, 0.5)
    shift_vox = rng.uniform(4.0, 10.0) / vol.spacing[axis]
    phase = np.exp(-2j * np.pi * np.fft.fftfreq(n) * shift_vox)
    line = np.where(moved, phase, 1.0)
    shape = [1, 1, 1]
    shape[axis] = n
    out = np.abs(np.fft.ifftn(k * line.reshape(shape)))
    return vol.like(out.astype(np.int16))


def _resample_to(vol: Volume, spacing) -> Volume:
    """Block-average-free resampling onto coarser voxels along the scan's axes (thick slices)."""
    from scipy import ndimage

    sp = np.asarray(vol.spacing)
    f = np.asarray(spacing, dtype=float) / sp
    a = ndimage.gaussian_filter(np.asarray(vol.array, dtype=np.float32), np.maximum(f - 1, 0) / 2.0)
    shape = np.maximum(np.round(np.asarray(vol.shape) / f), 4).astype(int)
    step = np.asarray(vol.shape) / shape
    idx = [(np.arange(s) + 0.5) * st - 0.5 for s, st in zip(shape, step)]
    out = ndimage.map_coordinates(a, np.meshgrid(*idx, indexing="ij"), order=1)
    aff = vol.ijk_to_ras.copy()
    aff[:3, :3] = vol.ijk_to_ras[:3, :3] @ np.diag(step)
    aff[:3, 3] = (vol.ijk_to_ras @ np.r_[(step - 1) / 2.0, 1.0])[:3]
    return Volume(out.astype(np.int16), aff, vol.name + "-lowres")


def _strip(vol: Volume, pose: dict) -> Volume:
    """The head without skull and scalp: the template's brain mask taken through the true pose."""
    from scipy import ndimage

    from addiagnosis.prep.template import atlas

    A = atlas()
    brain = ndimage.binary_dilation(A.brain, iterations=1).astype(np.float32)
    to_atlas = np.linalg.inv(A.affine) @ np.linalg.inv(np.asarray(pose["scanner_from_mni"])) @ vol.ijk_to_ras
    mask = ndimage.affine_transform(brain, to_atlas[:3, :3], to_atlas[:3, 3], output_shape=vol.shape, order=1)
    return vol.like(np.where(mask > 0.5, np.asarray(vol.array), 0).astype(np.asarray(vol.array).dtype))


def degraded_cases(n: int, seed: int):
    """Cropped field of view, motion ghosting, very low resolution, heavy blur, skull-stripped heads."""
    from scipy import ndimage

    kinds = ["cropped", "motion", "lowres", "blurred", "skull-stripped"]
    for i in range(n * len(kinds)):
        kind = kinds[i % len(kinds)]
        rng = np.random.default_rng([seed, 3000 + i])
        over = {"spacing": [1.2, 1.2, 1.2]} if kind == "blurred" else {"spacing": [1.5, 1.5, 1.5]}
        vol, pose = subject(seed, 3000 + i, "erode" if i % 2 else "default", **over)
        if kind == "cropped":
            vol = _crop(vol, pose, rng)
        elif kind == "motion":
            vol = _ghost(vol, rng)
        elif kind == "lowres":
            vol = _resample_to(vol, [1.5, 1.5, 7.5] if i % 2 else [4.5, 4.5, 4.5])
        elif kind == "blurred":
            sigma = rng.uniform(3.0, 4.0) / 1.2  # 7-9 mm FWHM on a 1.2 mm grid
            vol = vol.like(ndimage.gaussian_filter(np.asarray(vol.array, dtype=np.float32), sigma).astype(np.int16))
        else:
            vol = _strip(vol, pose)
        yield f"{kind}-{i}", "degraded", kind, vol, pose["scanner_from_mni"]


def cases(n_valid: int = 24, n_each: int = 3, seed: int = 31):
    """The whole set, lazily: ``n_valid`` valid T1 scans and ``n_each`` of every other kind."""
    yield from valid_cases(n_valid, seed)
    yield from contrast_cases(n_each, seed)
    yield from phantom_cases(n_each, seed)
    yield from degraded_cases(n_each, seed)
