"""Comparing two relevance maps: target vs target, method vs method (one scan), baseline vs follow-up (two scans).

Relevance magnitudes differ between methods, targets and scans, so each map is compared as the distribution of its
positive relevance: the share of the map's positive relevance per mL (:func:`share_density`; it integrates to 1
over the map). Two maps of one scan (same grid) are compared voxel by voxel on that grid. Maps of two scans (or
on request) are compared on the MNI template grid (2 mm), each carried there through its own scan's registration
(``mni_to_input_ras``: the one the engine did), trilinear; or on the first scan's grid (``on="a"``: the second
map goes through MNI onto it), e.g. a follow-up shown on its baseline.

Summary figures: Pearson correlation of the two densities over the voxels where either holds relevance; the
share of relevance that would have to move to turn one map into the other (total variation distance: 0 the same,
1 disjoint); the Dice overlap of the voxels each view shows at the default Top % (5 %); and, with the atlas, the
change of each region's share. No torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from addiagnosis.errors import InputError
from addiagnosis.explain import clusters as cl
from addiagnosis.io.volume import Volume
from addiagnosis.prep import atlas as atlases

FILES = ("a.nii.gz", "b.nii.gz", "difference.nii.gz", "comparison.json")
UNITS = "share of the map's positive relevance per mL"
TEMPLATE_SPACING = 2.0  # mm
TEMPLATE_BOX = ((-90.0, 90.0), (-126.0, 90.0), (-72.0, 108.0))  # MNI mm: the brain with a margin


def voxel_ml(ijk_to_ras: np.ndarray) -> float:
    return abs(float(np.linalg.det(np.asarray(ijk_to_ras)[:3, :3]))) / 1000.0


def share_density(relevance: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """Positive relevance as the share of the map's positive total per mL (float32; zeros without any)."""
    pos = np.clip(np.asarray(relevance, dtype=np.float64), 0, None)
    total = pos.sum()
    if not total > 0:
        return np.zeros(pos.shape, np.float32)
    return (pos / (total * voxel_ml(ijk_to_ras))).astype(np.float32)


def template_grid(spacing: float = TEMPLATE_SPACING) -> tuple[np.ndarray, tuple]:
    """IJK->RAS (MNI mm) and shape of the comparison grid in template space."""
    lo = np.array([b[0] for b in TEMPLATE_BOX])
    shape = tuple(int(round((b[1] - b[0]) / spacing)) + 1 for b in TEMPLATE_BOX)
    aff = np.diag([spacing, spacing, spacing, 1.0])
    aff[:3, 3] = lo
    return aff, shape


def resample_density(density: np.ndarray, src_ijk_to_ras: np.ndarray, dst_to_src_ras: np.ndarray,
                     dst_ijk_to_ras: np.ndarray, shape) -> np.ndarray:
    """A density (per mL, so no rescaling) sampled trilinearly on another grid; ``dst_to_src_ras`` maps the
    destination's RAS to the source's RAS (identity for the same space)."""
    from scipy import ndimage

    m = np.linalg.inv(src_ijk_to_ras) @ np.asarray(dst_to_src_ras) @ np.asarray(dst_ijk_to_ras)
    return ndimage.affine_transform(density, m[:3, :3], m[:3, 3], output_shape=tuple(int(s) for s in shape),
                                    order=1, mode="constant", cval=0.0).astype(np.float32)


@dataclass
class MapComparison:
    a: Volume  # share density of map A on the comparison grid
    b: Volume  # share density of map B on the same grid
    space: str  # "input" (one scan), "template" (MNI) or "a" (the first scan's grid)
    summary: dict = field(default_factory=dict)

    @property
    def difference(self) -> Volume:
        """B - A (share per mL): positive where B holds more of its relevance than A."""
        return Volume(self.b.array - self.a.array, self.a.ijk_to_ras.copy(), "difference (B - A)")


def _registration(prep: dict | None, which: str) -> np.ndarray:
    m = atlases.mni_to_input(prep)
    if m is None:
        raise InputError(f"map {which} has no registration to MNI space (its model does not register scans): "
                         "only maps of the same scan can be compared")
    return m


def same_grid(a: Volume, b: Volume) -> bool:
    return tuple(a.shape) == tuple(b.shape) and np.allclose(a.ijk_to_ras, b.ijk_to_ras, atol=1e-4)


