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


@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory):
    out = tmp_path_factory.mktemp("read-map") / "res"
    assert main(["diagnose", str(default_scan()), "--out", str(out)]) == 0
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
    labelling = cl.Labelling.from_atlas(atlases.load_atlas(), mni_to_input, affine)
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
