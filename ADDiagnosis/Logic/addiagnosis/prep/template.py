"""The MNI ICBM152 2009a template (shipped inside nilearn's wheel) at 2 mm, with a synthetic head around it.

Used by the synthetic cohort generator (:mod:`addiagnosis.research.synth`) as the anatomy every subject is made
from, and by template alignment (:mod:`addiagnosis.prep.align`) as the registration target.

The nilearn copy of the template is brain-extracted; real T1 scans are not, so a simple head (CSF rim,
dark skull, bright scalp) is added around the brain so that synthetic scans and the registration target
look like skull-on T1 scans.

MNI ICBM152 notice: Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal
Neurological Institute, McGill University. Permission to use, copy, modify, and distribute this software
and its documentation for any purpose and without fee is hereby granted, provided that the above
copyright notice appear in all copies. The authors and McGill University make no representations about
the suitability of this software for any purpose. It is provided "as is" without express or implied
warranty. (Fonov et al., NeuroImage 2011; Fonov et al., NeuroImage 2009.)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from addiagnosis.errors import AddiagnosisError

MNI_NOTICE = (
    "Derived from the MNI ICBM152 2009a nonlinear symmetric template: Copyright (C) 1993-2009 Louis "
    "Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University. "
    "Permission to use, copy, modify, and distribute this software and its documentation for any purpose "
    "and without fee is hereby granted, provided that the above copyright notice appear in all copies. "
    "The authors and McGill University make no representations about the suitability of this software "
    "for any purpose. It is provided 'as is' without express or implied warranty."
)
ATLAS_SPACING = 2.0
# intensities of the synthetic head, as fractions of white matter (T1: WM > GM > CSF; skull dark; scalp bright)
CSF_LEVEL = 0.28
SKULL_LEVEL = 0.08
SCALP_LEVEL = 0.85
# Landmarks (MNI mm) used to score alignment: spread over the brain, not coplanar.
LANDMARKS_MNI = np.array([
    [0.0, 2.0, -4.0], [0.0, -24.0, -2.0], [-30.0, -20.0, -14.0], [30.0, -20.0, -14.0],
    [0.0, 50.0, 10.0], [0.0, -80.0, 20.0], [-50.0, -20.0, 20.0], [50.0, -20.0, 20.0],
    [0.0, -20.0, 60.0], [0.0, -50.0, -40.0],
])


@dataclass(frozen=True)
class Atlas:
    t1: np.ndarray  # brain T1, scaled so that white matter ~ 1.0
    gm: np.ndarray  # probabilities 0..1
    wm: np.ndarray
    brain: np.ndarray  # bool: GM+WM+inner CSF hull
    head: np.ndarray  # T1 with the synthetic head around the brain
    affine: np.ndarray  # IJK -> RAS (MNI mm)
    ventricles: np.ndarray  # bool
    mtl_weight: np.ndarray  # 0..1 medial temporal lobe (hippocampus, amygdala, entorhinal) weight

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.t1.shape)

    def mni_coords(self) -> np.ndarray:
        ijk = np.indices(self.shape, dtype=np.float32).reshape(3, -1)
        xyz = self.affine[:3, :3] @ ijk + self.affine[:3, 3:4]
        return xyz.reshape(3, *self.shape).astype(np.float32)


@dataclass(frozen=True, eq=False)
class RegistrationTemplate:
    """What template alignment needs at run time: the 2 mm head template, its brain mask and IJK->RAS."""

    head: np.ndarray  # float32, the registration target (T1 brain with the synthetic head)
    brain: np.ndarray  # bool
    affine: np.ndarray  # IJK -> RAS (MNI mm)
    source: str  # "nilearn" or the asset file it came from


ASSET_FILE = "template-mni152-2mm.npz"
ASSETS_KEY = "template_assets"  # card["preprocessing"][ASSETS_KEY] = {"file", "sha256", "contents"}
_active: RegistrationTemplate | None = None


def write_assets(folder: str | Path) -> dict:
    """Save the registration template into a model package folder; returns the card entry (with SHA-256)."""
    from addiagnosis.files import sha256_file

    A = atlas()
    path = Path(folder) / ASSET_FILE
    tmp = path.with_name(path.name + ".part.npz")
    np.savez_compressed(tmp, head=A.head.astype(np.float32), brain=A.brain.astype(bool),
                        affine=A.affine.astype(np.float64))
    tmp.replace(path)
    return {"file": ASSET_FILE, "sha256": sha256_file(path),
            "contents": "MNI ICBM152 2009a at 2 mm: head template (registration target), brain mask, IJK->RAS; "
                        "see 'notice' for its licence"}


def load_assets(folder: str | Path, entry: dict) -> RegistrationTemplate:
    """A package's own template (SHA-256 checked): template alignment then needs no nilearn."""
    import hashlib

    path = Path(folder) / str(entry.get("file", ASSET_FILE))
    if not path.is_file():
        raise AddiagnosisError("the model package's template file is missing", path)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != str(entry.get("sha256", "")).lower():
        raise AddiagnosisError("the model package's template file does not match its SHA-256 in the card", path)
    import io

    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return RegistrationTemplate(head=z["head"].astype(np.float32), brain=z["brain"].astype(bool),
                                    affine=z["affine"].astype(np.float64), source=str(path))