def compare_maps(a: Volume, prep_a: dict | None, b: Volume, prep_b: dict | None, on: str = "auto",
                 top_percent: float = cl.DEFAULT_TOP_PERCENT) -> MapComparison:
    """Two relevance Volumes (with the preprocessing records of their diagnoses) on one grid, and the figures.

    ``on``: "auto" (the input grid for maps of one scan, else the template), "template", "a" or "input".
    """
    da, db = share_density(a.array, a.ijk_to_ras), share_density(b.array, b.ijk_to_ras)
    if on == "auto":
        on = "input" if same_grid(a, b) else "template"
    if on == "input":
        if not same_grid(a, b):
            raise InputError("the two maps are on different grids (different scans): compare them on the "
                             "template or on the first scan")
        va, vb = Volume(da, a.ijk_to_ras.copy(), "A"), Volume(db, a.ijk_to_ras.copy(), "B")
        grid_to_mni = None if atlases.mni_to_input(prep_a) is None else np.linalg.inv(_registration(prep_a, "A"))
    elif on == "template":
        aff, shape = template_grid()
        va = Volume(resample_density(da, a.ijk_to_ras, _registration(prep_a, "A"), aff, shape), aff, "A")
        vb = Volume(resample_density(db, b.ijk_to_ras, _registration(prep_b, "B"), aff, shape), aff, "B")
        grid_to_mni = np.eye(4)
    elif on == "a":
        ma, mb = _registration(prep_a, "A"), _registration(prep_b, "B")
        va = Volume(da, a.ijk_to_ras.copy(), "A")
        vb = Volume(resample_density(db, b.ijk_to_ras, mb @ np.linalg.inv(ma), a.ijk_to_ras, a.shape),
                    a.ijk_to_ras.copy(), "B")
        grid_to_mni = np.linalg.inv(ma)
    else:
        raise InputError(f"unknown comparison space {on!r} (auto, input, template or a)")
    out = MapComparison(va, vb, on)
    out.summary = {"space": on, **summarise(va, vb, top_percent, grid_to_mni)}
    return out


def summarise(a: Volume, b: Volume, top_percent: float, ras_to_mni: np.ndarray | None) -> dict:
    """Correlation, share moved, Dice of the shown voxels and (with the atlas) each region's change of share."""
    x, y = a.array.astype(np.float64).ravel(), b.array.astype(np.float64).ravel()
    ml = voxel_ml(a.ijk_to_ras)
    sel = (x > 0) | (y > 0)
    r = float(np.corrcoef(x[sel], y[sel])[0, 1]) if sel.sum() > 1 and x[sel].std() > 0 and y[sel].std() > 0 else None
    sa, sb = x.sum() * ml, y.sum() * ml  # both ~1 (less where a map left the comparison grid)
    moved = 0.5 * float(np.abs(x / max(sa, 1e-30) - y / max(sb, 1e-30)).sum() * ml) if sa > 0 and sb > 0 else None
    ta, tb = cl.display_threshold(a.array, top_percent), cl.display_threshold(b.array, top_percent)
    dice = None
    if ta is not None and tb is not None:
        ma, mb = a.array >= ta, b.array >= tb
        dice = float(2 * (ma & mb).sum() / max(1, ma.sum() + mb.sum()))
    out = {"correlation": r, "share_moved": moved, "dice_shown": dice, "top_percent": top_percent,
           "share_on_grid": {"a": float(sa), "b": float(sb)}, "voxel_ml": ml}
    if ras_to_mni is not None and atlases.available():
        atlas = atlases.load_atlas()
        lab = cl.Labelling.from_atlas(atlas, np.linalg.inv(ras_to_mni), a.ijk_to_ras, a.shape)
        ra = {row["region"]: row["share"] for row in cl.region_table(a.array, lab)}
        rb = {row["region"]: row["share"] for row in cl.region_table(b.array, lab)}
        change = sorted(({"region": k, "a": ra[k], "b": rb[k], "change": rb[k] - ra[k]} for k in ra),
                        key=lambda row: -abs(row["change"]))
        out["regions"] = change
    return out


def write_comparison(result: MapComparison, folder, doc: dict) -> dict:
    """``a.nii.gz``, ``b.nii.gz`` (share of positive relevance per mL), ``difference.nii.gz`` (B - A) and
    ``comparison.json`` (``doc`` with the research-use line, the units and the figures) into ``folder``, all or
    nothing; returns the JSON document written."""
    import json

    from addiagnosis import RESEARCH_USE
    from addiagnosis.io.outputs import OutputSet
    from addiagnosis.io.volume import write_nifti

    doc = {"research_use": RESEARCH_USE, **doc, "units": UNITS, **result.summary, "files": list(FILES)}
    with OutputSet(folder, replaces=FILES) as out:
        write_nifti(result.a, out.path("a.nii.gz"), "ADDiagnosis map A, share per mL")
        write_nifti(result.b, out.path("b.nii.gz"), "ADDiagnosis map B, share per mL")
        write_nifti(result.difference, out.path("difference.nii.gz"), "ADDiagnosis B - A, share per mL")
        out.write_text("comparison.json", json.dumps(doc, indent=2) + "\n")
    return doc
