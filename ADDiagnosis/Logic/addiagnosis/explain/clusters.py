"""Reading a relevance map: clusters above the display threshold, and relevance per atlas region. No torch.

A cluster is a connected component (26-neighbourhood) of the voxels at or above the display threshold (the one
the slice views use: the value above which the top N % of the positively relevant voxels lie,
:func:`display_threshold`), of at least ``min_ml`` mL. Per cluster: volume (mL), share of the map's positive
relevance, peak value and position (RAS mm, and MNI mm when the scan was registered), relevance-weighted
centroid, and the atlas regions it overlaps. Clusters are listed largest share first.

Per region (of the atlas, :mod:`addiagnosis.prep.atlas`, mapped onto the scan through the engine's registration):
the share of the positive relevance, the relevance sum, the region's volume on the scan and the density
(relevance per mL).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from addiagnosis.prep import atlas as atlases

DEFAULT_TOP_PERCENT = 5.0  # as the slice views (mrml.scene.DEFAULT_TOP_PERCENT)
MIN_CLUSTER_ML = 0.1  # smaller components are noise-sized: 100 voxels of 1 mm, 12 of 2 mm
MAX_REGIONS_PER_CLUSTER = 5
MIN_OVERLAP = 0.01  # a region is listed for a cluster when it holds at least 1 % of the cluster's voxels


def display_threshold(relevance: np.ndarray, top_percent: float = DEFAULT_TOP_PERCENT) -> float | None:
    """The value above which ``top_percent`` % of the positively relevant voxels lie; None without any.

    The same percentile, on the same sample, as the slice views' threshold (``mrml.scene.display_range``),
    so the clusters listed are the blobs the views show.
    """
    flat = np.asarray(relevance).ravel()
    sample = flat[:: max(1, flat.size // 2_000_000)]  # a 2M-voxel sample is plenty for a percentile
    pos = sample[sample > 0]
    if pos.size == 0:
        return None
    return float(np.percentile(pos, 100.0 - float(top_percent)))


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """A 4x4 affine applied to (N, 3) points."""
    m = np.asarray(m, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]


@dataclass
class Labelling:
    """Atlas regions on a scan: a lookup of labels at voxel indices, the names, and the volumes on the scan."""

    labels_at: object  # callable: (N, 3) voxel indices -> (N,) labels
    names: dict  # label -> name
    volumes_ml: dict  # label -> region volume on the scan (mL)
    grid: np.ndarray | None = None  # the labels of every voxel, when mapped for the whole grid

    @classmethod
    def from_atlas(cls, atlas, mni_to_ras: np.ndarray, ijk_to_ras: np.ndarray, shape) -> Labelling:
        """The atlas on a scan's grid (``shape``, ``ijk_to_ras``) through the registration ``mni_to_ras``, mapped
        once for the whole grid (one C pass: cheaper than looking up the millions of voxels holding relevance)."""
        grid = atlases.labels_on_grid(atlas, np.linalg.inv(mni_to_ras) @ np.asarray(ijk_to_ras, dtype=np.float64),
                                      shape)
        return cls(lambda ijk: grid[tuple(np.asarray(ijk, dtype=np.int64).T)], dict(atlas.names),
                   atlases.region_volumes_ml(atlas, mni_to_ras), grid)


def find_clusters(relevance: np.ndarray, ijk_to_ras: np.ndarray, threshold: float, min_ml: float = MIN_CLUSTER_ML,
                  labelling: Labelling | None = None, ras_to_mni: np.ndarray | None = None) -> list[dict]:
    """Connected components of ``relevance >= threshold`` (26-neighbourhood) of at least ``min_ml`` mL, largest
    share of the positive relevance first (see the module docstring for the fields)."""
    from scipy import ndimage

    rel = np.asarray(relevance)
    if not threshold > 0:  # a cluster holds positive relevance only
        threshold = float(np.nextafter(np.float32(0), np.float32(1)))
    comp, n = ndimage.label(rel >= threshold, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return []
    voxel_ml = abs(float(np.linalg.det(np.asarray(ijk_to_ras)[:3, :3]))) / 1000.0
    total_pos = float(np.clip(rel, 0, None).sum(dtype=np.float64))
    idx = np.flatnonzero(comp)
    lab = comp.ravel()[idx]
    val = rel.ravel()[idx].astype(np.float64)
    counts = np.bincount(lab, minlength=n + 1)
    sums = np.bincount(lab, weights=val, minlength=n + 1)
    ijk = np.column_stack(np.unravel_index(idx, rel.shape)).astype(np.float64)
    centroid = np.column_stack([np.bincount(lab, weights=val * ijk[:, a], minlength=n + 1) for a in range(3)])
    order = np.lexsort((-val, lab))  # by component, each one's maximum first (ties: the first voxel)
    start = np.cumsum(counts) - counts  # component c's voxels: order[start[c]:start[c] + counts[c]]
    region_labels = None if labelling is None else labelling.labels_at(ijk)
    out = []
    for c in np.flatnonzero(counts * voxel_ml >= min_ml):  # one pass per kept component, never per component
        if c == 0:
            continue
        members = order[start[c]:start[c] + counts[c]]
        peak = members[0]
        cluster = {
            "voxels": int(counts[c]), "volume_ml": float(counts[c] * voxel_ml),
            "share": float(sums[c] / total_pos) if total_pos > 0 else 0.0, "sum": float(sums[c]),
            "peak": float(val[peak]), "peak_ras": apply(ijk_to_ras, ijk[peak][None])[0].tolist(),
            "centroid_ras": apply(ijk_to_ras, (centroid[c] / sums[c])[None])[0].tolist(),
        }
        if ras_to_mni is not None:
            cluster["peak_mni"] = apply(ras_to_mni, np.asarray([cluster["peak_ras"]]))[0].tolist()
        if labelling is not None:
            cluster.update(_overlap(region_labels[members], int(region_labels[peak]), labelling.names))
        out.append(cluster)
    out.sort(key=lambda k: (-k["share"], -k["peak"]))
    for i, cluster in enumerate(out, 1):
        cluster["index"] = i
    return out


def _overlap(labels: np.ndarray, peak_label: int, names: dict) -> dict:
    """The regions a cluster overlaps (share of its voxels, largest first) and the region at its peak."""
    found, counts = np.unique(labels, return_counts=True)
    frac = counts / max(1, labels.size)
    rows = [{"label": int(v), "region": names.get(int(v), f"label {int(v)}"), "overlap": float(f)}
            for v, f in zip(found, frac) if v != 0 and f >= MIN_OVERLAP]
    rows.sort(key=lambda r: -r["overlap"])
    return {"peak_region": names.get(peak_label), "regions": rows[:MAX_REGIONS_PER_CLUSTER]}


def region_table(relevance: np.ndarray, labelling: Labelling) -> list[dict]:
    """Per atlas region: share of the map's positive relevance, relevance sum, volume on the scan (mL) and
    density (sum per mL); largest share first. Only voxels with relevance are looked up (zeros add nothing)."""
    rel = np.asarray(relevance)
    if labelling.grid is not None and labelling.grid.shape == rel.shape:
        val, labels = rel.ravel().astype(np.float64), labelling.grid.ravel().astype(np.int64)
    else:
        idx = np.flatnonzero(rel)
        val = rel.ravel()[idx].astype(np.float64)
        labels = labelling.labels_at(np.column_stack(np.unravel_index(idx, rel.shape))).astype(np.int64)
    top = max(int(labels.max(initial=0)), max(labelling.names, default=0)) + 1
    sums = np.bincount(labels, weights=val, minlength=top)
    pos = np.bincount(labels, weights=np.clip(val, 0, None), minlength=top)
    total_pos = float(np.clip(val, 0, None).sum())
    rows = []
    for label, name in labelling.names.items():
        vol = float(labelling.volumes_ml.get(label, 0.0))
        rows.append({"label": int(label), "region": name, "share": float(pos[label] / total_pos) if total_pos else 0.0,
                     "sum": float(sums[label]), "volume_ml": vol,
                     "density": float(sums[label] / vol) if vol > 0 else None})
    rows.sort(key=lambda r: (-r["share"], r["label"]))
    return rows


def read_map(relevance, preprocessing: dict | None, top_percent: float = DEFAULT_TOP_PERCENT,
             min_ml: float = MIN_CLUSTER_ML) -> dict:
    """Clusters and regions of a relevance Volume, with the atlas mapped through the engine's registration.

    Returns {"clusters": [...], "regions": [...] or None, "atlas": {...} or None, "cluster_threshold": {...}}.
    Without the atlas package, or for a model that does not register to MNI, regions and atlas are None
    (and ``atlas_note`` says why); clusters are always there.
    """
    rel = np.asarray(relevance.array)
    m = atlases.mni_to_input(preprocessing)
    labelling, atlas_info, note = None, None, None
    if m is None:
        note = "no atlas: this model does not register scans to MNI space"
    elif not atlases.available():
        note = f"no atlas: {atlases.INSTALL_HINT}"
    else:
        atlas = atlases.load_atlas()
        labelling = Labelling.from_atlas(atlas, m, relevance.ijk_to_ras, rel.shape)
        atlas_info = atlas.info()
    thr = display_threshold(rel, top_percent)
    clusters = [] if thr is None else find_clusters(
        rel, relevance.ijk_to_ras, thr, min_ml, labelling, None if m is None else np.linalg.inv(m))
    out = {"clusters": clusters, "regions": None if labelling is None else region_table(rel, labelling),
           "atlas": atlas_info,
           "cluster_threshold": {"top_percent": float(top_percent), "value": thr, "min_ml": float(min_ml)}}
    if note:
        out["atlas_note"] = note
    return out
