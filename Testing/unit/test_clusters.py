"""Clusters and regions of a relevance map (explain/clusters.py): volumes, shares, peaks and centroids of known
blobs, the display threshold the views use, regions per atlas label, and the atlas through a registration."""

from __future__ import annotations

import numpy as np
import pytest

from addiagnosis.explain import clusters as cl
from addiagnosis.io.volume import Volume

AFF = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels: 8 uL each
AFF[:3, 3] = [-40.0, -50.0, -30.0]


def blobs():
    """Two cubes of known size and strength, one weak small speck, and negative relevance."""
    rel = np.zeros((40, 40, 40), np.float32)
    rel[5:11, 5:11, 5:11] = 1.0  # 216 voxels = 1.728 mL, sum 216
    rel[8, 8, 8] = 3.0  # its peak
    rel[25:29, 25:29, 25:29] = 2.0  # 64 voxels = 0.512 mL, sum 128
    rel[35, 35, 35] = 1.0  # 1 voxel: below the minimum size
    rel[20:22, 0:3, 0:3] = -5.0  # negative: never a cluster
    rel[0:40:7, 30, 0] = 0.01  # weak positive, below the threshold
    return rel


def test_clusters_of_known_blobs():
    rel = blobs()
    found = cl.find_clusters(rel, AFF, threshold=0.5, min_ml=0.1)
    assert [c["index"] for c in found] == [1, 2]
    big, small = found
    total = float(np.clip(rel, 0, None).sum())
    assert big["voxels"] == 216 and big["volume_ml"] == pytest.approx(1.728)
    assert big["sum"] == pytest.approx(218.0) and big["share"] == pytest.approx(218.0 / total)
    assert big["peak"] == 3.0 and big["peak_ras"] == pytest.approx([-40 + 16.0, -50 + 16.0, -30 + 16.0])
    # relevance-weighted centroid: the cube's centre (7.5) pulled towards the peak voxel (8) by its extra 2
    expect = (7.5 * 216 + 8 * 2) / 218
    assert big["centroid_ras"] == pytest.approx(list(AFF[:3, 3] + 2 * expect))
    assert small["voxels"] == 64 and small["peak"] == 2.0 and small["share"] == pytest.approx(128 / total)
    assert small["centroid_ras"] == pytest.approx(list(AFF[:3, 3] + 2 * 26.5))
    assert "regions" not in big  # no atlas given


def test_cluster_shares_add_up_to_the_share_shown():
    rng = np.random.default_rng(3)
    rel = rng.standard_normal((30, 32, 34)).astype(np.float32)
    from scipy import ndimage
    rel = ndimage.gaussian_filter(rel, 1.5)
    thr = cl.display_threshold(rel, 10.0)
    found = cl.find_clusters(rel, AFF, thr, min_ml=0.0)
    r64 = rel.astype(np.float64)
    shown = float(r64[rel >= thr].sum() / np.clip(r64, 0, None).sum())
    assert sum(c["share"] for c in found) == pytest.approx(shown, rel=1e-9)
    assert sum(c["voxels"] for c in found) == int((rel >= thr).sum())
    assert [c["share"] for c in found] == sorted((c["share"] for c in found), reverse=True)
    bigger = cl.find_clusters(rel, AFF, thr, min_ml=0.1)
    assert all(c["volume_ml"] >= 0.1 for c in bigger) and len(bigger) < len(found)


def test_display_threshold_is_the_slice_views_threshold():
    scene = pytest.importorskip("addiagnosis.mrml.scene")
    rel = blobs()
    for top in (0.5, 5.0, 47.5, 100.0):
        assert cl.display_threshold(rel, top) == pytest.approx(scene.display_range(rel, top).lower)
    assert cl.display_threshold(-np.abs(rel)) is None


def test_region_table_and_cluster_overlap():
    rel = blobs()
    grid = np.zeros(rel.shape, np.int16)
    grid[:, :, :8] = 1  # the big cube is 3/6 in region 1, 3/6 in region 2
    grid[:, :, 8:20] = 2
    grid[:, :, 27:] = 3  # the small cube half in region 3, half unlabelled
    labelling = cl.Labelling(lambda ijk: grid[tuple(np.asarray(ijk, int).T)], {1: "one", 2: "two", 3: "three"},
                             {1: 10.0, 2: 20.0, 3: 0.0})
    rows = cl.region_table(rel, labelling)
    r64 = rel.astype(np.float64)
    total = float(np.clip(r64, 0, None).sum())
    by = {r["region"]: r for r in rows}
    one = grid == 1  # half the big cube (108), six weak voxels (0.06) and the negative block (-90)
    assert by["one"]["sum"] == pytest.approx(108.0 + 0.06 - 90.0)
    assert by["one"]["share"] == pytest.approx(float(np.clip(r64[one], 0, None).sum()) / total)
    assert by["two"]["sum"] == pytest.approx(110.0)
    assert by["two"]["density"] == pytest.approx(by["two"]["sum"] / 20.0) and by["three"]["density"] is None
    assert [r["region"] for r in rows][:1] == ["two"]
    big = cl.find_clusters(rel, AFF, 0.5, 0.1, labelling)[0]
    assert big["peak_region"] == "two"
    assert [(r["region"], r["overlap"]) for r in big["regions"]] == [("one", 0.5), ("two", 0.5)]


def test_read_map_names_a_blob_at_the_left_hippocampus():
    """A blob at MNI (-26, -20, -14) on a scan registered by a known affine: cluster and region both say
    Left Hippocampus, its peak in MNI where it was put."""
    mni_to_input = np.eye(4)
    mni_to_input[:3, 3] = [5.0, -8.0, 12.0]
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = [-90.0, -130.0, -70.0]
    rel = np.zeros((180, 220, 180), np.float32)
    centre = np.rint(np.linalg.inv(aff) @ mni_to_input @ [-26.0, -20.0, -14.0, 1.0])[:3].astype(int)
    lo, hi = centre - 1, centre + 2
    rel[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1.0
    rel[tuple(centre)] = 2.0
    rel[10:14, 10:14, 10:14] = 0.001  # weak spread elsewhere, below the top 5 %
    out = cl.read_map(Volume(rel, aff, "x"), {"mni_to_input_ras": mni_to_input.tolist()}, top_percent=5.0,
                      min_ml=0.01)
    assert out["atlas"]["name"] == "neuromorphometrics" and "licence" in out["atlas"]
    (blob,) = out["clusters"]
    assert blob["peak_region"] == "Left Hippocampus" and blob["regions"][0]["region"] == "Left Hippocampus"
    assert blob["peak_mni"] == pytest.approx([-26.0, -20.0, -14.0])
    assert out["regions"][0]["region"] == "Left Hippocampus"
    assert sum(r["share"] for r in out["regions"]) <= 1.0 + 1e-9
    none = cl.read_map(Volume(rel, aff, "x"), {"kind": "physical"}, min_ml=0.01)
    assert none["regions"] is None and none["atlas"] is None and "MNI" in none["atlas_note"]
    assert len(none["clusters"]) == 1
