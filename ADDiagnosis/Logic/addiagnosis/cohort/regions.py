"""Regions: a label map (one in template space for every scan, or one per scan on its own grid) and its names;
per-region relevance sums and densities for the results table; a small synthetic MNI label map for demonstrations.

Without ``--labels``, a template model's batch uses the anatomical atlas (:mod:`addiagnosis.prep.atlas`, when its
package is installed), so every results table has per-region columns and ``compare`` needs no user atlas;
``--labels none`` turns regions off.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from addiagnosis.cohort.inputs import read_table_rows, table_column
from addiagnosis.errors import InputError
from addiagnosis.files import scan_stem, sha256_file


@dataclass
class Regions:
    names: list[str]  # region k (1..K) is names[k-1]
    grid: np.ndarray | None  # labels on the model grid (0 = unlabelled), when one map serves every scan
    voxel_ml: float
    sha256: str = ""

    @property
    def columns(self) -> list[str]:
        safe = [_safe_region(n) for n in self.names]
        return [f"sum_{s}" for s in safe] + ["sum_unlabelled"] + [f"density_{s}" for s in safe]

    def values(self, rel: np.ndarray, labels: np.ndarray) -> dict:
        k = len(self.names)
        lab = np.clip(labels.astype(np.int64, copy=False).ravel(), 0, k + 1)
        lab[lab > k] = 0
        sums = np.bincount(lab, weights=rel.astype(np.float64, copy=False).ravel(), minlength=k + 1)
        counts = np.bincount(lab, minlength=k + 1)
        out = {}
        for i, name in enumerate(self.names, 1):
            s = _safe_region(name)
            out[f"sum_{s}"] = float(sums[i])
            out[f"density_{s}"] = float(sums[i] / (counts[i] * self.voxel_ml)) if counts[i] else None
        out["sum_unlabelled"] = float(sums[0])
        return out


def _safe_region(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(name)).strip("_") or "region"


def read_label_names(path: Path | None, labels: np.ndarray | None = None) -> list[str]:
    """Names from a TSV/CSV (index + name columns), else region_<k> for every label value."""
    if path is not None:
        rows = read_table_rows(Path(path))
        header = list(rows[0].keys())
        icol = table_column(header, ("index", "label", "value", "id", "idx"))
        ncol = table_column(header, ("name", "region", "label_name", "structure"))
        if icol is None or ncol is None:
            raise InputError(f"label names need an index and a name column; the table has {', '.join(header)}",
                             path)
        table = {}
        for r in rows:
            try:
                table[int(float(r[icol]))] = r[ncol]
            except ValueError:
                raise InputError(f"label index {r[icol]!r} is not a number", path) from None
        table.pop(0, None)
        top = max(table) if table else 0
        return [table.get(i, f"region_{i}") for i in range(1, top + 1)]
    top = int(labels.max()) if labels is not None and labels.size else 0
    return [f"region_{i}" for i in range(1, top + 1)]


def read_labelmap(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:
        raise InputError(f"unreadable label map ({' '.join(str(exc).split())[:100]})", path) from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"a label map must be 3D, got shape {data.shape}", path)
    if data.dtype.kind == "f" and not np.allclose(data, np.round(data)):
        raise InputError("a label map must hold integer labels", path)
    if data.min() < 0 or data.max() > 32767:
        raise InputError("label values must lie in 0..32767", path)
    return np.round(data).astype(np.int32), img.affine


def labels_onto(labels: np.ndarray, grid_to_labels_ijk: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour resampling of a label map onto a grid (4x4: grid voxel -> label-map voxel)."""
    from addiagnosis.prep.physical import resample

    return np.rint(resample(labels.astype(np.float32), grid_to_labels_ijk, shape, order="nearest")).astype(np.int32)


def model_grid_affine(card: dict) -> np.ndarray | None:
    """IJK->RAS of the model grid when it is fixed in template (MNI) space (preprocessing kind ``template``)."""
    spec = dict(card.get("preprocessing") or {})
    if spec.get("kind") != "template":
        return None
    from addiagnosis.prep.align import model_grid
    from addiagnosis.prep.physical import grid_affine

    shape, spacing, centre = model_grid(spec, dict(card["input_grid"]))
    return grid_affine(shape, spacing, centre)


def _per_scan_regions(card: dict, names_path: Path | None, voxel_ml: float) -> Regions:
    """Only the names: each scan brings its own label map (a table's labels column)."""
    kind = (card.get("preprocessing") or {}).get("kind")
    if kind == "seed-raw":  # raw voxels reshaped: no geometric map from the model grid onto a scan
        raise InputError("per-scan label maps need a model whose grid maps onto the scan (physical or template "
                         "preprocessing); this model's seed-raw preprocessing reshapes raw voxels")
    if names_path is None:
        raise InputError("per-scan label maps need --label-names (a TSV with index and name columns)")
    return Regions(read_label_names(names_path), None, voxel_ml)


