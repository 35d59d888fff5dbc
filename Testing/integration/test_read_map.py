"""Reading a map end to end (issue 20): the bundled model on the example scan through the CLI; report.json's
clusters and regions recomputed from the written relevance.nii.gz and the registration, the atlas's region at
each peak, and the known answer for the synthetic AD subject (relevance densest in the hippocampi)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from addiagnosis.cli.main import main
from addiagnosis.explain import clusters as cl
from addiagnosis.prep import atlas as atlases
from addiagnosis.resources import default_scan

from cohorts import synthetic_groups


@pytest.fixture(scope="module")
def result_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("read-map") / "res"
    assert main(["diagnose", str(default_scan()), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def diagnosed(result_dir):
    out = result_dir
    report = json.loads((out / "report.json").read_text())
    img = nib.load(str(out / "relevance.nii.gz"))
    return report, np.asarray(img.dataobj, dtype=np.float32), img.affine


def test_clusters_in_the_report_are_the_maps_components(diagnosed):
    report, rel, affine = diagnosed
    thr = report["cluster_threshold"]
    assert thr["top_percent"] == 5.0 and thr["min_ml"] == 0.1
    assert thr["value"] == pytest.approx(cl.display_threshold(rel, 5.0), rel=1e-6)
    clusters = report["clusters"]
    assert clusters and [c["index"] for c in clusters] == list(range(1, len(clusters) + 1))
    assert [c["share"] for c in clusters] == sorted((c["share"] for c in clusters), reverse=True)
    mni_to_input = np.asarray(report["preprocessing"]["mni_to_input_ras"])
    labelling = cl.Labelling.from_atlas(atlases.load_atlas(), mni_to_input, affine, rel.shape)
    again = cl.find_clusters(rel, affine, thr["value"], thr["min_ml"], labelling, np.linalg.inv(mni_to_input))
    assert len(again) == len(clusters)
    for mine, theirs in zip(clusters, again):
        assert mine["voxels"] == theirs["voxels"] and mine["peak_region"] == theirs["peak_region"]
        assert mine["share"] == pytest.approx(theirs["share"], rel=1e-5)
        assert mine["peak_ras"] == pytest.approx(theirs["peak_ras"], abs=1e-4)
    # every voxel at or above the threshold is in exactly one component: their shares add up to what is shown
    every = cl.find_clusters(rel, affine, thr["value"], 0.0)
    shown = float(rel[rel >= thr["value"]].sum(dtype=np.float64) / np.clip(rel, 0, None).sum(dtype=np.float64))
    assert sum(c["share"] for c in every) == pytest.approx(shown, rel=1e-6)


def test_each_peak_is_a_voxel_of_the_map_and_named_by_the_atlas(diagnosed):
    report, rel, affine = diagnosed
    atlas = atlases.load_atlas()
    mni_to_input = np.asarray(report["preprocessing"]["mni_to_input_ras"])
    for c in report["clusters"]:
        ijk = np.rint(np.linalg.solve(affine, np.append(c["peak_ras"], 1.0))[:3]).astype(int)
        assert float(rel[tuple(ijk)]) == pytest.approx(c["peak"], rel=1e-6)
        mni = np.linalg.solve(mni_to_input, np.append(c["peak_ras"], 1.0))[:3]
        assert c["peak_mni"] == pytest.approx(list(mni), abs=1e-6)
        assert c["peak_region"] == atlas.name_at(mni)
        assert all(0.01 <= r["overlap"] <= 1.0 for r in c["regions"])
    assert max(c["peak"] for c in report["clusters"]) == pytest.approx(float(rel.max()), rel=1e-6)
    assert report["atlas"]["name"] == "neuromorphometrics" and "CC BY-NC" in report["atlas"]["licence"]


def test_regions_per_scan_and_the_known_answer(diagnosed):
    report, rel, _ = diagnosed
    regions = report["regions"]
    assert len(regions) == 136
    assert 0.9 < sum(r["share"] for r in regions) <= 1.0 + 1e-9  # the rest lies outside every atlas region
    by_density = sorted(regions, key=lambda r: -(r["density"] or 0.0))
    # the synthetic AD subject's atrophy is medial temporal: relevance is densest in the two hippocampi
    assert {r["region"] for r in by_density[:2]} == {"Left Hippocampus", "Right Hippocampus"}
    for r in regions:
        assert r["density"] == pytest.approx(r["sum"] / r["volume_ml"])


# ------------------------------------------------------------------------- batch: the atlas is the default --labels
def test_atlas_regions_on_the_model_grid():
    from addiagnosis.cohort.regions import load_regions, model_grid_affine
    from addiagnosis.models.package import find_package

    card = find_package().card
    regions = load_regions(card, None, None, False)
    atlas = atlases.load_atlas()
    assert regions.names == [atlas.names[k] for k in sorted(atlas.names)] and len(regions.names) == 136
    g_aff = model_grid_affine(card)
    k = regions.names.index("Left Hippocampus") + 1
    ijk = np.rint(np.linalg.solve(g_aff, [-26.0, -20.0, -14.0, 1.0])[:3]).astype(int)
    assert regions.grid[tuple(ijk)] == k
    assert regions.sha256 and len(regions.sha256) == 64
    assert load_regions(card, "none", None, False) is None


@pytest.fixture(scope="module")
def ad_cn_batch(tmp_path_factory):
    """2 AD + 2 CN synthetic subjects through batch with the bundled model and no --labels."""
    root = tmp_path_factory.mktemp("adcn-atlas")
    synthetic_groups(root, seed=7, pairs=2)
    out = root / "res"
    assert main(["batch", str(root / "data"), "--out", str(out), "--target", "AD", "--workers", "0", "-q"]) == 0
    return out


def read_tsv(path):
    lines = path.read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, line.split("\t"))) for line in lines[1:]]


def test_batch_has_atlas_columns_and_compare_works_without_labels(ad_cn_batch, tmp_path):
    rows = read_tsv(ad_cn_batch / "results.tsv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    for r in rows:
        sums = [float(v) for k, v in r.items() if k.startswith("sum_")]
        assert len(sums) == 137  # 136 regions and the unlabelled rest
        assert sum(sums) == pytest.approx(float(r["relevance_sum"]), rel=1e-5,
                                          abs=1e-6 * float(r["relevance_positive_sum"]))
        assert float(r["density_Left_Hippocampus"]) > 0
    assert main(["compare", str(ad_cn_batch), "--by", "group", "--bootstrap", "200", "--out",
                 str(tmp_path / "cmp")]) == 0
    gain = {r["region"]: r for r in read_tsv(tmp_path / "cmp" / "gain.tsv")}
    for side in ("Left_Hippocampus", "Right_Hippocampus"):  # AD relevance is medial temporal: 7-8x in CN's
        assert float(gain[side]["gain"]) > 2.0, gain[side]


# ------------------------------------------------------------------------------------------------- compare-maps
def test_compare_maps_two_targets_of_one_scan(diagnosed, tmp_path, capsys):
    """The example scan explained for AD (the fixture) and for CN: compared on the scan's grid."""
    report, rel_ad, affine = diagnosed
    folder_ad = tmp_path / "ad"
    assert main(["diagnose", str(default_scan()), "--out", str(folder_ad), "--no-figures", "-q"]) == 0
    folder_cn = tmp_path / "cn"
    assert main(["diagnose", str(default_scan()), "--target", "CN", "--out", str(folder_cn), "--no-figures",
                 "-q"]) == 0
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["compare-maps", str(folder_ad), str(folder_cn), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "compared on the input grid" in stdout and "Research use only" in stdout
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["space"] == "input" and doc["a"]["target"] == "AD" and doc["b"]["target"] == "CN"
    assert -1.0 <= doc["correlation"] <= 1.0 and 0.0 <= doc["share_moved"] <= 1.0
    a = np.asarray(nib.load(str(out / "a.nii.gz")).dataobj, dtype=np.float64)
    b = np.asarray(nib.load(str(out / "b.nii.gz")).dataobj, dtype=np.float64)
    diff = np.asarray(nib.load(str(out / "difference.nii.gz")).dataobj, dtype=np.float64)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    assert a.sum() * voxel_ml == pytest.approx(1.0, rel=1e-4) and b.sum() * voxel_ml == pytest.approx(1.0, rel=1e-4)
    np.testing.assert_allclose(diff, b - a, atol=1e-6)
    np.testing.assert_allclose(a * voxel_ml, np.clip(rel_ad, 0, None) / np.clip(rel_ad, 0, None).sum(dtype=np.float64),
                               atol=1e-7)
    assert doc["regions"][0]["region"] and abs(doc["regions"][0]["change"]) >= abs(doc["regions"][-1]["change"])
    # a folder that is not a result: one line, exit 2, nothing written
    assert main(["compare-maps", str(tmp_path), str(folder_cn), "--out", str(tmp_path / "bad")]) == 2
    assert "not a diagnose result folder" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_overview_lists_the_largest_clusters(diagnosed, result_dir):
    from PIL import Image

    from addiagnosis.io.report import cluster_line

    report, _, _ = diagnosed
    line = cluster_line(report["clusters"])
    first = report["clusters"][0]
    assert line.startswith("Clusters (region at the peak, share, volume): 1. ")
    assert f"{100 * first['share']:.1f} %" in line and (first["peak_region"] or "outside") in line
    fake = [dict(first, index=i) for i in range(1, 6)]
    assert cluster_line(fake).endswith("; 3 more")
    png = np.asarray(Image.open(result_dir / "overview.png").convert("L"))
    row = png[-44:-26]  # the cluster line above the research-use footer
    assert (row > 128).sum() > 200