def use_package_template(folder, card: dict) -> None:
    """Make the package's own template the one alignment uses (or nilearn's, when it carries none)."""
    global _active
    entry = (card.get("preprocessing") or {}).get(ASSETS_KEY)
    new = None
    if entry:
        path = str(Path(folder) / str(entry.get("file", ASSET_FILE)))
        new = _active if _active is not None and _active.source == path else load_assets(folder, entry)
    if new is not _active:
        _active = new
        import sys

        align = sys.modules.get(__package__ + ".align")
        for fn in ("_fixed", "template_on_grid"):  # alignment caches what it made from the template
            cached = getattr(align, fn, None)
            if hasattr(cached, "cache_clear"):
                cached.cache_clear()


def registration_template() -> RegistrationTemplate:
    """The active package's template, else the one made from nilearn's MNI152 (needs nilearn)."""
    if _active is not None:
        return _active
    A = atlas()
    return RegistrationTemplate(A.head, A.brain, A.affine, "nilearn")


def template_dir() -> Path:
    try:
        import nilearn
    except ImportError:  # pragma: no cover - nilearn is a dependency
        raise AddiagnosisError("nilearn is not installed (it ships the MNI152 template)") from None
    return Path(nilearn.__file__).resolve().parent / "datasets" / "data"


def _load(kind: str):
    import nibabel as nib

    path = template_dir() / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
    if not path.is_file():
        raise AddiagnosisError("the MNI152 template is missing from nilearn's data folder", path)
    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def _block_mean(a: np.ndarray, f: int = 2) -> np.ndarray:
    s = [d // f * f for d in a.shape]
    a = a[: s[0], : s[1], : s[2]]
    return a.reshape(s[0] // f, f, s[1] // f, f, s[2] // f, f).mean(axis=(1, 3, 5))


def capsule(xyz: np.ndarray, p0, p1, radius: float) -> np.ndarray:
    p0 = np.asarray(p0, np.float32)[:, None, None, None]
    p1 = np.asarray(p1, np.float32)[:, None, None, None]
    d = p1 - p0
    t = np.clip(((xyz - p0) * d).sum(0) / float((d * d).sum()), 0.0, 1.0)
    closest = p0 + t[None] * d
    return np.sqrt(((xyz - closest) ** 2).sum(0)) <= radius


@functools.lru_cache(maxsize=1)
def atlas() -> Atlas:
    """The 2 mm atlas (cached per process; ~1 s)."""
    from scipy import ndimage

    t1, aff = _load("t1")
    gm, _ = _load("gm")
    wm, _ = _load("wm")
    t1, gm, wm = (_block_mean(a) for a in (t1, gm, wm))
    gm /= 255.0
    wm /= 255.0
    wm_level = float(np.median(t1[wm > 0.8]))
    t1 = t1 / wm_level
    affine = aff.astype(np.float64) @ np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] += 0.5  # centre of the 2x2x2 block
    tissue = gm + wm
    hull = ndimage.binary_fill_holes(ndimage.binary_closing(tissue > 0.3, iterations=3))
    brain = hull | (t1 > 0.05)
    # ventricles: dark CSF deep in the brain, near the midline
    xyz = np.indices(t1.shape).reshape(3, -1)
    mni = (affine[:3, :3] @ xyz + affine[:3, 3:4]).reshape(3, *t1.shape).astype(np.float32)
    x, y, z = mni
    deep = ndimage.binary_erosion(hull, iterations=4)
    central = (np.abs(x) < 32) & (y > -45) & (y < 35) & (z > -8) & (z < 38)
    ventricles = deep & central & (tissue < 0.35)
    lab, n = ndimage.label(ventricles)
    if n > 1:
        sizes = ndimage.sum(ventricles, lab, range(1, n + 1))
        keep = np.argsort(sizes)[::-1][:3] + 1  # the two lateral ventricles (+ third)
        ventricles = np.isin(lab, keep)
    # medial temporal lobe: hippocampus (capsule head->tail), amygdala, entorhinal cortex, both sides
    region = np.zeros(t1.shape, bool)
    for sx in (-1.0, 1.0):
        region |= capsule(mni, (sx * 28, -8, -22), (sx * 23, -38, -2), 7.0)  # hippocampus
        region |= capsule(mni, (sx * 23, -2, -20), (sx * 23, -6, -20), 7.0)  # amygdala
        region |= capsule(mni, (sx * 25, -4, -32), (sx * 25, -20, -30), 6.0)  # entorhinal / parahippocampal
    mtl_weight = ndimage.gaussian_filter(region.astype(np.float32), 0.8) * np.clip(tissue, 0, 1)
    # synthetic head: CSF rim, skull, scalp around the brain hull (distance in mm)
    dist = ndimage.distance_transform_edt(~hull) * ATLAS_SPACING
    head = t1.copy()
    outside = ~hull
    rim = outside & (dist <= 3)
    skull = outside & (dist > 3) & (dist <= 9)
    scalp = outside & (dist > 9) & (dist <= 15)
    head[rim] = np.maximum(head[rim], CSF_LEVEL)
    head[skull] = SKULL_LEVEL
    head[scalp] = SCALP_LEVEL
    head[outside & (dist > 15)] = 0.0
    head = ndimage.gaussian_filter(head, 0.5)
    return Atlas(t1=t1.astype(np.float32), gm=gm.astype(np.float32), wm=wm.astype(np.float32),
                 brain=brain, head=head.astype(np.float32), affine=affine, ventricles=ventricles,
                 mtl_weight=mtl_weight.astype(np.float32))