NO_LABELS = "none"  # --labels none: no regions, not even the atlas


def atlas_regions(card: dict, voxel_ml: float) -> Regions | None:
    """The anatomical atlas on a template model's grid (labels renumbered 1..K in label order); None for a model
    whose grid is not in MNI space or without the atlas's package."""
    from addiagnosis.prep import atlas as atlases

    g_aff = model_grid_affine(card)
    if g_aff is None or not atlases.available():
        return None
    atlas = atlases.load_atlas()
    shape = tuple(int(s) for s in card["input_grid"]["shape"])
    order = sorted(atlas.names)
    lut = np.zeros(int(atlas.labels.max()) + 1, np.int32)
    lut[order] = np.arange(1, len(order) + 1)
    grid = lut[atlases.labels_on_grid(atlas, g_aff, shape)]
    image = atlases.package_folder() / atlas.source.image
    return Regions([atlas.names[k] for k in order], grid, voxel_ml, sha256_file(image))


def load_regions(card: dict, labels: str | None, names: str | None, per_scan: bool) -> Regions | None:
    """The label map (template space) on the model grid, or only names when label maps come per scan; without
    either, the anatomical atlas for a template model (``labels`` ``"none"``: no regions)."""
    shape = tuple(int(s) for s in card["input_grid"]["shape"])
    spacing = card["input_grid"].get("spacing") or [1.0, 1.0, 1.0]
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    if labels and labels.lower() == NO_LABELS:
        return None
    if not labels and not per_scan:
        return atlas_regions(card, voxel_ml)
    names_path = Path(names) if names else None
    if not labels:
        return _per_scan_regions(card, names_path, voxel_ml)

    lpath = Path(labels)
    if not lpath.is_file():
        raise InputError("no such label map", lpath)
    g_aff = model_grid_affine(card)
    if g_aff is None:
        kind = (card.get("preprocessing") or {}).get("kind")
        raise InputError(f"--labels is a map in template space, but this model's grid ({kind} preprocessing) is "
                         "not: give per-scan label maps in a table's labels column instead", lpath)
    data, aff = read_labelmap(lpath)
    if names_path is None:
        for cand in (lpath.with_name(scan_stem(lpath) + ".tsv"), lpath.with_name(scan_stem(lpath) + ".csv")):
            if cand.is_file():
                names_path = cand
                break
    grid = labels_onto(data, np.linalg.inv(aff) @ g_aff, shape)
    return Regions(read_label_names(names_path, data), grid, voxel_ml, sha256_file(lpath))


def synthetic_labelmap(out: str | os.PathLike) -> tuple[Path, Path]:
    """A small label map of the MNI template (:mod:`.template`): medial temporal lobes, ventricles and lobes.

    Writes ``labels.nii.gz`` (2 mm MNI grid, NIfTI intent label) and ``labels.tsv`` (index, name).
    Coarse boxes in MNI mm inside the template brain, meant for tests and demonstrations, not anatomy.
    """
    import nibabel as nib
    from scipy import ndimage

    from addiagnosis.prep.template import atlas

    A = atlas()
    x, y, z = A.mni_coords()
    brain = A.brain
    lab = np.zeros(A.shape, np.int16)
    names = ["mtl_left", "mtl_right", "ventricles", "periventricular", "frontal", "parietal", "occipital",
             "temporal_lateral", "cerebellum", "central"]
    mtl = A.mtl_weight > 0.2
    peri = ndimage.binary_dilation(A.ventricles, iterations=2) & brain & ~A.ventricles
    rules = [
        (mtl & (x < 0)), (mtl & (x >= 0)), A.ventricles, peri,
        brain & (y > 0) & (z > -20),
        brain & (y <= 0) & (y > -70) & (z > 25),
        brain & (y <= -70) & (z > -10),
        brain & (np.abs(x) > 35) & (z <= 25) & (z > -45) & (y <= 0),
        brain & (z <= -25) & (y < -40),
        brain,
    ]
    for i, mask in enumerate(rules, 1):
        lab[(lab == 0) & mask] = i
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(lab, A.affine)
    img.header.set_intent("label")
    img.set_qform(A.affine, code=4)
    img.set_sform(A.affine, code=4)
    lpath, npath = out / "labels.nii.gz", out / "labels.tsv"
    nib.save(img, str(lpath))
    npath.write_text("index\tname\n" + "".join(f"{i}\t{n}\n" for i, n in enumerate(names, 1)))
    return lpath, npath
